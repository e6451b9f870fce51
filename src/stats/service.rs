use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::{Recording, ResponseFuture};
use super::Stats;
use crate::classify::Classify;
use crate::clock;
use crate::hold::HoldGuard;

/// Records each request's outcome and end-to-end time. Made by
/// [`StatsLayer`](super::StatsLayer).
///
/// `poll_ready` forwards the inner service's readiness (its errors are not
/// requests and are not counted). Clones record into the same [`Stats`].
pub struct StatsService<S, C> {
    inner: S,
    stats: Stats,
    classifier: C,
}

impl<S, C> StatsService<S, C> {
    pub(crate) fn new(inner: S, stats: Stats, classifier: C) -> Self {
        StatsService {
            inner,
            stats,
            classifier,
        }
    }

    /// The handle this service records into.
    pub fn stats(&self) -> &Stats {
        &self.stats
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

impl<S: Clone, C: Clone> Clone for StatsService<S, C> {
    fn clone(&self) -> Self {
        StatsService {
            inner: self.inner.clone(),
            stats: self.stats.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for StatsService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsService")
            .field("inner", &self.inner)
            .field("stats", &self.stats)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for StatsService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: HoldGuard<Recording>,
    C: Classify<S::Response> + Clone,
{
    type Response = <S::Response as HoldGuard<Recording>>::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let _scope = clock::enter();
        let shard = Arc::clone(self.stats.recorder().shard());
        let recording = Recording::start(shard, clock::now());
        ResponseFuture::new(self.inner.call(request), recording, self.classifier.clone())
    }
}
