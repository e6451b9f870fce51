//! State shared by every clone of one limiter: the store's windows, the
//! per-partition wait queues, the limits, the metric handles.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::task::Waker;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;
use tower::BoxError;

use super::handle::{Control, RateStats};
use super::learn::{self, LearnLimits, LearnedLimits, Learning, HOLD_WINDOWS, LEARNED};
use super::limits::{Budget, Charging, Demand, Limits, SeqLimits, MAX_USAGE_TOKENS};
use super::store::{RateStore, WindowState};
use super::window::Verdict;
use crate::classify::{Classification, Outcome, RateLimitState, Usage};
use crate::clock;
use crate::error::{ConfigError, Error};
use crate::partition::{Idle, Partitions};
use crate::request::{PartitionKey, Priority};
use crate::telemetry::{self, Counter, Gauge, Histogram, PartitionLabels, Scope};

/// The least delay a refusal carries: a caller reads zero as "no hint".
const MIN_HINT: Duration = Duration::from_millis(1);

/// Where a waiter stands: higher priority first, then earlier arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WaitKey {
    priority: Reverse<Priority>,
    arrival: Instant,
    id: u64,
}

struct Entry {
    waker: Option<Waker>,
    expiry: Instant,
}

/// One scope: its window in the store and its queue of waiters.
///
/// Laid out for a keyed admission, which finds the slot cold in a large
/// map: what it touches is the `Arc`'s counts, then the lock, the waiters'
/// pointer, `admitted` and the window's hot head (for the memory store: 80
/// bytes), 128 bytes in a row from the start of the allocation; everything
/// else (the window's cold tail, the metric handles) comes after. The limits
/// are not here: one copy per limiter ([`SeqLimits`]) stays in cache. The
/// queue and what the partition learned live out of line ([`Cold`]), made
/// when first needed (most partitions never queue or learn): an admission
/// that finds no such box takes the fast path.
#[repr(C)] // the lock (and with it the hot state) first
pub(crate) struct Slot<W> {
    pub(crate) state: Mutex<SlotState<W>>,
    /// The slot's own metric handles, with a `partition` label (only with
    /// `partition_label`; otherwise the limiter's are used).
    metrics: Option<Box<Metrics>>,
    /// Where this slot's admission count goes when it is dropped (evicted),
    /// so the limiter's total survives eviction.
    retired: Arc<AtomicU64>,
}

#[repr(C)] // what an admission touches first, side by side
pub(crate) struct SlotState<W> {
    /// The queue and the learned limits, `Some` only while someone waits or
    /// something learned is kept.
    cold: Option<Box<Cold>>,
    /// Requests admitted here, counted under the lock held anyway rather
    /// than in one atomic all admissions contend on.
    admitted: u64,
    /// The store puts what an admission reads (for the memory store: its
    /// header) first.
    pub(crate) window: W,
}

/// What only some partitions need, kept out of line: its presence sends an
/// admission off the fast path.
#[derive(Default)]
struct Cold {
    waiters: Waiters,
    learning: Learning,
}

/// A scope's waiters: by place in line, and by expiry (the head times out
/// the others).
#[derive(Default)]
struct Waiters {
    queue: BTreeMap<WaitKey, Entry>,
    expiries: BTreeSet<(Instant, WaitKey)>,
}

impl<W> Slot<W> {
    fn new(window: W, metrics: Option<Box<Metrics>>, retired: &Arc<AtomicU64>) -> Self {
        Slot {
            metrics,
            retired: retired.clone(),
            state: Mutex::new(SlotState {
                cold: None,
                admitted: 0,
                window,
            }),
        }
    }
}

impl<W> Drop for Slot<W> {
    fn drop(&mut self) {
        let admitted = self.state.get_mut().admitted;
        self.retired.fetch_add(admitted, Ordering::Relaxed);
    }
}

/// Which slot a reservation or a waiter belongs to. The unkeyed slot lives
/// as long as the limiter, so it is named rather than reference-counted: an
/// unkeyed admission touches no reference count.
pub(crate) enum SlotRef<W> {
    Unkeyed,
    Keyed(Arc<Slot<W>>),
}

impl<W> Clone for SlotRef<W> {
    fn clone(&self) -> Self {
        match self {
            SlotRef::Unkeyed => SlotRef::Unkeyed,
            SlotRef::Keyed(slot) => SlotRef::Keyed(slot.clone()),
        }
    }
}

impl<W> SlotState<W> {
    /// The queue, if anyone waits.
    #[inline]
    fn waiters(&self) -> Option<&Waiters> {
        self.cold
            .as_deref()
            .map(|c| &c.waiters)
            .filter(|w| !w.queue.is_empty())
    }

    /// Whether nobody waits here.
    #[inline]
    fn queue_is_empty(&self) -> bool {
        self.cold
            .as_ref()
            .is_none_or(|c| c.waiters.queue.is_empty())
    }

    /// What the partition learned, if a learned limit is in force.
    #[inline]
    fn learned(&self) -> Option<&Learning> {
        self.cold
            .as_deref()
            .map(|c| &c.learning)
            .filter(|l| l.in_force())
    }

    /// What the partition learned, made on first use.
    fn learning(&mut self) -> &mut Learning {
        &mut self.cold.get_or_insert_with(Box::default).learning
    }

    fn contains(&self, key: &WaitKey) -> bool {
        self.waiters().is_some_and(|w| w.queue.contains_key(key))
    }

    fn is_head(&self, key: &WaitKey) -> bool {
        self.waiters()
            .and_then(|w| w.queue.first_key_value())
            .map(|(k, _)| k)
            == Some(key)
    }

    /// Queues `key` until `expiry`.
    fn insert(&mut self, key: WaitKey, expiry: Instant) {
        let waiters = &mut self.cold.get_or_insert_with(Box::default).waiters;
        waiters.queue.insert(
            key,
            Entry {
                waker: None,
                expiry,
            },
        );
        waiters.expiries.insert((expiry, key));
    }

    /// The earliest expiry of any waiter.
    fn first_expiry(&self) -> Option<(Instant, WaitKey)> {
        self.waiters().and_then(|w| w.expiries.first().copied())
    }

    /// Drops the box once nobody waits and nothing learned is kept.
    fn drop_if_empty(&mut self) {
        let empty = self
            .cold
            .as_ref()
            .is_some_and(|c| c.waiters.queue.is_empty() && c.learning.is_empty());
        if empty {
            self.cold = None;
        }
    }

    fn remove(&mut self, key: &WaitKey) -> bool {
        let Some(cold) = self.cold.as_mut() else {
            return false;
        };
        let waiters = &mut cold.waiters;
        let removed = match waiters.queue.remove(key) {
            Some(entry) => {
                waiters.expiries.remove(&(entry.expiry, *key));
                true
            }
            None => false,
        };
        self.drop_if_empty();
        removed
    }

