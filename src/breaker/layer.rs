use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::handle::CircuitHandle;
use super::service::CircuitBreaker;
use super::shared::{OnChange, Registry, Shared};
use super::state::{Config, WindowKind};
use super::StateChange;
use crate::classify::DefaultClassifier;
use crate::error::ConfigError;
use crate::telemetry::{self, PartitionLabels, Scope as MetricScope};

/// Applies a circuit breaker to a service. See the [module docs](super).
///
/// The breakers live in the layer: every service this layer (or a clone of
/// it) wraps shares them, so one upstream has one breaker however many
/// services call it. Build a second layer for an independent breaker.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A builder with the default settings (see [`CircuitBreakerBuilder`]).
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A handle on this layer's breakers: read their state, force them open
    /// or closed, reset them.
    pub fn handle(&self) -> CircuitHandle {
        CircuitHandle::new(self.registry.clone())
    }
}

impl<C: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.shared.cfg)
            .field("partitioned", &self.registry.is_keyed())
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.registry.clone(), self.classifier.clone())
    }
}

/// Settings of a [`CircuitBreakerLayer`].
///
/// Trip conditions (any that is set opens the breaker):
///
/// - [`consecutive_failures(n)`](Self::consecutive_failures): `n` failures in
///   a row;
/// - [`failure_rate(r)`](Self::failure_rate): at least a fraction `r` of the
///   calls in the window failed, once the window holds
///   [`minimum_calls`](Self::minimum_calls);
/// - [`slow_call(d, r)`](Self::slow_call): at least a fraction `r` of the
///   calls in the window took longer than `d`, same minimum.
///
/// When none is set, `failure_rate(0.5)` applies. Defaults: a count window of
/// the last 100 calls, 20 minimum calls (never more than the count window),
/// 30 s open, no backoff, 3 half-open probes, a probe unanswered after 120 s
/// counted as failed, no partitions.
pub struct CircuitBreakerBuilder<C = DefaultClassifier> {
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    count_window: Option<u32>,
    time_window: Option<Duration>,
    minimum_calls: u32,
    slow_call: Option<(Duration, f64)>,
    open_duration: Duration,
    backoff: Option<(f64, Duration)>,
    backoff_reset_after: Option<Duration>,
    half_open_probes: u32,
    half_open_max_wait: Duration,
    partitions: Option<usize>,
    partition_label: Option<usize>,
    metrics_name: Option<&'static str>,
    on_change: Option<OnChange>,
    classifier: C,
}

impl<C: fmt::Debug> fmt::Debug for CircuitBreakerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("consecutive_failures", &self.consecutive_failures)
            .field("failure_rate", &self.failure_rate)
            .field("count_window", &self.count_window)
            .field("time_window", &self.time_window)
            .field("minimum_calls", &self.minimum_calls)
            .field("slow_call", &self.slow_call)
            .field("open_duration", &self.open_duration)
            .field("backoff", &self.backoff)
            .field("half_open_probes", &self.half_open_probes)
            .field("half_open_max_wait", &self.half_open_max_wait)
            .field("partitions", &self.partitions)
            .field("on_state_change", &self.on_change.is_some())
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl CircuitBreakerBuilder {
    fn new() -> Self {
        CircuitBreakerBuilder {
            consecutive_failures: None,
            failure_rate: None,
            count_window: None,
            time_window: None,
            minimum_calls: 20,
            slow_call: None,
            open_duration: Duration::from_secs(30),
            backoff: None,
            backoff_reset_after: None,
            half_open_probes: 3,
            half_open_max_wait: Duration::from_secs(120),
            partitions: None,
            partition_label: None,
            metrics_name: None,
            on_change: None,
            classifier: DefaultClassifier,
        }
    }
}

fn rate_ok(rate: f64) -> bool {
    rate > 0.0 && rate <= 1.0
}

impl<C> CircuitBreakerBuilder<C> {
    /// Opens after `n` failures in a row (successes reset the run; calls
    /// that are neither do not).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Opens when at least this fraction (in `(0, 1]`) of the calls in the
    /// window failed.
    pub fn failure_rate(mut self, threshold: f64) -> Self {
        self.failure_rate = Some(threshold);
        self
    }

    /// Measures rates over the last `n` calls (the default, with 100).
    pub fn count_window(mut self, n: u32) -> Self {
        self.count_window = Some(n);
        self
    }

    /// Measures rates over the calls of the last `window` instead of a
    /// count. Calls leave the window in steps of a twentieth of it.
    pub fn time_window(mut self, window: Duration) -> Self {
        self.time_window = Some(window);
        self
    }

