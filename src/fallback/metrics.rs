//! The fallback layer's metric handles.

use std::sync::Once;

use super::policy::FallbackReason;
use crate::telemetry::{self, Counter, Scope};

pub(crate) const FALLBACKS_TOTAL: &str = "llm_sluice_fallbacks_total";

static DESCRIBE: Once = Once::new();

pub(crate) struct FallbackMetrics {
    by_reason: [Counter; 8],
}

impl FallbackMetrics {
    /// Handles labelled `layer="fallback"` (and `name`, if given).
    pub(crate) fn new(name: Option<&'static str>) -> Self {
        DESCRIBE.call_once(|| telemetry::describe("fallback"));
        let scope = Scope::new("fallback", name);
        FallbackMetrics {
            by_reason: FallbackReason::ALL.map(|reason| {
                Counter::new(FALLBACKS_TOTAL, &scope, &[("reason", reason.as_str())])
            }),
        }
    }

    pub(crate) fn fell_back(&self, reason: FallbackReason) {
        self.by_reason[reason.index()].increment(1);
    }
}
