//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::limits::Demand;
use super::shared::{Reservation, Shared, WaitGuard, WaitPoll};
use super::store::{MemoryStore, RateStore};
use crate::classify::{Classify, DefaultClassifier};

pin_project! {
    /// Waits for room in the windows, calls the inner service at the instant
    /// of admission, then corrects the reservation from the result.
    ///
    /// # Cancel safety
    ///
    /// Dropping it while it waits leaves the queue (waking the next waiter if
    /// it was at the head) and releases nothing else, since it holds nothing
    /// else. Dropping it after admission keeps the reservation: the request
    /// reached the upstream, which counts it.
    pub struct ResponseFuture<S, Req, C = DefaultClassifier, St = MemoryStore>
    where
        S: Service<Req>,
        St: RateStore,
    {
        #[pin]
        state: State<S, Req, C, St>,
    }
}

/// What a waiting request holds. Boxed: most requests are admitted at once,
/// and every layer around this one moves the future, so it is kept to what
/// the admitted path needs.
struct Waiting<S, Req, C, St: RateStore> {
    inner: Option<S>,
    request: Option<Req>,
    demand: Demand,
    guard: WaitGuard<C, St>,
    // Boxed as well: only a queue's head ever arms it.
    sleep: Option<Pin<Box<Sleep>>>,
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, C, St>
    where
        S: Service<Req>,
        St: RateStore,
    {
        Waiting {
            waiting: Box<Waiting<S, Req, C, St>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            reservation: Option<Reservation<St>>,
            shared: Arc<Shared<C, St>>,
        },
        Failed {
            error: Option<BoxError>,
        },
        // No window (see `RateLimit::pass_through`): the result as it is.
        Passed {
            #[pin]
            future: S::Future,
        },
        Done,
    }
}

impl<S, Req, C, St> ResponseFuture<S, Req, C, St>
where
    S: Service<Req>,
    St: RateStore,
{
    pub(crate) fn calling(
        future: S::Future,
        reservation: Reservation<St>,
        shared: Arc<Shared<C, St>>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                reservation: Some(reservation),
                shared,
            },
        }
    }

    pub(crate) fn passed(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Passed { future },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn waiting(inner: S, request: Req, demand: Demand, guard: WaitGuard<C, St>) -> Self {
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::new(Waiting {
                    inner: Some(inner),
                    request: Some(request),
                    demand,
                    guard,
                    sleep: None,
                }),
            },
        }
    }
}

impl<S, Req, C, St> Future for ResponseFuture<S, Req, C, St>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    St: RateStore,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { waiting } => {
                    let w = &mut **waiting;
                    match w.guard.poll_wait(&w.demand, cx.waker()) {
                        WaitPoll::Admitted(reservation) => {
                            let mut service = w.inner.take().expect("admitted once");
                            let request = w.request.take().expect("admitted once");
                            let shared = w.guard.shared().clone();
                            // Called at the instant of admission: the window's
                            // timestamp is when the upstream is called.
                            let future = service.call(request);
                            this.state.set(State::Calling {
                                future,
                                reservation: Some(reservation),
                                shared,
                            });
                        }
                        WaitPoll::Failed(error) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                        WaitPoll::Park(None) => {
                            w.sleep = None;
                            return Poll::Pending;
                        }
                        WaitPoll::Park(Some(at)) => {
                            let sleep = match &mut w.sleep {
                                Some(sleep) => {
                                    sleep.as_mut().reset(at);
                                    sleep
                                }
                                None => w.sleep.insert(Box::pin(sleep_until(at))),
                            };
                            if sleep.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                        }
                    }
                }
                StateProj::Calling {
                    future,
                    reservation,
                    shared,
                } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let class = shared
                        .classifier
                        .classify(result.as_ref().map_err(|e| &**e));
                    if let Some(reservation) = reservation.take() {
                        shared.finish(reservation, &class);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                StateProj::Passed { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Failed { error } => {
                    let error = error.take().expect("polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, Req, C, St> fmt::Debug for ResponseFuture<S, Req, C, St>
where
    S: Service<Req>,
    St: RateStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Calling { .. } => "calling",
            State::Failed { .. } => "failed",
            State::Passed { .. } => "passed",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
