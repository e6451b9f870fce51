use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::metrics::FallbackMetrics;
use super::policy::{DefaultPolicy, NoRewrite};
use super::service::{Fallback, Shared};
use crate::error::ConfigError;

/// Sends a request to a secondary service when the primary fails in a way
/// the policy names. See the [module docs](super).
///
/// Each service the layer makes gets a clone of the secondary; clones of the
/// layer and of its services share the policy, the rewriter and the metric
/// handles.
pub struct FallbackLayer<T, P = DefaultPolicy, R = NoRewrite> {
    secondary: T,
    shared: Arc<Shared<P, R>>,
}

impl<T> FallbackLayer<T> {
    /// Falls back to `secondary` on the [`DefaultPolicy`] triggers, sending it
    /// the same request; the secondary is named `"fallback"`.
    pub fn new(secondary: T) -> Self {
        FallbackLayer {
            secondary,
            shared: Arc::new(Shared::new(
                DefaultPolicy::new(),
                NoRewrite,
                "fallback",
                FallbackMetrics::new(None),
            )),
        }
    }

    /// A builder falling back to `secondary`.
    pub fn builder(secondary: T) -> FallbackLayerBuilder<T> {
        FallbackLayerBuilder {
            secondary,
            policy: DefaultPolicy::new(),
            rewrite: NoRewrite,
            name: "fallback",
            metrics_name: None,
        }
    }
}

impl<T: Clone, P, R> Clone for FallbackLayer<T, P, R> {
    fn clone(&self) -> Self {
        FallbackLayer {
            secondary: self.secondary.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T, P, R> fmt::Debug for FallbackLayer<T, P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, T: Clone, P, R> Layer<S> for FallbackLayer<T, P, R> {
    type Service = Fallback<S, T, P, R>;

    fn layer(&self, primary: S) -> Self::Service {
        Fallback::from_parts(primary, self.secondary.clone(), self.shared.clone())
    }
}

/// Builds a [`FallbackLayer`].
pub struct FallbackLayerBuilder<T, P = DefaultPolicy, R = NoRewrite> {
    secondary: T,
    policy: P,
    rewrite: R,
    name: &'static str,
    metrics_name: Option<&'static str>,
}

impl<T, P, R> fmt::Debug for FallbackLayerBuilder<T, P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayerBuilder")
            .field("name", &self.name)
            .field("metrics_name", &self.metrics_name)
            .finish_non_exhaustive()
    }
}

impl<T, C, R> FallbackLayerBuilder<T, DefaultPolicy<C>, R> {
    /// Classifies the primary's responses with `classifier` (default:
    /// [`DefaultClassifier`](crate::classify::DefaultClassifier)).
    pub fn classifier<C2>(self, classifier: C2) -> FallbackLayerBuilder<T, DefaultPolicy<C2>, R> {
        FallbackLayerBuilder {
            secondary: self.secondary,
            policy: self.policy.classifier(classifier),
            rewrite: self.rewrite,
            name: self.name,
            metrics_name: self.metrics_name,
        }
    }

    /// Also falls back when the primary is rate limited (default `false`).
    pub fn on_rate_limited(mut self, yes: bool) -> Self {
        self.policy = self.policy.on_rate_limited(yes);
        self
    }

    /// Also falls back when the primary's quota is exhausted (default
    /// `false`).
    pub fn on_quota_exhausted(mut self, yes: bool) -> Self {
        self.policy = self.policy.on_quota_exhausted(yes);
        self
    }
}

impl<T, P, R> FallbackLayerBuilder<T, P, R> {
    /// Replaces the policy that decides when to fall back.
    pub fn policy<P2>(self, policy: P2) -> FallbackLayerBuilder<T, P2, R> {
        FallbackLayerBuilder {
            secondary: self.secondary,
            policy,
            rewrite: self.rewrite,
            name: self.name,
            metrics_name: self.metrics_name,
        }
    }

    /// Rewrites the request before it goes to the secondary, e.g. to another
    /// model name. Any `Fn(Req) -> Req`.
    pub fn rewrite<R2>(self, rewrite: R2) -> FallbackLayerBuilder<T, P, R2> {
        FallbackLayerBuilder {
            secondary: self.secondary,
            policy: self.policy,
            rewrite,
            name: self.name,
            metrics_name: self.metrics_name,
        }
    }

    /// The name the [`ServedBy`](super::ServedBy) marker gives the secondary
    /// (default `"fallback"`). Not a metric label.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Adds the label `name="<name>"` to this layer's metrics, so two
    /// fallback layers can be told apart. Fixed at build: no cost per
    /// request. Must not be empty. Default: no `name` label.
    pub fn metrics_name(mut self, name: &'static str) -> Self {
        self.metrics_name = Some(name);
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<FallbackLayer<T, P, R>, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if let Some(name) = self.metrics_name {
            crate::telemetry::check_name(name)?;
        }
        Ok(FallbackLayer {
            secondary: self.secondary,
            shared: Arc::new(Shared::new(
                self.policy,
                self.rewrite,
                self.name,
                FallbackMetrics::new(self.metrics_name),
            )),
        })
    }
}
