//! Composable [`tower`] layers that keep services calling LLM APIs
//! (OpenAI-compatible chat completions and the like) inside their limits:
//! fast, fair, and never losing a request.
//!
//! Each layer works alone and composes with [`tower::ServiceBuilder`]:
//!
//! | layer | what it does |
//! |---|---|
//! | [`concurrency`] | at most N calls in flight, a bounded priority queue with aging, load shedding |
//! | [`rate`] | exact sliding-window requests and tokens per minute, per partition and globally |
//! | [`breaker`] | fails fast while an upstream is failing; careful half-open probes |
//! | [`timeout`] | attempt, first-chunk, idle and total timeouts; request deadlines |
//! | [`retry`] | retries that obey the server's delay, with full jitter and a budget |
//! | [`fallback`] | a second service when the first is open, overloaded or failing |
//! | [`stats`] | outcome counts, live state and latency percentiles, read in code |
//! | [`estimate`] | token estimates from JSON request bodies, output learned per model, the estimates' error; `include_usage` on streamed requests |
//!
//! Outermost first, the recommended order is deadline → fallback → retry →
//! breaker → rate admission → concurrency → rate dispatch → attempt timeout
//! → the client. The rate window is split around the queue: a request waits
//! for room before it queues, holding no permit, and its reservation is
//! dated when it is sent, not when it queued; the attempt timeout sits
//! inside the breaker so a hung upstream's timeouts trip it. [`LlmStack`] builds that order from one
//! [`StackConfig`] (see [`stack`] for the reasons in full), and
//! [`ServiceBuilderExt`] adds the layers one at a time.
//!
//! # What the layers know about a request and a response
//!
//! Requests describe themselves through [`LlmRequest`]: a token estimate, a
//! [`Priority`], a [`PartitionKey`] (API key, tenant or model) and a deadline.
//! `http::Request` carries them as typed extensions; a typed client implements
//! the trait; anything else is wrapped in [`request::Annotated`].
//!
//! Results are classified once, the same way for every layer, by
//! [`classify::Classify`]: success with its [`Usage`], rate limited with the
//! server's delay, overloaded, server error, timeout, transport error, client
//! error. The default classifier follows the status codes and headers of
//! OpenAI-compatible APIs.
//!
//! What the provider really counted arrives in the response body, often at
//! the end of a stream: [`meter`] (feature `http`) reads it from JSON and
//! server-sent-event bodies as they stream past, in bounded memory.
//!
//! # Streams hold their permits
//!
//! An LLM response can stream for minutes after its headers. Layers that hold
//! capacity for the length of a call keep it until the response *body* ends,
//! fails or is dropped ([`hold`]).
//!
//! # Errors
//!
//! Layers return [`tower::BoxError`]; this crate's own errors are [`Error`],
//! recovered with `err.downcast_ref::<llm_sluice::Error>()`. Invalid settings
//! are a [`ConfigError`] from each builder's `build()`, never a panic.
//!
//! # Time
//!
//! All layers read tokio's clock, so `tokio::time::pause()` drives them: a test
//! or a simulation of an hour of traffic runs in well under a second.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod breaker;
pub mod classify;
mod clock;
pub mod concurrency;
mod error;
pub mod estimate;
pub mod fallback;
pub mod hold;
pub mod meter;
#[allow(dead_code)]
mod partition;
pub mod rate;
pub mod request;
pub mod retry;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stack;
pub mod stats;
mod telemetry;
pub mod timeout;

/// Every metric the crate can emit, with its type, unit, labels and
/// meaning: what the naming test checks and the README table lists. Not a
/// stable API.
#[doc(hidden)]
pub mod __metrics {
    pub use crate::telemetry::{MetricDef, MetricKind, MetricUnit, CATALOG};
}

pub use breaker::{CircuitBreakerLayer, CircuitState};
#[cfg(feature = "http")]
pub use classify::ErrorBodyLayer;
pub use classify::{ErrorCode, Usage};
pub use concurrency::ConcurrencyLimitLayer;
pub use error::{ConfigError, Error, TimeoutKind};
#[cfg(feature = "http")]
pub use estimate::EstimateLayer;
pub use fallback::FallbackLayer;
pub use rate::RateLimitLayer;
pub use request::{Deadline, LlmRequest, PartitionKey, Priority, TokenEstimate};
pub use retry::{RetryBudget, RetryLayer};
pub use stack::{LlmStack, ServiceBuilderExt, StackConfig};
pub use stats::{Stats, StatsLayer};
pub use timeout::{DeadlineLayer, TimeoutLayer};
