use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::limiter::{Config, Limiter, LimiterStats, Metrics, MAX_PERMITS};
use super::service::ConcurrencyLimit;
use crate::stats::Stats;
use crate::ConfigError;

/// The default time for a waiting request to rise one named priority level.
pub const DEFAULT_AGING: Duration = Duration::from_secs(5);

/// Applies a [`ConcurrencyLimit`] with a bounded priority queue to a service.
///
/// Built with [`ConcurrencyLimitLayer::builder`]. What clones share:
///
/// - a layer from [`build`](ConcurrencyLimitLayerBuilder::build) makes a new
///   limiter in every [`Layer::layer`] call: two services wrapped by the same
///   layer (or by clones of it) have separate limits;
/// - a layer from [`build_shared`](ConcurrencyLimitLayerBuilder::build_shared)
///   holds one limiter, and every service it wraps, from it or any clone of
///   it, draws on that one limit (like tower's `GlobalConcurrencyLimitLayer`).
///
/// Metric handles are registered once, at build, and shared by every limiter
/// the layer makes.
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    config: Config,
    metrics: Metrics,
    shared: Option<Arc<Limiter>>,
}

impl ConcurrencyLimitLayer {
    /// A builder; `max_in_flight` is required.
    pub fn builder() -> ConcurrencyLimitLayerBuilder {
        ConcurrencyLimitLayerBuilder::default()
    }

    /// The shared limiter's counts, for a layer made by
    /// [`build_shared`](ConcurrencyLimitLayerBuilder::build_shared); `None`
    /// for a layer that gives each service its own limiter (ask the service:
    /// [`ConcurrencyLimit::stats`]).
    pub fn stats(&self) -> Option<LimiterStats> {
        self.shared.as_ref().map(|limiter| limiter.stats())
    }

    /// The shared limiter, for a layer made by `build_shared`.
    pub(crate) fn shared_limiter(&self) -> Option<&Arc<Limiter>> {
        self.shared.as_ref()
    }

    /// Whether every service made by this layer shares one limiter.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The `max_in_flight` setting.
    pub fn max_in_flight(&self) -> usize {
        self.config.max_in_flight
    }

    /// The `max_queued` setting.
    pub fn max_queued(&self) -> usize {
        self.config.max_queued
    }

    /// The `max_queue_wait` setting.
    pub fn max_queue_wait(&self) -> Duration {
        self.config.max_queue_wait
    }

    /// The aging setting: time to rise one named level, `None` for strict
    /// priority.
    pub fn aging(&self) -> Option<Duration> {
        self.config.aging
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let limiter = match &self.shared {
            Some(limiter) => Arc::clone(limiter),
            None => {
                let limiter = Limiter::new(self.config, self.metrics.clone());
                if let Some(stats) = &self.metrics.stats {
                    stats.attach_limiter(&limiter);
                }
                limiter
            }
        };
        ConcurrencyLimit::from_limiter(inner, limiter)
    }
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("max_in_flight", &self.config.max_in_flight)
            .field("max_queued", &self.config.max_queued)
            .field("max_queue_wait", &self.config.max_queue_wait)
            .field("aging", &self.config.aging)
            .field("shared", &self.shared)
            .finish()
    }
}

/// Builds a [`ConcurrencyLimitLayer`]; every setting is checked by
/// [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call `.build()` to get the layer"]
pub struct ConcurrencyLimitLayerBuilder {
    max_in_flight: Option<usize>,
    max_queued: usize,
    max_queue_wait: Option<Duration>,
    aging: Option<Duration>,
    metrics_name: Option<&'static str>,
    stats: Option<Stats>,
}

impl Default for ConcurrencyLimitLayerBuilder {
    fn default() -> Self {
        ConcurrencyLimitLayerBuilder {
            max_in_flight: None,
            max_queued: 0,
            max_queue_wait: None,
            aging: Some(DEFAULT_AGING),
            metrics_name: None,
            stats: None,
        }
    }
}

