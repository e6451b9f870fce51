use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::metrics::FallbackMetrics;
use super::policy::{FallbackPolicy, Rewrite};
use super::served::RecordServedBy;
use crate::request::LlmRequest;

/// What all clones of a fallback layer and its services share.
pub(crate) struct Shared<P, R> {
    pub(crate) policy: P,
    pub(crate) rewrite: R,
    pub(crate) name: &'static str,
    pub(crate) metrics: FallbackMetrics,
}

impl<P, R> Shared<P, R> {
    pub(crate) fn new(policy: P, rewrite: R, name: &'static str, metrics: FallbackMetrics) -> Self {
        Shared {
            policy,
            rewrite,
            name,
            metrics,
        }
    }
}

/// The service made by [`FallbackLayer`](super::FallbackLayer): a primary
/// service `S` and a secondary `T`.
pub struct Fallback<S, T, P, R> {
    primary: S,
    secondary: T,
    shared: Arc<Shared<P, R>>,
}

impl<S, T, P, R> Fallback<S, T, P, R> {
    pub(crate) fn from_parts(primary: S, secondary: T, shared: Arc<Shared<P, R>>) -> Self {
        Fallback {
            primary,
            secondary,
            shared,
        }
    }

    /// The primary service.
    pub fn primary(&self) -> &S {
        &self.primary
    }

    /// The secondary service.
    pub fn secondary(&self) -> &T {
        &self.secondary
    }
}

impl<S: Clone, T: Clone, P, R> Clone for Fallback<S, T, P, R> {
    fn clone(&self) -> Self {
        Fallback {
            primary: self.primary.clone(),
            secondary: self.secondary.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, T: fmt::Debug, P, R> fmt::Debug for Fallback<S, T, P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("primary", &self.primary)
            .field("secondary", &self.secondary)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, T, P, R, Req> Service<Req> for Fallback<S, T, P, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: RecordServedBy,
    T: Service<Req, Response = S::Response> + Clone,
    T::Error: Into<BoxError>,
    P: FallbackPolicy<S::Response>,
    R: Rewrite<Req>,
    Req: Clone + LlmRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, T, Req, P, R>;

    /// Only the primary's readiness: the secondary is readied in the
    /// response future, when a request falls back.
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.primary.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let copy = request.clone();
        let future = self.primary.call(request);
        ResponseFuture::new(future, copy, self.secondary.clone(), self.shared.clone())
    }
}
