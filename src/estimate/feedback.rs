//! What the response side reports back about one estimated request.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::accuracy::EstimateAccuracy;
use super::history::CompletionHistory;
use super::tokens::Estimate;
use crate::classify::Usage;

/// One request's estimate, and where its actual usage goes once known.
///
/// [`EstimateLayer`](super::EstimateLayer) inserts it into the request's
/// extensions and into the response's. Whoever learns the usage — the
/// layer itself when the response carries a [`Usage`] extension, or code
/// reading it from the response body when the body ends — calls
/// [`record`](Self::record) with it, which
///
/// - adds the request to the layer's [`EstimateAccuracy`]
///   (`llm_sluice_estimate_ratio` and the summary), and
/// - if the request set no maximum output and the estimator has a
///   [`CompletionHistory`], teaches it the completion of the request's
///   model (per choice: `completion_tokens / n`, rounded up).
///
/// Only the first call records; clones share that, so the layer and a body
/// reader cannot count one request twice.
#[derive(Clone)]
pub struct EstimateFeedback {
    inner: Arc<Inner>,
}

struct Inner {
    estimate: Estimate,
    accuracy: EstimateAccuracy,
    learn: Option<Learn>,
    recorded: AtomicBool,
}

struct Learn {
    history: CompletionHistory,
    model: Box<str>,
    choices: u64,
}

impl EstimateFeedback {
    pub(crate) fn new(
        estimate: Estimate,
        accuracy: EstimateAccuracy,
        learn: Option<(Box<str>, u64)>,
        history: Option<&CompletionHistory>,
    ) -> Self {
        let learn = learn.zip(history).map(|((model, choices), history)| Learn {
            history: history.clone(),
            model,
            choices,
        });
        EstimateFeedback {
            inner: Arc::new(Inner {
                estimate,
                accuracy,
                learn,
                recorded: AtomicBool::new(false),
            }),
        }
    }

    /// The request's estimate.
    pub fn estimate(&self) -> Estimate {
        self.inner.estimate
    }

    /// Whether the completion will teach a [`CompletionHistory`] (the
    /// request set no maximum, and the estimator has one).
    pub fn learns(&self) -> bool {
        self.inner.learn.is_some()
    }

    /// Reports the request's actual usage. Returns whether this call
    /// recorded it (`false` if an earlier one did).
    pub fn record(&self, usage: &Usage) -> bool {
        let inner = &*self.inner;
        if inner.recorded.swap(true, Ordering::AcqRel) {
            return false;
        }
        inner.accuracy.record_actual(&inner.estimate, usage);
        if let Some(learn) = &inner.learn {
            let per_choice = usage.completion_tokens.div_ceil(learn.choices.max(1));
            learn.history.record(&learn.model, per_choice);
        }
        true
    }
}

impl fmt::Debug for EstimateFeedback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EstimateFeedback")
            .field("estimate", &self.inner.estimate)
            .field("learns", &self.learns())
            .field("recorded", &self.inner.recorded.load(Ordering::Relaxed))
            .finish()
    }
}
