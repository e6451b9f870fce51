//! The retry layer's metric handles, registered once per service.

use crate::classify::Outcome;
use crate::telemetry::{self, Counter, Histogram, Scope};

pub(crate) const ATTEMPTS: &str = "llm_sluice_retry_attempts_total";
pub(crate) const RETRIES: &str = "llm_sluice_retries_total";
pub(crate) const SERVER_DELAY: &str = "llm_sluice_retry_server_delay_seconds";
pub(crate) const GAVE_UP: &str = "llm_sluice_retry_gave_up_total";

/// Why a retryable result was returned without retrying: the `reason` label
/// of `llm_sluice_retry_gave_up_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// `max_retries` retries were made already.
    MaxRetries = 0,
    /// The next attempt could not start before the request's deadline.
    Deadline = 1,
    /// The server asked for a delay above the cap (with `OverCap::Fail`).
    OverCap = 2,
    /// The request could not be replayed.
    NotReplayable = 3,
    /// The retry budget was spent.
    Budget = 4,
}

impl GaveUp {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            GaveUp::MaxRetries => "max_retries",
            GaveUp::Deadline => "deadline",
            GaveUp::OverCap => "over_cap",
            GaveUp::NotReplayable => "not_replayable",
            GaveUp::Budget => "budget",
        }
    }
}

const GAVE_UP_ALL: [GaveUp; 5] = [
    GaveUp::MaxRetries,
    GaveUp::Deadline,
    GaveUp::OverCap,
    GaveUp::NotReplayable,
    GaveUp::Budget,
];

const OUTCOMES: [Outcome; 9] = [
    Outcome::Success,
    Outcome::RateLimited {
        quota_exhausted: false,
    },
    Outcome::RateLimited {
        quota_exhausted: true,
    },
    Outcome::Overloaded,
    Outcome::ServerError,
    Outcome::Timeout,
    Outcome::Transport,
    Outcome::ClientError,
    Outcome::Rejected,
];

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Success => 0,
        Outcome::RateLimited {
            quota_exhausted: false,
        } => 1,
        Outcome::RateLimited {
            quota_exhausted: true,
        } => 2,
        Outcome::Overloaded => 3,
        Outcome::ServerError => 4,
        Outcome::Timeout => 5,
        Outcome::Transport => 6,
        Outcome::ClientError => 7,
        Outcome::Rejected => 8,
    }
}

pub(crate) struct Metrics {
    attempts: Counter,
    retries: [Counter; 9],
    server_delay: Histogram,
    gave_up: [Counter; 5],
}

impl Metrics {
    /// Handles labelled `layer="retry"` (and `name`, if given).
    pub(crate) fn new(name: Option<&'static str>) -> Self {
        let scope = Scope::new("retry", name);
        Metrics {
            attempts: Counter::new(ATTEMPTS, &scope, &[]),
            retries: OUTCOMES.map(|o| Counter::new(RETRIES, &scope, &[("reason", o.as_str())])),
            server_delay: Histogram::new(SERVER_DELAY, &scope, &[]),
            gave_up: GAVE_UP_ALL.map(|g| Counter::new(GAVE_UP, &scope, &[("reason", g.as_str())])),
        }
    }

    #[inline]
    pub(crate) fn attempt(&self) {
        self.attempts.increment(1);
    }

    pub(crate) fn retry(&self, outcome: Outcome) {
        self.retries[outcome_index(outcome)].increment(1);
    }

    pub(crate) fn server_delay(&self, delay: std::time::Duration) {
        self.server_delay.record_duration(delay);
    }

    pub(crate) fn gave_up(&self, why: GaveUp) {
        self.gave_up[why as usize].increment(1);
    }
}

pub(crate) fn describe() {
    telemetry::describe("retry");
}
