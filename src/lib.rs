//! llm-sluice
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod classify;
pub mod concurrency;
mod error;
pub mod hold;
#[allow(dead_code)]
mod partition;
pub mod request;
#[allow(dead_code)]
mod telemetry;

pub use classify::Usage;
pub use concurrency::ConcurrencyLimitLayer;
pub use error::{ConfigError, Error, TimeoutKind};
pub use request::{Deadline, LlmRequest, PartitionKey, Priority, TokenEstimate};
