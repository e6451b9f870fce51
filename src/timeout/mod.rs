//! Timeouts that bound an attempt, a streamed body and a whole request.
//!
//! [`TimeoutLayer`] puts up to four limits on each call, all on tokio's clock:
//!
//! | setting | measured from | until | fails with |
//! |---|---|---|---|
//! | `attempt` | the call | the response (headers) | `Timeout { kind: Attempt }` (retryable) |
//! | `first_chunk` | the response | the first body chunk | `Timeout { kind: FirstChunk }` |
//! | `idle` | a body chunk | the next one | `Timeout { kind: Idle }` |
//! | `total` | the call | the end of the body | `Timeout { kind: Total }` (not retryable) |
//!
//! The request's [`Deadline`](crate::Deadline) bounds everything as `total`
//! does: the effective total is the earlier of the two, so a timeout layer
//! inside a retry layer never lets an attempt outlive the caller's deadline.
//! [`DeadlineLayer`] is how a deadline gets onto requests that have none.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use llm_sluice::request::RequestMeta;
//! use llm_sluice::timeout::TimeoutLayer;
//! use llm_sluice::{Error, TimeoutKind};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let timeouts = TimeoutLayer::builder()
//!     .attempt(Duration::from_secs(30))
//!     .idle(Duration::from_secs(10))
//!     .build()
//!     .unwrap();
//! let slow = ServiceBuilder::new().layer(timeouts).service_fn(|_req: RequestMeta| async {
//!     tokio::time::sleep(Duration::from_secs(60)).await;
//!     Ok::<_, tower::BoxError>("late")
//! });
//! let err = slow.oneshot(RequestMeta::new()).await.unwrap_err();
//! assert_eq!(
//!     err.downcast_ref::<Error>(),
//!     Some(&Error::Timeout { kind: TimeoutKind::Attempt })
//! );
//! # }
//! ```
//!
//! # Streamed bodies
//!
//! An `http::Response<B>` comes back as `http::Response<TimeoutBody<B>>`.
//! [`TimeoutBody`] keeps one timer, reset in place after every frame, set to
//! the earlier of the chunk timeout (`first_chunk`, then `idle`) and the
//! total. When it fires the body yields one error, a boxed
//! [`Error::Timeout`](crate::Error::Timeout) the reader can downcast, drops
//! the inner body — so permits held inside by
//! [`GuardedBody`](crate::hold::GuardedBody) are released at once — and ends.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use http_body_util::{BodyExt, StreamBody};
//! use llm_sluice::request::RequestMeta;
//! use llm_sluice::timeout::TimeoutLayer;
//! use llm_sluice::{Error, TimeoutKind};
//! use tower::{Layer, ServiceExt};
//!
//! // an upstream whose stream sends its headers and then nothing
//! let stalled = tower::service_fn(|_req: RequestMeta| async {
//!     let chunks = futures_util::stream::pending::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>();
//!     Ok::<_, tower::BoxError>(http::Response::new(StreamBody::new(chunks)))
//! });
//! let layer = TimeoutLayer::builder().first_chunk(Duration::from_secs(5)).build().unwrap();
//! let response = layer.layer(stalled).oneshot(RequestMeta::new()).await.unwrap();
//! let err = response.into_body().collect().await.unwrap_err();
//! assert_eq!(
//!     err.downcast_ref::<Error>(),
//!     Some(&Error::Timeout { kind: TimeoutKind::FirstChunk })
//! );
//! # }
//! ```
//!
//! Responses that are complete on arrival ([`Complete`](crate::hold::Complete))
//! pass through unchanged; a typed stream implements [`TimeoutResponse`].
//!
//! # Why this design
//!
//! - One timer per future and one per body, reset in place after each chunk:
//!   a stream of thousands of chunks costs one timer registration, not
//!   thousands (tower's `RateLimit` does the same).
//! - The chunk clocks start at the response, not at the first poll, so a
//!   reader that stalls is treated like an upstream that stalls: both hold
//!   upstream capacity for nothing.
//! - The total and the deadline are one limit (the earlier wins) and fail as
//!   `Total`, which the classifier marks not retryable: when the caller has
//!   stopped waiting, no retry or fallback should start.
//! - A timed-out body drops its inner body at once instead of waiting for
//!   the reader to drop it, so a permit held inside is freed at the timeout.
//!
//! # Where to put it
//!
//! `DeadlineLayer` (outermost) → fallback → retry → breaker → concurrency →
//! rate → `TimeoutLayer` → client. Inside the retry layer, `attempt` is a
//! per-attempt timeout and its error is retried; a `total` timeout or a
//! passed deadline is not. Inside the breaker, an attempt that times out
//! reaches the breaker as a failure: outside it, the timeout would drop the
//! breaker's future, which records nothing, and a hung upstream would never
//! trip it. Inside the queue and the window, `attempt` measures the upstream
//! alone, not time spent waiting for a permit; the request's deadline bounds
//! the waiting.
//!
//! # Cancel safety
//!
//! The response futures hold nothing but the inner future and one timer:
//! dropping them drops both. After a timeout the inner future is kept until
//! the response future itself is dropped (callers and the retry layer drop it
//! at once); a timed-out *body* drops its inner body as the timer fires.
//!
//! # Metrics
//!
//! `llm_sluice_timeouts_total{layer, reason}` counts timeouts that fired,
//! with `layer` `timeout` or `deadline` and `reason` `attempt`,
//! `first_chunk`, `idle` or `total` (plus `name` with
//! [`metrics_name`](TimeoutLayerBuilder::metrics_name)).

mod body;
mod deadline;
pub mod future;
mod layer;
mod metrics;
mod service;

#[cfg(feature = "http")]
pub use body::TimeoutBody;
pub use body::{BodyTimeouts, TimeoutResponse};
pub use deadline::{DeadlineLayer, DeadlineLayerBuilder, SetDeadline};
pub use layer::{TimeoutLayer, TimeoutLayerBuilder};
pub use service::Timeout;
