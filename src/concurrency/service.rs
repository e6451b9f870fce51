use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::limiter::{Admission, Limiter, LimiterStats, Permit};
use crate::hold::HoldGuard;
use crate::request::LlmRequest;

/// Limits the requests running in the inner service at once, queueing the
/// rest by priority. Made by [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer).
///
/// Clones share one limiter: a request through any clone counts against the
/// same `max_in_flight` and waits in the same queue.
///
/// [`poll_ready`](Service::poll_ready) is always ready: admission happens in
/// the response future, once the request's priority is known. See the
/// [module docs](super#poll_ready-and-the-tower-contract).
pub struct ConcurrencyLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S> ConcurrencyLimit<S> {
    pub(crate) fn from_limiter(inner: S, limiter: Arc<Limiter>) -> Self {
        ConcurrencyLimit { inner, limiter }
    }

    /// The limiter's current counts.
    pub fn stats(&self) -> LimiterStats {
        self.limiter.stats()
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for ConcurrencyLimit<S> {
    fn clone(&self) -> Self {
        ConcurrencyLimit {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<S, R> Service<R> for ConcurrencyLimit<S>
where
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
    S::Response: HoldGuard<Permit>,
    R: LlmRequest,
{
    type Response = <S::Response as HoldGuard<Permit>>::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, R>;

    /// Always ready: whether a request may run depends on its priority,
    /// which is known only at `call`.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.limiter.admit(&request) {
            Admission::Permit(permit) => {
                ResponseFuture::admitted(self.inner.clone(), request, permit)
            }
            Admission::Queued(waiter) => {
                ResponseFuture::queued(self.inner.clone(), request, waiter)
            }
            Admission::Rejected(error) => ResponseFuture::rejected(error),
        }
    }
}
