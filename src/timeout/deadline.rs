//! Setting (and optionally enforcing) a request's deadline.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::future::{DeadlineFuture, Timer};
use super::metrics::TimeoutMetrics;
use crate::clock;
use crate::error::{ConfigError, TimeoutKind};
use crate::request::LlmRequest;

/// Gives every request a [`Deadline`](crate::Deadline), so the layers inside
/// — queues, rate windows, retries, timeouts — know how long the caller still
/// cares, and (by default) fails the response future with
/// `Timeout { kind: Total }` when it passes.
///
/// The deadline is `now + after`, set when the request is called. A request
/// that already has an earlier deadline keeps it; a later one is tightened to
/// `now + after`: this layer's time is an upper bound. Without `after` the
/// layer only enforces deadlines the caller set.
///
/// With `after`, a request without an [`Arrival`](crate::request::Arrival)
/// also gets the call's instant as its arrival: the retry layer and the
/// queues inside read it instead of the clock (the request arrived when it
/// entered the stack).
///
/// Place it outermost (outside fallback and retry), so one deadline bounds
/// every attempt. Request types whose [`LlmRequest::set_deadline`] is the
/// default no-op do not carry the deadline inwards; the enforcement here
/// still holds.
///
/// Cloning the layer shares its metric handles and nothing else.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// use std::time::Duration;
/// use llm_sluice::request::RequestMeta;
/// use llm_sluice::timeout::DeadlineLayer;
/// use llm_sluice::LlmRequest;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let svc = ServiceBuilder::new()
///     .layer(DeadlineLayer::new(Duration::from_secs(30)))
///     .service_fn(|req: RequestMeta| async move {
///         // every layer in here sees the deadline
///         Ok::<_, tower::BoxError>(LlmRequest::deadline(&req).is_some())
///     });
/// assert!(svc.oneshot(RequestMeta::new()).await.unwrap());
/// # }
/// ```
#[derive(Clone)]
pub struct DeadlineLayer {
    after: Option<Duration>,
    enforce: bool,
    metrics: Arc<TimeoutMetrics>,
}

impl DeadlineLayer {
    /// Sets a deadline `after` from the call on every request (or keeps an
    /// earlier one) and enforces it on the response future.
    pub fn new(after: Duration) -> Self {
        DeadlineLayer {
            after: Some(after),
            enforce: true,
            metrics: TimeoutMetrics::new("deadline", None),
        }
    }

    /// A builder: no deadline of its own, enforcing.
    pub fn builder() -> DeadlineLayerBuilder {
        DeadlineLayerBuilder {
            after: None,
            enforce: true,
            metrics_name: None,
        }
    }
}

impl fmt::Debug for DeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineLayer")
            .field("after", &self.after)
            .field("enforce", &self.enforce)
            .finish()
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = SetDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetDeadline {
            inner,
            after: self.after,
            enforce: self.enforce,
            metrics: Some(self.metrics.clone()),
        }
    }
}

/// Builds a [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineLayerBuilder {
    after: Option<Duration>,
    enforce: bool,
    metrics_name: Option<&'static str>,
}

impl DeadlineLayerBuilder {
    /// The deadline, from when the request is called. Must be longer than
    /// zero.
    pub fn after(mut self, after: Duration) -> Self {
        self.after = Some(after);
        self
    }

    /// Whether the response future fails with `Timeout { kind: Total }` when
    /// the deadline passes (default `true`). With `false` the layer only sets
    /// the deadline for the layers inside to read.
    pub fn enforce(mut self, enforce: bool) -> Self {
        self.enforce = enforce;
        self
    }

    /// Adds the label `name="<name>"` to this layer's metrics, so two
    /// instances can be told apart. Fixed at build: no cost per request.
    /// Must not be empty. Default: no `name` label.
    pub fn metrics_name(mut self, name: &'static str) -> Self {
        self.metrics_name = Some(name);
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<DeadlineLayer, ConfigError> {
        if let Some(name) = self.metrics_name {
            crate::telemetry::check_name(name)?;
        }
        if self.after == Some(Duration::ZERO) {
            return Err(ConfigError::new("after", "must be longer than zero"));
        }
        if self.after.is_none() && !self.enforce {
            return Err(ConfigError::new(
                "after",
                "must be set when the deadline is not enforced, or the layer does nothing",
            ));
        }
        Ok(DeadlineLayer {
            after: self.after,
            enforce: self.enforce,
            metrics: TimeoutMetrics::new("deadline", self.metrics_name),
        })
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Clone)]
pub struct SetDeadline<S> {
    inner: S,
    after: Option<Duration>,
    enforce: bool,
    /// `None` only for a pass-through, which never enforces.
    metrics: Option<Arc<TimeoutMetrics>>,
}

impl<S> SetDeadline<S> {
    /// Sets and enforces nothing: [`LlmStack`](crate::LlmStack) puts one
    /// where its deadline is off, so that part costs a branch rather than a
    /// wrapper future.
    pub(crate) fn pass_through(inner: S) -> Self {
        SetDeadline {
            inner,
            after: None,
            enforce: false,
            metrics: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for SetDeadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetDeadline")
            .field("inner", &self.inner)
            .field("after", &self.after)
            .field("enforce", &self.enforce)
            .finish()
    }
}

impl<S, Req> Service<Req> for SetDeadline<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: LlmRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        if self.after.is_none() && !self.enforce {
            return DeadlineFuture::new(self.inner.call(request), Timer::Off, None);
        }
        // The layers inside reuse this reading (see `crate::clock`).
        let _scope = clock::enter();
        let ours = self.after.and_then(|d| {
            let now = clock::now();
            // The layer is outermost and reads the clock anyway: date the
            // request's arrival too, so the layers inside (retry, queues)
            // need not read it again.
            if request.arrival().is_none() {
                request.set_arrival(now);
            }
            now.checked_add(d)
        });
        let deadline = match (request.deadline(), ours) {
            (Some(theirs), Some(ours)) if ours < theirs => {
                request.set_deadline(ours);
                Some(ours)
            }
            (None, Some(ours)) => {
                request.set_deadline(ours);
                Some(ours)
            }
            (theirs, _) => theirs,
        };
        let (timer, metrics) = match deadline {
            Some(at) if self.enforce => (
                Timer::earliest(&[Some((at, TimeoutKind::Total))]),
                self.metrics.clone(),
            ),
            _ => (Timer::Off, None),
        };
        DeadlineFuture::new(self.inner.call(request), timer, metrics)
    }
}
