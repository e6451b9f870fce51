//! The fallback layer's metric handles.

use std::sync::Once;

use super::policy::FallbackReason;
use crate::telemetry::{self, Counter, Kind, Unit};

pub(crate) const FALLBACKS_TOTAL: &str = "llm_sluice_fallbacks_total";

static DESCRIBE: Once = Once::new();

pub(crate) struct FallbackMetrics {
    by_reason: [Counter; 8],
}

impl FallbackMetrics {
    pub(crate) fn new() -> Self {
        DESCRIBE.call_once(|| {
            telemetry::describe(&[(
                Kind::Counter,
                FALLBACKS_TOTAL,
                Unit::Count,
                "Requests sent to a fallback service, by the primary's failure reason.",
            )])
        });
        FallbackMetrics {
            by_reason: FallbackReason::ALL.map(|reason| {
                Counter::new(
                    FALLBACKS_TOTAL,
                    &[("layer", "fallback"), ("reason", reason.as_str())],
                )
            }),
        }
    }

    pub(crate) fn fell_back(&self, reason: FallbackReason) {
        self.by_reason[reason.index()].increment(1);
    }
}
