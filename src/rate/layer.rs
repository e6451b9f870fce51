use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::handle::RateLimitHandle;
use super::learn::LearnLimits;
use super::limits::{Budget, Charging, Limits};
use super::service::RateLimit;
use super::shared::{MetricSettings, Settings, Shared};
use super::store::{MemoryStore, RateStore};
use crate::classify::DefaultClassifier;
use crate::error::ConfigError;
use crate::telemetry::{self, PartitionLabels, Scope};

/// Applies [`RateLimit`] to a service. Built with
/// [`RateLimitLayer::builder`].
///
/// Cloning the layer does **not** create new windows: every clone, and every
/// service made by any clone, spends the same budgets (which is what keeps a
/// process inside one API key's limits however many clients it builds).
/// Build a second layer for an independent set of budgets.
pub struct RateLimitLayer<C = DefaultClassifier, St: RateStore = MemoryStore> {
    pub(super) shared: Arc<Shared<C, St>>,
}

/// The guard band of a window of 25 s or more, unless
/// [`guard_band`](Builder::guard_band) says otherwise: 250 ms. A shorter
/// window gets a hundredth of its length.
///
/// It covers the spread of the delay from admission to the provider's
/// arrival stamp (network transit, connection set-up, a large body on its
/// way): the edge of the provider's window moves with it. 250 ms is several
/// times the jitter of a warm connection, and room for a fresh connection's
/// TCP and TLS 1.3 handshakes on routes up to about 100 ms round trip, for
/// 0.41% of a 60 s window's throughput (see the
/// [module docs](super#the-guard-band-at-the-window-edge)).
pub const DEFAULT_GUARD_BAND: Duration = Duration::from_millis(250);

/// The guard band a window gets by default: [`DEFAULT_GUARD_BAND`], at most
/// a hundredth of the window.
fn default_guard_band(window: Duration) -> Duration {
    DEFAULT_GUARD_BAND.min(window / 100)
}

impl RateLimitLayer {
    /// A builder with no budget set, a 60 s window with a 250 ms guard band,
    /// `max_wait` of one window and its guard band, at most 10,000 waiters
    /// and 10,000 partitions.
    pub fn builder() -> Builder {
        Builder {
            window: Duration::from_secs(60),
            guard_band: None,
            limits: [None; 6],
            global: [None; 6],
            charging: [Charging::Reconcile; 3],
            charging_of: None,
            learn: None,
            max_wait: None,
            max_waiters: 10_000,
            max_partitions: 10_000,
            partition_label: None,
            metrics_name: None,
            classifier: DefaultClassifier,
            store: MemoryStore,
        }
    }
}

impl<C, St> RateLimitLayer<C, St>
where
    C: Send + Sync + 'static,
    St: RateStore,
{
    /// A handle to change the limits at runtime and read the counters.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            control: self.shared.clone(),
        }
    }
}

impl<C, St: RateStore> Clone for RateLimitLayer<C, St> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C, St: RateStore> fmt::Debug for RateLimitLayer<C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, C, St: RateStore> Layer<S> for RateLimitLayer<C, St> {
    type Service = RateLimit<S, C, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}

/// Settings of a [`RateLimitLayer`]. Every limit counts per window (60 s
/// unless [`window`](Self::window) says otherwise), per partition unless its
/// name starts with `global_`.
#[derive(Clone)]
pub struct Builder<C = DefaultClassifier, St = MemoryStore> {
    window: Duration,
    /// `None`: the window's default.
    guard_band: Option<Duration>,
    limits: [Option<u64>; 6],
    global: [Option<u64>; 6],
    /// The charging rule of the tokens, input and output budgets.
    charging: [Charging; 3],
    /// A budget `charging` was asked for that has no rule (refused at
    /// build).
    charging_of: Option<Budget>,
    /// `None`: the default, and no opt-in to learning with no budget set.
    learn: Option<LearnLimits>,
    max_wait: Option<Duration>,
    max_waiters: usize,
    max_partitions: usize,
    partition_label: Option<usize>,
    metrics_name: Option<&'static str>,
    classifier: C,
    store: St,
}

impl<C, St> Builder<C, St> {
    fn limit(mut self, budget: Budget, value: u64) -> Self {
        self.limits[budget.index()] = Some(value);
        self
    }

    fn global(mut self, budget: Budget, value: u64) -> Self {
        self.global[budget.index()] = Some(value);
        self
    }

    /// Requests per window, per partition.
    pub fn requests_per_minute(self, limit: u64) -> Self {
        self.limit(Budget::Requests, limit)
    }

    /// Tokens (estimates, corrected by actual usage unless the budget is
    /// [charged at admission](Self::charging)) per window, per partition.
    pub fn tokens_per_minute(self, limit: u64) -> Self {
        self.limit(Budget::Tokens, limit)
    }

    /// Input tokens per window, per partition, for providers that meter input
    /// and output separately. The whole estimate is charged until usage
    /// reports the uncached input tokens (unless the budget is
    /// [charged at admission](Self::charging)).
    pub fn input_tokens_per_minute(self, limit: u64) -> Self {
        self.limit(Budget::InputTokens, limit)
    }