    pub(crate) fn wake_head(&self) {
        let head = self.waiters().and_then(|w| w.queue.first_key_value());
        if let Some((_, entry)) = head {
            if let Some(waker) = &entry.waker {
                waker.wake_by_ref();
            }
        }
    }

    fn set_waker(&mut self, key: &WaitKey, waker: &Waker) {
        let entry = self
            .cold
            .as_mut()
            .and_then(|c| c.waiters.queue.get_mut(key));
        if let Some(entry) = entry {
            match &entry.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => entry.waker = Some(waker.clone()),
            }
        }
    }

    /// Removes and wakes every waiter but `head` whose time is up; returns
    /// how many.
    fn drain_expired(&mut self, now: Instant, head: &WaitKey) -> usize {
        let Some(waiters) = self.cold.as_mut().map(|c| &mut c.waiters) else {
            return 0;
        };
        let expired: Vec<(Instant, WaitKey)> = waiters
            .expiries
            .iter()
            .take_while(|(expiry, _)| *expiry <= now)
            .filter(|(_, key)| key != head)
            .copied()
            .collect();
        for item in &expired {
            waiters.expiries.remove(item);
            if let Some(entry) = waiters.queue.remove(&item.1) {
                if let Some(waker) = entry.waker {
                    waker.wake();
                }
            }
        }
        self.drop_if_empty();
        expired.len()
    }
}

impl<W: WindowState> Idle for Slot<W> {
    fn is_idle(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        state.queue_is_empty() && state.window.is_idle(now)
    }
}

/// The metric handles of one limiter, or of one partition with its own
/// `partition` label.
#[derive(Clone)]
pub(crate) struct Metrics {
    admitted: Counter,
    too_large: Counter,
    wait_timeout: Counter,
    deadline: Counter,
    waiters_full: Counter,
    changed: Counter,
    reserved: Counter,
    refunded: Counter,
    wait: Histogram,
    cooldowns: Counter,
    usage_capped: Counter,
    /// What only answers with rate-limit state touch, out of line.
    learn: Box<LearnMetrics>,
    /// Layer-wide (no partition label).
    partitions: Gauge,
}

/// The metric handles of learned limits and the charging check.
#[derive(Clone)]
struct LearnMetrics {
    /// The limit in force after learning, per whole-window budget.
    learned: [Gauge; 4],
    /// Reports that say a token budget's charging rule is wrong (tokens,
    /// input, output).
    charging_mismatch: [Counter; 3],
}

impl Metrics {
    /// Handles with `scope`'s labels; the partition count with the layer's.
    fn new(scope: &Scope, layer: &Scope) -> Self {
        static DESCRIBE: Once = Once::new();
        DESCRIBE.call_once(|| telemetry::describe("rate"));
        let rejected = |reason| Counter::new(telemetry::REJECTED, scope, &[("reason", reason)]);
        Metrics {
            admitted: Counter::new(telemetry::ADMITTED, scope, &[]),
            too_large: rejected("too_large"),
            wait_timeout: rejected("wait_timeout"),
            deadline: rejected("deadline"),
            waiters_full: rejected("waiters_full"),
            changed: rejected("changed"),
            reserved: Counter::new("llm_sluice_rate_tokens_reserved_total", scope, &[]),
            refunded: Counter::new("llm_sluice_rate_tokens_refunded_total", scope, &[]),
            wait: Histogram::new("llm_sluice_rate_wait_seconds", scope, &[]),
            cooldowns: Counter::new("llm_sluice_rate_cooldowns_total", scope, &[]),
            usage_capped: Counter::new("llm_sluice_rate_usage_capped_total", scope, &[]),
            learn: Box::new(LearnMetrics {
                learned: BUDGET_LABELS
                    .map(|b| Gauge::new("llm_sluice_rate_learned_limit", scope, &[("budget", b)])),
                charging_mismatch: [BUDGET_LABELS[1], BUDGET_LABELS[2], BUDGET_LABELS[3]].map(
                    |b| {
                        Counter::new(
                            "llm_sluice_rate_charging_mismatch_total",
                            scope,
                            &[("budget", b)],
                        )
                    },
                ),
            }),
            partitions: Gauge::new(telemetry::PARTITIONS, layer, &[]),
        }
    }
}

/// The `budget` label of each whole-window budget.
const BUDGET_LABELS: [&str; 4] = ["requests", "tokens", "input_tokens", "output_tokens"];

/// How metrics are labelled, fixed at build.
#[derive(Debug)]
pub(crate) struct MetricSettings {
    pub(crate) scope: Scope,
    pub(crate) partition_labels: Option<PartitionLabels>,
}

impl MetricSettings {
    /// Handles for a new slot: `None` (use the limiter's) without a
    /// partition label.
    fn slot(&self, value: SlotLabel<'_>) -> Option<Box<Metrics>> {
        let labels = self.partition_labels.as_ref()?;
        let scope = match value {
            SlotLabel::Unkeyed => self.scope.with_partition(telemetry::UNKEYED),
            SlotLabel::Overflow => self.scope.with_partition(telemetry::OVERFLOW),
            SlotLabel::Key(key) => labels.scope(&self.scope, key).0,
        };
        Some(Box::new(Metrics::new(&scope, &self.scope)))
    }
}

/// Which slot a new one is, for its `partition` label.
enum SlotLabel<'a> {
    Unkeyed,
    Overflow,
    Key(&'a PartitionKey),
}

/// Settings fixed at build time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) limits: Limits,
    pub(crate) global: Option<Limits>,
    /// The charging rule of the tokens, input and output budgets.
    pub(crate) charging: [Charging; 3],
    pub(crate) learn: LearnLimits,
    pub(crate) max_wait: Duration,
    pub(crate) max_waiters: usize,
    pub(crate) max_partitions: usize,
}

pub(crate) struct Shared<C, St: RateStore> {
    pub(crate) store: St,
    pub(crate) classifier: C,
    /// The partition limits and the global ones, read together: what the
    /// handle reads, and the lock writers take.
    limits: RwLock<(Limits, Option<Limits>)>,
    /// The same, as admissions read it: without a lock, one copy for every
    /// partition (written under `limits`' write lock).
    current: SeqLimits,
    partitions: Partitions<Slot<St::Window>>,
    global: Slot<St::Window>,
    max_wait: Duration,
    max_waiters: usize,
    waiting: AtomicUsize,
    /// Admissions counted by slots that have been dropped.
    retired: Arc<AtomicU64>,
    next_id: AtomicU64,
    reported_partitions: AtomicUsize,
    /// The charging rule of the tokens, input and output budgets.
    charging: [Charging; 3],
    /// Whether usage corrects any of them.
    corrects: bool,
    learn: LearnLimits,
    /// When each token budget's charging mismatch was last logged (out of
    /// line: only a mismatch looks at it).
    warned: Box<Mutex<[Option<Instant>; 3]>>,
    metrics: Metrics,
    metric_settings: MetricSettings,
}

