//! One breaker as the services share it: the state machine behind a mutex,
//! an atomic mirror of its state for the closed path, and the hooks
//! (callback, metrics, events) that each transition fires.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::state::{Admit, CircuitState, Config, Machine, Pass, Record, Transition};
use super::StateChange;
use crate::partition::{Idle, Partitions};
use crate::request::PartitionKey;
use crate::telemetry::{self, Counter, Gauge, PartitionLabels, Scope as MetricScope};

/// The callback run on each state change.
pub(crate) type OnChange = Arc<dyn Fn(&StateChange) + Send + Sync>;

const STATE_BITS: u64 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

const fn pack(state: CircuitState, generation: u64) -> u64 {
    (generation << STATE_BITS) | state.code()
}

pub(crate) const STATE: &str = "llm_sluice_breaker_state";
pub(crate) const OPEN: &str = "llm_sluice_breaker_open";
pub(crate) const TRANSITIONS: &str = "llm_sluice_breaker_transitions_total";
pub(crate) const CALLS: &str = "llm_sluice_breaker_calls_total";

fn describe_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| telemetry::describe("breaker"));
}

/// Metric handles of one breaker, or of every breaker of a layer without a
/// partition label: created once, at build or when a partition's breaker is
/// created, never per call.
pub(crate) struct Metrics {
    /// Only for a breaker whose labels are its own (the unkeyed one, and
    /// with a partition label each labelled key's): a gauge shared by
    /// several breakers would say nothing.
    state: Option<Gauge>,
    /// Layer-wide (no partition label): how many of its breakers are open.
    open: Gauge,
    calls: [Counter; 5],
    rejected: Counter,
    transitions: [[OnceLock<Counter>; 5]; 5],
    /// Labels for the transition counters, made when first needed.
    scope: MetricScope,
}

impl Metrics {
    /// Handles with `scope`'s labels; `open` with the layer's labels
    /// (`layer`), a state gauge only if `with_state`.
    pub(crate) fn new(scope: &MetricScope, layer: &MetricScope, with_state: bool) -> Self {
        describe_once();
        Metrics {
            state: with_state.then(|| Gauge::new(STATE, scope, &[])),
            open: Gauge::new(OPEN, layer, &[]),
            calls: Record::ALL.map(|r| Counter::new(CALLS, scope, &[("outcome", r.label())])),
            rejected: Counter::new(telemetry::REJECTED, scope, &[("reason", "circuit_open")]),
            transitions: Default::default(),
            scope: scope.clone(),
        }
    }

    fn transition(&self, t: Transition) -> &Counter {
        self.transitions[t.from.index()][t.to.index()].get_or_init(|| {
            Counter::new(
                TRANSITIONS,
                &self.scope,
                &[("from", t.from.as_str()), ("to", t.to.as_str())],
            )
        })
    }
}

/// Settings and hooks shared by every breaker of a layer.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) on_change: Option<OnChange>,
    /// The layer's labels (`layer`, and `name` if set).
    pub(crate) scope: MetricScope,
    /// Set by `partition_label`: each keyed breaker gets its own handles.
    pub(crate) partition_labels: Option<PartitionLabels>,
    /// The unkeyed breaker's handles (with the state gauge) when there is
    /// no partition label.
    pub(crate) metrics: Arc<Metrics>,
    /// Every keyed breaker's handles (no state gauge) when there is no
    /// partition label.
    pub(crate) keyed_metrics: Arc<Metrics>,
}

impl Shared {
    pub(crate) fn new(
        cfg: Config,
        on_change: Option<OnChange>,
        scope: MetricScope,
        partition_labels: Option<PartitionLabels>,
    ) -> Self {
        Shared {
            cfg,
            on_change,
            metrics: Arc::new(Metrics::new(&scope, &scope, true)),
            keyed_metrics: Arc::new(Metrics::new(&scope, &scope, false)),
            scope,
            partition_labels,
        }
    }

    /// The handles of a new breaker.
    fn metrics_for(&self, scope: &Scope) -> Arc<Metrics> {
        let Some(labels) = &self.partition_labels else {
            return match scope {
                Scope::Unkeyed => self.metrics.clone(),
                _ => self.keyed_metrics.clone(),
            };
        };
        let (labelled, own) = match scope {
            Scope::Unkeyed => (self.scope.with_partition(telemetry::UNKEYED), true),
            Scope::Overflow => (self.scope.with_partition(telemetry::OVERFLOW), false),
            Scope::Key(key) => labels.scope(&self.scope, key),
        };
        Arc::new(Metrics::new(&labelled, &self.scope, own))
    }
}

/// Which breaker of a layer this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Requests without a key (the only breaker of an unkeyed layer).
    Unkeyed,
    /// Keys that found the partition map full.
    Overflow,
    /// One key's own breaker.
    Key(PartitionKey),
}

