//! [`LlmStack`]: the recommended layers, built from one [`StackConfig`], in
//! the one order that works.

use std::fmt;
use std::sync::Arc;

use tower::layer::util::Identity;
use tower_layer::Layer;

use super::config::StackConfig;
use super::service::{Assembled, LlmService};
use crate::breaker::{CircuitBreaker, CircuitBreakerLayer, CircuitHandle, StateChange};
use crate::classify::DefaultClassifier;
use crate::concurrency::ConcurrencyLimitLayer;
use crate::error::ConfigError;
use crate::fallback::FallbackLayer;
use crate::rate::{Admission, DispatchLayer, RateLimitHandle, RateLimitLayer};
use crate::retry::{CloneRequest, Retry, RetryLayer};
use crate::stats::Stats;
use crate::timeout::{DeadlineLayer, SetDeadline, TimeoutLayer};

/// A breaker state-change callback, shared by the breaker and the stack.
pub(crate) type OnChange = Arc<dyn Fn(&StateChange) + Send + Sync>;

/// The recommended llm-sluice stack as one [`Layer`]: outermost first,
/// deadline → fallback → retry → circuit breaker → concurrency limit with
/// its priority queue → rate window → attempt timeout → your service. Each
/// part is optional; see the [module docs](super) for why this order.
///
/// Clones share everything: the limiter, the windows, the breakers and the
/// retry budget, as do all services the stack wraps. One stack per upstream
/// (per provider or per API base URL) is the intended use.
///
/// `C` is the classifier every layer uses ([`DefaultClassifier`] reads
/// `http::Response`s and the crate's errors), `P` how the retry layer copies
/// a request ([`CloneRequest`], or [`ReplayBodies`](crate::retry::ReplayBodies)
/// for `http::Request`s with streamed bodies), `F` the fallback part
/// ([`Identity`] when there is none).
pub struct LlmStack<C = DefaultClassifier, P = CloneRequest, F = Identity> {
    pub(super) deadline: Option<DeadlineLayer>,
    pub(super) fallback: F,
    pub(super) retry: Option<RetryLayer<C, P>>,
    pub(super) breaker: Option<CircuitBreakerLayer<C>>,
    /// Always in place (it changes the response type); `concurrency_on`
    /// says whether it limits.
    pub(super) concurrency: ConcurrencyLimitLayer,
    pub(super) concurrency_on: bool,
    pub(super) rate: Option<RateLimitLayer<C>>,
    /// Always in place, like `concurrency`; `timeout_on` says whether it has
    /// timeouts of its own.
    pub(super) timeout: TimeoutLayer,
    pub(super) timeout_on: bool,
    pub(super) stats: Option<Stats>,
    /// What a disabled breaker part is given (it classifies nothing, but
    /// its type names the classifier).
    pub(super) classifier: C,
}

impl LlmStack {
    /// Builds the stack `config` describes, with the default classifier and
    /// request cloning for retries. Every invalid value is a [`ConfigError`]
    /// naming its section and field.
    ///
    /// ```
    /// use llm_sluice::stack::{LlmStack, StackConfig};
    ///
    /// let mut config = StackConfig::default();
    /// config.rate.tokens_per_minute = Some(0);
    /// let err = LlmStack::from_config(&config).unwrap_err();
    /// assert_eq!((err.section(), err.field()), (Some("rate"), "tokens_per_minute"));
    /// ```
    pub fn from_config(config: &StackConfig) -> Result<Self, ConfigError> {
        LlmStack::builder(config.clone()).build()
    }

    /// A builder, for a custom classifier, replay strategy, fallback or
    /// breaker callback.
    pub fn builder(config: StackConfig) -> LlmStackBuilder {
        LlmStackBuilder {
            config,
            classifier: DefaultClassifier,
            replay: CloneRequest,
            fallback: Identity::new(),
            on_breaker_change: None,
            stats: None,
        }
    }
}

impl<C, P, F> LlmStack<C, P, F> {
    /// The live handle of the rate window: usage, waiters, limits changed at
    /// runtime. `None` when the window is off.
    pub fn rate_handle(&self) -> Option<RateLimitHandle>
    where
        C: Send + Sync + 'static,
    {
        self.rate.as_ref().map(RateLimitLayer::handle)
    }

    /// The live handle of the circuit breaker(s). `None` when it is off.
    pub fn breaker_handle(&self) -> Option<CircuitHandle> {
        self.breaker.as_ref().map(CircuitBreakerLayer::handle)
    }

