//! Changing a live limiter's budgets and reading its counters.

use std::fmt;
use std::sync::Arc;

use super::learn::{LearnLimits, LearnedLimits};
use super::limits::{Budget, Charging, Limits};
use crate::error::ConfigError;
use crate::request::PartitionKey;

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
    /// Partitions (the unkeyed one included) with a limit learned from the
    /// wire in force now (see [`RateLimitHandle::learned`]).
    pub learned: usize,
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
    fn charging(&self) -> [Charging; 3];
    fn learn_limits(&self) -> LearnLimits;
    fn learned(&self, key: Option<&PartitionKey>) -> Option<LearnedLimits>;
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

    /// Counters: admitted, waiting, live partitions, partitions with
    /// learned limits.
    pub fn stats(&self) -> RateStats {
        self.control.stats()
    }

    /// The charging rule of a token budget (tokens, input or output tokens,
    /// per partition and globally); `None` for the other budgets, which
    /// count one per request.
    pub fn charging(&self, budget: Budget) -> Option<Charging> {
        let k = match budget {
            Budget::Tokens => 0,
            Budget::InputTokens => 1,
            Budget::OutputTokens => 2,
            _ => return None,
        };
        Some(self.control.charging()[k])
    }

    /// Whether the limiter learns limits from the wire.
    pub fn learn_limits(&self) -> LearnLimits {
        self.control.learn_limits()
    }

    /// What the partition of `key` (`None`: requests without a key) learned
    /// from the wire, while a learned limit is in force there; `None` when
    /// nothing learned changes its limits, or it has no window of its own.
    /// See the [module docs](super#limits-learned-from-the-wire).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use llm_sluice::classify::{Classification, LimitState, LlmResponse, Outcome, RateLimitState};
    /// use llm_sluice::rate::{Budget, RateLimitLayer};
    /// use llm_sluice::request::RequestMeta;
    /// use llm_sluice::PartitionKey;
    /// use tower::{Layer, ServiceExt};
    ///
    /// struct Resp;
    /// impl llm_sluice::hold::Complete for Resp {}
    /// impl LlmResponse for Resp {
    ///     fn classification(&self) -> Classification {
    ///         let mut c = Classification::success(None);
    ///         c.rate_limits = Some(RateLimitState {
    ///             requests: LimitState { limit: Some(60), remaining: Some(59), reset: None },
    ///             ..RateLimitState::default()
    ///         });
    ///         c
    ///     }
    /// }
    /// let layer = RateLimitLayer::builder().requests_per_minute(120).build().unwrap();
    /// let handle = layer.handle();
    /// let svc = layer.layer(tower::service_fn(|_r: RequestMeta| async { Ok::<_, tower::BoxError>(Resp) }));
    /// svc.oneshot(RequestMeta::new().partition("sk-a")).await.unwrap();
    /// // The provider reports 60 a minute for this key: the window holds it to that.
    /// let learned = handle.learned(Some(&PartitionKey::new("sk-a"))).unwrap();
    /// assert_eq!(learned.reported(Budget::Requests), Some(60));
    /// assert_eq!(learned.limit(Budget::Requests), Some(60));
    /// assert_eq!(handle.limit(Budget::Requests), Some(120), "configured, unchanged");
    /// # }
    /// ```
    pub fn learned(&self, key: Option<&PartitionKey>) -> Option<LearnedLimits> {
        self.control.learned(key)
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
