//! How far estimates were from the usage that followed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Once};

use super::tokens::{cap, Estimate};
use crate::classify::Usage;
use crate::error::ConfigError;
use crate::telemetry::{self, Histogram, Scope};

pub(crate) const ESTIMATE_RATIO: &str = "llm_sluice_estimate_ratio";

/// Compares estimates with the usage the provider reported, as a metric and
/// as totals read in code.
///
/// Each [`record_actual`](Self::record_actual) adds one request:
///
/// - to the histogram `llm_sluice_estimate_ratio` (no unit: a ratio,
///   labelled `layer="estimate"` and `budget` = `total`, `input` or
///   `output`), the value `actual / estimate` of each budget: 1 is exact,
///   below 1 an over-estimate (the usual case for output, whose estimate is
///   a maximum), above 1 an under-estimate. A budget estimated at 0 records
///   no ratio (it would be infinite, or 0/0), but is counted below;
/// - to the totals of [`summary`](Self::summary), for users without a
///   metrics exporter.
///
/// The actual figures are `usage.prompt_tokens` (cached tokens included,
/// as the estimate counts the whole prompt), `usage.completion_tokens`, and
/// `usage.total_tokens` (or the sum of the two, if the total is 0), each
/// capped at [`MAX_ESTIMATE_TOKENS`](super::MAX_ESTIMATE_TOKENS).
///
/// Clones share the totals and the metric handles, which are registered
/// once, when the value is made: install the metrics recorder first.
///
/// ```
/// use llm_sluice::estimate::{Estimate, EstimateAccuracy};
/// use llm_sluice::Usage;
///
/// let accuracy = EstimateAccuracy::new();
/// accuracy.record_actual(&Estimate::new(100, 400), &Usage::new(90, 30));
/// let summary = accuracy.summary();
/// assert_eq!(summary.requests, 1);
/// assert_eq!(summary.total.estimated, 500);
/// assert_eq!(summary.total.actual, 120);
/// assert_eq!(summary.input.ratio(), Some(0.9));
/// assert_eq!(summary.output.under_estimated, 0);
/// ```
#[derive(Clone)]
pub struct EstimateAccuracy {
    shared: Arc<Shared>,
}

struct Shared {
    requests: AtomicU64,
    budgets: [Totals; 3],
    ratios: [Histogram; 3],
}

#[derive(Default)]
struct Totals {
    estimated: AtomicU64,
    actual: AtomicU64,
    under: AtomicU64,
}

/// The budgets in the order of [`Shared::budgets`], with their label values.
const BUDGETS: [&str; 3] = ["total", "input", "output"];

impl EstimateAccuracy {
    /// Totals at zero, and the metric handles labelled `layer="estimate"`.
    pub fn new() -> Self {
        EstimateAccuracy::scoped(None)
    }

    /// The same, with the label `name` on its metrics, to tell several
    /// apart.
    pub fn named(name: &'static str) -> Result<Self, ConfigError> {
        telemetry::check_name(name)?;
        Ok(EstimateAccuracy::scoped(Some(name)))
    }

    pub(crate) fn scoped(name: Option<&'static str>) -> Self {
        static DESCRIBE: Once = Once::new();
        DESCRIBE.call_once(|| telemetry::describe("estimate"));
        let scope = Scope::new("estimate", name);
        EstimateAccuracy {
            shared: Arc::new(Shared {
                requests: AtomicU64::new(0),
                budgets: Default::default(),
                ratios: BUDGETS
                    .map(|budget| Histogram::new(ESTIMATE_RATIO, &scope, &[("budget", budget)])),
            }),
        }
    }

    /// Adds one request's estimate and the usage it turned out to have.
    pub fn record_actual(&self, estimate: &Estimate, usage: &Usage) {
        let total = if usage.total_tokens == 0 {
            usage.prompt_tokens.saturating_add(usage.completion_tokens)
        } else {
            usage.total_tokens
        };
        let pairs = [
            (estimate.total, total),
            (estimate.input, usage.prompt_tokens),
            (estimate.output, usage.completion_tokens),
        ];
        let shared = &*self.shared;
        shared.requests.fetch_add(1, Relaxed);
        for (i, (estimated, actual)) in pairs.into_iter().enumerate() {
            let (estimated, actual) = (cap(estimated), cap(actual));
            let totals = &shared.budgets[i];
            add(&totals.estimated, estimated);
            add(&totals.actual, actual);
            if actual > estimated {
                totals.under.fetch_add(1, Relaxed);
            }
            if estimated > 0 {
                shared.ratios[i].record(actual as f64 / estimated as f64);
            }
        }
    }