/// A reservation in the windows, held while the call is in flight.
///
/// Dropping it keeps what it reserved (the request reached the upstream,
/// which counts it); [`Shared::answered`] and [`Shared::settle`] correct or release it.
///
/// The global budget's ticket is kept inline although only a limiter with
/// global limits has one: boxing it would make the future a little smaller
/// for everyone at the price of an allocation per request for those users.
pub(crate) struct Reservation<St: RateStore> {
    slot: SlotRef<St::Window>,
    part: St::Ticket,
    global: Option<St::Ticket>,
    estimate: u64,
}

/// What a call spent, as known when its response is done.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Spent {
    /// The provider's report.
    Reported(crate::classify::Usage),
    /// No report (a stream cut off, or sent without its usage): at least
    /// this many tokens, from what was seen.
    AtLeast(u64),
}

pub(crate) enum Attempt<T> {
    Admitted { part: T, global: Option<T> },
    Wait(Instant),
    Never { amount: u64, limit: u64 },
}

impl<T> Attempt<T> {
    /// A refusal: `Fits` cannot be one, but would mean "look again now".
    fn refused(verdict: Verdict, now: Instant) -> Self {
        match verdict {
            Verdict::Fits => Attempt::Wait(now),
            Verdict::NotUntil(at) => Attempt::Wait(at),
            Verdict::Never { amount, limit } => Attempt::Never { amount, limit },
        }
    }
}

pub(crate) enum Enter<C, St: RateStore> {
    Admitted(Reservation<St>),
    Failed(BoxError),
    Wait(WaitGuard<C, St>),
}

pub(crate) enum WaitPoll<St: RateStore> {
    /// Admitted at this instant.
    Admitted(Reservation<St>, Instant),
    Failed(BoxError),
    /// Wait to be woken, and (as the head) until this instant.
    Park(Option<Instant>),
}

impl<C, St: RateStore> Shared<C, St> {
    pub(crate) fn new(
        store: St,
        classifier: C,
        settings: Settings,
        metric_settings: MetricSettings,
    ) -> Self {
        let retired = Arc::new(AtomicU64::new(0));
        // `Partitions::new` makes the unkeyed slot first, then the overflow one.
        let mut made = 0;
        let partitions = Partitions::new(settings.max_partitions, || {
            made += 1;
            let label = if made == 1 {
                SlotLabel::Unkeyed
            } else {
                SlotLabel::Overflow
            };
            Slot::new(store.window(), metric_settings.slot(label), &retired)
        });
        let global = Slot::new(store.window(), None, &retired);
        let metrics = Metrics::new(&metric_settings.scope, &metric_settings.scope);
        Shared {
            store,
            classifier,
            limits: RwLock::new((settings.limits, settings.global)),
            current: SeqLimits::new(&settings.limits, settings.global.as_ref()),
            partitions,
            global,
            max_wait: settings.max_wait,
            max_waiters: settings.max_waiters,
            waiting: AtomicUsize::new(0),
            retired,
            next_id: AtomicU64::new(0),
            reported_partitions: AtomicUsize::new(0),
            charging: settings.charging,
            corrects: settings.charging.iter().any(|c| c.corrects()),
            learn: settings.learn,
            warned: Box::new(Mutex::new([None; 3])),
            metrics,
            metric_settings,
        }
    }

    fn slot_ref(&self, key: Option<&PartitionKey>, now: Instant) -> SlotRef<St::Window> {
        let Some(key) = key else {
            return SlotRef::Unkeyed;
        };
        let (slot, _) = self.partitions.get(Some(key), now, || {
            Slot::new(
                self.store.window(),
                self.metric_settings.slot(SlotLabel::Key(key)),
                &self.retired,
            )
        });
        let live = self.partitions.len();
        if self.reported_partitions.load(Ordering::Relaxed) != live {
            self.reported_partitions.store(live, Ordering::Relaxed);
            self.metrics.partitions.set(live as f64);
        }
        SlotRef::Keyed(slot)
    }

    /// The handles a slot's events count on: its own with a partition
    /// label, else the limiter's.
    #[inline]
    fn metrics<'a>(&'a self, slot: &'a Slot<St::Window>) -> &'a Metrics {
        // Without partition labels no slot has handles of its own: the slot
        // (its cold tail) is not even looked at.
        if self.metric_settings.partition_labels.is_none() {
            return &self.metrics;
        }
        slot.metrics.as_deref().unwrap_or(&self.metrics)
    }

    fn resolve<'a>(&'a self, slot: &'a SlotRef<St::Window>) -> &'a Slot<St::Window> {
        match slot {
            SlotRef::Unkeyed => self.partitions.unkeyed(),
            SlotRef::Keyed(slot) => slot,
        }
    }

    /// The partition's limits at `now` (what it learned applied) for
    /// `demand`, and the global ones.
    fn limits_of(
        &self,
        state: &SlotState<St::Window>,
        demand: Option<&Demand>,
        now: Instant,
    ) -> (Limits, Option<Limits>) {
        let (limits, global) = self.current.load();
        match state.learned() {
            Some(learned) => (learned.apply(self.learn, &limits, demand, now), global),
            None => (limits, global),
        }
    }

    /// Where `demand` stands in the partition and the global budget. Kept
    /// out of the admission's fast path.
    #[inline(never)]
    fn verdict(&self, state: &mut SlotState<St::Window>, demand: &Demand, now: Instant) -> Verdict {
        let (limits, global) = self.limits_of(state, Some(demand), now);
        let verdict = self.store.check(&mut state.window, demand, &limits, now);
        match (global, verdict) {
            (_, Verdict::Never { .. }) | (None, _) => verdict,
            (Some(global), _) => {
                let mut g = self.global.state.lock();
                verdict.and(self.store.check(&mut g.window, demand, &global, now))
            }
        }
    }

    /// Admits `demand` if both scopes have room, atomically.
    ///
    /// Reads the limits without a lock from the limiter's one copy (a
    /// sequence lock), so a keyed admission touches no per-partition copy.
    /// A partition with a queue or learned limits ([`Cold`]) takes
    /// [`attempt_cold`](Self::attempt_cold).
    fn attempt(
        &self,
        state: &mut SlotState<St::Window>,
        demand: &Demand,
        now: Instant,
    ) -> Attempt<St::Ticket> {
        if state.cold.is_some() {
            self.attempt_cold(state, demand, now)
        } else {
            self.attempt_plain(state, demand, now)
        }
    }

