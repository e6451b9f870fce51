use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::shared::Registry;
use crate::classify::Classify;
use crate::clock;
use crate::error::Error;
use crate::request::LlmRequest;

/// A service guarded by a circuit breaker. Made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` only forwards the inner service's readiness; the breaker
/// decides in `call`, where it sees the request's partition. A refused call
/// returns a future that fails at once with [`Error::CircuitOpen`], so a
/// caller never waits in `ready()` because the circuit is open. (The inner
/// service was made ready for that call and stays ready for the next.)
///
/// Clones share the breakers of the layer that made them.
pub struct CircuitBreaker<S, C> {
    inner: S,
    /// `None`: no breaker, calls pass through (the stack's disabled part).
    registry: Option<Arc<Registry>>,
    classifier: C,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, registry: Arc<Registry>, classifier: C) -> Self {
        CircuitBreaker {
            inner,
            registry: Some(registry),
            classifier,
        }
    }

    /// A breaker that never opens and records nothing: every call goes to
    /// `inner`. [`LlmStack`](crate::LlmStack) puts one where its breaker is
    /// off, so that part costs a branch rather than a wrapper future.
    pub(crate) fn pass_through(inner: S, classifier: C) -> Self {
        CircuitBreaker {
            inner,
            registry: None,
            classifier,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("on", &self.registry.is_some())
            .field(
                "partitioned",
                &self.registry.as_ref().is_some_and(|r| r.is_keyed()),
            )
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
    Req: LlmRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let Some(registry) = &self.registry else {
            return ResponseFuture::passed(self.inner.call(request));
        };
        let _scope = clock::enter();
        let breaker = match &**registry {
            Registry::Single(breaker) => breaker.clone(),
            keyed => keyed.breaker(request.partition().as_ref()),
        };
        match breaker.admit() {
            Ok(permit) => {
                // The clock is read only when slow calls are configured.
                let started = permit.breaker().timed().then(clock::now);
                ResponseFuture::called(
                    self.inner.call(request),
                    permit,
                    started,
                    self.classifier.clone(),
                )
            }
            Err(retry_after) => ResponseFuture::rejected(Error::CircuitOpen { retry_after }),
        }
    }
}
