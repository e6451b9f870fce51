//! llm-sluice
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod classify;
mod error;
pub mod hold;
#[allow(dead_code)]
mod partition;
pub mod rate;
pub mod request;
#[allow(dead_code)]
mod telemetry;

pub use classify::Usage;
pub use error::{ConfigError, Error, TimeoutKind};
pub use rate::RateLimitLayer;
pub use request::{Deadline, LlmRequest, PartitionKey, Priority, TokenEstimate};
