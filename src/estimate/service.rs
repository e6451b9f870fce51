use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::HeaderValue;
use pin_project_lite::pin_project;
use serde_json::Value;
use tower_service::Service;

use super::accuracy::EstimateAccuracy;
use super::chat::{ChatEstimator, Inspection};
use super::feedback::EstimateFeedback;
use super::include_usage::{include_usage, UsageAdded};
use crate::classify::Usage;
use crate::request::TokenEstimate;

/// Estimates each request's tokens. Made by
/// [`EstimateLayer`](super::EstimateLayer).
#[derive(Debug, Clone)]
pub struct EstimateService<S> {
    inner: S,
    estimator: ChatEstimator,
    accuracy: EstimateAccuracy,
    include_usage: bool,
}

impl<S> EstimateService<S> {
    pub(super) fn new(
        inner: S,
        estimator: ChatEstimator,
        accuracy: EstimateAccuracy,
        include_usage: bool,
    ) -> Self {
        EstimateService {
            inner,
            estimator,
            accuracy,
            include_usage,
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

impl<S, B, RB> Service<http::Request<B>> for EstimateService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    B: AsRef<[u8]> + From<Bytes>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let body = req.body().as_ref();
        let (inspection, rewritten) = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => {
                let rewritten = (self.include_usage && req.uri().path().ends_with("/completions"))
                    .then(|| include_usage(body, &map))
                    .flatten();
                (self.estimator.inspect(&map), rewritten)
            }
            _ => (Inspection::from(self.estimator.unparsed(body)), None),
        };
        let usage_added = rewritten.is_some();
        if let Some(new) = rewritten {
            if req.headers().contains_key(CONTENT_LENGTH) {
                req.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(new.len()));
            }
            *req.body_mut() = B::from(new);
            req.extensions_mut().insert(UsageAdded);
        }
        let estimate = inspection.estimate;
        let feedback = EstimateFeedback::new(
            estimate,
            self.accuracy.clone(),
            inspection.learn,
            self.estimator.completion_history(),
        );
        let extensions = req.extensions_mut();
        extensions.insert(TokenEstimate::from(estimate));
        extensions.insert(estimate);
        extensions.insert(feedback.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            feedback: Some(feedback),
            usage_added,
        }
    }
}

pin_project! {
    /// The response future of [`EstimateService`]: hands the request's
    /// [`EstimateFeedback`] (and [`UsageAdded`], if the layer added the
    /// option) to the response, and records a [`Usage`] the response
    /// already carries.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        feedback: Option<EstimateFeedback>,
        usage_added: bool,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("feedback", &self.feedback)
            .field("usage_added", &self.usage_added)
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(feedback) = this.feedback.take() {
            if let Some(usage) = res.extensions().get::<Usage>() {
                feedback.record(usage);
            }
            res.extensions_mut().insert(feedback);
        }
        if *this.usage_added {
            res.extensions_mut().insert(UsageAdded);
        }
        Poll::Ready(Ok(res))
    }
}
