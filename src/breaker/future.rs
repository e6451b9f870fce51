//! The response future of [`CircuitBreaker`](super::CircuitBreaker).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::BoxError;

use super::shared::Permit;
use super::state::Record;
use crate::classify::Classify;
use crate::error::Error;

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// It holds the call's permit: when the inner future resolves, the
    /// result is classified and recorded. Dropped before that, it records
    /// nothing, and a half-open probe slot it held goes to the next caller.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            permit: Option<Permit>,
            started: Option<Instant>,
            classifier: C,
        },
        Rejected {
            error: Option<Error>,
        },
        // No breaker: the result passes through unrecorded.
        Passed {
            #[pin]
            future: F,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(
        future: F,
        permit: Permit,
        started: Option<Instant>,
        classifier: C,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                started,
                classifier,
            },
        }
    }

    pub(crate) fn passed(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Passed { future },
        }
    }

    pub(crate) fn rejected(error: Error) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                started,
                classifier,
            } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                if let Some(permit) = permit.take() {
                    let classification = classifier.classify(result.as_ref().map_err(|e| &**e));
                    // `started` is set only when slow calls are configured:
                    // an untimed call reads neither the clock nor the config.
                    let (slow, now) = match *started {
                        Some(start) => match permit.breaker().shared().cfg.slow_call {
                            Some((threshold, _)) => {
                                let now = Instant::now();
                                (now.saturating_duration_since(start) > threshold, Some(now))
                            }
                            None => (false, None),
                        },
                        None => (false, None),
                    };
                    let record = if classification.is_failure() {
                        Record::Counted { failed: true, slow }
                    } else if classification.is_success() {
                        Record::Counted {
                            failed: false,
                            slow,
                        }
                    } else {
                        Record::Ignored
                    };
                    permit.record(record, now);
                }
                Poll::Ready(result)
            }
            KindProj::Rejected { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion").into()))
            }
            KindProj::Passed { future } => future.poll(cx).map_err(Into::into),
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { permit, .. } => f
                .debug_struct("ResponseFuture")
                .field("permit", permit)
                .finish_non_exhaustive(),
            Kind::Rejected { error } => f
                .debug_struct("ResponseFuture")
                .field("rejected", error)
                .finish(),
            Kind::Passed { .. } => f.debug_struct("ResponseFuture").finish_non_exhaustive(),
        }
    }
}
