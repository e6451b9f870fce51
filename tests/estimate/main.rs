//! The estimator on real-looking bodies (exact figures).
#![cfg(feature = "http")]

use llm_sluice::estimate::{ChatEstimator, Estimate};
use serde_json::json;

mod fixtures;

fn estimate(body: &str) -> Estimate {
    ChatEstimator::new().estimate(body.as_bytes())
}
