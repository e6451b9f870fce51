//! The response future of [`Fallback`](super::Fallback).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;
use tower_service::Service;

use super::policy::{FallbackPolicy, FallbackReason, Rewrite};
use super::served::{RecordServedBy, ServedBy};
use super::service::Shared;
use crate::request::LlmRequest;

pin_project! {
    #[project = StateProj]
    enum State<PF, SF> {
        // waiting for the primary
        Primary { #[pin] future: PF },
        // the primary failed: waiting for the secondary to be ready
        Readying { reason: FallbackReason },
        // waiting for the secondary
        Secondary { #[pin] future: SF },
    }
}

pin_project! {
    /// The response future of [`Fallback`](super::Fallback).
    ///
    /// It holds a copy of the request and a clone of the secondary service
    /// until the primary's result is known. Dropping it drops whichever call
    /// is in flight; nothing else is reserved.
    pub struct ResponseFuture<PF, T, Req, P, R>
    where
        T: Service<Req>,
    {
        #[pin]
        state: State<PF, T::Future>,
        request: Option<Req>,
        secondary: T,
        shared: Arc<Shared<P, R>>,
    }
}

impl<PF, T, Req, P, R> ResponseFuture<PF, T, Req, P, R>
where
    T: Service<Req>,
{
    pub(crate) fn new(future: PF, request: Req, secondary: T, shared: Arc<Shared<P, R>>) -> Self {
        ResponseFuture {
            state: State::Primary { future },
            request: Some(request),
            secondary,
            shared,
        }
    }
}

impl<PF, E, T, Req, P, R> Future for ResponseFuture<PF, T, Req, P, R>
where
    PF: Future<Output = Result<T::Response, E>>,
    E: Into<BoxError>,
    T: Service<Req>,
    T::Response: RecordServedBy,
    T::Error: Into<BoxError>,
    P: FallbackPolicy<T::Response>,
    R: Rewrite<Req>,
    Req: LlmRequest,
{
    type Output = Result<T::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let reason = this
                        .shared
                        .policy
                        .fallback_reason(result.as_ref().map_err(|e| &**e));
                    let Some(reason) = reason else {
                        return Poll::Ready(result);
                    };
                    let expired = this
                        .request
                        .as_ref()
                        .and_then(LlmRequest::deadline)
                        .is_some_and(|at| at <= tokio::time::Instant::now());
                    if expired {
                        tracing::debug!(
                            reason = reason.as_str(),
                            "primary failed past the request deadline: not falling back"
                        );
                        return Poll::Ready(result);
                    }
                    tracing::debug!(
                        reason = reason.as_str(),
                        secondary = this.shared.name,
                        "primary failed: falling back"
                    );
                    this.shared.metrics.fell_back(reason);
                    this.state.set(State::Readying { reason });
                }
                StateProj::Readying { .. } => {
                    ready!(this.secondary.poll_ready(cx)).map_err(Into::into)?;
                    let request = this
                        .request
                        .take()
                        .expect("the request is taken only once, to call the secondary");
                    let request = this.shared.rewrite.rewrite(request);
                    let future = this.secondary.call(request);
                    this.state.set(State::Secondary { future });
                }
                StateProj::Secondary { future } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.served_by().is_none() {
                        response.set_served_by(ServedBy::new(this.shared.name));
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<PF, T, Req, P, R> fmt::Debug for ResponseFuture<PF, T, Req, P, R>
where
    T: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Primary { .. } => "primary",
            State::Readying { .. } => "readying",
            State::Secondary { .. } => "secondary",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}
