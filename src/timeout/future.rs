//! The futures returned by [`Timeout`](super::Timeout) and
//! [`SetDeadline`](super::SetDeadline).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;

use super::body::{BodyTimeouts, TimeoutResponse};
use super::metrics::TimeoutMetrics;
use crate::error::{Error, TimeoutKind};

pin_project! {
    /// One timer, or none: the earliest of the timeouts that apply.
    ///
    /// The timer is made lazily: `Due` holds only the instant, and the
    /// tokio `Sleep` is created (and registered) the first time the inner
    /// future is found pending. A response that is ready on its first poll
    /// (a cache hit, a rejection from a layer inside) never touches the
    /// timer wheel; the instant it fires at is the same either way.
    #[project = TimerProj]
    pub(crate) enum Timer {
        Due { at: Instant, kind: TimeoutKind },
        Armed { #[pin] sleep: Sleep, kind: TimeoutKind },
        Off,
    }
}

impl Timer {
    /// A timer for the earliest of `candidates`; a tie goes to the later
    /// entry, so list `Total` last: it is the one that must not be retried.
    #[inline]
    pub(crate) fn earliest(candidates: &[Option<(Instant, TimeoutKind)>]) -> Timer {
        let mut best: Option<(Instant, TimeoutKind)> = None;
        for c in candidates.iter().flatten() {
            match best {
                Some((at, _)) if at < c.0 => {}
                _ => best = Some(*c),
            }
        }
        match best {
            Some((at, kind)) => Timer::Due { at, kind },
            None => Timer::Off,
        }
    }

    /// Whether there is nothing to time.
    pub(crate) fn is_off(&self) -> bool {
        matches!(self, Timer::Off)
    }

    /// `Ready(kind)` when the timer fired. Arms it on the first call.
    fn poll_fired(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TimeoutKind> {
        if let Timer::Due { at, kind } = *self {
            self.set(Timer::Armed {
                sleep: tokio::time::sleep_until(at),
                kind,
            });
        }
        match self.project() {
            TimerProj::Armed { sleep, kind } => sleep.poll(cx).map(|()| *kind),
            TimerProj::Due { .. } | TimerProj::Off => Poll::Pending,
        }
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (at, kind) = match self {
            Timer::Due { at, kind } => (*at, kind),
            Timer::Armed { sleep, kind } => (sleep.deadline(), kind),
            Timer::Off => return f.write_str("Off"),
        };
        f.debug_struct("Armed")
            .field("deadline", &at)
            .field("kind", kind)
            .finish()
    }
}

pin_project! {
    /// The response future of [`Timeout`](super::Timeout).
    ///
    /// It fails with [`Error::Timeout`]` { kind }` when the attempt timeout
    /// (`Attempt`), the total timeout or the request's deadline (`Total`)
    /// passes before the inner future resolves; the inner future is dropped
    /// with it. On a response, it hands the body timeouts to the response
    /// through [`TimeoutResponse`].
    pub struct ResponseFuture<F, Res> {
        #[pin]
        inner: F,
        #[pin]
        timer: Timer,
        body: BodyTimeouts,
        // Counts a timeout of the call, or goes to the body with `body`;
        // `None` when neither can happen.
        metrics: Option<Arc<TimeoutMetrics>>,
        _response: PhantomData<fn() -> Res>,
    }
}

impl<F, Res> ResponseFuture<F, Res> {
    pub(crate) fn new(
        inner: F,
        timer: Timer,
        body: BodyTimeouts,
        metrics: Option<Arc<TimeoutMetrics>>,
    ) -> Self {
        ResponseFuture {
            inner,
            timer,
            body,
            metrics,
            _response: PhantomData,
        }
    }
}

impl<F, Res, E> Future for ResponseFuture<F, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    Res: TimeoutResponse,
{
    type Output = Result<Res::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(match result {
                Ok(response) => {
                    let mut body = std::mem::take(this.body);
                    if !body.is_none() {
                        // The body's timeouts count where the call's would.
                        body.metrics = this.metrics.take();
                    }
                    Ok(response.with_body_timeouts(body))
                }
                Err(err) => Err(err.into()),
            });
        }
        let kind = std::task::ready!(this.timer.poll_fired(cx));
        if let Some(metrics) = this.metrics {
            metrics.fired(kind);
        }
        tracing::debug!(kind = kind.as_str(), "request timed out");
        Poll::Ready(Err(Box::new(Error::Timeout { kind })))
    }
}

impl<F, Res> fmt::Debug for ResponseFuture<F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("timer", &self.timer)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of [`SetDeadline`](super::SetDeadline).
    ///
    /// When the layer enforces the deadline, it fails with
    /// [`Error::Timeout`]` { kind: Total }` once the request's deadline passes
    /// before the response arrives, dropping the inner future. The response
    /// body, if any, is not timed: put a [`TimeoutLayer`](super::TimeoutLayer)
    /// inside for that.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Timer,
        metrics: Option<Arc<TimeoutMetrics>>,
    }
}

impl<F> DeadlineFuture<F> {
    pub(crate) fn new(inner: F, timer: Timer, metrics: Option<Arc<TimeoutMetrics>>) -> Self {
        DeadlineFuture {
            inner,
            timer,
            metrics,
        }
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        let kind = std::task::ready!(this.timer.poll_fired(cx));
        if let Some(metrics) = this.metrics {
            metrics.fired(kind);
        }
        tracing::debug!("request deadline passed");
        Poll::Ready(Err(Box::new(Error::Timeout { kind })))
    }
}

impl<F> fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineFuture")
            .field("timer", &self.timer)
            .finish_non_exhaustive()
    }
}