    /// [`attempt`](Self::attempt) for a partition without a queue or
    /// learned limits.
    #[inline]
    fn attempt_plain(
        &self,
        state: &mut SlotState<St::Window>,
        demand: &Demand,
        now: Instant,
    ) -> Attempt<St::Ticket> {
        match self.current.partition_only() {
            Some(limits) => match self
                .store
                .try_reserve(&mut state.window, demand, &limits, now)
            {
                Ok(part) => Attempt::Admitted { part, global: None },
                Err(verdict) => Attempt::refused(verdict, now),
            },
            None => self.attempt_global(state, demand, now),
        }
    }

    /// [`attempt`](Self::attempt) for a partition with a queue or learned
    /// limits.
    #[inline(never)]
    fn attempt_cold(
        &self,
        state: &mut SlotState<St::Window>,
        demand: &Demand,
        now: Instant,
    ) -> Attempt<St::Ticket> {
        match state.learned() {
            Some(_) => {
                let limits = self.limits_of(state, Some(demand), now);
                self.attempt_with(state, demand, limits, now)
            }
            None => self.attempt_global(state, demand, now),
        }
    }

    /// A new request in a partition with a queue or learned limits: an
    /// attempt if nobody waits, else where it stands (it queues).
    #[inline(never)]
    fn enter_cold(
        &self,
        state: &mut SlotState<St::Window>,
        demand: &Demand,
        now: Instant,
    ) -> Result<Attempt<St::Ticket>, Verdict> {
        if state.queue_is_empty() {
            Ok(self.attempt_cold(state, demand, now))
        } else {
            Err(self.verdict(state, demand, now))
        }
    }

    /// [`attempt`](Self::attempt) with global limits set (or a limit
    /// changing meanwhile).
    #[inline(never)]
    fn attempt_global(
        &self,
        state: &mut SlotState<St::Window>,
        demand: &Demand,
        now: Instant,
    ) -> Attempt<St::Ticket> {
        let limits = self.current.load();
        self.attempt_with(state, demand, limits, now)
    }

    /// Admits `demand` under these partition and global limits.
    fn attempt_with(
        &self,
        state: &mut SlotState<St::Window>,
        demand: &Demand,
        (limits, global): (Limits, Option<Limits>),
        now: Instant,
    ) -> Attempt<St::Ticket> {
        let Some(global) = global else {
            return match self
                .store
                .try_reserve(&mut state.window, demand, &limits, now)
            {
                Ok(part) => Attempt::Admitted { part, global: None },
                Err(verdict) => Attempt::refused(verdict, now),
            };
        };
        // Lock order: partition (held by the caller), then global.
        let mut g = self.global.state.lock();
        self.attempt_both(
            &mut state.window,
            &mut g.window,
            demand,
            (&limits, &global),
            now,
        )
    }

    /// Admits `demand` into a partition's window and the global one, in both
    /// or in neither. A demand that can never fit the partition fails
    /// without looking at the global window.
    fn attempt_both(
        &self,
        part: &mut St::Window,
        global: &mut St::Window,
        demand: &Demand,
        (part_limits, global_limits): (&Limits, &Limits),
        now: Instant,
    ) -> Attempt<St::Ticket> {
        let verdict = self.store.check(part, demand, part_limits, now);
        if let Verdict::Never { amount, limit } = verdict {
            return Attempt::Never { amount, limit };
        }
        match verdict.and(self.store.check(global, demand, global_limits, now)) {
            Verdict::Fits => Attempt::Admitted {
                part: self.store.reserve(part, demand, part_limits, now),
                global: Some(self.store.reserve(global, demand, global_limits, now)),
            },
            refused => Attempt::refused(refused, now),
        }
    }

    #[inline]
    fn admitted(
        &self,
        slot: SlotRef<St::Window>,
        part: St::Ticket,
        global: Option<St::Ticket>,
        demand: &Demand,
        waited: Duration,
    ) -> Reservation<St> {
        let metrics = self.metrics(self.resolve(&slot));
        metrics.admitted.increment(1);
        metrics.reserved.increment(demand.tokens);
        metrics.wait.record_duration(waited);
        Reservation {
            slot,
            part,
            global,
            estimate: demand.tokens,
        }
    }

    fn too_large(&self, metrics: &Metrics, amount: u64, limit: u64) -> BoxError {
        metrics.too_large.increment(1);
        tracing::debug!(tokens = amount, limit, "rate: request can never fit");
        Box::new(Error::RequestTooLarge {
            tokens: amount,
            limit,
        })
    }

    /// The delay a refusal carries: when the windows will have room for
    /// `demand`, never zero. A verdict that the demand fits now (the request
    /// was refused for its place in line, or because the waiter list was
    /// full) gives the time the windows need to free room for one such
    /// demand at the limits' own pace; `None` only for a demand that can
    /// never fit.
    fn retry_hint(&self, verdict: Verdict, demand: &Demand, now: Instant) -> Option<Duration> {
        let delay = match verdict {
            Verdict::Never { .. } => return None,
            Verdict::NotUntil(at) => at.saturating_duration_since(now),
            Verdict::Fits => self.current.load().0.pace(demand),
        };
        Some(delay.max(MIN_HINT))
    }

    /// [`retry_hint`](Self::retry_hint) at the pace of the partition's own
    /// limits (what it learned applied).
    fn retry_hint_in(
        &self,
        state: &SlotState<St::Window>,
        verdict: Verdict,
        demand: &Demand,
        now: Instant,
    ) -> Option<Duration> {
        match verdict {
            Verdict::Fits => {
                let pace = self.limits_of(state, Some(demand), now).0.pace(demand);
                Some(pace.max(MIN_HINT))
            }
            verdict => self.retry_hint(verdict, demand, now),
        }
    }

    /// Refuses a request the windows cannot admit before `expiry`, with
    /// the delay until they can.
    fn refuse(
        &self,
        metrics: &Metrics,
        verdict: Verdict,
        demand: &Demand,
        deadline_bound: bool,
        now: Instant,
    ) -> BoxError {
        if deadline_bound {
            metrics.deadline.increment(1);
        } else {
            metrics.wait_timeout.increment(1);
        }
        tracing::debug!(
            deadline_bound,
            "rate: no room before the request stops waiting"
        );
        Box::new(Error::RateLimited {
            retry_after: self.retry_hint(verdict, demand, now),
        })
    }

