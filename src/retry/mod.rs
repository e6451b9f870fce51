//! Retries that obey the server: backoff with jitter, the server's own
//! delays, a shared budget and the request's deadline.
//!
//! ```
//! use std::time::Duration;
//! use llm_sluice::classify::{Classification, LlmResponse, Outcome};
//! use llm_sluice::request::RequestMeta;
//! use llm_sluice::retry::RetryLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[derive(Debug)] struct Reply(u16);
//! # impl LlmResponse for Reply {
//! #     fn classification(&self) -> Classification {
//! #         match self.0 {
//! #             200 => Classification::success(None),
//! #             s => Classification::new(Outcome::ServerError).with_status(s),
//! #         }
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), tower::BoxError> {
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! # let counter = calls.clone();
//! // an upstream that fails twice with 503, then answers
//! let upstream = tower::service_fn(move |_req: RequestMeta| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move { Ok::<_, tower::BoxError>(Reply(if n < 2 { 503 } else { 200 })) }
//! });
//! let mut svc = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::builder()
//!             .max_retries(3)
//!             .backoff_base(Duration::from_millis(200))
//!             .backoff_cap(Duration::from_secs(5))
//!             .total_timeout(Duration::from_secs(30))
//!             .build()?,
//!     )
//!     .service(upstream);
//! let reply = svc.ready().await?.call(RequestMeta::new()).await?;
//! assert_eq!(reply.0, 200);
//! assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
//! # Ok(()) }
//! ```
//!
//! # What is retried
//!
//! The [classifier](crate::classify) decides, through
//! [`Classification::is_retryable`](crate::classify::Classification::is_retryable):
//! by default 408, 409, 429, 5xx, 529, attempt timeouts and transport errors
//! are retried; other client errors, a total-deadline timeout and this
//! crate's own rejections (queue full, circuit open, ...) are not. A server's
//! `x-should-retry` overrides the table. The layer retries a retryable
//! *response* (a 503 is an `Ok`) as well as an error; when it stops it
//! returns the last result as it was, `Ok` or `Err`, so the caller sees the
//! real status and body.
//!
//! # Spent quotas
//!
//! A 429 whose error body says the quota or spending limit is spent
//! (`insufficient_quota`, `enforced_spend_limit_reached`) will not succeed on
//! retry. Only the body says so, so the classifier must see it; a
//! classifier that reports such a result as
//! `RateLimited { quota_exhausted: true }` (or sets `should_retry` to
//! `false`) stops the retries. The hooks:
//!
//! - `http::Response`: put [`ErrorBodyLayer`](crate::classify::ErrorBodyLayer)
//!   inside the retry layer; it reads error bodies into an
//!   [`ErrorCode`](crate::classify::ErrorCode) extension, and the default
//!   classifier then reports a spent quota;
//! - typed responses implement [`ResponseErrorCode`] and the layer uses
//!   `QuotaAware::new(DefaultClassifier)` ([`QuotaAware`]);
//! - any response: a classifier of your own (a closure will do) that reads
//!   what it needs, e.g. a buffered error body:
//!
//! ```
//! use llm_sluice::classify::{Classify, DefaultClassifier, ErrorRef, Classification, Outcome};
//! use llm_sluice::retry::RetryLayer;
//!
//! let classifier = |result: Result<&http::Response<String>, ErrorRef<'_>>| {
//!     let mut class: Classification = DefaultClassifier.classify(result);
//!     if let Ok(response) = result {
//!         if response.status() == 429 && response.body().contains("\"insufficient_quota\"") {
//!             class.outcome = Outcome::RateLimited { quota_exhausted: true };
//!         }
//!     }
//!     class
//! };
//! let layer = RetryLayer::builder().classifier(classifier).build().unwrap();
//! # let _ = layer;
//! ```
//!
//! # When: the server's delay, or backoff
//!
//! When the server gave a usable delay (`retry-after-ms`, `retry-after` in
//! seconds or as an HTTP-date, the reset headers; parsed by the classifier),
//! the next attempt is sent exactly that long after the failure: **never
//! earlier**. The official SDKs disagree on how long a delay to honour
//! (Python 120 s, Node and Anthropic 60 s); the cap is
//! [`max_server_delay`](RetryLayerBuilder::max_server_delay), 60 s by
//! default, and above it [`OverCap::Fail`] (default) returns the result as
//! it is (the caller, or a fallback, sees the server's delay), while
//! [`OverCap::UseBackoff`] retries after the computed backoff. A delay too
//! large to represent (`retry-after: 1e20`) reaches the layer saturated to
//! [`Duration::MAX`](std::time::Duration::MAX), so it is always above the
//! cap: a server that asks for "forever" is not retried at once.
//!
//! Otherwise the delay is computed: `random(0, min(cap, base * 2^n))` after
//! `n` retries, "full jitter", base 0.5 s and cap 8 s by default. Full jitter
//! is the default because an LLM upstream's failures are correlated: one
//! overload fails every in-flight call at once, and the clients must not come
//! back as one wave. Of the schemes compared in the AWS Architecture Blog's
//! "Exponential Backoff And Jitter", full jitter spread such clients best,
//! with the least total work; the SDKs' `(0.75, 1]` scaling
//! ([`Jitter::Scaled`]) keeps them within a quarter of each other. The random
//! source can be [seeded](RetryLayerBuilder::seed) so tests check exact
//! sequences.
//!
//! # The budget
//!
//! A [`RetryBudget`] shared by all clones bounds retries to a fraction of the
//! recent request rate plus a small floor (default: 20% over 10 s, plus 10 a
//! second). An upstream that fails every call then receives the request rate
//! times 1.2, not times `1 + max_retries`. When the budget is spent the last
//! result is returned at once and
//! `llm_sluice_retry_gave_up_total{reason="budget"}` counts it.
//!
//! # Deadlines
//!
//! The request's deadline ([`LlmRequest::deadline`](crate::LlmRequest::deadline))
//! bounds everything: a retry whose delay would end at or after the deadline
//! is not made, and the last result is returned at once instead of sleeping.
//! [`total_timeout`](RetryLayerBuilder::total_timeout) sets a deadline on
//! requests that have none as they enter the layer, so every layer inside
//! (queues, rate windows, timeouts) sees it too. The layer does not cut an
//! attempt short at the deadline: put a timeout layer inside for that.
//!
//! # Replaying requests
//!
//! Each attempt consumes the request, so a copy is made before it is sent,
//! by the [`Replay`] strategy. `Clone` requests work as they are
//! ([`CloneRequest`], the default), and so does `http::Request<B>` with a
//! `Clone` body such as `Full<Bytes>`. For other bodies, buffer them with
//! [`ReplayBody::buffer`] up to a size limit and use [`ReplayBodies`]. A
//! request that cannot be replayed (`replay` returns `None`: a body over the
//! limit, or a strategy that refuses) is sent once and its first result
//! returned as it is, retryable or not
//! (`llm_sluice_retry_gave_up_total{reason="not_replayable"}`).
//!
//! # Place in line
//!
//! On the first attempt the layer records the request's arrival time
//! ([`LlmRequest::set_arrival`](crate::LlmRequest::set_arrival)) if none is
//! set. Every retry is the same request with the same priority and arrival,
//! so queues inside (the concurrency limiter) order it by when it first
//! came, not at the back behind requests that arrived while it was failing.
//!
//! # Cancel safety
//!
//! Dropping the [`ResponseFuture`](future::ResponseFuture) at any point drops
//! the attempt in flight (releasing what inner layers hold for it), the
//! backoff timer and the request copy. Nothing else is held.
//!
//! # Cost on the success path
//!
//! One clock read (shared by the arrival stamp, the total timeout and the
//! budget deposit), or none when the request already has an arrival (the
//! [`DeadlineLayer`](crate::DeadlineLayer) outside sets one) and needs no
//! total timeout: the deposit is then dated at the arrival. Then one
//! atomic add into the budget, a clone of the request
//! and of the inner service (as `tower::retry::Retry` does) and of one `Arc`.
//! The random source and the budget's lock are touched only when a result is
//! retryable.
//!
//! # Layer order
//!
//! Put the retry layer *outside* the layers that protect the upstream
//! (concurrency, rate limit, circuit breaker) and *inside* a fallback: each
//! attempt then waits for capacity like any request, an open breaker stops
//! retries at once (its rejection is not retryable), and the fallback sees
//! the result after retries. A per-attempt timeout goes inside the retry
//! layer.
//!
//! # Tracing
//!
//! Each attempt runs in a `llm_sluice.attempt` span at debug level, with the
//! attempt number (`attempt`, 1 for the first) and, once classified, its
//! `outcome`. The span is entered while the attempt is called and polled, so
//! events of the layers inside (a queue shedding it, a breaker rejecting it,
//! a timeout firing) belong to the attempt that caused them. With no
//! subscriber interested in debug spans, making one is a level check and
//! entering it a branch. The retry layer is the one place that knows the
//! attempt number, so it owns this span; a stack without a retry layer
//! makes one attempt per request, and the caller's own request span (e.g.
//! from `tower_http::trace`) covers it. Decisions are debug events:
//! `retrying` (with `outcome`, `retry`, `delay`), and "returning a retryable
//! result" (with `reason`).
//!
//! # Metrics
//!
//! Registered once per service the layer makes, all labelled
//! `layer="retry"` (plus `name` with
//! [`metrics_name`](RetryLayerBuilder::metrics_name)):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `llm_sluice_retry_attempts_total` | counter | |
//! | `llm_sluice_retries_total` | counter | `reason` (the outcome retried) |
//! | `llm_sluice_retry_server_delay_seconds` | histogram | |
//! | `llm_sluice_retry_gave_up_total` | counter | `reason`: `max_retries`, `deadline`, `over_cap`, `not_replayable`, `budget` |

mod backoff;
mod budget;
pub mod future;
mod layer;
mod metrics;
mod policy;
mod replay;
mod service;

pub use backoff::{Backoff, Jitter};
pub use budget::RetryBudget;
pub use layer::{RetryLayer, RetryLayerBuilder};
pub use policy::{OverCap, QuotaAware, ResponseErrorCode};
pub use replay::{CloneRequest, Replay};
#[cfg(feature = "http")]
pub use replay::{ReplayBodies, ReplayBody};
pub use service::Retry;
