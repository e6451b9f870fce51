//! Carrying request facts for request types that cannot implement
//! [`LlmRequest`] themselves.

use std::fmt;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{LlmRequest, PartitionKey, Priority};

/// The facts about one request, as plain data.
///
/// Built with chained setters; it implements [`LlmRequest`] itself, which
/// makes it a handy request type for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// Expected tokens (prompt plus maximum output).
    pub tokens: u64,
    /// How urgent the request is.
    pub priority: Priority,
    /// Which budget it spends.
    pub partition: Option<PartitionKey>,
    /// When the caller stops caring.
    pub deadline: Option<Instant>,
    /// When it first joined a queue.
    pub arrival: Option<Instant>,
}

impl RequestMeta {
    /// No tokens, normal priority, no partition, no deadline.
    pub fn new() -> Self {
        RequestMeta::default()
    }

    /// Sets the token estimate.
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = tokens;
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the partition.
    pub fn partition(mut self, key: impl Into<PartitionKey>) -> Self {
        self.partition = Some(key.into());
        self
    }

    /// Sets the deadline.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl LlmRequest for RequestMeta {
    fn token_estimate(&self) -> u64 {
        self.tokens
    }
    fn priority(&self) -> Priority {
        self.priority
    }
    fn partition(&self) -> Option<PartitionKey> {
        self.partition.clone()
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
    fn arrival(&self) -> Option<Instant> {
        self.arrival
    }
    fn set_arrival(&mut self, at: Instant) {
        self.arrival = Some(at);
    }
}

/// A request of any type together with its [`RequestMeta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotated<R> {
    /// The request itself.
    pub request: R,
    /// What the layers read.
    pub meta: RequestMeta,
}

impl<R> Annotated<R> {
    /// Pairs a request with its facts.
    pub fn new(request: R, meta: RequestMeta) -> Self {
        Annotated { request, meta }
    }

    /// The request, without its facts. Use it with
    /// `ServiceBuilder::map_request` in front of the client.
    pub fn into_inner(self) -> R {
        self.request
    }
}

impl<R> LlmRequest for Annotated<R> {
    fn token_estimate(&self) -> u64 {
        self.meta.tokens
    }
    fn priority(&self) -> Priority {
        self.meta.priority
    }
    fn partition(&self) -> Option<PartitionKey> {
        self.meta.partition.clone()
    }
    fn deadline(&self) -> Option<Instant> {
        self.meta.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.meta.deadline = Some(deadline);
    }
    fn arrival(&self) -> Option<Instant> {
        self.meta.arrival
    }
    fn set_arrival(&mut self, at: Instant) {
        self.meta.arrival = Some(at);
    }
}

/// Wraps every request in [`Annotated`], reading its facts with a closure.
#[derive(Clone)]
pub struct AnnotateLayer<F> {
    extract: F,
}

impl<F> AnnotateLayer<F> {
    /// A layer that calls `extract` on each request.
    pub const fn new(extract: F) -> Self {
        AnnotateLayer { extract }
    }
}

impl<F> fmt::Debug for AnnotateLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnnotateLayer").finish_non_exhaustive()
    }
}

impl<S, F: Clone> Layer<S> for AnnotateLayer<F> {
    type Service = Annotate<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Annotate {
            inner,
            extract: self.extract.clone(),
        }
    }
}

/// The service made by [`AnnotateLayer`].
#[derive(Clone)]
pub struct Annotate<S, F> {
    inner: S,
    extract: F,
}

impl<S: fmt::Debug, F> fmt::Debug for Annotate<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Annotate")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, R> Service<R> for Annotate<S, F>
where
    S: Service<Annotated<R>>,
    F: Fn(&R) -> RequestMeta,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let meta = (self.extract)(&request);
        self.inner.call(Annotated { request, meta })
    }
}
