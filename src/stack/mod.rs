//! The recommended stack in one builder: [`LlmStack`] from a
//! [`StackConfig`], and [`ServiceBuilderExt`] for adding the layers one at a
//! time in the tower style.
//!
//! ```
//! use std::time::Duration;
//! use llm_sluice::request::RequestMeta;
//! use llm_sluice::stack::{LlmStack, StackConfig};
//! use llm_sluice::{PartitionKey, Priority};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let client = tower::service_fn(|req: RequestMeta| async move {
//! #     Ok::<_, tower::BoxError>(format!("{} tokens", req.tokens))
//! # });
//!
//! let mut config = StackConfig::default();
//! config.deadline = Some(Duration::from_secs(300));
//! config.rate.requests_per_minute = Some(500);
//! config.rate.tokens_per_minute = Some(200_000);
//! config.concurrency.max_in_flight = 32;
//! let stack = LlmStack::from_config(&config)?;
//!
//! let mut svc = ServiceBuilder::new().layer(stack.clone()).service(client);
//! let request = RequestMeta::new()
//!     .tokens(1_200)
//!     .priority(Priority::HIGH)
//!     .partition(PartitionKey::new("tenant-a"));
//! assert_eq!(svc.ready().await?.call(request).await?, "1200 tokens");
//!
//! // the parts stay observable and adjustable through the stack
//! assert_eq!(stack.concurrency().and_then(|c| c.stats()).map(|s| s.in_flight), Some(0));
//! assert!(stack.rate_handle().is_some());
//! # Ok(())
//! # }
//! ```
//!
//! # The order, and why
//!
//! Outermost first:
//!
//! 1. **Deadline** ([`DeadlineLayer`](crate::DeadlineLayer), `deadline`):
//!    stamps the request's [`Deadline`](crate::Deadline) once, so every layer
//!    inside (queue, window, retry backoff, fallback) stops waiting when the
//!    caller stops caring, and a request never outlives it in total.
//! 2. **Fallback** ([`FallbackLayer`](crate::FallbackLayer), given to
//!    [`LlmStackBuilder::fallback`]): asked only once the primary path has
//!    given up, retries included; inside the deadline so the fallback's time
//!    counts too.
//! 3. **Retry** (`retry`): each attempt goes through the breaker, the queue
//!    and the window again, so a retry is counted, limited and shed like a
//!    new request; the retry budget caps the extra load a failing upstream
//!    receives. Outside the breaker, so a circuit that opened mid-retry
//!    stops the retries at once (`CircuitOpen` is not retryable).
//! 4. **Circuit breaker** (`breaker`): outside the queue, so an open circuit
//!    fails requests at once instead of letting them queue for a dead
//!    upstream; it sees each attempt's result, timeouts included, because
//!    the attempt timeout is inside it.
//! 5. **Rate window, admission** ([`Admission`](crate::rate::Admission),
//!    `rate`): waits for room in the request's windows and reserves it,
//!    *before* the queue, so waiting for room holds no permit: a key that
//!    floods its own budget waits on its own window while other keys'
//!    requests take the permits. A request that can never fit (larger than
//!    a whole budget) fails here, before it queues; one whose room the
//!    window knows comes later than it may wait fails here too, at once,
//!    with the exact delay.
//! 6. **Concurrency limit and priority queue** (`concurrency`): bounds the
//!    requests in the upstream; under overload it sheds low priorities
//!    first.
//! 7. **Rate window, dispatch** ([`Dispatch`](crate::rate::Dispatch)):
//!    dates the reservation at the instant the request leaves the queue, so
//!    the window counts a request from when it is **sent**, as the server
//!    does from when it arrives. Counting from queue entry would let the
//!    client's window expire before the server's, and the client would
//!    overshoot. Arrival still comes a varying moment after the send: each
//!    reservation counts for the window plus `rate.guard_band` (250 ms by
//!    default), so a request sent at the edge does not land inside the
//!    server's window. From the answer it corrects each token budget as
//!    the provider counts it (`rate.token_charging`, `input_token_charging`,
//!    `output_token_charging`) and learns the provider's limits
//!    (`rate.learn_limits`; see the rate module's
//!    [charging rules](crate::rate#charging-rules) and
//!    [learned limits](crate::rate#limits-learned-from-the-wire)).
//!
//! ## Why the window is split around the queue
//!
//! A window inside the queue counts requests when they are sent, but a
//! request holding a permit then waits there for room, and one key's wait
//! blocks every other key's. A window outside the queue holds no permit
//! while it waits, but counts requests from when they queued. The two
//! stages keep what is right in each: the admission stage reserves room
//! (so the requests in the queue never add up to more than the windows
//! allow), the dispatch stage moves the reservation to the send instant
//! (so the window's entry expires when the server's does). In between, a
//! queued request is counted from admission, which only errs on the safe
//! side. Order within a priority is kept: the window admits a partition's
//! requests by priority, then arrival, and the queue serves them the same
//! way.
//!
//! A request admitted at once by both stages is dated once (the two stages
//! share the call's clock reading). One that queued is given back and
//! reserved again at the send instant under the partition's lock, which
//! changes nothing unless the windows changed meanwhile; if it no longer
//! fits (it queued longer than a burst span or the whole window, or a
//! cooldown, a server clamp or a lowered limit came), it fails with
//! [`Error::RateLimited`](crate::Error::RateLimited) and the delay until it
//! would fit, and the retry layer sends it through the admission stage
//! again. A request dropped between the stages (shed, timed out in the
//! queue, cancelled) gives its reservation back.
//!
//! 8. **Attempt timeout** (`timeout`): innermost, so it times exactly one
//!    call of your service (and its body's first chunk and idle gaps), and
//!    its `Timeout { kind: Attempt }` is seen, and counted, by the breaker
//!    and the retry layer.
//!
//! Then your service: an HTTP client, a typed client, anything implementing
//! `tower::Service` whose requests implement [`LlmRequest`](crate::LlmRequest).
//!
//! # What it costs
//!
//! On its way in, a request reads the clock once, not once per layer: each
//! layer's `call` reuses the reading taken by the outermost one (the layers
//! run one after another, synchronously, before your service is called, so
//! the readings would differ by nanoseconds). A request admitted at once
//! goes straight to your service: the queue clones your service only for a
//! request that waits, and the retry layer only for a request it retries.
//! On the success path a request allocates nothing. A part that is turned
//! off passes calls through inside its layer's own service rather than
//! behind an `Either`: every layer wraps the response future of the one
//! inside it, and moving those nested futures is a large share of what a
//! call through the stack costs, so an off part adds a branch and no
//! wrapper. `benches/stack.rs` measures the whole stack beside tower's
//! built-ins and tower-resilience.
//!
//! # Configuration files
//!
//! With the `serde` feature, [`StackConfig`] (de)serializes with serde; see
//! its docs for the format. Read it with `StackConfig::from_deserializer`:
//! a value that cannot be read (wrong type, negative, not a duration) is a
//! [`ConfigError`](crate::ConfigError) naming its section and field, inside
//! a `ConfigReadError` that also reports misspelt keys. Validation of values
//! that read happens in [`LlmStack::from_config`], which names the section
//! and field of the first invalid value the same way.

mod config;
#[cfg(feature = "serde")]
mod duration;
mod ext;
mod layer;
#[cfg(feature = "serde")]
mod read;
mod service;

pub use config::{
    BreakerConfig, ConcurrencyConfig, RateConfig, RetryConfig, StackConfig, TimeoutConfig,
};
pub use ext::ServiceBuilderExt;
pub(crate) use layer::OnChange;
pub use layer::{LlmStack, LlmStackBuilder};
#[cfg(feature = "serde")]
pub use read::ConfigReadError;
pub use service::{LlmService, RetryPart};
