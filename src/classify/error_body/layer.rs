use std::sync::Arc;

use tower_layer::Layer;

use super::metrics::Metrics;
use super::ErrorBodyService;
use crate::ConfigError;

/// The default limit on a buffered error body: 64 KiB.
pub(super) const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads the body of non-2xx `http::Response`s (up to a limit) and inserts
/// the API error's [`ErrorCode`](crate::classify::ErrorCode) into the
/// response's extensions. See the [module docs](super).
///
/// The layer is a small configuration value: clones share no state. Each
/// call to `Layer::layer` registers the layer's metric handles once; the
/// services it makes, and their clones, share them.
#[derive(Debug, Clone)]
pub struct ErrorBodyLayer {
    pub(super) max_body_bytes: usize,
    metrics_name: Option<&'static str>,
}

impl ErrorBodyLayer {
    /// A layer with the default limit of 64 KiB.
    pub const fn new() -> Self {
        ErrorBodyLayer {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            metrics_name: None,
        }
    }

    /// A builder, to set the limit.
    pub const fn builder() -> ErrorBodyLayerBuilder {
        ErrorBodyLayerBuilder {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            metrics_name: None,
        }
    }

    /// The most bytes of an error body that are buffered and parsed.
    pub const fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

impl Default for ErrorBodyLayer {
    fn default() -> Self {
        ErrorBodyLayer::new()
    }
}

impl<S> Layer<S> for ErrorBodyLayer {
    type Service = ErrorBodyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorBodyService::new(
            inner,
            self.max_body_bytes,
            Arc::new(Metrics::new(self.metrics_name)),
        )
    }
}

/// Builds an [`ErrorBodyLayer`].
///
/// ```
/// use llm_sluice::classify::ErrorBodyLayer;
///
/// let layer = ErrorBodyLayer::builder().max_body_bytes(16 * 1024).build()?;
/// assert_eq!(layer.max_body_bytes(), 16 * 1024);
///
/// let err = ErrorBodyLayer::builder().max_body_bytes(0).build().unwrap_err();
/// assert_eq!(err.field(), "max_body_bytes");
/// # Ok::<(), llm_sluice::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ErrorBodyLayerBuilder {
    max_body_bytes: usize,
    metrics_name: Option<&'static str>,
}

impl ErrorBodyLayerBuilder {
    /// The most bytes of an error body to buffer and parse (default 64 KiB).
    /// A body that is longer is passed on unparsed, with no byte lost. Must
    /// be at least 1.
    pub const fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// Adds the label `name="<name>"` to this layer's metrics, so two
    /// instances can be told apart. Fixed at build: no cost per request.
    /// Must not be empty. Default: no `name` label.
    pub const fn metrics_name(mut self, name: &'static str) -> Self {
        self.metrics_name = Some(name);
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<ErrorBodyLayer, ConfigError> {
        if let Some(name) = self.metrics_name {
            crate::telemetry::check_name(name)?;
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "max_body_bytes",
                "must be at least 1 byte (an error body cannot be parsed from nothing)",
            ));
        }
        Ok(ErrorBodyLayer {
            max_body_bytes: self.max_body_bytes,
            metrics_name: self.metrics_name,
        })
    }
}
