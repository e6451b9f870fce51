use std::fmt;
use std::sync::Once;

use crate::telemetry::{describe, Counter, Scope};

const ERROR_BODIES: &str = "llm_sluice_error_bodies_total";

/// The layer's counters, registered once per layer instance.
#[derive(Clone)]
pub(super) struct Metrics {
    /// Read whole; an `ErrorCode` was found.
    pub(super) parsed: Counter,
    /// Read whole; not JSON or no `error` object.
    pub(super) unparsed: Counter,
    /// Longer than the limit (by size hint or while reading); not parsed.
    pub(super) too_large: Counter,
    /// The body failed while it was read.
    pub(super) failed: Counter,
}

impl Metrics {
    /// Handles labelled `layer="error_body"` (and `name`, if given).
    pub(super) fn new(name: Option<&'static str>) -> Self {
        static DESCRIBE: Once = Once::new();
        DESCRIBE.call_once(|| describe("error_body"));
        let scope = Scope::new("error_body", name);
        let counter =
            |outcome: &'static str| Counter::new(ERROR_BODIES, &scope, &[("outcome", outcome)]);
        Metrics {
            parsed: counter("parsed"),
            unparsed: counter("unparsed"),
            too_large: counter("too_large"),
            failed: counter("failed"),
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}