pub(crate) struct Breaker {
    /// `generation << 3 | state code`, written under the mutex after every
    /// transition; read without locking to admit closed calls.
    mode: AtomicU64,
    /// Mirrors [`Machine::quiet`]: a plain success need not take the lock.
    quiet: AtomicBool,
    /// Whether calls are timed (slow calls are configured): read in `call`
    /// so an untimed breaker never reads the clock on the closed path.
    timed: bool,
    machine: Mutex<Machine>,
    shared: Arc<Shared>,
    /// This breaker's handles: the layer's, or its partition's own.
    metrics: Arc<Metrics>,
    scope: Scope,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("scope", &self.scope)
            .field("state", &self.machine.lock().current())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(shared: Arc<Shared>, scope: Scope, now: Instant) -> Self {
        let machine = Machine::new(&shared.cfg, now);
        let metrics = shared.metrics_for(&scope);
        Breaker {
            mode: AtomicU64::new(pack(machine.current(), machine.generation())),
            quiet: AtomicBool::new(machine.quiet()),
            timed: shared.cfg.slow_call.is_some(),
            machine: Mutex::new(machine),
            shared,
            metrics,
            scope,
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Whether calls are timed for slow-call detection.
    #[inline]
    pub(crate) fn timed(&self) -> bool {
        self.timed
    }

    /// Admits a call or says how long until one may pass.
    #[inline]
    pub(crate) fn admit(self: Arc<Self>) -> Result<Permit, std::time::Duration> {
        let mode = self.mode.load(Ordering::Acquire);
        let code = mode & STATE_MASK;
        if code == CircuitState::Closed.code() || code == CircuitState::ForcedClosed.code() {
            return Ok(Permit::new(self, Pass::Closed(mode >> STATE_BITS)));
        }
        self.admit_slow()
    }

    #[cold]
    fn admit_slow(self: Arc<Self>) -> Result<Permit, std::time::Duration> {
        let now = Instant::now();
        let (admit, transition) = {
            let mut m = self.machine.lock();
            let out = m.admit(&self.shared.cfg, now);
            self.sync(&m);
            out
        };
        self.notify(transition, now);
        match admit {
            Admit::Closed(generation) => Ok(Permit::new(self, Pass::Closed(generation))),
            Admit::Probe(ticket) => Ok(Permit::new(self, Pass::Probe(ticket))),
            Admit::Rejected(retry_after) => {
                self.metrics.rejected.increment(1);
                tracing::debug!(
                    scope = ?self.scope,
                    ?retry_after,
                    "circuit breaker rejected a call"
                );
                Err(retry_after)
            }
        }
    }

    /// Records a finished call. `now` is read at most once, and only if the
    /// window or a transition needs it.
    #[inline]
    pub(crate) fn record(&self, pass: Pass, record: Record, now: Option<Instant>) {
        self.metrics.calls[record.index()].increment(1);
        if record == Record::SUCCESS && self.quiet.load(Ordering::Acquire) {
            // Nothing a plain success could change (quiet means closed, so
            // a probe's success is from an ended phase): skip the lock.
            return;
        }
        self.record_locked(pass, record, now);
    }

    #[inline(never)]
    fn record_locked(&self, pass: Pass, record: Record, now: Option<Instant>) {
        let mut at = now;
        let transition = {
            let mut m = self.machine.lock();
            let t = m.record(&self.shared.cfg, pass, record, || {
                *at.get_or_insert_with(Instant::now)
            });
            if t.is_some() {
                self.sync(&m);
            } else {
                self.sync_quiet(&m);
            }
            t
        };
        if let Some(t) = transition {
            self.notify(Some(t), at.unwrap_or_else(Instant::now));
        }
    }

    #[cold]
    #[inline(never)]
    fn release_probe(&self, ticket: u64) {
        let mut m = self.machine.lock();
        m.release_probe(ticket);
    }

    /// The state now (applying what time alone changes).
    pub(crate) fn state(&self) -> CircuitState {
        let now = Instant::now();
        let (state, transition) = {
            let mut m = self.machine.lock();
            let out = m.state(&self.shared.cfg, now);
            self.sync(&m);
            out
        };
        self.notify(transition, now);
        state
    }

    pub(crate) fn force(&self, target: CircuitState) {
        let now = Instant::now();
        let transition = {
            let mut m = self.machine.lock();
            let t = m.force(target, now);
            self.sync(&m);
            t
        };
        self.notify(transition, now);
    }

    fn sync(&self, m: &Machine) {
        self.mode
            .store(pack(m.current(), m.generation()), Ordering::Release);
        self.sync_quiet(m);
    }

    fn sync_quiet(&self, m: &Machine) {
        let quiet = m.quiet();
        // Write only on change: the flag is read on every success.
        if self.quiet.load(Ordering::Relaxed) != quiet {
            self.quiet.store(quiet, Ordering::Release);
        }
    }

    fn notify(&self, transition: Option<Transition>, at: Instant) {
        let Some(t) = transition else { return };
        let metrics = &self.metrics;
        metrics.transition(t).increment(1);
        if let Some(state) = &metrics.state {
            state.set(t.to.gauge_value());
        }
        match (t.from.is_closed(), t.to.is_closed()) {
            (true, false) => metrics.open.increment(1.0),
            (false, true) => metrics.open.decrement(1.0),
            _ => {}
        }
        let partition = match &self.scope {
            Scope::Key(key) => Some(key.clone()),
            _ => None,
        };
        tracing::info!(
            scope = ?self.scope,
            from = %t.from,
            to = %t.to,
            "circuit breaker state changed"
        );
        if let Some(callback) = &self.shared.on_change {
            callback(&StateChange {
                from: t.from,
                to: t.to,
                partition,
                overflow: self.scope == Scope::Overflow,
                at,
            });
        }
    }
}

impl Idle for Breaker {
    fn is_idle(&self, now: Instant) -> bool {
        self.machine.lock().is_idle(&self.shared.cfg, now)
    }
}

/// The right to make one call: a closed-state pass or a half-open probe slot.
///
/// Dropped without an outcome (the response future was dropped), a probe
/// frees its slot for the next caller without counting as a success or a
/// failure.
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    /// `generation << 1` for a closed pass, `ticket << 1 | 1` for a probe:
    /// two words, so the response future stays small (generations and
    /// tickets stay far below 2^61, see `pack`).
    tagged: u64,
}

impl Permit {
    #[inline]
    fn new(breaker: Arc<Breaker>, pass: Pass) -> Self {
        let tagged = match pass {
            Pass::Closed(generation) => generation << 1,
            Pass::Probe(ticket) => ticket << 1 | 1,
        };
        Permit { breaker, tagged }
    }