    /// Rates are evaluated only once the window holds this many calls.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// A call that takes longer than `threshold` (to its response, not to the
    /// end of a streamed body) is slow; opens when at least `rate` (in
    /// `(0, 1]`) of the calls in the window were slow, even if they succeeded.
    pub fn slow_call(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow_call = Some((threshold, rate));
        self
    }

    /// How long the breaker stays open before letting probes through.
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// Multiplies the open duration by `multiplier` (at least 1) for each
    /// consecutive opening, up to `max`. The run of openings ends once the
    /// breaker has stayed closed for [`backoff_reset_after`]
    /// (default: `max`).
    ///
    /// [`backoff_reset_after`]: Self::backoff_reset_after
    pub fn open_duration_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.backoff = Some((multiplier, max));
        self
    }

    /// How long the breaker must stay closed for the open duration to go
    /// back to its base.
    pub fn backoff_reset_after(mut self, healthy: Duration) -> Self {
        self.backoff_reset_after = Some(healthy);
        self
    }

    /// How many probe calls half-open lets through. The breaker closes when
    /// this many probes were counted without reaching the failure (or
    /// slow-call) rate, and re-opens as soon as they reach it. With only
    /// `consecutive_failures` set, one failed probe re-opens it. A probe
    /// whose outcome is ignored (a 429, a caller error) or whose future is
    /// dropped frees its slot for the next caller.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }

    /// The longest a probe may stay unanswered: a probe still in flight this
    /// long after it passed counts as a failed probe (an upstream that hangs
    /// is not healthy), and its late outcome is not recorded. It bounds each
    /// probe, not half-open: a breaker whose probes come back ignored (429s)
    /// stays half-open for as long as that lasts. It is also the most a
    /// caller refused in half-open is told to wait.
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.half_open_max_wait = wait;
        self
    }

    /// One breaker per [`PartitionKey`](crate::PartitionKey) (a model, an
    /// upstream), at most `max` of them; requests without a key share one.
    /// When the map is full, idle breakers (closed, nothing bad remembered)
    /// are evicted; if none is idle, new keys share an overflow breaker.
    pub fn per_partition(mut self, max: usize) -> Self {
        self.partitions = Some(max);
        self
    }

    /// Labels the metrics of keyed breakers with `partition="<fingerprint>"`
    /// (8 hex digits of [`PartitionKey::fingerprint`](crate::PartitionKey::fingerprint),
    /// never the key). Off by default. Capped: the first `max_values`
    /// distinct keys get their own value, later ones share `"other"`;
    /// requests without a key are `"none"` and the overflow breaker is
    /// `"overflow"`. Each labelled breaker also reports its own
    /// `llm_sluice_breaker_state`. Handles are made when a key's breaker is
    /// created, never per call. Needs [`per_partition`](Self::per_partition);
    /// `max_values` from 1 to 10,000.
    pub fn partition_label(mut self, max_values: usize) -> Self {
        self.partition_label = Some(max_values);
        self
    }

    /// Adds the label `name="<name>"` to this layer's metrics, so two
    /// instances (a primary and a fallback upstream) can be told apart.
    /// Fixed at build: no cost per call. Must not be empty. Default: no
    /// `name` label.
    pub fn metrics_name(mut self, name: &'static str) -> Self {
        self.metrics_name = Some(name);
        self
    }

    /// Runs `callback` on every state change (after the change, outside any
    /// lock). Changes of different breakers, or racing changes of one, may
    /// be reported out of order.
    pub fn on_state_change<F>(mut self, callback: F) -> Self
    where
        F: Fn(&StateChange) + Send + Sync + 'static,
    {
        self.on_change = Some(Arc::new(callback));
        self
    }

    /// Classifies results with `classifier` instead of
    /// [`DefaultClassifier`]: failures count against the upstream,
    /// successes for it, anything else (a caller error, a 429) is ignored.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder {
            consecutive_failures: self.consecutive_failures,
            failure_rate: self.failure_rate,
            count_window: self.count_window,
            time_window: self.time_window,
            minimum_calls: self.minimum_calls,
            slow_call: self.slow_call,
            open_duration: self.open_duration,
            backoff: self.backoff,
            backoff_reset_after: self.backoff_reset_after,
            half_open_probes: self.half_open_probes,
            half_open_max_wait: self.half_open_max_wait,
            partitions: self.partitions,
            partition_label: self.partition_label,
            metrics_name: self.metrics_name,
            on_change: self.on_change,
            classifier,
        }
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let cfg = self.config()?;
        if let Some(name) = self.metrics_name {
            telemetry::check_name(name)?;
        }
        let partition_labels = match self.partition_label {
            None => None,
            Some(_) if self.partitions.is_none() => {
                return Err(ConfigError::new(
                    "partition_label",
                    "needs per_partition (an unkeyed breaker has no partitions)",
                ))
            }
            Some(max) => Some(PartitionLabels::new(max)?),
        };
        let shared = Arc::new(Shared::new(
            cfg,
            self.on_change,
            MetricScope::new("breaker", self.metrics_name),
            partition_labels,
        ));
        let registry = match self.partitions {
            Some(max) => Registry::keyed(shared.clone(), max),
            None => Registry::single(shared.clone()),
        };
        Ok(CircuitBreakerLayer {
            shared,
            registry: Arc::new(registry),
            classifier: self.classifier,
        })
    }

    fn config(&self) -> Result<Config, ConfigError> {
        use crate::error::check_duration;
        if let Some(d) = self.time_window {
            check_duration("time_window", d)?;
        }
        if let Some((d, _)) = self.slow_call {
            check_duration("slow_call", d)?;
        }
        check_duration("open_duration", self.open_duration)?;
        if let Some((_, max)) = self.backoff {
            check_duration("open_duration_backoff", max)?;
        }
        if let Some(d) = self.backoff_reset_after {
            check_duration("backoff_reset_after", d)?;
        }
        check_duration("half_open_max_wait", self.half_open_max_wait)?;
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if let Some(rate) = self.failure_rate {
            if !rate_ok(rate) {
                return Err(ConfigError::new("failure_rate", "must be in (0, 1]"));
            }
        }
        let window = match (self.count_window, self.time_window) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "time_window",
                    "count_window and time_window cannot both be set",
                ))
            }
            (Some(0), None) => return Err(ConfigError::new("count_window", "must be at least 1")),
            (Some(n), None) => WindowKind::Count(n),
            (None, Some(d)) if d.is_zero() => {
                return Err(ConfigError::new("time_window", "must be longer than zero"))
            }
            (None, Some(d)) => WindowKind::Time(d),
            (None, None) => WindowKind::Count(100),
        };
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        let minimum_calls = match window {
            WindowKind::Count(n) => self.minimum_calls.min(n),
            WindowKind::Time(_) => self.minimum_calls,
        };
        if let Some((threshold, rate)) = self.slow_call {
            if threshold.is_zero() {
                return Err(ConfigError::new(
                    "slow_call",
                    "threshold must be longer than zero",
                ));
            }
            if !rate_ok(rate) {
                return Err(ConfigError::new("slow_call", "rate must be in (0, 1]"));
            }
        }
        if self.open_duration.is_zero() {
            return Err(ConfigError::new(
                "open_duration",
                "must be longer than zero",
            ));
        }
        let (backoff_multiplier, max_open_duration) = match self.backoff {
            None => (1.0, self.open_duration),
            Some((m, _)) if !(m >= 1.0 && m.is_finite()) => {
                return Err(ConfigError::new(
                    "open_duration_backoff",
                    "multiplier must be a finite number of at least 1",
                ))
            }
            Some((_, max)) if max < self.open_duration => {
                return Err(ConfigError::new(
                    "open_duration_backoff",
                    "max must be at least open_duration",
                ))
            }
            Some(backoff) => backoff,
        };
        let backoff_reset_after = self.backoff_reset_after.unwrap_or(max_open_duration);
        if backoff_reset_after.is_zero() {
            return Err(ConfigError::new(
                "backoff_reset_after",
                "must be longer than zero",
            ));
        }
        if self.half_open_probes == 0 {
            return Err(ConfigError::new("half_open_probes", "must be at least 1"));
        }
        if self.half_open_max_wait.is_zero() {
            return Err(ConfigError::new(
                "half_open_max_wait",
                "must be longer than zero",
            ));
        }
        if self.partitions == Some(0) {
            return Err(ConfigError::new(
                "per_partition",
                "must allow at least 1 partition",
            ));
        }
        let failure_rate = match (self.consecutive_failures, self.failure_rate, self.slow_call) {
            (None, None, None) => Some(0.5),
            (_, rate, _) => rate,
        };
        Ok(Config {
            consecutive_failures: self.consecutive_failures,
            failure_rate,
            slow_call: self.slow_call,
            window,
            minimum_calls,
            open_duration: self.open_duration,
            backoff_multiplier,
            max_open_duration,
            backoff_reset_after,
            half_open_probes: self.half_open_probes,
            half_open_max_wait: self.half_open_max_wait,
        })
    }
}