    /// Output tokens per window, per partition. The whole estimate is charged
    /// until usage reports the completion tokens (unless the budget is
    /// [charged at admission](Self::charging)).
    pub fn output_tokens_per_minute(self, limit: u64) -> Self {
        self.limit(Budget::OutputTokens, limit)
    }

    /// Paces requests for bucket-style upstreams: at most `burst` requests in
    /// any `window * burst / requests_per_minute` interval. Needs
    /// `requests_per_minute`; at most that much.
    pub fn request_burst(self, burst: u64) -> Self {
        self.limit(Budget::RequestBurst, burst)
    }

    /// Paces tokens for bucket-style upstreams: at most `burst` tokens in any
    /// `window * burst / tokens_per_minute` interval. Needs
    /// `tokens_per_minute`; at most that much. A request above `burst` tokens
    /// can never fit.
    pub fn token_burst(self, burst: u64) -> Self {
        self.limit(Budget::TokenBurst, burst)
    }

    /// Requests per window across all partitions (both this and the
    /// partition's budget must have room).
    pub fn global_requests_per_minute(self, limit: u64) -> Self {
        self.global(Budget::Requests, limit)
    }

    /// Tokens per window across all partitions.
    pub fn global_tokens_per_minute(self, limit: u64) -> Self {
        self.global(Budget::Tokens, limit)
    }

    /// Input tokens per window across all partitions.
    pub fn global_input_tokens_per_minute(self, limit: u64) -> Self {
        self.global(Budget::InputTokens, limit)
    }

    /// Output tokens per window across all partitions.
    pub fn global_output_tokens_per_minute(self, limit: u64) -> Self {
        self.global(Budget::OutputTokens, limit)
    }

    /// How the provider counts token budget `budget` (tokens, input tokens
    /// or output tokens; per partition and globally alike), and so how the
    /// window counts it: see the [module docs](super#charging-rules).
    /// [`Charging::Reconcile`] by default. Any other budget is refused at
    /// build (field `charging`): requests count one each whatever the rule,
    /// and the token burst follows the token budget.
    pub fn charging(mut self, budget: Budget, charging: Charging) -> Self {
        match budget {
            Budget::Tokens => self.charging[0] = charging,
            Budget::InputTokens => self.charging[1] = charging,
            Budget::OutputTokens => self.charging[2] = charging,
            other => self.charging_of = Some(other),
        }
        self
    }

    /// The same [`charging`](Self::charging) rule for every token budget.
    pub fn token_charging(mut self, charging: Charging) -> Self {
        self.charging = [charging; 3];
        self
    }

    /// Whether the limiter takes the limits the provider reports and learns
    /// from `429`s it did not expect: see the
    /// [module docs](super#limits-learned-from-the-wire).
    /// [`LearnLimits::TightenOnly`] by default. Given explicitly (and not
    /// [`Off`](LearnLimits::Off)), the builder needs no budget: every
    /// partition starts unlimited and learns the provider's limits.
    pub fn learn_limits(mut self, learn: LearnLimits) -> Self {
        self.learn = Some(learn);
        self
    }

    /// The window length; 60 s by default. Between 1 ms and 31 days.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How much longer than the window each reservation keeps counting in
    /// the request and token budgets (burst bounds excepted), so that the
    /// provider's window, which starts when a request *arrives* there, has
    /// let go of the reservation it replaces when the next one arrives. See
    /// the [module docs](super#the-guard-band-at-the-window-edge).
    ///
    /// Default [`DEFAULT_GUARD_BAND`] (250 ms), or a hundredth of the window
    /// if that is shorter. Zero turns it off. Must be shorter than the
    /// window. Under steady demand it costs `guard / (window + guard)` of
    /// the throughput: 0.4% of a 60 s window by default.
    pub fn guard_band(mut self, guard_band: Duration) -> Self {
        self.guard_band = Some(guard_band);
        self
    }

    /// The longest a request waits for room before failing with
    /// [`Error::RateLimited`](crate::Error::RateLimited). By default one
    /// window and its [guard band](Self::guard_band): the longest a request
    /// that fits the limits can have to wait (for a full window to drain).
    /// Zero means never wait.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// The most requests that may wait at once, over all partitions; more
    /// fail at once with [`Error::RateLimited`](crate::Error::RateLimited).
    /// 10,000 by default; zero means never wait.
    pub fn max_waiters(mut self, max_waiters: usize) -> Self {
        self.max_waiters = max_waiters;
        self
    }

    /// The most partition keys with a window of their own; 10,000 by
    /// default. Past it, idle partitions are evicted, and if none is idle a
    /// new key shares one *overflow* window with every other key that found
    /// the map full (see the [module docs](super#partitions)). The map is
    /// sharded, and each shard holds its share of the bound, so a key can
    /// find its shard full slightly before `max_partitions` keys are live:
    /// give some headroom over the number of keys you expect.
    pub fn max_partitions(mut self, max_partitions: usize) -> Self {
        self.max_partitions = max_partitions;
        self
    }