    #[inline]
    fn pass(&self) -> Pass {
        if self.tagged & 1 != 0 {
            Pass::Probe(self.tagged >> 1)
        } else {
            Pass::Closed(self.tagged >> 1)
        }
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Records the call's outcome and consumes the permit. Inlined into the
    /// response future, so a quiet success is a counter and a flag read.
    #[inline]
    pub(crate) fn record(mut self, record: Record, now: Option<Instant>) {
        let pass = self.pass();
        // The outcome settles a probe's slot: `Drop` must not free it again
        // (a closed pass is a no-op there).
        self.tagged = 0;
        self.breaker.record(pass, record, now);
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Pass::Probe(ticket) = self.pass() {
            self.breaker.release_probe(ticket);
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("pass", &self.pass())
            .finish()
    }
}

/// Where a layer's breakers live: one, or one a partition.
pub(crate) enum Registry {
    Single(Arc<Breaker>),
    Keyed {
        map: Partitions<Breaker>,
        shared: Arc<Shared>,
    },
}

impl Registry {
    pub(crate) fn single(shared: Arc<Shared>) -> Self {
        Registry::Single(Arc::new(Breaker::new(
            shared,
            Scope::Unkeyed,
            Instant::now(),
        )))
    }

    pub(crate) fn keyed(shared: Arc<Shared>, max: usize) -> Self {
        let now = Instant::now();
        // `Partitions::new` makes the unkeyed state first, then the overflow one.
        let mut made = 0;
        let map = Partitions::new(max, || {
            made += 1;
            let scope = if made == 1 {
                Scope::Unkeyed
            } else {
                Scope::Overflow
            };
            Breaker::new(shared.clone(), scope, now)
        });
        Registry::Keyed { map, shared }
    }

    /// The breaker for `key` (the unkeyed one when `key` is `None` or the
    /// layer is not partitioned).
    #[inline]
    pub(crate) fn breaker(&self, key: Option<&PartitionKey>) -> Arc<Breaker> {
        match self {
            Registry::Single(b) => b.clone(),
            Registry::Keyed { map, shared } => {
                let now = Instant::now();
                map.get(key, now, || {
                    let scope = key.map_or(Scope::Overflow, |k| Scope::Key(k.clone()));
                    Breaker::new(shared.clone(), scope, now)
                })
                .0
            }
        }
    }

    /// The breaker of `key` if it has its own.
    pub(crate) fn peek(&self, key: &PartitionKey) -> Option<Arc<Breaker>> {
        match self {
            Registry::Single(_) => None,
            Registry::Keyed { map, .. } => map.peek(key),
        }
    }

    pub(crate) fn is_keyed(&self) -> bool {
        matches!(self, Registry::Keyed { .. })
    }

    /// How many keys have their own breaker.
    pub(crate) fn partitions(&self) -> usize {
        match self {
            Registry::Single(_) => 0,
            Registry::Keyed { map, .. } => map.len(),
        }
    }

    /// Visits every breaker.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<Breaker>)) {
        match self {
            Registry::Single(b) => f(b),
            Registry::Keyed { map, .. } => map.for_each(|_, b| f(b)),
        }
    }

    /// Evicts idle keyed breakers no request or handle holds.
    pub(crate) fn evict_idle(&self) -> usize {
        match self {
            Registry::Single(_) => 0,
            Registry::Keyed { map, .. } => map.evict_idle(Instant::now()),
        }
    }
}
