//! Token estimates, output estimates learned per model, and how far the
//! estimates were from actual usage.

mod accuracy;
#[cfg(feature = "http")]
mod chat;
mod history;
#[cfg(feature = "http")]
mod include_usage;
mod tokens;

pub use accuracy::{AccuracySummary, BudgetAccuracy, EstimateAccuracy};
#[cfg(feature = "http")]
pub use chat::{
    ChatEstimator, CHARS_PER_TOKEN, MAX_CHOICES, MEDIA_PART_TOKENS, MESSAGE_TOKENS, REPLY_TOKENS,
};
pub use history::{
    CompletionHistory, CompletionHistoryBuilder, DEFAULT_MAX_MODELS, DEFAULT_MIN_SAMPLES,
    DEFAULT_OUTPUT_TOKENS, DEFAULT_QUANTILE, DEFAULT_WINDOW, MAX_MODEL_NAME,
};
#[cfg(feature = "http")]
pub use include_usage::{ensure_include_usage, NotJsonObject, UsageAdded};
pub use tokens::{Estimate, MAX_ESTIMATE_TOKENS};
