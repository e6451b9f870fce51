//! Token estimates, and output estimates learned per model.

mod history;
mod tokens;

pub use history::{
    CompletionHistory, CompletionHistoryBuilder, DEFAULT_MAX_MODELS, DEFAULT_MIN_SAMPLES,
    DEFAULT_OUTPUT_TOKENS, DEFAULT_QUANTILE, DEFAULT_WINDOW, MAX_MODEL_NAME,
};
pub use tokens::{Estimate, MAX_ESTIMATE_TOKENS};
