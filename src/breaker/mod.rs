//! A circuit breaker: fail fast while an upstream is failing, probe
//! carefully, close when it recovers.
//!
//! ```
//! use std::time::Duration;
//! use llm_sluice::breaker::{CircuitBreakerLayer, CircuitState};
//! use llm_sluice::request::{Annotated, RequestMeta};
//! use llm_sluice::Error;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
//! let breaker = CircuitBreakerLayer::builder()
//!     .consecutive_failures(2)
//!     .open_duration(Duration::from_secs(10))
//!     .build()?;
//! let handle = breaker.handle();
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service_fn(|_req: Annotated<&str>| async {
//!         Err::<(), _>(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))
//!     });
//!
//! for _ in 0..2 {
//!     let req = Annotated::new("hi", RequestMeta::new());
//!     assert!(svc.ready().await?.call(req).await.is_err());
//! }
//! assert_eq!(handle.state(), CircuitState::Open);
//!
//! // Open: calls fail at once, saying when to come back.
//! let err = svc.ready().await?.call(Annotated::new("hi", RequestMeta::new())).await.unwrap_err();
//! match err.downcast_ref::<Error>() {
//!     Some(Error::CircuitOpen { retry_after }) => assert!(*retry_after <= Duration::from_secs(10)),
//!     other => panic!("unexpected: {other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # States
//!
//! The transitions are those of resilience4j's breaker, except that
//! half-open ends only through its probes, never by a timer (see
//! [Re-opening needs a failure](#re-opening-needs-a-failure)):
//!
//! - **Closed**: calls pass; each finished call is classified and recorded.
//!   The breaker opens when any configured condition holds after a call:
//!   `consecutive_failures(n)` failures in a row; a failure rate of at least
//!   `failure_rate(r)` over the window; a slow-call rate of at least the
//!   `slow_call(d, r)` rate. Rates are evaluated only once the window holds
//!   `minimum_calls`. The window is the last `count_window(n)` calls or the
//!   calls of the last `time_window(d)`.
//! - **Open**: calls fail at once with [`Error::CircuitOpen`](crate::Error::CircuitOpen) whose
//!   `retry_after` is the time left until half-open. The open duration is
//!   `open_duration`, or with `open_duration_backoff(m, max)` it is
//!   multiplied by `m` on each consecutive opening, capped at `max`, and
//!   back at its base once the breaker has stayed closed for
//!   `backoff_reset_after`.
//! - **Half-open**: at most `half_open_probes` calls pass as probes; the
//!   rest fail fast with a `retry_after` of the time left until the oldest
//!   probe in flight reaches `half_open_max_wait`. A probe whose outcome
//!   counts keeps its slot; a probe whose outcome is ignored (a 429, a
//!   caller error) or whose response future is dropped frees its slot, and
//!   the next caller passes as a probe. The breaker re-opens as soon as the
//!   probes' failures (or slow calls) reach the rate (with only
//!   `consecutive_failures`, at the first failed probe) and closes, with an
//!   empty window, once `half_open_probes` probes were counted without
//!   reaching it. A probe still unanswered `half_open_max_wait` after it
//!   passed counts as a failed probe, and its late outcome is not recorded.
//!   Half-open has no time limit of its own: while outcomes are only
//!   ignored ones, it stays half-open and keeps letting callers through.
//!
//! A [`CircuitHandle`] can also force a breaker open or closed and reset it.
//! Leaving open (and counting a probe past its maximum wait) happens when
//! the next call, outcome or handle read arrives, not on a timer: an idle
//! breaker costs nothing.
//!
//! # What counts
//!
//! Results are classified with the layer's [`Classify`](crate::classify::Classify)
//! ([`DefaultClassifier`](crate::classify::DefaultClassifier) unless
//! `.classifier(c)` is given). Failures (5xx, 529, 408, timeouts, transport
//! errors) count against the upstream; successes for it; anything else
//! (caller errors, and 429, which is back-pressure for the rate limiter) is
//! ignored: it does not enter the window, does not break a run of
//! consecutive failures, and frees its probe slot for the next caller.
//!
//! A call's duration, for slow calls, runs from `call` to the response
//! future's resolution: a streamed body is not timed. Put a first-chunk
//! timeout inside the breaker to count stalled streams as failures.
//!
//! Outcomes carry the generation of the state they were admitted in (a
//! probe, its own ticket): a call admitted while closed that finishes after
//! the breaker opened is not recorded, nor is a probe's from an earlier
//! half-open period or one already counted as hung.
//!
//! # Half-open probes
//!
//! Probe slots are taken under the breaker's lock, so however many clones of
//! the service race, at most `half_open_probes` probes are in flight or
//! counted at once, and exactly that many pass while none frees its slot.
//! A probe whose outcome is ignored or whose response future is dropped
//! frees its slot without counting as a success or a failure: the next
//! caller passes as a probe, so neither a run of 429s nor callers that give
//! up can leave a half-open breaker with no probe in flight refusing calls.
//!
//! # Re-opening needs a failure
//!
//! The breaker opens only when a counted failure or slow call meets a trip
//! condition (a probe unanswered for `half_open_max_wait` is a failure), or
//! when a [`CircuitHandle`] forces it. Time alone moves it from open to
//! half-open, never back: one 500 that opens a breaker followed by nothing
//! but 429s leaves it half-open, passing callers one probe slot at a time,
//! and the open duration does not grow.
//!
//! # Partitions
//!
//! With `per_partition(max)` each [`PartitionKey`] (read
//! through [`LlmRequest::partition`](crate::LlmRequest::partition)) gets its
//! own breaker, so one failing model does not cut off the others. At most
//! `max` keys have their own; when the map is full, idle breakers are
//! evicted, and if none is idle new keys share one overflow breaker.
//!
//! # Cancel safety
//!
//! Dropping the response future at any point records nothing, never changes
//! the state, and frees what it held (a probe slot, which the next caller
//! takes). Dropping a service holds nothing.
//!
//! # Cost
//!
//! The closed state is the hot path. Admission is one atomic load (state and
//! generation share one word) and the `Arc` clone the response future needs.
//! A plain success takes no lock at all while it cannot change anything (no
//! run of failures, and a count window that is full of successes); any other
//! outcome takes an uncontended `parking_lot` mutex for a few instructions.
//! The clock is read only when a time window or slow calls are configured.
//! Recording a quiet success is inlined into the response future: a counter
//! increment and one flag load. What is left on a count-window closed path
//! is mostly the two reference-count updates of that `Arc` (clone in
//! `call`, drop when the future ends), the floor for a response future that
//! outlives the service without `unsafe`.
//! Everything off the closed path (open, half-open, handles) takes the mutex.
//! A half-open breaker keeps each probe in flight as a ticket and its
//! admission time (16 bytes): a list of at most `half_open_probes` entries,
//! allocated the first time the breaker goes half-open and kept.
//! Time is tokio's, so paused-time tests drive it.
//!
//! # Metrics
//!
//! All labelled `layer="breaker"` (plus `name` with
//! [`metrics_name`](CircuitBreakerBuilder::metrics_name)):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `llm_sluice_breaker_state` | gauge | `layer` | unkeyed breaker: 0 closed, 1 half-open, 2 open |
//! | `llm_sluice_breaker_open` | gauge | `layer` | breakers (keyed ones included) open or half-open |
//! | `llm_sluice_breaker_transitions_total` | counter | `layer`, `from`, `to` | state changes |
//! | `llm_sluice_breaker_calls_total` | counter | `layer`, `outcome` | recorded calls: `success`, `failure`, `slow_success`, `slow_failure`, `ignored` |
//! | `llm_sluice_rejected_total` | counter | `layer="breaker"`, `reason="circuit_open"` | calls failed fast |
//!
//! With [`partition_label(n)`](CircuitBreakerBuilder::partition_label)
//! (keyed breakers only), every metric but `llm_sluice_breaker_open` also
//! carries `partition`: the key's 8-hex-digit
//! [fingerprint](crate::PartitionKey::fingerprint) for the first `n`
//! distinct keys, `other` after them, `none` for requests without a key,
//! `overflow` for the shared breaker of a full map; the unkeyed breaker and
//! each fingerprint-labelled one report their own `llm_sluice_breaker_state`.
//!
//! # Tracing
//!
//! State changes are `info` events ("circuit breaker state changed", with
//! `from`, `to` and the redacted scope); each call refused while open is a
//! `debug` event.

pub mod future;
mod handle;
mod layer;
mod service;
pub(crate) mod shared;
mod state;
mod window;

pub use handle::CircuitHandle;
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use service::CircuitBreaker;
pub use state::CircuitState;

use tokio::time::Instant;

use crate::request::PartitionKey;

/// A state change, as given to
/// [`on_state_change`](CircuitBreakerBuilder::on_state_change).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateChange {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// The key of a keyed breaker; `None` for the unkeyed and overflow ones.
    pub partition: Option<PartitionKey>,
    /// Whether this is the overflow breaker of a full partition map.
    pub overflow: bool,
    /// When it changed (tokio's clock).
    pub at: Instant,
}