    /// The totals so far.
    pub fn summary(&self) -> AccuracySummary {
        let shared = &*self.shared;
        let budget = |i: usize| {
            let t: &Totals = &shared.budgets[i];
            BudgetAccuracy {
                estimated: t.estimated.load(Relaxed),
                actual: t.actual.load(Relaxed),
                under_estimated: t.under.load(Relaxed),
            }
        };
        AccuracySummary {
            requests: shared.requests.load(Relaxed),
            total: budget(0),
            input: budget(1),
            output: budget(2),
        }
    }
}

/// Adds `n` to a total, stopping at `u64::MAX` rather than wrapping (2^24
/// records at [`MAX_ESTIMATE_TOKENS`](super::MAX_ESTIMATE_TOKENS) would
/// otherwise wrap it).
fn add(total: &AtomicU64, n: u64) {
    let _ = total.fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_add(n)));
}

impl Default for EstimateAccuracy {
    fn default() -> Self {
        EstimateAccuracy::new()
    }
}

impl fmt::Debug for EstimateAccuracy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EstimateAccuracy")
            .field("summary", &self.summary())
            .finish()
    }
}

/// The totals of an [`EstimateAccuracy`]. Totals of concurrent records are
/// read one at a time, so a snapshot taken during one may count it in some
/// budgets and not yet in others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccuracySummary {
    /// Requests recorded.
    pub requests: u64,
    /// Input and output together.
    pub total: BudgetAccuracy,
    /// Prompt tokens.
    pub input: BudgetAccuracy,
    /// Completion tokens.
    pub output: BudgetAccuracy,
}

/// One budget's totals in an [`AccuracySummary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetAccuracy {
    /// The estimates, summed.
    pub estimated: u64,
    /// The actual usage, summed.
    pub actual: u64,
    /// Requests that used more than their estimate.
    pub under_estimated: u64,
}

impl BudgetAccuracy {
    /// All usage over all estimates: below 1 the estimates charged more
    /// than was used. `None` before anything was estimated.
    pub fn ratio(&self) -> Option<f64> {
        (self.estimated > 0).then(|| self.actual as f64 / self.estimated as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_under_estimates() {
        let a = EstimateAccuracy::new();
        a.record_actual(&Estimate::new(10, 10), &Usage::new(20, 5));
        a.record_actual(&Estimate::new(0, 0), &Usage::new(1, 0));
        let s = a.summary();
        assert_eq!(s.requests, 2);
        assert_eq!(s.input.estimated, 10);
        assert_eq!(s.input.actual, 21);
        assert_eq!(s.input.under_estimated, 2);
        assert_eq!(s.output.under_estimated, 0);
        assert_eq!(s.total.under_estimated, 2);
        assert_eq!(s.total.ratio(), Some(26.0 / 20.0));
        assert_eq!(BudgetAccuracy::default().ratio(), None);
    }

    #[test]
    fn a_missing_total_is_the_sum_and_absurd_usage_is_capped() {
        let a = EstimateAccuracy::new();
        let usage = Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            total_tokens: 0,
            cached_input_tokens: 0,
        };
        a.record_actual(&Estimate::new(5, 5), &usage);
        assert_eq!(a.summary().total.actual, 10);
        a.record_actual(&Estimate::new(5, 5), &Usage::new(u64::MAX, u64::MAX));
        assert_eq!(
            a.summary().input.actual,
            7 + super::super::MAX_ESTIMATE_TOKENS
        );
        assert!(format!("{a:?}").contains("requests: 2"));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            EstimateAccuracy::named("").unwrap_err().field(),
            "metrics_name"
        );
        assert!(EstimateAccuracy::named("primary").is_ok());
    }
}