impl ConcurrencyLimitLayerBuilder {
    /// Requests running in the inner service at once (required, at least 1).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = Some(max);
        self
    }

    /// Requests that may wait for a permit; a request that finds the queue
    /// full fails at once with [`Error::Overloaded`](crate::Error::Overloaded).
    /// Default 0: no queue, a request that finds no free permit is shed.
    pub fn max_queued(mut self, max: usize) -> Self {
        self.max_queued = max;
        self
    }

    /// The longest a request waits in the queue before it fails with
    /// [`Error::QueueTimeout`](crate::Error::QueueTimeout). Required (and more
    /// than zero) when `max_queued` is more than zero.
    pub fn max_queue_wait(mut self, wait: Duration) -> Self {
        self.max_queue_wait = Some(wait);
        self
    }

    /// The time a waiting request takes to rise one named priority level
    /// ([`Priority::LEVEL`](crate::Priority::LEVEL) units); must be more than
    /// zero. Default [`DEFAULT_AGING`] (5 s). See the [module
    /// docs](crate::concurrency#fairness-and-aging) for the bound it gives.
    pub fn aging(mut self, per_level: Duration) -> Self {
        self.aging = Some(per_level);
        self
    }

    /// Strict priority: a waiting request never rises. Lower priorities can
    /// then wait until `max_queue_wait` while higher ones keep arriving.
    pub fn without_aging(mut self) -> Self {
        self.aging = None;
        self
    }

    /// Adds the label `name="<name>"` to every metric of this layer, so two
    /// instances (a primary and a fallback stack) can be told apart. Fixed at
    /// build: no cost per request. Must not be empty. Default: no `name`
    /// label.
    pub fn metrics_name(mut self, name: &'static str) -> Self {
        self.metrics_name = Some(name);
        self
    }

    /// Records queue waits into `stats` (the time from joining the queue to
    /// getting a permit, zero for immediate admission, and the wait of a
    /// request that timed out), and shows every limiter this layer makes in
    /// its snapshots (in flight and queued now). See [`crate::stats`].
    pub fn stats(mut self, stats: &Stats) -> Self {
        self.stats = Some(stats.clone());
        self
    }

    /// A layer that gives every service it wraps its own limiter.
    pub fn build(self) -> Result<ConcurrencyLimitLayer, ConfigError> {
        let config = self.config()?;
        Ok(ConcurrencyLimitLayer {
            config,
            metrics: self.metrics(),
            shared: None,
        })
    }

    /// A layer whose services (and their clones) all share one limiter.
    pub fn build_shared(self) -> Result<ConcurrencyLimitLayer, ConfigError> {
        let config = self.config()?;
        let metrics = self.metrics();
        let limiter = Limiter::new(config, metrics.clone());
        if let Some(stats) = &metrics.stats {
            stats.attach_limiter(&limiter);
        }
        Ok(ConcurrencyLimitLayer {
            config,
            shared: Some(limiter),
            metrics,
        })
    }

    fn metrics(self) -> Metrics {
        let mut metrics = Metrics::new(self.metrics_name);
        metrics.stats = self.stats;
        metrics
    }

    fn config(&self) -> Result<Config, ConfigError> {
        if let Some(name) = self.metrics_name {
            crate::telemetry::check_name(name)?;
        }
        if let Some(wait) = self.max_queue_wait {
            crate::error::check_duration("max_queue_wait", wait)?;
        }
        if let Some(aging) = self.aging {
            crate::error::check_duration("aging", aging)?;
        }
        let max_in_flight = match self.max_in_flight {
            None => return Err(ConfigError::new("max_in_flight", "is required")),
            Some(0) => {
                return Err(ConfigError::new(
                    "max_in_flight",
                    "must be at least 1 (0 would reject every request)",
                ))
            }
            Some(n) if n > MAX_PERMITS => {
                return Err(ConfigError::new(
                    "max_in_flight",
                    "must be at most usize::MAX / 2",
                ))
            }
            Some(n) => n,
        };
        let max_queue_wait = match self.max_queue_wait {
            Some(wait) if wait.is_zero() => {
                return Err(ConfigError::new(
                    "max_queue_wait",
                    "must be more than zero (use max_queued(0) for no queue)",
                ))
            }
            Some(wait) => wait,
            None if self.max_queued > 0 => {
                return Err(ConfigError::new(
                    "max_queue_wait",
                    "is required when max_queued is more than zero",
                ))
            }
            None => Duration::ZERO,
        };
        if self.aging.is_some_and(|a| a.is_zero()) {
            return Err(ConfigError::new(
                "aging",
                "must be more than zero (use without_aging() for strict priority)",
            ));
        }
        Ok(Config {
            max_in_flight,
            max_queued: self.max_queued,
            max_queue_wait,
            aging: self.aging,
        })
    }
}
