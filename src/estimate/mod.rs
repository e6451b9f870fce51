//! Token estimates from request bodies, learned output estimates, and how
//! far the estimates were from actual usage.
//!
//! A rate window charges a request its estimate when it is admitted, before
//! anything is known of its usage; OpenAI's TPM limit counts requests the
//! same way, from the prompt's characters and `max_tokens`. This module
//! makes that estimate:
//!
//! - [`ChatEstimator`] reads an OpenAI-compatible JSON body (Chat
//!   Completions, and the Responses and Anthropic Messages shapes) and
//!   returns an [`Estimate`]: input and output apart, so budgets metered
//!   separately are charged their part. The formula, its constants, and
//!   what it does with hostile bodies are in its docs.
//! - [`CompletionHistory`] learns, per model, a high quantile of recent
//!   completion lengths, to estimate the output of requests that set no
//!   maximum, in bounded memory.
//! - [`EstimateAccuracy`] compares estimates with the usage that followed:
//!   the histogram `llm_sluice_estimate_ratio` (`actual / estimate`, by
//!   `budget`: `total`, `input`, `output`) and totals read in code.
//! - [`ensure_include_usage`] (feature `http`) asks a streamed chat
//!   request for the usage chunk that streams otherwise lack.
//! - [`EstimateLayer`] (feature `http`) does all of it for
//!   `http::Request`s: it inserts the [`TokenEstimate`](crate::TokenEstimate)
//!   the rate layer charges, and the [`Estimate`] and an
//!   [`EstimateFeedback`] the response side reports usage to.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! use bytes::Bytes;
//! use llm_sluice::estimate::{ChatEstimator, CompletionHistory, Estimate, EstimateFeedback, EstimateLayer};
//! use llm_sluice::{LlmRequest, Usage};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let history = CompletionHistory::new();
//! let layer = EstimateLayer::builder()
//!     .estimator(ChatEstimator::new().history(history.clone()))
//!     .build()?;
//! let accuracy = layer.accuracy().clone();
//!
//! // The client: here one that answers with the usage already parsed.
//! let client = tower::service_fn(|req: http::Request<Bytes>| async move {
//!     // Inner layers (the rate layer) read the estimate through `LlmRequest`.
//!     assert_eq!(req.token_estimate(), 19 + 100);
//!     let mut res = http::Response::new(());
//!     res.extensions_mut().insert(Usage::new(21, 40));
//!     Ok::<_, tower::BoxError>(res)
//! });
//! let mut service = ServiceBuilder::new()
//!     .layer(layer)
//!     // ... the rate layer and the others go here ...
//!     .service(client);
//!
//! let body = r#"{"model": "gpt-4o-mini", "max_tokens": 100, "messages": [
//!     {"role": "system", "content": "You are terse."},
//!     {"role": "user", "content": "Name three primes."}]}"#;
//! let res = service.ready().await?.call(http::Request::new(Bytes::from(body))).await?;
//!
//! // The response carries the feedback; this usage was recorded already.
//! let feedback = res.extensions().get::<EstimateFeedback>().unwrap();
//! assert_eq!(feedback.estimate(), Estimate::new(19, 100));
//! assert!(!feedback.record(&Usage::new(21, 40))); // recorded once only
//! let summary = accuracy.summary();
//! assert_eq!((summary.requests, summary.input.actual, summary.output.actual), (1, 21, 40));
//! # Ok(())
//! # }
//! ```
//!
//! # Where the usage comes from
//!
//! The layer records a [`Usage`](crate::Usage) the response carries in its
//! extensions when it arrives (typed clients, the simulated provider).
//! Usage that arrives in the body — always, for a response that crossed a
//! real HTTP connection, and at the end of a stream — is reported by the
//! code that reads it, through the response's [`EstimateFeedback`]: one
//! call records the accuracy and teaches the history, and only the first
//! call counts.
//!
//! # Where it goes in a stack
//!
//! Outside every layer that reads the estimate (the rate layer), so they
//! see it; outside the retry layer too, so a retried request is estimated
//! once. The body must be buffered: the layer takes `http::Request<B>` for
//! any `B: AsRef<[u8]> + From<Bytes>` (`Bytes`, `Vec<u8>`); map it to the
//! client's body type after the layer
//! (`.map_request(|r: http::Request<Bytes>| r.map(Full::new))`).
//!
//! # Panics
//!
//! Nothing in this module panics, whatever the body.

mod accuracy;
#[cfg(feature = "http")]
mod chat;
#[cfg(feature = "http")]
mod feedback;
mod history;
#[cfg(feature = "http")]
mod include_usage;
#[cfg(feature = "http")]
mod layer;
#[cfg(feature = "http")]
mod service;
mod tokens;

pub use accuracy::{AccuracySummary, BudgetAccuracy, EstimateAccuracy};
#[cfg(feature = "http")]
pub use chat::{
    ChatEstimator, CHARS_PER_TOKEN, MAX_CHOICES, MEDIA_PART_TOKENS, MESSAGE_TOKENS, REPLY_TOKENS,
};
#[cfg(feature = "http")]
pub use feedback::EstimateFeedback;
pub use history::{
    CompletionHistory, CompletionHistoryBuilder, DEFAULT_MAX_MODELS, DEFAULT_MIN_SAMPLES,
    DEFAULT_OUTPUT_TOKENS, DEFAULT_QUANTILE, DEFAULT_WINDOW, MAX_MODEL_NAME,
};
#[cfg(feature = "http")]
pub use include_usage::{ensure_include_usage, NotJsonObject, UsageAdded};
#[cfg(feature = "http")]
pub use layer::{EstimateLayer, EstimateLayerBuilder};
#[cfg(feature = "http")]
pub use service::{EstimateService, ResponseFuture};
pub use tokens::{Estimate, MAX_ESTIMATE_TOKENS};