    /// The concurrency limit (its [`stats`](ConcurrencyLimitLayer::stats)
    /// give in-flight and queued now). `None` when it is off.
    pub fn concurrency(&self) -> Option<&ConcurrencyLimitLayer> {
        self.concurrency_on.then_some(&self.concurrency)
    }

    /// The [`Stats`] given to [`LlmStackBuilder::stats`], which this stack's
    /// parts feed: queue waits, in flight and queued now, breaker states,
    /// rate waiters.
    pub fn stats(&self) -> Option<&Stats> {
        self.stats.as_ref()
    }

    /// The attempt timeout layer. `None` when it is off.
    pub fn timeout(&self) -> Option<&TimeoutLayer> {
        self.timeout_on.then_some(&self.timeout)
    }

    /// The retry layer (its [`budget`](RetryLayer::budget)). `None` when
    /// retries are off.
    pub fn retry(&self) -> Option<&RetryLayer<C, P>> {
        self.retry.as_ref()
    }

    /// The circuit breaker layer. `None` when the breaker is off. Its clones
    /// share its breakers; with [`retry`](Self::retry) it lets an
    /// application that composes the parts itself (e.g. to key the breaker
    /// by route while the rate window is keyed by caller) keep the
    /// configured settings.
    pub fn breaker(&self) -> Option<&CircuitBreakerLayer<C>> {
        self.breaker.as_ref()
    }
}

impl<S, C, P, F> Layer<S> for LlmStack<C, P, F>
where
    S: Clone,
    C: Clone,
    P: Clone,
    F: Layer<super::service::RetryPart<S, C, P>>,
{
    type Service = LlmService<S, C, P, F>;

    fn layer(&self, inner: S) -> Self::Service {
        // A disabled part passes calls through inside the layer's own
        // service: a branch per call, where an `Either` would wrap every
        // response future once more (and moving those nested futures is a
        // large share of what a call through the stack costs).
        let s = self.timeout.layer(inner);
        // The window in two stages around the queue (see the module docs):
        // waiting for room holds no permit, and a request is dated when it
        // is sent.
        let s = DispatchLayer::new().layer(s);
        let s = self.concurrency.layer(s);
        let s = match &self.rate {
            Some(layer) => layer.admission().layer(s),
            None => Admission::pass_through(s),
        };
        let s = match &self.breaker {
            Some(layer) => layer.layer(s),
            None => CircuitBreaker::pass_through(s, self.classifier.clone()),
        };
        let s = match &self.retry {
            Some(layer) => layer.layer(s),
            None => Retry::pass_through(s),
        };
        let s = self.fallback.layer(s);
        let s: Assembled<S, C, P, F> = match &self.deadline {
            Some(layer) => layer.layer(s),
            None => SetDeadline::pass_through(s),
        };
        LlmService::new(s)
    }
}

impl<C: Clone, P: Clone, F: Clone> Clone for LlmStack<C, P, F> {
    fn clone(&self) -> Self {
        LlmStack {
            deadline: self.deadline.clone(),
            fallback: self.fallback.clone(),
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            concurrency: self.concurrency.clone(),
            concurrency_on: self.concurrency_on,
            rate: self.rate.clone(),
            timeout: self.timeout.clone(),
            timeout_on: self.timeout_on,
            stats: self.stats.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C, P, F> fmt::Debug for LlmStack<C, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmStack")
            .field("deadline", &self.deadline)
            .field("fallback", &std::any::type_name::<F>())
            .field("retry", &self.retry.is_some())
            .field("breaker", &self.breaker.is_some())
            .field("concurrency", &self.concurrency())
            .field("rate", &self.rate.is_some())
            .field("timeout", &self.timeout())
            .finish()
    }
}

/// Builds an [`LlmStack`] from a [`StackConfig`] and the parts a file
/// cannot hold: the classifier, the replay strategy, the fallback service and
/// a breaker callback.
#[must_use = "call `.build()` to get the stack"]
pub struct LlmStackBuilder<C = DefaultClassifier, P = CloneRequest, F = Identity> {
    config: StackConfig,
    classifier: C,
    replay: P,
    fallback: F,
    on_breaker_change: Option<OnChange>,
    stats: Option<Stats>,
}

impl<C, P, F> LlmStackBuilder<C, P, F> {
    /// Every layer classifies results with `classifier`.
    pub fn classifier<C2>(self, classifier: C2) -> LlmStackBuilder<C2, P, F> {
        LlmStackBuilder {
            config: self.config,
            classifier,
            replay: self.replay,
            fallback: self.fallback,
            on_breaker_change: self.on_breaker_change,
            stats: self.stats,
        }
    }

