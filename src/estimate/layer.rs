use tower_layer::Layer;

use super::accuracy::EstimateAccuracy;
use super::chat::ChatEstimator;
use super::service::EstimateService;
use crate::error::ConfigError;
use crate::telemetry;

/// Estimates each `http::Request`'s tokens from its JSON body and inserts
/// them for the layers inside; optionally asks streamed chat requests for
/// their usage. See the [module docs](super).
///
/// Every request gets a [`TokenEstimate`](crate::TokenEstimate) (replacing
/// one it carried), an [`Estimate`](super::Estimate) and an
/// [`EstimateFeedback`](super::EstimateFeedback) in its extensions; the
/// response gets the feedback too, and [`UsageAdded`](super::UsageAdded)
/// when the layer added `include_usage`. A response that carries a
/// [`Usage`](crate::Usage) extension is recorded at once.
///
/// The layer is a small configuration value. Its [`EstimateAccuracy`] and
/// the estimator's [`CompletionHistory`](super::CompletionHistory) are
/// shared: clones of the layer, and every service it makes, record into
/// the same ones.
#[derive(Debug, Clone)]
pub struct EstimateLayer {
    estimator: ChatEstimator,
    accuracy: EstimateAccuracy,
    include_usage: bool,
}

impl EstimateLayer {
    /// The default [`ChatEstimator`], a new [`EstimateAccuracy`], and
    /// `include_usage` off.
    pub fn new() -> Self {
        EstimateLayer {
            estimator: ChatEstimator::new(),
            accuracy: EstimateAccuracy::new(),
            include_usage: false,
        }
    }

    /// A builder, to set the estimator and `include_usage`.
    pub fn builder() -> EstimateLayerBuilder {
        EstimateLayerBuilder::default()
    }

    /// How the layer estimates.
    pub fn estimator(&self) -> &ChatEstimator {
        &self.estimator
    }

    /// The estimates' error so far.
    pub fn accuracy(&self) -> &EstimateAccuracy {
        &self.accuracy
    }

    /// Whether the layer sets `stream_options.include_usage`.
    pub fn include_usage(&self) -> bool {
        self.include_usage
    }
}

impl Default for EstimateLayer {
    fn default() -> Self {
        EstimateLayer::new()
    }
}

impl<S> Layer<S> for EstimateLayer {
    type Service = EstimateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EstimateService::new(
            inner,
            self.estimator.clone(),
            self.accuracy.clone(),
            self.include_usage,
        )
    }
}

/// Builds an [`EstimateLayer`].
///
/// ```
/// use llm_sluice::estimate::{ChatEstimator, CompletionHistory, EstimateLayer};
///
/// let layer = EstimateLayer::builder()
///     .estimator(ChatEstimator::new().history(CompletionHistory::new()))
///     .include_usage(true)
///     .metrics_name("openai")
///     .build()?;
/// assert!(layer.include_usage());
/// # Ok::<(), llm_sluice::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct EstimateLayerBuilder {
    estimator: Option<ChatEstimator>,
    accuracy: Option<EstimateAccuracy>,
    include_usage: bool,
    metrics_name: Option<&'static str>,
}

impl EstimateLayerBuilder {
    /// The estimator (default [`ChatEstimator::new`]).
    pub fn estimator(mut self, estimator: ChatEstimator) -> Self {
        self.estimator = Some(estimator);
        self
    }

    /// Record into this accuracy, shared with its other users (default: a
    /// new one). Not together with [`metrics_name`](Self::metrics_name):
    /// name it with [`EstimateAccuracy::named`] instead.
    pub fn accuracy(mut self, accuracy: EstimateAccuracy) -> Self {
        self.accuracy = Some(accuracy);
        self
    }

    /// Sets `stream_options.include_usage: true` on streamed chat requests
    /// that do not say (default off; see
    /// [`ensure_include_usage`](super::ensure_include_usage) for the
    /// rules), on requests whose path ends in `/completions` only
    /// (`/v1/chat/completions`, `/v1/completions`): other APIs stream their
    /// usage anyway, and may refuse the field. A `content-length` header is
    /// set to the new length. Turn it on only where the response side also
    /// removes the usage chunk from the stream of a request marked
    /// [`UsageAdded`](super::UsageAdded): the caller did not ask for it.
    pub fn include_usage(mut self, on: bool) -> Self {
        self.include_usage = on;
        self
    }

    /// Adds `name="<name>"` to the layer's metrics.
    pub fn metrics_name(mut self, name: &'static str) -> Self {
        self.metrics_name = Some(name);
        self
    }

    /// The layer, or the first invalid setting.
    pub fn build(self) -> Result<EstimateLayer, ConfigError> {
        let accuracy = match (self.accuracy, self.metrics_name) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "metrics_name",
                    "name the EstimateAccuracy given to accuracy() instead",
                ))
            }
            (Some(accuracy), None) => accuracy,
            (None, Some(name)) => {
                telemetry::check_name(name)?;
                EstimateAccuracy::scoped(Some(name))
            }
            (None, None) => EstimateAccuracy::new(),
        };
        Ok(EstimateLayer {
            estimator: self.estimator.unwrap_or_default(),
            accuracy,
            include_usage: self.include_usage,
        })
    }
}
