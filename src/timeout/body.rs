//! Body timeouts: what a response does with them, and the HTTP body that
//! enforces them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::metrics::TimeoutMetrics;
use crate::error::TimeoutKind;
use crate::hold::Complete;

/// The body timeouts of one response, handed to it by the
/// [`Timeout`](super::Timeout) service when its headers arrive.
///
/// The clock of `first_chunk` starts now (when the response arrived); `total`
/// is already an instant, measured from when the request was sent and bounded
/// by the request's [`Deadline`](crate::Deadline).
#[derive(Clone)]
// without `http` only a typed stream of the user's reads these
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub struct BodyTimeouts {
    pub(crate) first_chunk: Option<Duration>,
    pub(crate) idle: Option<Duration>,
    pub(crate) total: Option<Instant>,
    pub(crate) metrics: Option<Arc<TimeoutMetrics>>,
}

impl BodyTimeouts {
    /// No body timeouts: a body wrapped with these is passed through as is.
    pub const fn none() -> Self {
        BodyTimeouts {
            first_chunk: None,
            idle: None,
            total: None,
            metrics: None,
        }
    }

    /// Body timeouts from plain values, e.g. for a typed stream in a test.
    pub fn new(
        first_chunk: Option<Duration>,
        idle: Option<Duration>,
        total: Option<Instant>,
    ) -> Self {
        BodyTimeouts {
            first_chunk,
            idle,
            total,
            metrics: None,
        }
    }

    /// The longest wait for the first chunk, from now. Falls back to
    /// [`idle`](Self::idle) when unset.
    pub fn first_chunk(&self) -> Option<Duration> {
        self.first_chunk.or(self.idle)
    }

    /// The longest wait between two chunks.
    pub fn idle(&self) -> Option<Duration> {
        self.idle
    }

    /// When the whole exchange must be over: the earlier of the `total`
    /// timeout and the request's deadline.
    pub fn total(&self) -> Option<Instant> {
        self.total
    }

    /// Whether no body timeout is set.
    pub fn is_none(&self) -> bool {
        self.first_chunk.is_none() && self.idle.is_none() && self.total.is_none()
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    /// The next instant a timer must fire and what it means, when the next
    /// chunk is awaited from `now` with at most `gap` between chunks.
    fn next(
        &self,
        now: Instant,
        gap: Option<Duration>,
        kind: TimeoutKind,
    ) -> Option<(Instant, TimeoutKind)> {
        let chunk = gap.and_then(|g| now.checked_add(g)).map(|at| (at, kind));
        let total = self.total.map(|at| (at, TimeoutKind::Total));
        match (chunk, total) {
            // the total wins a tie: it is the one that cannot be retried
            (Some(c), Some(t)) => Some(if c.0 < t.0 { c } else { t }),
            (c, t) => c.or(t),
        }
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn fired(&self, kind: TimeoutKind) {
        if let Some(metrics) = &self.metrics {
            metrics.fired(kind);
        }
        tracing::debug!(kind = kind.as_str(), "response body timed out");
    }
}

impl Default for BodyTimeouts {
    fn default() -> Self {
        BodyTimeouts::none()
    }
}

impl fmt::Debug for BodyTimeouts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyTimeouts")
            .field("first_chunk", &self.first_chunk)
            .field("idle", &self.idle)
            .field("total", &self.total)
            .finish()
    }
}

/// A response that can enforce body timeouts on what follows its headers.
///
/// - `http::Response<B>` (feature `http`) wraps its body in [`TimeoutBody`];
/// - a response that is complete when it arrives ([`Complete`]) has no body to
///   time: it is returned as is;
/// - a typed stream of chunks implements this by timing its own stream, the
///   way [`TimeoutBody`] does.
///
/// ```
/// use llm_sluice::hold::Complete;
/// use llm_sluice::timeout::{BodyTimeouts, TimeoutResponse};
///
/// struct Answer(String);
/// impl Complete for Answer {}
///
/// let answer = Answer("hi".into()).with_body_timeouts(BodyTimeouts::none());
/// assert_eq!(answer.0, "hi");
/// ```
pub trait TimeoutResponse: Sized {
    /// The response type that enforces the timeouts.
    type Output;

    /// Whether the response has a body the timeouts apply to (default
    /// `true`). `false` lets the timeout layer skip preparing them: a
    /// [`Complete`] response is returned as it is.
    const HAS_BODY: bool = true;

    /// Applies `timeouts` to the rest of the response.
    fn with_body_timeouts(self, timeouts: BodyTimeouts) -> Self::Output;
}

impl<T: Complete> TimeoutResponse for T {
    type Output = T;

    const HAS_BODY: bool = false;

    #[inline]
    fn with_body_timeouts(self, _timeouts: BodyTimeouts) -> T {
        self
    }
}

#[cfg(feature = "http")]
pub use self::http_body_impl::TimeoutBody;

#[cfg(feature = "http")]
mod http_body_impl {
    use std::fmt;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{ready, Context, Poll};

    use http_body::{Body, Frame, SizeHint};
    use pin_project_lite::pin_project;
    use tokio::time::{Instant, Sleep};
    use tower::BoxError;

    use super::{BodyTimeouts, TimeoutResponse};
    use crate::error::{Error, TimeoutKind};

    impl<B> TimeoutResponse for http::Response<B> {
        type Output = http::Response<TimeoutBody<B>>;

