use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::metrics::Metrics;

/// Reads non-2xx response bodies and inserts their
/// [`ErrorCode`](crate::classify::ErrorCode). Made by
/// [`ErrorBodyLayer`](super::ErrorBodyLayer).
#[derive(Debug, Clone)]
pub struct ErrorBodyService<S> {
    inner: S,
    max_body_bytes: usize,
    metrics: Arc<Metrics>,
}

impl<S> ErrorBodyService<S> {
    pub(super) fn new(inner: S, max_body_bytes: usize, metrics: Arc<Metrics>) -> Self {
        ErrorBodyService {
            inner,
            max_body_bytes,
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

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, B> Service<Req> for ErrorBodyService<S>
where
    S: Service<Req, Response = http::Response<B>>,
    B: Body,
{
    type Response = http::Response<super::ErrorBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(
            self.inner.call(req),
            self.max_body_bytes,
            self.metrics.clone(),
        )
    }
}
