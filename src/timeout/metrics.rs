//! The timeout layers' metric handles.

use std::sync::{Arc, Once};

use crate::error::TimeoutKind;
use crate::telemetry::{self, Counter, Scope};

pub(crate) const TIMEOUTS_TOTAL: &str = "llm_sluice_timeouts_total";

static DESCRIBE: Once = Once::new();

/// One counter per timeout kind (the `reason` label), resolved once per
/// layer.
#[derive(Clone)]
pub(crate) struct TimeoutMetrics {
    attempt: Counter,
    first_chunk: Counter,
    idle: Counter,
    total: Counter,
}

impl TimeoutMetrics {
    /// Handles labelled `layer="<layer>"` (`timeout` or `deadline`) and
    /// `name`, if given.
    pub(crate) fn new(layer: &'static str, name: Option<&'static str>) -> Arc<Self> {
        DESCRIBE.call_once(|| {
            telemetry::describe("timeout");
            telemetry::describe("deadline");
        });
        let scope = Scope::new(layer, name);
        let counter =
            |kind: TimeoutKind| Counter::new(TIMEOUTS_TOTAL, &scope, &[("reason", kind.as_str())]);
        Arc::new(TimeoutMetrics {
            attempt: counter(TimeoutKind::Attempt),
            first_chunk: counter(TimeoutKind::FirstChunk),
            idle: counter(TimeoutKind::Idle),
            total: counter(TimeoutKind::Total),
        })
    }

    pub(crate) fn fired(&self, kind: TimeoutKind) {
        match kind {
            TimeoutKind::Attempt => self.attempt.increment(1),
            TimeoutKind::FirstChunk => self.first_chunk.increment(1),
            TimeoutKind::Idle => self.idle.increment(1),
            TimeoutKind::Total => self.total.increment(1),
        }
    }
}
