//! [`ServiceBuilderExt`]: the layers, one at a time, in the tower style.

use std::time::Duration;

use tower::layer::util::Stack;
use tower::ServiceBuilder;

use super::layer::LlmStack;
use crate::breaker::CircuitBreakerLayer;
use crate::concurrency::ConcurrencyLimitLayer;
use crate::fallback::FallbackLayer;
use crate::rate::{RateLimitLayer, RateStore};
use crate::retry::RetryLayer;
use crate::timeout::{DeadlineLayer, TimeoutLayer};

/// Adds llm-sluice layers to a [`ServiceBuilder`], one at a time.
///
/// Layers added first are outermost. The recommended order is the order of
/// the methods here (see the [module docs](super#the-order-and-why)), which
/// is what [`llm_stack`](Self::llm_stack) builds in one step.
///
/// ```
/// use std::time::Duration;
/// use llm_sluice::request::RequestMeta;
/// use llm_sluice::stack::ServiceBuilderExt;
/// use llm_sluice::{CircuitBreakerLayer, ConcurrencyLimitLayer, RateLimitLayer, TimeoutLayer};
/// use tower::{ServiceBuilder, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///
/// let svc = ServiceBuilder::new()
///     .llm_deadline(Duration::from_secs(120))
///     .llm_circuit_breaker(CircuitBreakerLayer::builder().consecutive_failures(5).build()?)
///     .llm_concurrency_limit(
///         ConcurrencyLimitLayer::builder()
///             .max_in_flight(16)
///             .max_queued(256)
///             .max_queue_wait(Duration::from_secs(10))
///             .build_shared()?,
///     )
///     .llm_rate_limit(RateLimitLayer::builder().requests_per_minute(600).build()?)
///     .llm_timeout(TimeoutLayer::builder().attempt(Duration::from_secs(60)).build()?)
///     .service_fn(|req: RequestMeta| async move { Ok::<_, tower::BoxError>(req.tokens) });
/// assert_eq!(svc.oneshot(RequestMeta::new().tokens(7)).await?, 7);
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// The whole recommended stack.
    fn llm_stack<C, P, F>(
        self,
        stack: LlmStack<C, P, F>,
    ) -> ServiceBuilder<Stack<LlmStack<C, P, F>, L>>;

    /// A total deadline `after` from the call ([`DeadlineLayer::new`]).
    fn llm_deadline(self, after: Duration) -> ServiceBuilder<Stack<DeadlineLayer, L>>;

    /// A fallback to a secondary service.
    fn llm_fallback<T, P, R>(
        self,
        layer: FallbackLayer<T, P, R>,
    ) -> ServiceBuilder<Stack<FallbackLayer<T, P, R>, L>>;

    /// Retries with backoff and a budget.
    fn llm_retry<C, P>(self, layer: RetryLayer<C, P>)
        -> ServiceBuilder<Stack<RetryLayer<C, P>, L>>;

    /// A circuit breaker.
    fn llm_circuit_breaker<C>(
        self,
        layer: CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C>, L>>;

    /// A concurrency limit with a priority queue.
    fn llm_concurrency_limit(
        self,
        layer: ConcurrencyLimitLayer,
    ) -> ServiceBuilder<Stack<ConcurrencyLimitLayer, L>>;

    /// A sliding RPM/TPM window.
    fn llm_rate_limit<C, St: RateStore>(
        self,
        layer: RateLimitLayer<C, St>,
    ) -> ServiceBuilder<Stack<RateLimitLayer<C, St>, L>>;

    /// Attempt, first-chunk and idle timeouts.
    fn llm_timeout(self, layer: TimeoutLayer) -> ServiceBuilder<Stack<TimeoutLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn llm_stack<C, P, F>(
        self,
        stack: LlmStack<C, P, F>,
    ) -> ServiceBuilder<Stack<LlmStack<C, P, F>, L>> {
        self.layer(stack)
    }

    fn llm_deadline(self, after: Duration) -> ServiceBuilder<Stack<DeadlineLayer, L>> {
        self.layer(DeadlineLayer::new(after))
    }

    fn llm_fallback<T, P, R>(
        self,
        layer: FallbackLayer<T, P, R>,
    ) -> ServiceBuilder<Stack<FallbackLayer<T, P, R>, L>> {
        self.layer(layer)
    }

    fn llm_retry<C, P>(
        self,
        layer: RetryLayer<C, P>,
    ) -> ServiceBuilder<Stack<RetryLayer<C, P>, L>> {
        self.layer(layer)
    }

    fn llm_circuit_breaker<C>(
        self,
        layer: CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C>, L>> {
        self.layer(layer)
    }

    fn llm_concurrency_limit(
        self,
        layer: ConcurrencyLimitLayer,
    ) -> ServiceBuilder<Stack<ConcurrencyLimitLayer, L>> {
        self.layer(layer)
    }

    fn llm_rate_limit<C, St: RateStore>(
        self,
        layer: RateLimitLayer<C, St>,
    ) -> ServiceBuilder<Stack<RateLimitLayer<C, St>, L>> {
        self.layer(layer)
    }

    fn llm_timeout(self, layer: TimeoutLayer) -> ServiceBuilder<Stack<TimeoutLayer, L>> {
        self.layer(layer)
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
