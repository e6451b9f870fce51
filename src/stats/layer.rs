use tower_layer::Layer;

use super::service::StatsService;
use super::Stats;
use crate::classify::DefaultClassifier;

/// Records every request's outcome and end-to-end time into a [`Stats`].
///
/// Made by [`Stats::layer`] or [`StatsLayer::new`]; put it outermost so it
/// sees what the caller sees. Clones (and every service they wrap) record
/// into the same [`Stats`].
///
/// It is generic over a classifier like the other layers: a custom one
/// (see [`Classify`](crate::classify::Classify)) is set with
/// [`classifier`](Self::classifier).
#[derive(Debug, Clone)]
pub struct StatsLayer<C = DefaultClassifier> {
    stats: Stats,
    classifier: C,
}

impl StatsLayer {
    /// A layer recording into `stats`, with the default classifier.
    pub fn new(stats: Stats) -> Self {
        StatsLayer {
            stats,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> StatsLayer<C> {
    /// The same layer with another classifier.
    pub fn classifier<C2>(self, classifier: C2) -> StatsLayer<C2> {
        StatsLayer {
            stats: self.stats,
            classifier,
        }
    }

    /// The handle this layer records into.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl<S, C: Clone> Layer<S> for StatsLayer<C> {
    type Service = StatsService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        StatsService::new(inner, self.stats.clone(), self.classifier.clone())
    }
}
