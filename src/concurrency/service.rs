use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::limiter::{Admission, Limiter, LimiterStats, Permit};
use crate::clock;
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
    /// What `inner` last answered to `poll_ready`, until it is called.
    inner_ready: Readiness,
}

/// What the inner service answered to the `poll_ready` that
/// [`ConcurrencyLimit::poll_ready`] passed on to it.
enum Readiness {
    /// Not asked since the last call, or not ready.
    Unknown,
    /// Ready: a request admitted at once goes straight to it.
    Ready,
    /// Failed: the next request gets the error.
    Failed(BoxError),
}

impl<S> ConcurrencyLimit<S> {
    pub(crate) fn from_limiter(inner: S, limiter: Arc<Limiter>) -> Self {
        ConcurrencyLimit {
            inner,
            limiter,
            inner_ready: Readiness::Unknown,
        }
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
            // A clone is a new service: it has not been polled.
            inner_ready: Readiness::Unknown,
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
    ///
    /// It also asks the inner service, without waiting for it: if that is
    /// ready now, a request admitted at once in [`call`](Self::call) goes
    /// straight to it, with no clone of it and no second readiness check; if
    /// it failed, the next request's future returns its error. If it is not
    /// ready, the request's future drives a clone of it once it holds a
    /// permit, as always.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if matches!(self.inner_ready, Readiness::Unknown) {
            self.inner_ready = match self.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => Readiness::Ready,
                Poll::Ready(Err(error)) => Readiness::Failed(error.into()),
                Poll::Pending => Readiness::Unknown,
            };
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let _scope = clock::enter();
        let ready = match std::mem::replace(&mut self.inner_ready, Readiness::Unknown) {
            Readiness::Ready => true,
            Readiness::Unknown => false,
            Readiness::Failed(error) => return ResponseFuture::failed(error),
        };
        match self.limiter.admit(&request) {
            Admission::Permit(permit) if ready => {
                ResponseFuture::called(self.inner.call(request), permit)
            }
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