    /// Admits a new request at once, fails it at once, or queues it.
    pub(crate) fn enter(
        self: &Arc<Self>,
        key: Option<&PartitionKey>,
        demand: &Demand,
        priority: Priority,
        arrival: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Enter<C, St> {
        let now = clock::now();
        let slot_ref = self.slot_ref(key, now);
        let slot = self.resolve(&slot_ref);
        let metrics = self.metrics(slot);
        let mut state = slot.state.lock();
        if deadline.is_some_and(|d| d <= now) {
            metrics.deadline.increment(1);
            return Enter::Failed(Box::new(Error::DeadlineExceeded));
        }
        let verdict = 'verdict: {
            let attempt = if state.cold.is_none() {
                // No out-of-line state (no queue, nothing learned): the
                // fast path.
                self.attempt_plain(&mut state, demand, now)
            } else {
                match self.enter_cold(&mut state, demand, now) {
                    Ok(attempt) => attempt,
                    // Others wait already: queue behind (or ahead of) them
                    // by priority, but a request that can never fit fails
                    // now.
                    Err(Verdict::Never { amount, limit }) => {
                        return Enter::Failed(self.too_large(metrics, amount, limit))
                    }
                    Err(verdict) => break 'verdict verdict,
                }
            };
            match attempt {
                Attempt::Admitted { part, global } => {
                    state.admitted += 1;
                    drop(state);
                    return Enter::Admitted(self.admitted(
                        slot_ref,
                        part,
                        global,
                        demand,
                        Duration::ZERO,
                    ));
                }
                Attempt::Never { amount, limit } => {
                    return Enter::Failed(self.too_large(metrics, amount, limit))
                }
                Attempt::Wait(at) => Verdict::NotUntil(at),
            }
        };
        let by_wait = now + self.max_wait;
        let (expiry, deadline_bound) = match deadline {
            Some(d) if d < by_wait => (d, true),
            _ => (by_wait, false),
        };
        // Known in advance: by what the windows hold now (a cooldown, the
        // instant enough entries expire), no room comes before the request
        // stops waiting, so waiting would only hold its place, and whatever
        // holds it, for nothing. Only a refund (usage below an estimate)
        // could come sooner; the delay tells the caller when to come back.
        let late = matches!(verdict, Verdict::NotUntil(at) if at > expiry);
        if expiry <= now || late {
            return Enter::Failed(self.refuse(metrics, verdict, demand, deadline_bound, now));
        }
        let admitted_waiter = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_waiters).then_some(n + 1)
            })
            .is_ok();
        if !admitted_waiter {
            metrics.waiters_full.increment(1);
            tracing::debug!("rate: waiter limit reached, request shed");
            return Enter::Failed(Box::new(Error::RateLimited {
                retry_after: self.retry_hint_in(&state, verdict, demand, now),
            }));
        }
        let key = WaitKey {
            priority: Reverse(priority),
            arrival: arrival.unwrap_or(now).min(now),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        state.insert(key, expiry);
        // The head's timer covers the earliest expiry it saw: a newcomer
        // behind it that expires first must make it re-arm.
        if !state.is_head(&key) && state.first_expiry().map(|e| e.1) == Some(key) {
            state.wake_head();
        }
        drop(state);
        Enter::Wait(WaitGuard {
            shared: self.clone(),
            slot: slot_ref,
            key,
            expiry,
            deadline_bound,
            since: now,
            done: false,
        })
    }

    /// At the response's headers: takes the server's feedback, and releases
    /// the reservation if a layer further in refused the request (it never
    /// reached the upstream). Returns the reservation still to be
    /// [settled](Self::settle) when the response is done.
    ///
    /// The server's rate-limit state teaches limits, checks the charging
    /// rules and clamps the window ([`take_report`](Self::take_report)); a
    /// `429` cools the partition down and teaches a limit
    /// ([`learn_from_429`](Self::learn_from_429)).
    pub(crate) fn answered(
        &self,
        reservation: Reservation<St>,
        class: &Classification,
    ) -> Option<Reservation<St>> {
        if class.rate_limits.is_none()
            && !matches!(
                class.outcome,
                Outcome::Rejected | Outcome::RateLimited { .. }
            )
        {
            // Nothing to take now: settled when the response is done.
            return Some(reservation);
        }
        let release = class.outcome == Outcome::Rejected;
        let refused = class.outcome
            == Outcome::RateLimited {
                quota_exhausted: false,
            };
        let cooldown = match (class.outcome, class.retry_after) {
            (Outcome::RateLimited { .. }, Some(delay)) if delay > Duration::ZERO => Some(delay),
            _ => None,
        };
        let now = Instant::now();
        {
            let resolved = self.resolve(&reservation.slot);
            let metrics = self.metrics(resolved);
            let mut state = resolved.state.lock();
            let mut wake = false;
            let mut learned = state.cold.as_mut().is_some_and(|c| c.learning.lapse(now));
            if release {
                self.give_back(
                    &mut state.window,
                    &reservation.part,
                    reservation.global.as_ref(),
                    now,
                );
                metrics.refunded.increment(reservation.estimate);
                wake = true;
            }
            if let Some(delay) = cooldown {
                // A server's delay is capped (a header can say anything); past
                // the cap every waiter times out long before anyway.
                let until = now + delay.min(crate::error::LONGEST_SETTING);
                self.store.cool_down(&mut state.window, until);
                metrics.cooldowns.increment(1);
                tracing::debug!(?delay, "rate: partition cooling down after a 429");
            }
            if let Some(server) = &class.rate_limits {
                learned |= self.take_report(&mut state, &reservation.part, server, metrics, now);
            }
            if refused {
                learned |= self.learn_from_429(
                    &mut state,
                    &reservation.part,
                    class,
                    reservation.estimate,
                    now,
                );
            }
            if learned {
                self.publish(&state, metrics, now);
                // A limit raised lets the head in sooner; a lower one moves
                // its wake-up later (it looks again when woken).
                wake = true;
            }
            state.drop_if_empty();
            if wake {
                state.wake_head();
            }
        }
        (!release).then_some(reservation)
    }

    /// When the response is done: corrects the reservation, at its original
    /// timestamp, to what the provider reported it spent (each token budget
    /// by its [`Charging`] rule, [`charged`](Self::charged)), or to at least
    /// what it may have spent when it reported nothing.
    pub(crate) fn settle(&self, reservation: Reservation<St>, spent: Spent) {
        let resolved = self.resolve(&reservation.slot);
        let metrics = self.metrics(resolved);
        let estimate = reservation.estimate;
        let actual = match spent {
            // Usage matters only where a budget's rule corrects it.
            Spent::Reported(_) if !self.corrects => return,
            Spent::Reported(usage) => self.charged(&usage, estimate, metrics),
            // Never refund what may have been spent: the estimate stands
            // unless more was seen.
            Spent::AtLeast(tokens) if tokens <= estimate => return,
            Spent::AtLeast(tokens) => Demand::estimate(tokens.min(MAX_USAGE_TOKENS)),
        };
        if actual == Demand::estimate(estimate) {
            return;
        }
        let now = Instant::now();
        let mut state = resolved.state.lock();
        self.store
            .reconcile(&mut state.window, &reservation.part, &actual, now);
        if let Some(ticket) = &reservation.global {
            let mut g = self.global.state.lock();
            self.store.reconcile(&mut g.window, ticket, &actual, now);
        }
        if actual.tokens < estimate {
            metrics.refunded.increment(estimate - actual.tokens);
        } else {
            metrics.reserved.increment(actual.tokens - estimate);
        }
        if let Some(tally) = state.cold.as_mut().and_then(|c| c.learning.tally()) {
            let refund = |k: usize| estimate.saturating_sub(actual.amount(LEARNED[k + 1]));
            tally.add(now, [refund(0), refund(1), refund(2)]);
        }
        // Input/output budgets were charged the whole estimate: usage
        // always gives some back, so let the head look again.
        state.wake_head();
    }

    /// What a call is charged once its `usage` is known: the usage in each
    /// token budget whose rule corrects it, the `estimate` in those charged
    /// at admission. Usage above [`MAX_USAGE_TOKENS`](super::MAX_USAGE_TOKENS)
    /// is capped (and counted).
    fn charged(&self, usage: &Usage, estimate: u64, metrics: &Metrics) -> Demand {
        let used = Demand::from_usage(usage);
        if Demand::caps_usage(usage) {
            metrics.usage_capped.increment(1);
            tracing::warn!(?usage, "rate: usage above MAX_USAGE_TOKENS, capped");
        }
        let pick = |k: usize, used: u64| {
            if self.charging[k].corrects() {
                used
            } else {
                estimate
            }
        };
        Demand {
            requests: 1,
            tokens: pick(0, used.tokens),
            input_tokens: pick(1, used.input_tokens),
            output_tokens: pick(2, used.output_tokens),
        }
    }

    /// Takes the server's rate-limit state for the reservation behind
    /// `part`: learns the limits it reports, checks each token budget's
    /// charging rule against its count, then clamps the window to what it
    /// says remains. Whether a learned limit changed.
    fn take_report(
        &self,
        state: &mut SlotState<St::Window>,
        part: &St::Ticket,
        server: &RateLimitState,
        metrics: &Metrics,
        now: Instant,
    ) -> bool {
        let configured = self.current.load().0;
        let learned = self.learn != LearnLimits::Off && {
            match state.cold.as_mut() {
                Some(cold) => cold.learning.report(self.learn, &configured, server),
                None => {
                    // Made only when something is learned: most providers
                    // report the limits configured.
                    let mut learning = Learning::default();
                    let changed = learning.report(self.learn, &configured, server);
                    if changed {
                        *state.learning() = learning;
                    }
                    changed
                }
            }
        };
        if learned {
            tracing::debug!(?server, "rate: partition limits learned from the server");
        }
        let limits = self.limits_of(state, None, now).0;
        self.check_charging(state, part, server, &limits, metrics, now);
        self.store
            .clamp(&mut state.window, part, server, &limits, now);
        learned
    }

    /// Compares the server's count of each token budget with the window's
    /// at the same reservation, and reports a charging rule the counts say
    /// is wrong (see [`learn::mismatch`]).
    fn check_charging(
        &self,
        state: &mut SlotState<St::Window>,
        part: &St::Ticket,
        server: &RateLimitState,
        limits: &Limits,
        metrics: &Metrics,
        now: Instant,
    ) {
        let states = [&server.tokens, &server.input_tokens, &server.output_tokens];
        for (k, s) in states.into_iter().enumerate() {
            let budget = LEARNED[k + 1];
            let Some(remaining) = s.remaining else {
                continue;
            };
            let (Some(local), Some(limit)) = (
                self.store.held(part, budget),
                s.limit.or(limits.get(budget)),
            ) else {
                continue;
            };
            let provider = limit.saturating_sub(remaining);
            let charging = self.charging[k];
            let refunds = if charging.corrects() {
                let span = limits.span(Budget::Tokens);
                let more = provider.saturating_sub(local) > learn::tolerance(limit);
                match state.cold.as_mut().and_then(|c| c.learning.tally()) {
                    Some(tally) => Some(tally.sum(now, k)),
                    None => {
                        if more {
                            // From now on the refunds tell a charging rule
                            // from another client on the key.
                            state.learning().refunds(now, span);
                        }
                        None
                    }
                }
            } else {
                None
            };
            if learn::mismatch(charging, local, provider, limit, refunds) {
                metrics.learn.charging_mismatch[k].increment(1);
                self.warn_charging(k, charging, local, provider, limits, now);
            }
        }
    }

    /// Logs a charging mismatch of token budget `k`, at most once a window
    /// per limiter and budget.
    fn warn_charging(
        &self,
        k: usize,
        charging: Charging,
        local: u64,
        provider: u64,
        limits: &Limits,
        now: Instant,
    ) {
        let span = limits.span(Budget::Tokens);
        {
            let mut warned = self.warned.lock();
            if warned[k].is_some_and(|at| now < at + span) {
                return;
            }
            warned[k] = Some(now);
        }
        let budget = LEARNED[k + 1];
        match charging {
            Charging::Admission => tracing::warn!(
                ?budget,
                window = local,
                provider,
                "rate: the provider counts less than the window charged: it corrects to \
                 actual usage (set its charging to reconcile or actual), or the estimates \
                 run above its own"
            ),
            _ => tracing::warn!(
                ?budget,
                window = local,
                provider,
                "rate: the provider counts the estimates the window refunded: it charges \
                 at admission (set its charging to admission)"
            ),
        }
    }

    /// A `429` the window did not expect (it admitted the request): caps
    /// the budget the server says is spent, or else the one the window
    /// found fullest, at what the window held before the request (see
    /// [`Learning::refuse`]). A budget whose limit the server reports with
    /// the `429` is learned from the report instead. Whether a learned
    /// limit changed.
    fn learn_from_429(
        &self,
        state: &mut SlotState<St::Window>,
        part: &St::Ticket,
        class: &Classification,
        estimate: u64,
        now: Instant,
    ) -> bool {
        if self.learn == LearnLimits::Off {
            return false;
        }
        let limits = self.limits_of(state, None, now).0;
        let server = class.rate_limits.unwrap_or_default();
        let states = [
            &server.requests,
            &server.tokens,
            &server.input_tokens,
            &server.output_tokens,
        ];
        let demand = Demand::estimate(estimate);
        let counted = |i: usize| {
            let budget = LEARNED[i];
            Some((i, self.store.held(part, budget)?, limits.get(budget)?))
        };
        let spent = (0..4).find(|&i| states[i].remaining == Some(0));
        let pick = match spent {
            // The report teaches that one.
            Some(i) if states[i].limit.is_some() => return false,
            Some(i) => counted(i),
            // The fullest, by what it held over its limit.
            None => (0..4).filter_map(counted).max_by(|a, b| {
                (u128::from(a.1) * u128::from(b.2)).cmp(&(u128::from(b.1) * u128::from(a.2)))
            }),
        };
        let Some((i, held, limit)) = pick else {
            return false;
        };
        let held_before = held.saturating_sub(demand.amount(LEARNED[i]));
        let hold = limits.span(Budget::Requests) * HOLD_WINDOWS;
        let changed = match state.cold.as_mut() {
            Some(cold) => cold.learning.refuse(i, held_before, limit, now, hold),
            None => {
                let mut learning = Learning::default();
                let changed = learning.refuse(i, held_before, limit, now, hold);
                if changed {
                    *state.learning() = learning;
                }
                changed
            }
        };
        if changed {
            tracing::debug!(
                budget = ?LEARNED[i],
                held_before,
                limit,
                "rate: a 429 the window did not expect: the partition's limit lowered"
            );
        }
        changed
    }

    /// Sets the learned-limit gauges to the partition's limits in force.
    fn publish(&self, state: &SlotState<St::Window>, metrics: &Metrics, now: Instant) {
        let limits = self.limits_of(state, None, now).0;
        for (i, budget) in LEARNED.into_iter().enumerate() {
            if let Some(limit) = limits.get(budget) {
                metrics.learn.learned[i].set(limit as f64);
            }
        }
    }

    /// Releases a reservation's tickets (the partition's lock held).
    fn give_back(
        &self,
        window: &mut St::Window,
        part: &St::Ticket,
        global: Option<&St::Ticket>,
        now: Instant,
    ) {
        self.store.release(window, part, now);
        if let Some(ticket) = global {
            let mut g = self.global.state.lock();
            self.store.release(&mut g.window, ticket, now);
        }
    }

    /// Gives a reservation back whole: the request never left this process
    /// (dropped between admission and dispatch). Wakes the partition's head,
    /// which may fit now.
    pub(crate) fn release(&self, reservation: Reservation<St>) {
        let now = Instant::now();
        let Reservation {
            slot,
            part,
            global,
            estimate,
        } = reservation;
        let resolved = self.resolve(&slot);
        let mut state = resolved.state.lock();
        self.give_back(&mut state.window, &part, global.as_ref(), now);
        // Never sent: not an admission after all.
        state.admitted = state.admitted.saturating_sub(1);
        self.metrics(resolved).refunded.increment(estimate);
        state.wake_head();
    }

    /// Moves a reservation made at `admitted` to `now`, the instant its
    /// request is sent: the entry then leaves the window when the server's
    /// does. The reservation is given back and made again at `now` under
    /// the same locks, so what the windows hold in between is unchanged
    /// unless they changed meanwhile: if the request no longer fits (it
    /// waited longer than a burst span or the window, or a cooldown, a
    /// server clamp or a lowered limit came), it is refused with the delay
    /// until it would, and its place is given to the partition's head.
    pub(crate) fn redate(
        &self,
        reservation: Reservation<St>,
        admitted: Instant,
        now: Instant,
    ) -> Result<Reservation<St>, BoxError> {
        if now <= admitted {
            // Sent in the same chain of calls that admitted it: the entry is
            // already dated right (the common case, a permit free at once).
            return Ok(reservation);
        }
        let Reservation {
            slot,
            part,
            global,
            estimate,
        } = reservation;
        let demand = Demand::estimate(estimate);
        let resolved = self.resolve(&slot);
        let mut state = resolved.state.lock();
        self.give_back(&mut state.window, &part, global.as_ref(), now);
        let attempt = self.attempt(&mut state, &demand, now);
        if !matches!(attempt, Attempt::Admitted { .. }) {
            // Not sent: not an admission after all.
            state.admitted = state.admitted.saturating_sub(1);
            state.wake_head();
        }
        drop(state);
        match attempt {
            Attempt::Admitted { part, global } => Ok(Reservation {
                slot,
                part,
                global,
                estimate,
            }),
            Attempt::Wait(at) => {
                let metrics = self.metrics(self.resolve(&slot));
                metrics.refunded.increment(estimate);
                metrics.changed.increment(1);
                tracing::debug!("rate: the windows changed while the request queued");
                Err(Box::new(Error::RateLimited {
                    retry_after: self.retry_hint(Verdict::NotUntil(at), &demand, now),
                }))
            }
            Attempt::Never { amount, limit } => {
                let metrics = self.metrics(self.resolve(&slot));
                metrics.refunded.increment(estimate);
                Err(self.too_large(metrics, amount, limit))
            }
        }
    }

    /// Requests admitted so far: the live slots' counts plus those of
    /// evicted ones. (A slot evicted while this runs may be missed or
    /// counted twice.)
    ///
    /// And how many partitions have a learned limit in force.
    fn totals(&self) -> (u64, usize) {
        let mut admitted = self.retired.load(Ordering::Relaxed);
        let mut learned = 0;
        let now = Instant::now();
        self.partitions.for_each(|_, slot| {
            let state = slot.state.lock();
            admitted += state.admitted;
            learned += usize::from(state.learned().is_some_and(|l| l.in_force_at(now)));
        });
        (admitted, learned)
    }

    fn wake_all_heads(&self) {
        self.partitions
            .for_each(|_, slot| slot.state.lock().wake_head());
    }
}