    /// Labels the metrics of each partition with `partition="<fingerprint>"`
    /// (8 hex digits of [`PartitionKey::fingerprint`](crate::PartitionKey::fingerprint),
    /// never the key). Off by default. Capped: the first `max_values`
    /// distinct keys get their own value, later ones share `"other"`;
    /// requests without a key are `"none"` and the overflow window is
    /// `"overflow"`. A partition's handles are made when its window is
    /// created, never per request. `max_values` from 1 to 10,000.
    pub fn partition_label(mut self, max_values: usize) -> Self {
        self.partition_label = Some(max_values);
        self
    }

    /// Adds the label `name="<name>"` to this layer's metrics, so two
    /// instances (a primary and a fallback upstream) can be told apart.
    /// Fixed at build: no cost per request. Must not be empty. Default: no
    /// `name` label.
    pub fn metrics_name(mut self, name: &'static str) -> Self {
        self.metrics_name = Some(name);
        self
    }

    /// Swaps the classifier that reads usage, 429 delays and rate-limit
    /// headers from results.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2, St> {
        Builder {
            window: self.window,
            guard_band: self.guard_band,
            limits: self.limits,
            global: self.global,
            charging: self.charging,
            charging_of: self.charging_of,
            learn: self.learn,
            max_wait: self.max_wait,
            max_waiters: self.max_waiters,
            max_partitions: self.max_partitions,
            partition_label: self.partition_label,
            metrics_name: self.metrics_name,
            classifier,
            store: self.store,
        }
    }

    /// Swaps the store that keeps the windows (see [`RateStore`]).
    pub fn store<St2: RateStore>(self, store: St2) -> Builder<C, St2> {
        Builder {
            window: self.window,
            guard_band: self.guard_band,
            limits: self.limits,
            global: self.global,
            charging: self.charging,
            charging_of: self.charging_of,
            learn: self.learn,
            max_wait: self.max_wait,
            max_waiters: self.max_waiters,
            max_partitions: self.max_partitions,
            partition_label: self.partition_label,
            metrics_name: self.metrics_name,
            classifier: self.classifier,
            store,
        }
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer<C, St>, ConfigError>
    where
        St: RateStore,
    {
        if self.window < Duration::from_millis(1) {
            return Err(ConfigError::new("window", "must be at least 1 ms"));
        }
        crate::error::check_duration("window", self.window)?;
        let guard_band = match self.guard_band {
            Some(guard) if guard >= self.window => {
                return Err(ConfigError::new(
                    "guard_band",
                    "must be shorter than the window",
                ))
            }
            Some(guard) => guard,
            None => default_guard_band(self.window),
        };
        let max_wait = self.max_wait.unwrap_or(self.window + guard_band);
        crate::error::check_duration("max_wait", max_wait)?;
        if self.max_partitions == 0 {
            return Err(ConfigError::new("max_partitions", "must be at least 1"));
        }
        let mut limits = Limits::new(self.window);
        limits.set_guard_band(guard_band);
        let mut global = limits;
        for budget in Budget::ALL {
            limits.set(budget, self.limits[budget.index()]);
            global.set(budget, self.global[budget.index()]);
        }
        limits.validate(false)?;
        global.validate(true)?;
        let learns = matches!(
            self.learn,
            Some(LearnLimits::TightenOnly | LearnLimits::Follow)
        );
        if limits.is_empty() && global.is_empty() && !learns {
            return Err(ConfigError::new(
                "requests_per_minute",
                "set at least one budget (requests or tokens, per partition or global), \
                 or learn the provider's limits (learn_limits)",
            ));
        }
        if let Some(budget) = self.charging_of {
            return Err(ConfigError::new(
                "charging",
                format!(
                    "{budget:?}: only the token budgets (tokens, input and output tokens) \
                     have a charging rule"
                ),
            ));
        }
        let settings = Settings {
            limits,
            global: (!global.is_empty()).then_some(global),
            charging: self.charging,
            learn: self.learn.unwrap_or_default(),
            max_wait,
            max_waiters: self.max_waiters,
            max_partitions: self.max_partitions,
        };
        if let Some(name) = self.metrics_name {
            telemetry::check_name(name)?;
        }
        let metrics = MetricSettings {
            scope: Scope::new("rate", self.metrics_name),
            partition_labels: self.partition_label.map(PartitionLabels::new).transpose()?,
        };
        Ok(RateLimitLayer {
            shared: Arc::new(Shared::new(self.store, self.classifier, settings, metrics)),
        })
    }
}

impl<C, St> fmt::Debug for Builder<C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("window", &self.window)
            .field("guard_band", &self.guard_band)
            .field("limits", &self.limits)
            .field("global", &self.global)
            .field("charging", &self.charging)
            .field("learn", &self.learn)
            .field("max_wait", &self.max_wait)
            .field("max_waiters", &self.max_waiters)
            .field("max_partitions", &self.max_partitions)
            .field("partition_label", &self.partition_label)
            .field("metrics_name", &self.metrics_name)
            .finish_non_exhaustive()
    }
}
