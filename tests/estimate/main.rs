//! The estimator on real-looking bodies (exact figures), on hostile ones
//! (never a panic, always bounded), `include_usage` case by case and
//! against a parse-and-edit, the learned output estimate, and the layer:
//! what it inserts, rewrites and records.
#![cfg(feature = "http")]

use bytes::Bytes;
use llm_sluice::estimate::{
    ensure_include_usage, ChatEstimator, CompletionHistory, Estimate, EstimateFeedback,
    EstimateLayer, NotJsonObject, UsageAdded, MAX_ESTIMATE_TOKENS,
};
use llm_sluice::{LlmRequest, TokenEstimate, Usage};
use serde_json::{json, Value};

mod fixtures;
mod hostile;
mod include_usage;
mod layer;
mod learned;

fn estimate(body: &str) -> Estimate {
    ChatEstimator::new().estimate(body.as_bytes())
}