/// A place in a partition's queue. Dropping it leaves the queue (and wakes
/// the next waiter if this one was at the head); it holds no reservation.
pub(crate) struct WaitGuard<C, St: RateStore> {
    shared: Arc<Shared<C, St>>,
    slot: SlotRef<St::Window>,
    key: WaitKey,
    expiry: Instant,
    deadline_bound: bool,
    since: Instant,
    done: bool,
}

impl<C, St: RateStore> WaitGuard<C, St> {
    /// The limiter this waiter queues in.
    pub(crate) fn shared(&self) -> &Arc<Shared<C, St>> {
        &self.shared
    }

    fn expired(
        &self,
        state: &mut SlotState<St::Window>,
        demand: &Demand,
        now: Instant,
    ) -> BoxError {
        let shared = &self.shared;
        let metrics = shared.metrics(shared.resolve(&self.slot));
        if self.deadline_bound {
            metrics.deadline.increment(1);
            tracing::debug!("rate: deadline passed while waiting");
            Box::new(Error::DeadlineExceeded)
        } else {
            metrics.wait_timeout.increment(1);
            tracing::debug!("rate: no room within max_wait");
            let verdict = shared.verdict(state, demand, now);
            Box::new(Error::RateLimited {
                retry_after: shared.retry_hint_in(state, verdict, demand, now),
            })
        }
    }

