use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

use parking_lot::Mutex;
use tower_layer::Layer;

use super::backoff::{Backoff, Jitter};
use super::budget::RetryBudget;
use super::metrics::{self, Metrics};
use super::policy::OverCap;
use super::replay::CloneRequest;
use super::service::{Config, Retry, Shared};
use crate::classify::DefaultClassifier;
use crate::ConfigError;

/// Retries failed calls with backoff, obeying the server's delays, a shared
/// budget and the request's deadline. See the [module docs](super).
///
/// # Clones
///
/// Cloning the layer, or the services it makes, shares one [`RetryBudget`]
/// and one random source: all of them draw from the same budget, so the
/// budget bounds the retries of the whole process part that uses it. Give
/// several layers the same budget with [`RetryLayerBuilder::budget`]. Each
/// service the layer makes registers its own metric handles (same names).
pub struct RetryLayer<C = DefaultClassifier, P = CloneRequest> {
    config: Config,
    classifier: C,
    replay: P,
    budget: RetryBudget,
    rng: Arc<Mutex<fastrand::Rng>>,
    metrics_name: Option<&'static str>,
}

impl RetryLayer {
    /// A builder with the defaults: 2 retries, full-jitter backoff from 0.5 s
    /// to 8 s, server delays honoured up to 60 s (longer ones returned as
    /// they are), the default [`RetryBudget`], no total timeout.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder::new()
    }
}

impl<C: Clone, P: Clone> Clone for RetryLayer<C, P> {
    fn clone(&self) -> Self {
        RetryLayer {
            config: self.config,
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
            budget: self.budget.clone(),
            rng: self.rng.clone(),
            metrics_name: self.metrics_name,
        }
    }
}

impl<C, P> fmt::Debug for RetryLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<C, P> RetryLayer<C, P> {
    /// The budget this layer's services draw from.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }
}

impl<S: Clone, C: Clone, P: Clone> Layer<S> for RetryLayer<C, P> {
    type Service = Retry<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(
            inner.clone(),
            Arc::new(Shared {
                template: parking_lot::Mutex::new(inner),
                config: self.config,
                classifier: self.classifier.clone(),
                replay: self.replay.clone(),
                budget: self.budget.clone(),
                rng: self.rng.clone(),
                metrics: Metrics::new(self.metrics_name),
            }),
        )
    }
}

/// Builds a [`RetryLayer`]; every setting is checked by [`build`](Self::build).
pub struct RetryLayerBuilder<C = DefaultClassifier, P = CloneRequest> {
    max_retries: u32,
    base: Duration,
    cap: Duration,
    jitter: Jitter,
    max_server_delay: Duration,
    over_cap: OverCap,
    total_timeout: Option<Duration>,
    budget: Option<RetryBudget>,
    seed: Option<u64>,
    metrics_name: Option<&'static str>,
    classifier: C,
    replay: P,
}

impl<C, P> fmt::Debug for RetryLayerBuilder<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.base)
            .field("backoff_cap", &self.cap)
            .field("jitter", &self.jitter)
            .field("max_server_delay", &self.max_server_delay)
            .field("over_cap", &self.over_cap)
            .field("total_timeout", &self.total_timeout)
            .field("budget", &self.budget)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl RetryLayerBuilder {
    fn new() -> Self {
        let backoff = Backoff::default();
        RetryLayerBuilder {
            max_retries: 2,
            base: backoff.base(),
            cap: backoff.cap(),
            jitter: backoff.jitter(),
            max_server_delay: Duration::from_secs(60),
            over_cap: OverCap::Fail,
            total_timeout: None,
            budget: None,
            seed: None,
            metrics_name: None,
            classifier: DefaultClassifier,
            replay: CloneRequest,
        }
    }
}

impl<C, P> RetryLayerBuilder<C, P> {
    /// Retries after the first attempt (default 2, as the official SDKs; 0
    /// turns retrying off). A request makes at most `1 + max_retries` attempts.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The computed delay before the first retry, before jitter (default
    /// 0.5 s). Must be greater than zero and at most 31 days.
    pub fn backoff_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The largest computed delay (default 8 s). Must not be below the base,
    /// and at most 31 days.
    pub fn backoff_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// How computed delays are jittered (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The longest server-requested delay that is honoured (default 60 s,
    /// the Node and Anthropic SDKs' choice; the Python SDK uses 120 s). What
    /// happens above it is [`over_cap`](Self::over_cap). Must be greater
    /// than zero and at most 31 days.
    pub fn max_server_delay(mut self, cap: Duration) -> Self {
        self.max_server_delay = cap;
        self
    }

