//! The timeout layers' metric handles.

use std::sync::{Arc, Once};

use crate::error::TimeoutKind;
use crate::telemetry::{self, Counter, Kind, Unit};

pub(crate) const TIMEOUTS_TOTAL: &str = "llm_sluice_timeouts_total";

static DESCRIBE: Once = Once::new();

/// One counter per timeout kind, resolved once per layer.
#[derive(Clone)]
pub(crate) struct TimeoutMetrics {
    attempt: Counter,
    first_chunk: Counter,
    idle: Counter,
    total: Counter,
}

impl TimeoutMetrics {
    pub(crate) fn new(layer: &'static str) -> Arc<Self> {
        DESCRIBE.call_once(|| {
            telemetry::describe(&[(
                Kind::Counter,
                TIMEOUTS_TOTAL,
                Unit::Count,
                "Timeouts that fired, by kind: attempt, first_chunk, idle, total.",
            )])
        });
        let counter = |kind: TimeoutKind| {
            Counter::new(TIMEOUTS_TOTAL, &[("layer", layer), ("kind", kind.as_str())])
        };
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