    /// One look at the queue: admitted, failed, or park (the head with a
    /// time to wake at).
    pub(crate) fn poll_wait(&mut self, demand: &Demand, waker: &Waker) -> WaitPoll<St> {
        let now = Instant::now();
        let shared = self.shared.clone();
        let slot = self.slot.clone();
        let mut state = shared.resolve(&slot).state.lock();
        if self.done {
            return WaitPoll::Park(None);
        }
        if !state.contains(&self.key) {
            // The head removed it (and counted it out): its time was up.
            self.done = true;
            return WaitPoll::Failed(self.expired(&mut state, demand, now));
        }
        let is_head = state.is_head(&self.key);
        if !is_head {
            if self.expiry <= now {
                state.remove(&self.key);
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                self.done = true;
                return WaitPoll::Failed(self.expired(&mut state, demand, now));
            }
            state.set_waker(&self.key, waker);
            return WaitPoll::Park(None);
        }
        // The head: it keeps the queue's one timer, so it also times out
        // the others. It is admitted if it fits at its expiry instant.
        let expired = state.drain_expired(now, &self.key);
        if expired > 0 {
            shared.waiting.fetch_sub(expired, Ordering::AcqRel);
        }
        let attempt = shared.attempt(&mut state, demand, now);
        if let Attempt::Wait(at) = attempt {
            if self.expiry <= now || at > self.expiry {
                // Out of time, or sure to be (a cooldown or a lowered limit
                // since it queued): it leaves now, with the exact delay.
                state.remove(&self.key);
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                self.done = true;
                state.wake_head();
                let error = if self.expiry <= now {
                    self.expired(&mut state, demand, now)
                } else {
                    let metrics = shared.metrics(shared.resolve(&slot));
                    let verdict = Verdict::NotUntil(at);
                    shared.refuse(metrics, verdict, demand, self.deadline_bound, now)
                };
                return WaitPoll::Failed(error);
            }
        }
        match attempt {
            Attempt::Admitted { part, global } => {
                state.admitted += 1;
                state.remove(&self.key);
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                self.done = true;
                state.wake_head();
                drop(state);
                let reservation = shared.admitted(slot, part, global, demand, now - self.since);
                WaitPoll::Admitted(reservation, now)
            }
            Attempt::Never { amount, limit } => {
                // Only possible after the limits were lowered at runtime.
                state.remove(&self.key);
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                self.done = true;
                state.wake_head();
                WaitPoll::Failed(shared.too_large(
                    shared.metrics(shared.resolve(&slot)),
                    amount,
                    limit,
                ))
            }
            Attempt::Wait(at) => {
                state.set_waker(&self.key, waker);
                let first_expiry = state.first_expiry().map_or(at, |(e, _)| e);
                WaitPoll::Park(Some(at.min(first_expiry)))
            }
        }
    }
}

