use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::{ResponseFuture, Settle};
use super::limits::Demand;
use super::shared::{Enter, Shared};
use super::store::{MemoryStore, RateStore};
use crate::classify::{Classify, DefaultClassifier};
use crate::clock;
use crate::meter::MeterResponse;
use crate::request::LlmRequest;

/// Keeps calls inside sliding-window request and token budgets. Made by
/// [`RateLimitLayer`](super::RateLimitLayer); see the [module docs](super).
///
/// Clones share the windows and queues of the layer that made them; the
/// layer's [`handle`](super::RateLimitLayer::handle) changes their limits
/// and reads their counters.
///
/// `poll_ready` is the inner service's. A request that fits is called at
/// once; one that must wait takes the readied inner service with it (a clone
/// stays behind, to be made ready for the next request) and calls it at the
/// instant it is admitted.
pub struct RateLimit<S, C = DefaultClassifier, St: RateStore = MemoryStore> {
    inner: S,
    shared: Arc<Shared<C, St>>,
}

impl<S, C, St: RateStore> RateLimit<S, C, St> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, St>>) -> Self {
        RateLimit { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the limiter.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, St: RateStore> Clone for RateLimit<S, C, St> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C, St: RateStore> fmt::Debug for RateLimit<S, C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, Req, C, St> Service<Req> for RateLimit<S, C, St>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: LlmRequest,
    S::Response: MeterResponse<Settle<C, St>>,
    C: Classify<S::Response>,
    St: RateStore,
{
    type Response = <S::Response as MeterResponse<Settle<C, St>>>::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.shared;
        let _scope = clock::enter();
        let demand = Demand::estimate(request.token_estimate());
        let key = request.partition();
        let entered = shared.enter(
            key.as_ref(),
            &demand,
            request.priority(),
            request.arrival(),
            request.deadline(),
        );
        match entered {
            Enter::Admitted(reservation) => {
                // Everything else first: with the inner call the last step,
                // its future is moved once, into this one.
                let shared = shared.clone();
                ResponseFuture::calling(self.inner.call(request), reservation, shared)
            }
            Enter::Failed(error) => ResponseFuture::failed(error),
            Enter::Wait(guard) => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(ready, request, demand, guard)
            }
        }
    }
}