    /// The retry layer copies requests with `replay`.
    pub fn replay<P2>(self, replay: P2) -> LlmStackBuilder<C, P2, F> {
        LlmStackBuilder {
            config: self.config,
            classifier: self.classifier,
            replay,
            fallback: self.fallback,
            on_breaker_change: self.on_breaker_change,
            stats: self.stats,
        }
    }

    /// Sends a request to `fallback` (a built [`FallbackLayer`]: the
    /// secondary service and when to use it) when the primary path fails
    /// for a reason the layer's policy accepts. It sits inside the deadline
    /// and outside the retry layer: the primary has used its retries when the
    /// fallback is asked.
    pub fn fallback<T, FP, R>(
        self,
        fallback: FallbackLayer<T, FP, R>,
    ) -> LlmStackBuilder<C, P, FallbackLayer<T, FP, R>> {
        LlmStackBuilder {
            config: self.config,
            classifier: self.classifier,
            replay: self.replay,
            fallback,
            on_breaker_change: self.on_breaker_change,
            stats: self.stats,
        }
    }

    /// Feeds `stats` from the stack's parts: queue waits (from the
    /// concurrency limit), in flight and queued now, breaker states and rate
    /// waiters. Outcomes and end-to-end latency come from `stats.layer()`,
    /// which you put outside the stack (it changes the response type, and
    /// leaving it out costs nothing):
    ///
    /// ```
    /// use llm_sluice::request::RequestMeta;
    /// use llm_sluice::stack::{LlmStack, StackConfig};
    /// use llm_sluice::stats::Stats;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    ///
    /// let stats = Stats::new();
    /// let stack = LlmStack::builder(StackConfig::default()).stats(&stats).build()?;
    /// let svc = ServiceBuilder::new()
    ///     .layer(stats.layer())
    ///     .layer(stack.clone())
    ///     .service_fn(|r: RequestMeta| async move { Ok::<_, tower::BoxError>(r.tokens) });
    /// svc.oneshot(RequestMeta::new().tokens(3)).await?;
    /// let snapshot = stats.snapshot();
    /// assert_eq!((snapshot.total, snapshot.outcomes.success), (1, 1));
    /// assert_eq!(snapshot.queue_wait.count, 1);
    /// assert_eq!(snapshot.in_flight, Some(0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(mut self, stats: &Stats) -> Self {
        self.stats = Some(stats.clone());
        self
    }

    /// Runs `callback` on every state change of the breaker(s).
    pub fn on_breaker_change<G>(mut self, callback: G) -> Self
    where
        G: Fn(&StateChange) + Send + Sync + 'static,
    {
        self.on_breaker_change = Some(Arc::new(callback));
        self
    }

    /// Checks every section and builds the stack.
    pub fn build(self) -> Result<LlmStack<C, P, F>, ConfigError>
    where
        C: Clone + Send + Sync + 'static,
    {
        let c = &self.config;
        let (concurrency, concurrency_on) = c.concurrency.layer(self.stats.as_ref())?;
        let (timeout, timeout_on) = c.timeout.layer()?;
        let stack = LlmStack {
            deadline: c.deadline_layer()?,
            fallback: self.fallback,
            retry: c.retry.layer(self.classifier.clone(), self.replay)?,
            breaker: c
                .breaker
                .layer(self.classifier.clone(), self.on_breaker_change.as_ref())?,
            concurrency,
            concurrency_on,
            rate: c.rate.layer(self.classifier.clone())?,
            timeout,
            timeout_on,
            stats: self.stats,
            classifier: self.classifier,
        };
        if let Some(stats) = &stack.stats {
            if let Some(breaker) = stack.breaker_handle() {
                stats.attach_breaker(breaker);
            }
            if let Some(rate) = stack.rate.as_ref() {
                stats.attach_rate(rate.handle());
            }
        }
        Ok(stack)
    }
}

impl<C, P, F> fmt::Debug for LlmStackBuilder<C, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmStackBuilder")
            .field("config", &self.config)
            .field("on_breaker_change", &self.on_breaker_change.is_some())
            .finish_non_exhaustive()
    }
}
