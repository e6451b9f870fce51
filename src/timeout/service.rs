use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::BoxError;
use tower_service::Service;

use super::body::{BodyTimeouts, TimeoutResponse};
use super::future::{ResponseFuture, Timer};
use super::layer::Timeouts;
use super::metrics::TimeoutMetrics;
use crate::clock;
use crate::error::TimeoutKind;
use crate::request::LlmRequest;

/// The service made by [`TimeoutLayer`](super::TimeoutLayer).
#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    timeouts: Timeouts,
    metrics: Arc<TimeoutMetrics>,
}

impl<S> Timeout<S> {
    pub(crate) fn from_parts(inner: S, timeouts: Timeouts, metrics: Arc<TimeoutMetrics>) -> Self {
        Timeout {
            inner,
            timeouts,
            metrics,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Timeout<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: TimeoutResponse,
    Req: LlmRequest,
{
    type Response = <S::Response as TimeoutResponse>::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let _scope = clock::enter();
        let t = &self.timeouts;
        let deadline = request.deadline();
        let needs_now = t.attempt.is_some() || t.total.is_some();
        let now = if needs_now { Some(clock::now()) } else { None };
        let after = |d: Option<Duration>| now.zip(d).and_then(|(now, d)| now.checked_add(d));

        let total = match (after(t.total), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = Timer::earliest(&[
            after(t.attempt).map(|at| (at, TimeoutKind::Attempt)),
            total.map(|at| (at, TimeoutKind::Total)),
        ]);
        let body = if S::Response::HAS_BODY
            && (t.first_chunk.is_some() || t.idle.is_some() || total.is_some())
        {
            BodyTimeouts {
                first_chunk: t.first_chunk,
                idle: t.idle,
                total,
                // the future hands its handle on with the response
                metrics: None,
            }
        } else {
            BodyTimeouts::none()
        };
        // One handle per request at most, and none when nothing can time
        // out (a stack whose attempt timeout is off keeps the layer).
        let metrics = (!timer.is_off() || !body.is_none()).then(|| self.metrics.clone());
        ResponseFuture::new(self.inner.call(request), timer, body, metrics)
    }
}
