//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::limits::Demand;
use super::shared::{Reservation, Shared, Spent, WaitGuard, WaitPoll};
use super::stage::{self, Admitted};
use super::store::{MemoryStore, RateStore};
use crate::classify::{Classify, DefaultClassifier, Usage};
use crate::meter::{BodyEnd, MeterResponse, OnBodyEnd};

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
pub(crate) struct Waiting<S, Req, C, St: RateStore> {
    inner: Option<S>,
    request: Option<Req>,
    demand: Demand,
    guard: WaitGuard<C, St>,
    // Boxed as well: only a queue's head ever arms it.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// What a waiter has once admitted: the readied inner service, the request,
/// its reservation and the instant of admission, and the limiter.
pub(crate) struct Admit<S, Req, C, St: RateStore> {
    pub(crate) inner: S,
    pub(crate) request: Req,
    pub(crate) reservation: Reservation<St>,
    pub(crate) at: Instant,
    pub(crate) shared: Arc<Shared<C, St>>,
}

impl<S, Req, C, St: RateStore> Waiting<S, Req, C, St> {
    pub(crate) fn new(
        inner: S,
        request: Req,
        demand: Demand,
        guard: WaitGuard<C, St>,
    ) -> Box<Self> {
        Box::new(Waiting {
            inner: Some(inner),
            request: Some(request),
            demand,
            guard,
            sleep: None,
        })
    }