        fn with_body_timeouts(self, timeouts: BodyTimeouts) -> Self::Output {
            self.map(|body| TimeoutBody::new(body, timeouts))
        }
    }

    pin_project! {
        #[project = StateProj]
        enum State<B> {
            Live { #[pin] inner: B },
            Done,
        }
    }

    struct Timer {
        sleep: Pin<Box<Sleep>>,
        kind: TimeoutKind,
        timeouts: BodyTimeouts,
    }

    pin_project! {
        /// A response body with time to first chunk, idle and total timeouts.
        ///
        /// It keeps one timer, reset in place after every frame. When a
        /// timeout fires, the body yields one error,
        /// [`Error::Timeout`]` { kind }` boxed (kind `FirstChunk`, `Idle` or
        /// `Total`), drops the inner body at once — releasing whatever guards
        /// it holds, such as a concurrency permit in a
        /// [`GuardedBody`](crate::hold::GuardedBody) — and then ends.
        ///
        /// The first-chunk clock starts when the body is created (when the
        /// response headers arrived), not at the first poll: a body that is
        /// read late times out at once. The inner body is polled before the
        /// timer, so a chunk that is already waiting is delivered even if it
        /// came late. An error from the inner body is passed on and also ends
        /// the body.
        pub struct TimeoutBody<B> {
            #[pin]
            state: State<B>,
            timer: Option<Timer>,
        }
    }

    impl<B> TimeoutBody<B> {
        /// Wraps `inner`, enforcing `timeouts` from now on.
        pub fn new(inner: B, timeouts: BodyTimeouts) -> Self {
            let timer = timeouts
                .next(
                    Instant::now(),
                    timeouts.first_chunk(),
                    TimeoutKind::FirstChunk,
                )
                .map(|(at, kind)| Timer {
                    sleep: Box::pin(tokio::time::sleep_until(at)),
                    kind,
                    timeouts,
                });
            TimeoutBody {
                state: State::Live { inner },
                timer,
            }
        }

        /// Whether the body has ended (by its end, an error or a timeout) and
        /// dropped its inner body.
        pub fn is_done(&self) -> bool {
            matches!(self.state, State::Done)
        }
    }

    impl<B> Body for TimeoutBody<B>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        type Data = B::Data;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            let mut this = self.project();
            let inner = match this.state.as_mut().project() {
                StateProj::Live { inner } => inner,
                StateProj::Done => return Poll::Ready(None),
            };
            match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(timer) = this.timer.as_mut() {
                        let idle = timer.timeouts.idle;
                        match timer.timeouts.next(Instant::now(), idle, TimeoutKind::Idle) {
                            Some((at, kind)) => {
                                timer.sleep.as_mut().reset(at);
                                timer.kind = kind;
                            }
                            None => *this.timer = None,
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.state.set(State::Done);
                    *this.timer = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(None) => {
                    this.state.set(State::Done);
                    *this.timer = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            let Some(timer) = this.timer.as_mut() else {
                return Poll::Pending;
            };
            ready!(timer.sleep.as_mut().poll(cx));
            let kind = timer.kind;
            timer.timeouts.fired(kind);
            *this.timer = None;
            this.state.set(State::Done);
            Poll::Ready(Some(Err(Box::new(Error::Timeout { kind }))))
        }

        fn is_end_stream(&self) -> bool {
            match &self.state {
                State::Live { inner } => inner.is_end_stream(),
                State::Done => true,
            }
        }

        fn size_hint(&self) -> SizeHint {
            match &self.state {
                State::Live { inner } => inner.size_hint(),
                State::Done => SizeHint::with_exact(0),
            }
        }
    }

    impl<B: fmt::Debug> fmt::Debug for TimeoutBody<B> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut d = f.debug_struct("TimeoutBody");
            match &self.state {
                State::Live { inner } => d.field("inner", inner),
                State::Done => d.field("inner", &"done"),
            };
            d.field("timeouts", &self.timer.as_ref().map(|t| &t.timeouts))
                .finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn next_takes_the_earlier_timer_and_total_wins_ties() {
        let now = Instant::now();
        let t = BodyTimeouts::new(Some(secs(2)), Some(secs(5)), Some(now + secs(4)));
        assert_eq!(t.first_chunk(), Some(secs(2)));
        assert_eq!(
            t.next(now, t.first_chunk(), TimeoutKind::FirstChunk),
            Some((now + secs(2), TimeoutKind::FirstChunk))
        );
        assert_eq!(
            t.next(now, t.idle(), TimeoutKind::Idle),
            Some((now + secs(4), TimeoutKind::Total))
        );
        let tie = BodyTimeouts::new(None, Some(secs(4)), Some(now + secs(4)));
        assert_eq!(
            tie.next(now, tie.idle(), TimeoutKind::Idle),
            Some((now + secs(4), TimeoutKind::Total))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_chunk_falls_back_to_idle_and_none_means_no_timer() {
        let t = BodyTimeouts::new(None, Some(secs(3)), None);
        assert_eq!(t.first_chunk(), Some(secs(3)));
        let none = BodyTimeouts::none();
        assert!(none.is_none());
        assert_eq!(none.next(Instant::now(), None, TimeoutKind::Idle), None);
        // a duration too long to add to now is no timer, not a panic
        let huge = BodyTimeouts::new(None, Some(Duration::MAX), None);
        assert_eq!(
            huge.next(Instant::now(), huge.idle(), TimeoutKind::Idle),
            None
        );
    }
}