impl<C, St: RateStore> Drop for WaitGuard<C, St> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped while waiting: leave the queue. Nothing was reserved.
        let mut state = self.shared.resolve(&self.slot).state.lock();
        let was_head = state.is_head(&self.key);
        // If it is gone, the head removed it as expired and counted it out.
        if state.remove(&self.key) {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            if was_head {
                state.wake_head();
            }
        }
    }
}

impl<C, St: RateStore> fmt::Debug for WaitGuard<C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGuard")
            .field("key", &self.key)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl<St: RateStore> fmt::Debug for Reservation<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("estimate", &self.estimate)
            .finish_non_exhaustive()
    }
}

impl<C, St: RateStore> fmt::Debug for Shared<C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("limits", &*self.limits.read())
            .field("partitions", &self.partitions)
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<C, St> Control for Shared<C, St>
where
    C: Send + Sync + 'static,
    St: RateStore,
{
    fn limits(&self) -> Limits {
        self.limits.read().0
    }

    fn global_limits(&self) -> Option<Limits> {
        self.limits.read().1
    }

    fn set_limit(
        &self,
        global: bool,
        budget: Budget,
        value: Option<u64>,
    ) -> Result<(), ConfigError> {
        if global {
            let mut current = self.limits.write();
            let mut next = current.1.unwrap_or_else(|| current.0.cleared());
            next.set(budget, value);
            next.validate(true)?;
            current.1 = (!next.is_empty()).then_some(next);
            self.current.store(&current.0, current.1.as_ref());
        } else {
            let mut current = self.limits.write();
            let mut next = current.0;
            next.set(budget, value);
            next.validate(false)?;
            current.0 = next;
            self.current.store(&current.0, current.1.as_ref());
        }
        tracing::info!(?budget, ?value, global, "rate: limit changed");
        // Raised limits may let waiters in now; lowered ones move their
        // wake-up later (the head recomputes when woken).
        self.wake_all_heads();
        Ok(())
    }

    fn stats(&self) -> RateStats {
        let (admitted, learned) = self.totals();
        RateStats {
            admitted,
            waiting: self.waiting.load(Ordering::Relaxed),
            partitions: self.partitions.len(),
            learned,
        }
    }

    fn charging(&self) -> [Charging; 3] {
        self.charging
    }

    fn learn_limits(&self) -> LearnLimits {
        self.learn
    }

    fn learned(&self, key: Option<&PartitionKey>) -> Option<LearnedLimits> {
        let slot = match key {
            None => self.partitions.unkeyed().clone(),
            Some(key) => self.partitions.peek(key)?,
        };
        let now = Instant::now();
        let state = slot.state.lock();
        let learning = state.learned().filter(|l| l.in_force_at(now))?;
        let limits = self.limits_of(&state, None, now).0;
        Some(learning.view(limits, now))
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn evict_idle(&self) -> usize {
        let evicted = self.partitions.evict_idle(Instant::now());
        let live = self.partitions.len();
        self.reported_partitions.store(live, Ordering::Relaxed);
        self.metrics.partitions.set(live as f64);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::store::MemoryWindow;

    /// What a keyed admission touches of its slot: the `Arc`'s two counts,
    /// then the lock, the waiters' pointer, `admitted` and the memory
    /// window's head, 128 bytes from the start of the allocation.
    #[test]
    fn a_slot_keeps_its_hot_state_in_the_first_128_bytes() {
        let slot = Slot::new(MemoryWindow::default(), None, &Arc::new(AtomicU64::new(0)));
        let base = &slot as *const Slot<MemoryWindow> as usize;
        let state = slot.state.lock();
        let window = &state.window as *const MemoryWindow as usize;
        let hot_end = window - base + MemoryWindow::HOT_BYTES;
        println!(
            "slot {} bytes, window at {}, hot end {}",
            std::mem::size_of::<Slot<MemoryWindow>>(),
            window - base,
            hot_end
        );
        assert!(16 + hot_end <= 128, "hot state ends at {hot_end}");
        assert!(std::mem::size_of::<Slot<MemoryWindow>>() <= 256);
    }

    /// The box a partition gets for its first waiter or its first learned
    /// limit: the queue and the learned limits, the charging check's refunds
    /// boxed apart (few partitions keep them).
    #[test]
    fn the_out_of_line_box_stays_small() {
        let size = std::mem::size_of::<Cold>();
        println!("cold box {size} bytes");
        assert!(size <= 144, "{size}");
    }
}
