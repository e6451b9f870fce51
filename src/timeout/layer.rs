use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::metrics::TimeoutMetrics;
use super::service::Timeout;
use crate::error::ConfigError;

/// The timeout settings, shared by a layer and its services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) attempt: Option<Duration>,
    pub(crate) first_chunk: Option<Duration>,
    pub(crate) idle: Option<Duration>,
    pub(crate) total: Option<Duration>,
}

/// Applies per-attempt, body and total timeouts, bounded by each request's
/// [`Deadline`](crate::Deadline). See the [module docs](super).
///
/// Cloning the layer is cheap; services made by one layer (and their clones)
/// share its metric handles and nothing else: there is no state across
/// requests.
#[derive(Clone)]
pub struct TimeoutLayer {
    timeouts: Timeouts,
    metrics: Arc<TimeoutMetrics>,
}

impl TimeoutLayer {
    /// A builder with no timeouts set.
    pub fn builder() -> TimeoutLayerBuilder {
        TimeoutLayerBuilder {
            timeouts: Timeouts::default(),
            metrics_name: None,
        }
    }

    /// The per-attempt timeout, if set.
    pub fn attempt(&self) -> Option<Duration> {
        self.timeouts.attempt
    }

    /// The time-to-first-chunk timeout, if set.
    pub fn first_chunk(&self) -> Option<Duration> {
        self.timeouts.first_chunk
    }

    /// The idle timeout between body chunks, if set.
    pub fn idle(&self) -> Option<Duration> {
        self.timeouts.idle
    }

    /// The total timeout, body included, if set.
    pub fn total(&self) -> Option<Duration> {
        self.timeouts.total
    }
}

impl fmt::Debug for TimeoutLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("attempt", &self.timeouts.attempt)
            .field("first_chunk", &self.timeouts.first_chunk)
            .field("idle", &self.timeouts.idle)
            .field("total", &self.timeouts.total)
            .finish()
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::from_parts(inner, self.timeouts, self.metrics.clone())
    }
}

/// Builds a [`TimeoutLayer`]. Every timeout is optional; each that is set
/// must be longer than zero.
#[derive(Debug, Clone)]
pub struct TimeoutLayerBuilder {
    timeouts: Timeouts,
    metrics_name: Option<&'static str>,
}

impl TimeoutLayerBuilder {
    /// The longest one attempt may take to produce a response (its headers,
    /// for HTTP). Fails with `Timeout { kind: Attempt }`, which is retryable.
    pub fn attempt(mut self, timeout: Duration) -> Self {
        self.timeouts.attempt = Some(timeout);
        self
    }

    /// The longest wait for the first body chunk, counted from when the
    /// response headers arrived. Fails the body with
    /// `Timeout { kind: FirstChunk }`. When unset, `idle` applies to the first
    /// chunk too.
    pub fn first_chunk(mut self, timeout: Duration) -> Self {
        self.timeouts.first_chunk = Some(timeout);
        self
    }

    /// The longest gap between two body chunks. Fails the body with
    /// `Timeout { kind: Idle }`.
    pub fn idle(mut self, timeout: Duration) -> Self {
        self.timeouts.idle = Some(timeout);
        self
    }

    /// The longest the whole exchange may take, from the call to the end of
    /// the body. Fails with `Timeout { kind: Total }`, which is not
    /// retryable.
    pub fn total(mut self, timeout: Duration) -> Self {
        self.timeouts.total = Some(timeout);
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
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        if let Some(name) = self.metrics_name {
            crate::telemetry::check_name(name)?;
        }
        let t = self.timeouts;
        for (field, value) in [
            ("attempt", t.attempt),
            ("first_chunk", t.first_chunk),
            ("idle", t.idle),
            ("total", t.total),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::new(field, "must be longer than zero"));
            }
        }
        Ok(TimeoutLayer {
            timeouts: t,
            metrics: TimeoutMetrics::new("timeout", self.metrics_name),
        })
    }
}
