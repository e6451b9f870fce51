//! The future returned by the [`Retry`](super::Retry) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::replay::Replay;
use super::service::{Decision, Shared};
use crate::classify::Classify;

pin_project! {
    /// The response future of [`Retry`](super::Retry): sends attempts until
    /// one is not retried, then resolves to its result.
    ///
    /// # Cancel safety
    ///
    /// Dropping it at any point drops the attempt in flight (and whatever
    /// the layers inside hold for it), the pending backoff timer and the
    /// request copy. A retry already taken from the budget is not given back.
    pub struct ResponseFuture<S, C, P, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // A clone of the inner service for retries, made from the shared
        // template at the first retry (boxed: the success path, which never
        // makes one, does not carry its size).
        service: Option<Box<S>>,
        // A copy of the request for the next attempt, if it can be replayed
        // and retries remain.
        request: Option<Req>,
        // `None` for a pass-through (see `Retry::pass_through`): the result
        // is returned as it is, unclassified.
        shared: Option<Arc<Shared<C, P, S>>>,
        retries: u32,
        deadline: Option<Instant>,
        // The current attempt's `llm_sluice.attempt` span (disabled, and
        // free, when no subscriber wants debug spans).
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is in flight.
        Called {
            #[pin]
            future: F,
        },
        // Waiting out the delay before the next attempt. Boxed so the
        // success path does not carry a timer's size.
        Waiting {
            sleep: Pin<Box<Sleep>>,
        },
        // Waiting for the inner service to be ready for the next attempt.
        Retrying,
    }
}

impl<S, C, P, Req> ResponseFuture<S, C, P, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        future: S::Future,
        request: Option<Req>,
        shared: Arc<Shared<C, P, S>>,
        deadline: Option<Instant>,
        span: tracing::Span,
    ) -> Self {
        ResponseFuture {
            state: State::Called { future },
            service: None,
            request,
            shared: Some(shared),
            retries: 0,
            deadline,
            span,
        }
    }

    pub(crate) fn passed(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Called { future },
            service: None,
            request: None,
            shared: None,
            retries: 0,
            deadline: None,
            span: tracing::Span::none(),
        }
    }

    /// Retries made so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

impl<S, C, P, Req> Future for ResponseFuture<S, C, P, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    P: Replay<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let Some(shared) = this.shared.as_deref() else {
                        return future.poll(cx).map_err(Into::into);
                    };
                    let polled = {
                        let _entered = this.span.enter();
                        future.poll(cx)
                    };
                    let result = ready!(polled).map_err(Into::into);
                    let class = shared
                        .classifier
                        .classify(result.as_ref().map_err(|e| &**e));
                    this.span.record("outcome", class.outcome.as_str());
                    match shared.decide(
                        &class,
                        *this.retries,
                        this.request.is_some(),
                        *this.deadline,
                    ) {
                        Decision::Return => return Poll::Ready(result),
                        Decision::RetryAt(at) => {
                            // The failed result (and any body it holds) is
                            // dropped here, before the wait.
                            drop(result);
                            *this.retries += 1;
                            if at <= Instant::now() {
                                this.state.set(State::Retrying);
                            } else {
                                this.state.set(State::Waiting {
                                    sleep: Box::pin(tokio::time::sleep_until(at)),
                                });
                            }
                        }
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Retrying);
                }
                StateProj::Retrying => {
                    let shared = this
                        .shared
                        .as_deref()
                        .expect("only a retrying future waits to retry");
                    let service = this
                        .service
                        .get_or_insert_with(|| Box::new(shared.template.lock().clone()));
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let request = this
                        .request
                        .take()
                        .expect("a retry is decided only with a request copy");
                    if *this.retries < shared.config.max_retries {
                        *this.request = shared.replay.replay(&request);
                    }
                    shared.metrics.attempt();
                    *this.span = attempt_span(*this.retries + 1);
                    let future = {
                        let _entered = this.span.enter();
                        service.call(request)
                    };
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// The span of one attempt: `llm_sluice.attempt` at debug level, with the
/// attempt number (1 for the first) and, once known, its `outcome`.
#[inline]
pub(crate) fn attempt_span(attempt: u32) -> tracing::Span {
    tracing::debug_span!(
        "llm_sluice.attempt",
        attempt,
        outcome = tracing::field::Empty
    )
}

impl<S, C, P, Req> fmt::Debug for ResponseFuture<S, C, P, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "waiting",
            State::Retrying => "retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("retries", &self.retries)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
