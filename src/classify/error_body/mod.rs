//! Reads the error body of non-2xx responses so a spent quota is recognised.
//!
//! Some 429s are not back-pressure but a spent quota or spending limit
//! (`insufficient_quota`, `enforced_spend_limit_reached`): they never succeed
//! on retry, and only the error body says so. [`ErrorBodyLayer`] reads the
//! body of every non-2xx `http::Response` up to a limit (64 KiB by default),
//! parses `{"error": {"code": ..., "type": ...}}` and inserts an
//! [`ErrorCode`](super::ErrorCode) into the response's extensions. The HTTP
//! classifier then reports such a 429 as
//! `RateLimited { quota_exhausted: true }`, which is not retryable.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use llm_sluice::classify::{ErrorBodyLayer, ErrorCode, LlmResponse, Outcome};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! const QUOTA: &str = r#"{"error": {"message": "You exceeded your current quota",
//!     "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}"#;
//! let upstream = tower::service_fn(|_: http::Request<()>| async {
//!     let response = http::Response::builder().status(429).body(Full::new(Bytes::from(QUOTA)))?;
//!     Ok::<_, tower::BoxError>(response)
//! });
//! let mut service = ServiceBuilder::new()
//!     .layer(ErrorBodyLayer::new())
//!     .service(upstream);
//!
//! let response = service.ready().await?.call(http::Request::new(())).await?;
//! let verdict = response.classification();
//! assert_eq!(verdict.outcome, Outcome::RateLimited { quota_exhausted: true });
//! assert!(!verdict.is_retryable());
//! assert_eq!(response.extensions().get::<ErrorCode>().unwrap().code(), Some("insufficient_quota"));
//!
//! // The body is handed on unchanged.
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, QUOTA);
//! # Ok(())
//! # }
//! ```
//!
//! # Where it goes in a stack
//!
//! Inside the retry layer and any other layer that classifies responses
//! (closer to the HTTP client than they are), so that the responses they see
//! already carry the [`ErrorCode`](super::ErrorCode):
//!
//! ```text
//! ServiceBuilder::new()
//!     .layer(retry)            // sees ErrorCode: never retries a quota 429
//!     .layer(circuit_breaker)
//!     .layer(ErrorBodyLayer::new())
//!     .service(http_client)
//! ```
//!
//! # What is read
//!
//! - 2xx responses pass untouched: their body, which may be a stream of
//!   minutes, is never read ahead.
//! - A non-2xx response whose body says it is empty, or whose size hint is
//!   already above the limit, passes untouched too.
//! - Otherwise the body is read before the response is handed on (error
//!   bodies are small and sent at once; an outer timeout layer bounds a slow
//!   one). Its content is handed on unchanged in an [`ErrorBody`]: only the
//!   chunk boundaries may differ.
//!
//! # Limits and failures
//!
//! No byte is lost in any case:
//!
//! - A body longer than the limit: reading stops at the first chunk past the
//!   limit; the response is handed on unparsed (no `ErrorCode`), and its body
//!   yields the chunks read, then the rest of the original body.
//! - A body that fails while being read: the response is handed on unparsed,
//!   and its body yields the chunks read, then the same error. The response
//!   future itself does not fail: the status and headers are still a valid
//!   answer for the classifier.
//! - A body that is not JSON or has no `error` object (an HTML page from a
//!   proxy) is handed on as it is, with no `ErrorCode`.
//!
//! JSON is parsed with `serde_json`, not scanned by hand: error bodies come
//! pretty-printed, with escapes and nested objects, from many different
//! servers.
//!
//! # Metrics
//!
//! `llm_sluice_error_bodies_total{layer="error_body", outcome}` counts the
//! non-2xx bodies the layer looked at: `parsed` (an `ErrorCode` was found),
//! `unparsed` (read whole, no error code), `too_large` (over the limit, by
//! size hint or while reading) and `failed` (the body failed while read).
//! A layer built with
//! [`metrics_name`](crate::classify::ErrorBodyLayerBuilder::metrics_name)
//! adds a `name` label.
//!
//! # Cancel safety
//!
//! Dropping the response future drops the inner future or the partly read
//! body, and nothing else: the layer holds no shared state.

pub mod future;

mod body;
mod layer;
mod metrics;
mod service;

pub use body::ErrorBody;
pub use layer::{ErrorBodyLayer, ErrorBodyLayerBuilder};
pub use service::ErrorBodyService;