    /// What to do when the server asks for more than `max_server_delay`
    /// (default [`OverCap::Fail`]: return the result as it is).
    pub fn over_cap(mut self, over_cap: OverCap) -> Self {
        self.over_cap = over_cap;
        self
    }

    /// Sets a deadline of `now + total` on requests that have none, when
    /// they enter the layer, so retries and every layer inside (queues, rate
    /// windows) stop in time. Off by default. Must be greater than zero and
    /// at most 31 days.
    pub fn total_timeout(mut self, total: Duration) -> Self {
        self.total_timeout = Some(total);
        self
    }

    /// The budget to draw retries from (default: a new
    /// [`RetryBudget::default`]). Pass a clone of one budget to several layers
    /// to share it.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Seeds the random source of the jitter, so delays are reproducible
    /// (default: seeded from the system). With a seed, draws are taken in the
    /// order retries are decided across all clones: one request at a time
    /// gives an exact sequence.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds the label `name="<name>"` to this layer's metrics, so two
    /// instances (a primary and a fallback stack) can be told apart. Fixed
    /// at build: no cost per request. Must not be empty. Default: no `name`
    /// label.
    pub fn metrics_name(mut self, name: &'static str) -> Self {
        self.metrics_name = Some(name);
        self
    }

    /// Decides what is retried and reads the server's delay (default
    /// [`DefaultClassifier`]). Wrap it in [`QuotaAware`](super::QuotaAware)
    /// for typed responses that carry an error code, or pass a closure that
    /// reads a buffered error body.
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayerBuilder<C2, P> {
        RetryLayerBuilder {
            max_retries: self.max_retries,
            base: self.base,
            cap: self.cap,
            jitter: self.jitter,
            max_server_delay: self.max_server_delay,
            over_cap: self.over_cap,
            total_timeout: self.total_timeout,
            budget: self.budget,
            seed: self.seed,
            metrics_name: self.metrics_name,
            classifier,
            replay: self.replay,
        }
    }

    /// How requests are copied for another attempt (default
    /// [`CloneRequest`]). Use [`ReplayBodies`](super::ReplayBodies) for
    /// `http::Request<ReplayBody<B>>`, or a closure `Fn(&Req) -> Option<Req>`.
    pub fn replay<P2>(self, replay: P2) -> RetryLayerBuilder<C, P2> {
        RetryLayerBuilder {
            max_retries: self.max_retries,
            base: self.base,
            cap: self.cap,
            jitter: self.jitter,
            max_server_delay: self.max_server_delay,
            over_cap: self.over_cap,
            total_timeout: self.total_timeout,
            budget: self.budget,
            seed: self.seed,
            metrics_name: self.metrics_name,
            classifier: self.classifier,
            replay,
        }
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<RetryLayer<C, P>, ConfigError> {
        // Each duration is checked alone first: a base of 32 days is out of
        // range, and must be reported as the base, not as a cap below it.
        use crate::error::check_duration;
        check_duration("backoff_base", self.base)?;
        check_duration("backoff_cap", self.cap)?;
        check_duration("max_server_delay", self.max_server_delay)?;
        if let Some(total) = self.total_timeout {
            check_duration("total_timeout", total)?;
        }
        let backoff = Backoff::new(self.base, self.cap, self.jitter)?;
        if self.max_server_delay.is_zero() {
            return Err(ConfigError::new(
                "max_server_delay",
                "must be greater than zero",
            ));
        }
        if self.total_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                "total_timeout",
                "must be greater than zero",
            ));
        }
        if let Some(name) = self.metrics_name {
            crate::telemetry::check_name(name)?;
        }
        static DESCRIBE: Once = Once::new();
        DESCRIBE.call_once(metrics::describe);
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Ok(RetryLayer {
            config: Config {
                max_retries: self.max_retries,
                backoff,
                max_server_delay: self.max_server_delay,
                over_cap: self.over_cap,
                total_timeout: self.total_timeout,
            },
            classifier: self.classifier,
            replay: self.replay,
            budget: self.budget.unwrap_or_default(),
            rng: Arc::new(Mutex::new(rng)),
            metrics_name: self.metrics_name,
        })
    }
}
