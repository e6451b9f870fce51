//! [`LlmService`]: what [`LlmStack`](super::LlmStack) makes of a service.

use std::fmt;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::CircuitBreaker;
use crate::concurrency::ConcurrencyLimit;
use crate::rate::{Admission, Dispatch};
use crate::retry::Retry;
use crate::timeout::{SetDeadline, Timeout};

/// Every part is always in place; a disabled one passes calls through
/// inside its own service (a branch per call).
pub(super) type AttemptPart<S> = Timeout<S>;
pub(super) type DispatchPart<S> = Dispatch<AttemptPart<S>>;
pub(super) type QueuePart<S> = ConcurrencyLimit<DispatchPart<S>>;
pub(super) type AdmissionPart<S, C> = Admission<QueuePart<S>, C>;
pub(super) type BreakerPart<S, C> = CircuitBreaker<AdmissionPart<S, C>, C>;
/// The stack up to the retry layer: what the fallback part wraps.
pub type RetryPart<S, C, P> = Retry<BreakerPart<S, C>, C, P>;
pub(super) type FallbackPart<S, C, P, F> = <F as Layer<RetryPart<S, C, P>>>::Service;
pub(super) type Assembled<S, C, P, F> = SetDeadline<FallbackPart<S, C, P, F>>;

/// A service wrapped in an [`LlmStack`](super::LlmStack).
///
/// Errors are boxed: the crate's own are [`crate::Error`]s
/// (`err.downcast_ref::<llm_sluice::Error>()`), the inner service's pass
/// through inside the box.
pub struct LlmService<S, C, P, F>
where
    F: Layer<RetryPart<S, C, P>>,
{
    inner: Assembled<S, C, P, F>,
}

impl<S, C, P, F> LlmService<S, C, P, F>
where
    F: Layer<RetryPart<S, C, P>>,
{
    pub(super) fn new(inner: Assembled<S, C, P, F>) -> Self {
        LlmService { inner }
    }
}

impl<S, C, P, F, Req> Service<Req> for LlmService<S, C, P, F>
where
    F: Layer<RetryPart<S, C, P>>,
    Assembled<S, C, P, F>: Service<Req, Error = tower::BoxError>,
{
    type Response = <Assembled<S, C, P, F> as Service<Req>>::Response;
    type Error = tower::BoxError;
    type Future = <Assembled<S, C, P, F> as Service<Req>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        self.inner.call(request)
    }
}

impl<S, C, P, F> Clone for LlmService<S, C, P, F>
where
    F: Layer<RetryPart<S, C, P>>,
    Assembled<S, C, P, F>: Clone,
{
    fn clone(&self) -> Self {
        LlmService {
            inner: self.inner.clone(),
        }
    }
}

impl<S, C, P, F> fmt::Debug for LlmService<S, C, P, F>
where
    F: Layer<RetryPart<S, C, P>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmService").finish_non_exhaustive()
    }
}
