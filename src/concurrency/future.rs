//! The response future of [`ConcurrencyLimit`](super::ConcurrencyLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;
use tower_service::Service;

use super::limiter::{Permit, Waiter};
use crate::clock;
use crate::hold::HoldGuard;
use crate::Error;

pin_project! {
    /// Waits for a permit (in the queue if need be), then for the inner
    /// service to be ready, then for its response.
    ///
    /// # Cancel safety
    ///
    /// Dropping it at any point gives back everything it held: a queue entry
    /// is removed (no phantom slot), a permit already handed to it goes to
    /// the next waiter, and a permit held while the inner service runs is
    /// released. Once it resolves with a response, the permit lives in the
    /// response (see [`HoldGuard`]).
    pub struct ResponseFuture<S: Service<R>, R> {
        #[pin]
        state: State<S, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<R>, R> {
        // In the queue, waiting for a permit.
        Queued {
            waiter: Waiter,
            svc: Option<S>,
            request: Option<R>,
        },
        // Holding a permit, driving the inner service's `poll_ready`.
        Admitted {
            permit: Option<Permit>,
            svc: S,
            request: Option<R>,
        },
        // Holding a permit, driving the inner service's future.
        Called {
            #[pin]
            future: S::Future,
            permit: Option<Permit>,
        },
        // Refused at `call`, or the inner service had failed; the error is
        // returned on the first poll.
        Rejected {
            error: Option<BoxError>,
        },
        Done,
    }
}

impl<S: Service<R>, R> ResponseFuture<S, R> {
    pub(crate) fn admitted(svc: S, request: R, permit: Permit) -> Self {
        ResponseFuture {
            state: State::Admitted {
                permit: Some(permit),
                svc,
                request: Some(request),
            },
        }
    }

    /// Admitted at `call` and already handed to the (ready) inner service.
    pub(crate) fn called(future: S::Future, permit: Permit) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn queued(svc: S, request: R, waiter: Waiter) -> Self {
        ResponseFuture {
            state: State::Queued {
                waiter,
                svc: Some(svc),
                request: Some(request),
            },
        }
    }

    pub(crate) fn rejected(error: Error) -> Self {
        Self::failed(Box::new(error))
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
        }
    }
}

impl<S, R> Future for ResponseFuture<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    S::Response: HoldGuard<Permit>,
{
    type Output = Result<<S::Response as HoldGuard<Permit>>::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Queued {
                    waiter,
                    svc,
                    request,
                } => match ready!(waiter.poll_wait(cx)) {
                    Ok(()) => {
                        // One clock reading for the queue wait and for the
                        // inner layers' `call`s on their way in: nothing
                        // waits in between (see `crate::clock`).
                        let _scope = clock::enter();
                        let permit = waiter.take_grant();
                        let mut svc = svc.take().expect("service taken only on leaving Queued");
                        let request = request.take();
                        // Most inner services are ready at once: call it
                        // now, one state change instead of two.
                        match svc.poll_ready(cx) {
                            Poll::Ready(Ok(())) => {
                                let request =
                                    request.expect("request taken only on leaving Queued");
                                let future = svc.call(request);
                                state.set(State::Called {
                                    future,
                                    permit: Some(permit),
                                });
                            }
                            Poll::Ready(Err(error)) => {
                                drop(permit);
                                state.set(State::Done);
                                return Poll::Ready(Err(error.into()));
                            }
                            Poll::Pending => {
                                state.set(State::Admitted {
                                    permit: Some(permit),
                                    svc,
                                    request,
                                });
                                return Poll::Pending;
                            }
                        }
                    }
                    Err(error) => {
                        state.set(State::Done);
                        return Poll::Ready(Err(Box::new(error)));
                    }
                },
                StateProj::Admitted {
                    permit,
                    svc,
                    request,
                } => {
                    if let Err(error) = ready!(svc.poll_ready(cx)) {
                        // Dropping the state releases the permit.
                        state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let request = request
                        .take()
                        .expect("request taken only on leaving Admitted");
                    let future = svc.call(request);
                    let permit = permit.take();
                    state.set(State::Called { future, permit });
                }
                StateProj::Called { future, permit } => {
                    let result = ready!(future.poll(cx));
                    let permit = permit.take().expect("permit taken only on completion");
                    state.set(State::Done);
                    return Poll::Ready(match result {
                        Ok(response) => Ok(response.hold_guard(permit)),
                        Err(error) => {
                            drop(permit);
                            Err(error.into())
                        }
                    });
                }
                StateProj::Rejected { error } => {
                    let error = error.take().expect("error taken only on completion");
                    state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S: Service<R>, R> fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Queued { .. } => "queued",
            State::Admitted { .. } => "admitted",
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
