//! The response future of [`StatsService`](super::StatsService), and the
//! guard that counts a request when it ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::BoxError;

use super::recorder::{Kind, Shard};
use crate::classify::{Classify, ErrorRef, Outcome};
use crate::hold::HoldGuard;
use crate::Error;

pin_project! {
    /// Waits for the inner service's response, then classifies it and hands
    /// the response a [`Recording`] that counts the request when the
    /// response is done.
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves counts the request as `cancelled`,
    /// once, with no latency.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        recording: Option<Recording>,
        classifier: C,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, recording: Recording, classifier: C) -> Self {
        ResponseFuture {
            inner,
            recording: Some(recording),
            classifier,
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    Res: HoldGuard<Recording>,
    C: Classify<Res>,
{
    type Output = Result<Res::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        let mut recording = this
            .recording
            .take()
            .expect("ResponseFuture polled after completion");
        recording.kind = kind_of(this.classifier, &result);
        Poll::Ready(match result {
            Ok(response) => Ok(response.hold_guard(recording)),
            Err(err) => {
                drop(recording);
                Err(err)
            }
        })
    }
}

impl<F, C: fmt::Debug> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("recording", &self.recording)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

/// Counts one request when dropped: under the outcome its result had, with
/// the time since `call`; or, if it never got a result, as `cancelled`.
///
/// [`StatsService`](super::StatsService) moves it into the response (see
/// [`HoldGuard`]): a complete response drops it at once, an
/// `http::Response` when its body ends, fails or is dropped.
pub struct Recording {
    /// The shard of the thread that made the call.
    shard: Arc<Shard>,
    start: Instant,
    kind: Kind,
}

impl Recording {
    pub(crate) fn start(shard: Arc<Shard>, start: Instant) -> Self {
        Recording {
            shard,
            start,
            kind: Kind::Cancelled,
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let elapsed = match self.kind {
            Kind::Cancelled => None,
            _ => Some(Instant::now().saturating_duration_since(self.start)),
        };
        self.shard.record_end(self.kind, elapsed);
    }
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording")
            .field("start", &self.start)
            .field("kind", &self.kind)
            .finish()
    }
}

/// How a result is counted: this crate's own rejection if the error is one,
/// else the classifier's outcome.
fn kind_of<Res, C: Classify<Res>>(classifier: &C, result: &Result<Res, BoxError>) -> Kind {
    if let Err(err) = result {
        if let Some(kind) = own_rejection(&**err) {
            return kind;
        }
    }
    match classifier
        .classify(result.as_ref().map_err(|e| &**e))
        .outcome
    {
        Outcome::Success => Kind::Success,
        Outcome::RateLimited {
            quota_exhausted: false,
        } => Kind::RateLimited,
        Outcome::RateLimited {
            quota_exhausted: true,
        } => Kind::QuotaExhausted,
        Outcome::Overloaded => Kind::Overloaded,
        Outcome::ServerError => Kind::ServerError,
        Outcome::Timeout => Kind::Timeout,
        Outcome::Transport => Kind::Transport,
        Outcome::ClientError => Kind::ClientError,
        Outcome::Rejected => Kind::OtherRejected,
    }
}

/// The rejection reason of this crate's [`Error`] in `err`'s source chain,
/// if there is one and it is a rejection (a timeout is an outcome).
fn own_rejection(err: ErrorRef<'_>) -> Option<Kind> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(own) = e.downcast_ref::<Error>() {
            return match own {
                Error::Overloaded { .. } => Some(Kind::QueueFull),
                Error::QueueTimeout { .. } => Some(Kind::QueueTimeout),
                Error::DeadlineExceeded => Some(Kind::Deadline),
                Error::RequestTooLarge { .. } => Some(Kind::TooLarge),
                Error::RateLimited { .. } => Some(Kind::LocalRateLimited),
                Error::CircuitOpen { .. } => Some(Kind::CircuitOpen),
                Error::Timeout { .. } => None,
            };
        }
        current = e.source();
    }
    None
}
