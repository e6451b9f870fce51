//! Changing a live limiter's budgets and reading its counters.

use std::fmt;
use std::sync::Arc;

use super::limits::{Budget, Limits};
use crate::error::ConfigError;

/// What a limiter has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateStats {
    /// Requests admitted since the limiter was built. A request given back
    /// before it was sent (dropped between
    /// [`Admission`](super::Admission) and [`Dispatch`](super::Dispatch),
    /// or refused at dispatch) is not counted.
    pub admitted: u64,
    /// Requests waiting for room now.
    pub waiting: usize,
    /// Partition keys with their own window now.
    pub partitions: usize,
}

pub(crate) trait Control: Send + Sync {
    fn limits(&self) -> Limits;
    fn global_limits(&self) -> Option<Limits>;
    fn set_limit(
        &self,
        global: bool,
        budget: Budget,
        value: Option<u64>,
    ) -> Result<(), ConfigError>;
    fn stats(&self) -> RateStats;
    /// Requests waiting for room now: one atomic read (`stats` walks every
    /// partition).
    fn waiting(&self) -> usize;
    fn evict_idle(&self) -> usize;
}

/// A handle on a live limiter, from
/// [`RateLimitLayer::handle`](super::RateLimitLayer::handle): it reaches
/// every service the layer (or a clone of it) made.
///
/// Changes apply to every partition at once (each keeps its window: a lowered
/// limit makes a full window wait longer, a raised one lets waiters in now).
/// The window length is fixed at build time.
///
/// ```
/// use llm_sluice::rate::{Budget, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder().requests_per_minute(60).build().unwrap();
/// let handle = layer.handle();
/// handle.set_limit(Budget::Requests, Some(30)).unwrap();
/// handle.set_limit(Budget::Tokens, Some(90_000)).unwrap();
/// assert_eq!(handle.limit(Budget::Requests), Some(30));
/// // an invalid change is refused and changes nothing
/// assert!(handle.set_limit(Budget::Requests, Some(0)).is_err());
/// assert_eq!(handle.limit(Budget::Requests), Some(30));
/// assert_eq!(handle.stats().admitted, 0);
/// ```
#[derive(Clone)]
pub struct RateLimitHandle {
    pub(crate) control: Arc<dyn Control>,
}

impl RateLimitHandle {
    /// The per-partition limit of `budget`.
    pub fn limit(&self, budget: Budget) -> Option<u64> {
        self.control.limits().get(budget)
    }

    /// The per-partition limits.
    pub fn limits(&self) -> Limits {
        self.control.limits()
    }

    /// Sets (or with `None` removes) the per-partition limit of `budget`.
    /// Refused like the builder refuses it (zero, a burst above its budget);
    /// then nothing changes.
    pub fn set_limit(&self, budget: Budget, value: Option<u64>) -> Result<(), ConfigError> {
        self.control.set_limit(false, budget, value)
    }

    /// The global limit of `budget`.
    pub fn global_limit(&self, budget: Budget) -> Option<u64> {
        self.control.global_limits().and_then(|l| l.get(budget))
    }

    /// Sets (or removes) the global limit of `budget`, shared by all
    /// partitions.
    pub fn set_global_limit(&self, budget: Budget, value: Option<u64>) -> Result<(), ConfigError> {
        self.control.set_limit(true, budget, value)
    }

    /// Counters: admitted, waiting, live partitions.
    pub fn stats(&self) -> RateStats {
        self.control.stats()
    }

    /// Evicts every idle partition now (empty window, no waiter, no cooldown)
    /// and returns how many went. Idle partitions are also evicted on their
    /// own whenever the partition map is full.
    pub fn evict_idle(&self) -> usize {
        self.control.evict_idle()
    }
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("limits", &self.control.limits())
            .field("global", &self.control.global_limits())
            .field("stats", &self.control.stats())
            .finish()
    }
}
