//! The estimator on real-looking bodies (exact figures), on hostile ones
//! (never a panic, always bounded), and `include_usage` case by case and
//! against a parse-and-edit.
#![cfg(feature = "http")]

use llm_sluice::estimate::{
    ensure_include_usage, ChatEstimator, CompletionHistory, Estimate, NotJsonObject,
    MAX_ESTIMATE_TOKENS,
};
use serde_json::{json, Value};

mod fixtures;
mod hostile;
mod include_usage;

fn estimate(body: &str) -> Estimate {
    ChatEstimator::new().estimate(body.as_bytes())
}
