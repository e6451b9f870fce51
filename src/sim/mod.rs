//! A simulated OpenAI-compatible upstream, for tests, simulations and
//! examples (feature `sim`).
//!
//! [`Upstream`] behaves like a provider: it enforces requests and tokens per
//! window for each API key (as an exact sliding window or as a continuously
//! refilled bucket, see [`LimitMode`]), answers over-limit requests with
//! `429`, `retry-after` and `x-ratelimit-*` headers, takes time to answer
//! (time to first token, then tokens at a rate, from seeded distributions),
//! and injects faults at configured rates: `500`, `503`, `529`, hangs,
//! connection resets, and `429` quota errors that never succeed on retry;
//! and, when configured, latency spikes, outage windows ([`Outage`]) and a
//! transit delay from each call to its arrival
//! ([`transit`](UpstreamConfig::transit)).
//! It counts what it received ([`Upstream::stats`]) and keeps a per-key log
//! ([`Upstream::log`], [`Upstream::peak`]), so a test can assert how many
//! requests really reached it, how many were in flight at once, and whether
//! any window held more than the limits.
//!
//! It is a [`tower::Service`] for two request types:
//!
//! - [`SimRequest`] → [`SimResponse`]: the cheap path for simulations of many
//!   requests. No JSON; the response implements
//!   [`LlmResponse`](crate::classify::LlmResponse) (status, usage, delay,
//!   quota flag, rate-limit state) and [`HoldGuard`](crate::hold::HoldGuard).
//! - `http::Request<B>` → `http::Response<`[`SimBody`]`>`: the
//!   OpenAI-compatible wire format. `POST /v1/chat/completions` with the API
//!   key in `Authorization: Bearer`, `model`, `messages`, `max_tokens` (or
//!   `max_completion_tokens`), `stream` and `stream_options.include_usage`;
//!   answered with a JSON body with `usage`, or a `text/event-stream` of
//!   `data:` chunks (a usage chunk when asked) ending in `data: [DONE]`.
//!
//! `serve` (feature `sim-server`) puts the same upstream behind a real
//! HTTP/1.1 server on loopback.
//!
//! ```
//! use std::time::Duration;
//! use llm_sluice::classify::{LlmResponse, Outcome};
//! use llm_sluice::sim::{Dist, SimRequest, Upstream};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let upstream = Upstream::builder()
//!     .requests_per_window(2) // per key, per minute
//!     .time_to_first_token(Dist::fixed(Duration::from_millis(300)))
//!     .tokens_per_second(Dist::Fixed(100.0))
//!     .seed(42)
//!     .build()
//!     .unwrap();
//!
//! let start = tokio::time::Instant::now();
//! // `send` is `Service::call` for the typed path (the upstream is always ready).
//! let ok = upstream.send(SimRequest::new("sk-a", 50, 100)).await.unwrap();
//! assert_eq!(ok.status, 200);
//! assert_eq!(ok.usage.unwrap().total_tokens, 150);
//! // 0.3 s to the first token, then 100 tokens at 100 a second (virtual time).
//! assert_eq!(start.elapsed(), Duration::from_millis(1300));
//!
//! let req = SimRequest::new("sk-a", 50, 100);
//! ServiceExt::<SimRequest>::oneshot(upstream.clone(), req).await.unwrap();
//! let refused = upstream.send(SimRequest::new("sk-a", 50, 100)).await.unwrap();
//! let c = refused.classification();
//! assert_eq!(c.outcome, Outcome::RateLimited { quota_exhausted: false });
//! assert!(c.retry_after.is_some());
//!
//! let stats = upstream.stats();
//! assert_eq!((stats.received, stats.admitted, stats.rate_limited), (3, 2, 1));
//! # }
//! ```
//!
//! # Determinism
//!
//! Every random draw comes from one generator seeded with
//! [`seed`](UpstreamBuilder::seed), and each request makes the same draws in
//! the same order whatever its fate, in the order of the calls (with a
//! transit delay: that draw at the call, the others at arrival, in the order
//! of arrivals). All time is tokio's, so under paused time
//! (`start_paused = true`) the same program gives the same faults, latencies
//! and refusals on every run.
//!
//! # In flight
//!
//! A request is in flight from its arrival (its call, without a transit
//! delay) until its answer is done: the response future resolves (typed,
//! not streamed), the [`SimStream`] ends, or the [`SimBody`] ends; or until
//! any of them is dropped. A hang stays in flight until its future is
//! dropped. [`SimStats::max_in_flight`] is the
//! most ever seen at once: what a concurrency limit in front must bound.
//!
//! # Limits
//!
//! Requests refused with `429` do not spend the limits; admitted requests do,
//! whatever fault follows. Tokens count by one of the providers' charging
//! rules ([`TokenCharge`]): charged at admission as prompt plus `max_tokens`
//! and never corrected (the default, OpenAI's TPM); charged so at admission
//! and corrected to the actual usage when the response ends (Anthropic-style);
//! or counted from the actual usage only, admitting while the usage counted
//! is below the limit. The `x-ratelimit-limit-*`, `-remaining-*` and
//! `-reset-*` headers (and [`SimResponse::rate_limits`]) report the window as
//! the rule counts it at the request's admission. A request larger than the
//! whole token limit (as charged at admission) gets a `429` that is not
//! retryable (`x-should-retry: false`), as does a quota fault
//! (`insufficient_quota`).

mod config;
mod http;
mod limits;
#[cfg(feature = "sim-server")]
mod server;
mod typed;
mod upstream;

pub use self::config::{
    Dist, Faults, Latency, LatencySpikes, LimitMode, Limits, Outage, TokenCharge, UpstreamBuilder,
    UpstreamConfig,
};
pub use self::http::{SimBody, MODEL};
#[cfg(feature = "sim-server")]
pub use self::server::{serve, ServerHandle};
pub use self::typed::{SimFuture, SimRequest, SimResponse, SimStream};
pub use self::upstream::{Count, FaultCounts, Peak, Received, SimStats, Upstream};