    /// Waits in the partition's queue: ready once admitted (once only) or
    /// refused. Only the queue's head holds a timer, reset in place.
    pub(crate) fn poll_admit(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Admit<S, Req, C, St>, BoxError>> {
        loop {
            match self.guard.poll_wait(&self.demand, cx.waker()) {
                WaitPoll::Admitted(reservation, at) => {
                    let (Some(inner), Some(request)) = (self.inner.take(), self.request.take())
                    else {
                        unreachable!("a waiter is admitted once");
                    };
                    let shared = self.guard.shared().clone();
                    return Poll::Ready(Ok(Admit {
                        inner,
                        request,
                        reservation,
                        at,
                        shared,
                    }));
                }
                WaitPoll::Failed(error) => return Poll::Ready(Err(error)),
                WaitPoll::Park(None) => {
                    self.sleep = None;
                    return Poll::Pending;
                }
                WaitPoll::Park(Some(at)) => {
                    let sleep = match &mut self.sleep {
                        Some(sleep) => {
                            sleep.as_mut().reset(at);
                            sleep
                        }
                        None => self.sleep.insert(Box::pin(sleep_until(at))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
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
        // No reservation (see `Dispatch`: a request the window did not admit,
        // when the stack runs without one): the result as it is, unmetered.
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
                waiting: Waiting::new(inner, request, demand, guard),
            },
        }
    }
}

impl<S, Req, C, St> Future for ResponseFuture<S, Req, C, St>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: MeterResponse<Settle<C, St>>,
    C: Classify<S::Response>,
    St: RateStore,
{
    type Output = Result<<S::Response as MeterResponse<Settle<C, St>>>::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { waiting } => match ready!(waiting.poll_admit(cx)) {
                    Ok(Admit {
                        mut inner,
                        request,
                        reservation,
                        shared,
                        ..
                    }) => {
                        // Called at the instant of admission: the window's
                        // timestamp is when the upstream is called.
                        let future = inner.call(request);
                        this.state.set(State::Calling {
                            future,
                            reservation: Some(reservation),
                            shared,
                        });
                    }
                    Err(error) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                },
                StateProj::Calling {
                    future,
                    reservation,
                    shared,
                } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let class = shared
                        .classifier
                        .classify(result.as_ref().map_err(|e| &**e));
                    // The server's feedback now; the usage when the
                    // response is done (a body reports it at its end).
                    let open = reservation
                        .take()
                        .and_then(|reservation| shared.answered(reservation, &class));
                    let result = match (result, open) {
                        (Ok(response), Some(reservation)) => Ok(response.meter(Settle {
                            shared: shared.clone(),
                            reservation,
                            usage: class.usage,
                        })),
                        (Ok(response), None) => Ok(response.unmetered()),
                        // No response to read: what the classification
                        // knows (nothing for a transport error, which keeps
                        // the estimate).
                        (Err(error), Some(reservation)) => {
                            if let Some(usage) = class.usage {
                                shared.settle(reservation, Spent::Reported(usage));
                            }
                            Err(error)
                        }
                        (Err(error), None) => Err(error),
                    };
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                StateProj::Passed { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    return Poll::Ready(result.map(MeterResponse::unmetered));
                }
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

/// What the window hands a response to settle its request's reservation
/// when the response is done ([`MeterResponse`]): an `http::Response`'s
/// body carries it ([`UsageBody`](crate::meter::UsageBody)) and reports the
/// usage it read at its end.
///
/// Settling corrects the reservation at its original timestamp: to the
/// provider's usage when it was reported (in the body, or in the
/// classification at the headers); otherwise, since a stream cut off (the
/// caller went away, a timeout, a reset) or sent without its usage may
/// still have been billed, **never below the estimate**: the estimate stands,
/// or is raised to what was seen to be spent (the input a partial report
/// gave plus the output read so far) when that is larger. Dropped without
/// being told (a typed stream that never reports), it keeps the estimate.
pub struct Settle<C = DefaultClassifier, St: RateStore = MemoryStore> {
    shared: Arc<Shared<C, St>>,
    reservation: Reservation<St>,
    /// The usage the classification gave at the headers, if any.
    usage: Option<Usage>,
}

impl<C, St: RateStore> OnBodyEnd for Settle<C, St> {
    fn on_end(self, end: BodyEnd) {
        let spent = match (end.usage(), self.usage) {
            (Some(usage), _) if end.is_complete() => Spent::Reported(usage),
            (_, Some(usage)) => Spent::Reported(usage),
            (partial, None) => {
                let seen = end.output().estimated_tokens();
                let partial = partial.map_or(0, |u| {
                    u.total_tokens.max(u.prompt_tokens.saturating_add(seen))
                });
                Spent::AtLeast(partial.max(seen))
            }
        };
        self.shared.settle(self.reservation, spent);
    }
}

impl<C, St: RateStore> fmt::Debug for Settle<C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settle")
            .field("reservation", &self.reservation)
            .field("usage", &self.usage)
            .finish()
    }
}

pin_project! {
    /// The future of [`Admission`](super::Admission): waits for room in the
    /// windows, then calls the inner service with the [`Admitted`] request
    /// and returns its result.
    ///
    /// # Cancel safety
    ///
    /// Dropping it while it waits leaves the queue (waking the next waiter if
    /// it was at the head), as [`ResponseFuture`] does. After admission the
    /// reservation travels with the request: dropping this future drops the
    /// inner one, and with it the request if it had not been sent, which
    /// gives the reservation back.
    pub struct AdmissionFuture<S, Req, C = DefaultClassifier, St = MemoryStore>
    where
        S: Service<Admitted<Req, C, St>>,
        St: RateStore,
    {
        #[pin]
        state: AdmissionState<S, Req, C, St>,
    }
}

pin_project! {
    #[project = AdmissionProj]
    enum AdmissionState<S, Req, C, St>
    where
        S: Service<Admitted<Req, C, St>>,
        St: RateStore,
    {
        Waiting {
            waiting: Box<Waiting<S, Req, C, St>>,
        },
        Called {
            #[pin]
            future: S::Future,
        },
        Failed {
            error: Option<BoxError>,
        },
        Done,
    }
}

impl<S, Req, C, St> AdmissionFuture<S, Req, C, St>
where
    S: Service<Admitted<Req, C, St>>,
    St: RateStore,
{
    pub(crate) fn called(future: S::Future) -> Self {
        AdmissionFuture {
            state: AdmissionState::Called { future },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        AdmissionFuture {
            state: AdmissionState::Failed { error: Some(error) },
        }
    }

    pub(crate) fn waiting(inner: S, request: Req, demand: Demand, guard: WaitGuard<C, St>) -> Self {
        AdmissionFuture {
            state: AdmissionState::Waiting {
                waiting: Waiting::new(inner, request, demand, guard),
            },
        }
    }
}

impl<S, Req, C, St> Future for AdmissionFuture<S, Req, C, St>
where
    S: Service<Admitted<Req, C, St>>,
    S::Error: Into<BoxError>,
    St: RateStore,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                AdmissionProj::Waiting { waiting } => match ready!(waiting.poll_admit(cx)) {
                    Ok(Admit {
                        mut inner,
                        request,
                        reservation,
                        at,
                        shared,
                    }) => {
                        let request = stage::admitted(request, reservation, at, shared);
                        let future = inner.call(request);
                        this.state.set(AdmissionState::Called { future });
                    }
                    Err(error) => {
                        this.state.set(AdmissionState::Done);
                        return Poll::Ready(Err(error));
                    }
                },
                AdmissionProj::Called { future } => return future.poll(cx).map_err(Into::into),
                AdmissionProj::Failed { error } => {
                    let error = error.take().expect("polled after completion");
                    this.state.set(AdmissionState::Done);
                    return Poll::Ready(Err(error));
                }
                AdmissionProj::Done => panic!("AdmissionFuture polled after completion"),
            }
        }
    }
}

impl<S, Req, C, St> fmt::Debug for AdmissionFuture<S, Req, C, St>
where
    S: Service<Admitted<Req, C, St>>,
    St: RateStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            AdmissionState::Waiting { .. } => "waiting",
            AdmissionState::Called { .. } => "called",
            AdmissionState::Failed { .. } => "failed",
            AdmissionState::Done => "done",
        };
        f.debug_struct("AdmissionFuture")
            .field("state", &state)
            .finish_non_exhaustive()
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
