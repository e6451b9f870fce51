//! A concurrency limit with a bounded priority queue and load shedding.
//!
//! At most `max_in_flight` requests run in the inner service at once. A
//! request that finds no free permit waits in a queue of at most `max_queued`
//! entries, ordered by [`Priority`](crate::Priority) (FIFO within one
//! priority, with aging so low priorities cannot starve); a request that finds
//! the queue full is shed at once with [`Error::Overloaded`](crate::Error).
//!
//! ```
//! use std::time::Duration;
//! use llm_sluice::concurrency::ConcurrencyLimitLayer;
//! use llm_sluice::request::RequestMeta;
//! use llm_sluice::{Error, Priority};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let client = tower::service_fn(|req: RequestMeta| async move {
//! #     Ok::<_, tower::BoxError>(format!("{} tokens", req.tokens))
//! # });
//!
//! let limit = ConcurrencyLimitLayer::builder()
//!     .max_in_flight(8)                        // requests upstream at once
//!     .max_queued(100)                         // more than that wait...
//!     .max_queue_wait(Duration::from_secs(30)) // ...this long at most
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(limit).service(client);
//!
//! let request = RequestMeta::new().tokens(12).priority(Priority::HIGH);
//! let answer = svc.ready().await?.call(request).await?;
//! assert_eq!(answer, "12 tokens");
//! assert_eq!(svc.stats().in_flight, 0, "the permit was released");
//!
//! // A shed request says why:
//! # let err: tower::BoxError = Box::new(Error::Overloaded { queued: 100 });
//! match err.downcast_ref::<Error>() {
//!     Some(Error::Overloaded { queued }) => assert_eq!(*queued, 100),
//!     Some(Error::QueueTimeout { .. } | Error::DeadlineExceeded) => {}
//!     _ => {} // an error of the inner service
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Algorithm
//!
//! One atomic word holds the free-permit count and a "someone may wait"
//! bit; one [`parking_lot::Mutex`] guards the queue, an index of when each
//! waiter's time runs out, and the limiter's one timer. Each waiter shares a
//! small node with the limiter (its state and an `AtomicWaker`), so its own
//! polls take no lock:
//!
//! - **Fast path.** If a permit is free (which implies nobody live waits),
//!   `call` takes it with one compare-and-swap: no lock, no queue entry, no
//!   timer, no allocation, and no clock read unless the request has a
//!   deadline (then one, to reject it if it is already past). While nobody
//!   waits, a released permit goes back with one compare-and-swap too.
//! - **Queueing.** Otherwise the request gets an entry at once, under the
//!   lock (so its place is fixed by when `call` happened), or is shed if the
//!   queue is full. The entry is owned by the response future. Its polls
//!   register the waker in the node and read the node's state, without the
//!   lock.
//! - **Hand-off.** The bit is set under the lock before a waiter's entry is
//!   inserted and cleared once the queue is empty; a release that sees it
//!   takes the lock. A released permit is never put back while someone waits:
//!   it goes straight to the head of the queue, whose entry is removed, whose
//!   node is marked granted and whose waker (and only that one) is woken. No
//!   newcomer can barge in between, and exactly one waiter is woken per freed
//!   permit. A waiter whose time has run out (but that has not run yet to see
//!   it) is skipped: the permit goes to the next one instead of to a request
//!   about to fail. The woken waiter finds the grant in its node, lock-free.
//! - **One timer per limiter.** Waits bounded by `max_queue_wait` end in
//!   arrival order, so they are kept in a FIFO (the queue's tail, below, is
//!   appended in arrival order and keeps its own entries' expiries, so only
//!   waiters outside it need a second entry); waits bounded by a request's
//!   own deadline in a sorted index. A single `tokio::time::Sleep` is armed
//!   for the earliest, from a waiter's poll, and only when an earlier expiry
//!   appears (a flag tells the next poll to take the lock and arm it). When
//!   it fires, the waiters that are due are woken (they fail with
//!   `QueueTimeout` or `DeadlineExceeded`) and one waiter re-arms it for the
//!   next. Compared with a `Sleep` per waiter this saves an allocation and
//!   two timer-wheel operations per queued request, and memory: about 210
//!   bytes a queued request beyond the request itself, measured in
//!   `benches/concurrency.rs`. The `Sleep` is always created from a waiter's
//!   poll, so it belongs to the runtime that runs the waiters.
//!
//! The queue is a sorted map (`BTreeMap`: `O(log n)` insert, removal on
//! cancel and pop) plus a sorted `VecDeque` tail that takes every key larger
//! than all queued keys, which is nearly every key when requests share one
//! priority; the head is the smaller of the two heads. So FIFO traffic
//! queues and dequeues in `O(1)`, and mixed priorities are never worse than
//! the map alone. An ordered structure was chosen over a linked list of
//! waiters (tokio's semaphore) because the queue is ordered by priority, not
//! only by arrival, and over a heap because a cancelled waiter must leave the
//! middle at once: a bounded queue must not fill with dead entries (the tail
//! removes lazily but counts exactly, and compacts when dead entries
//! outnumber live ones).
//!
//! # Fairness and aging
//!
//! Waiters are served highest *effective* priority first, and in arrival
//! order within one effective priority. With aging on (the default, see
//! [`ConcurrencyLimitLayerBuilder::aging`]), a waiting request's effective
//! priority rises by one named level ([`Priority::LEVEL`](crate::Priority::LEVEL),
//! 85) per `aging` of waiting:
//!
//! ```text
//! effective(t) = priority + (t - arrival) * LEVEL / aging
//! ```
//!
//! When two waiters are compared at the same moment `t`, the `t` terms
//! cancel, so the order never changes while they wait: the queue is sorted
//! once by `arrival * LEVEL - priority * aging` and stays correct.
//!
//! **Worked example** (the default, `aging` = 5 s): a `LOW` (0) request
//! arrives at 0 s. A `NORMAL` (85) request arriving before 5 s goes ahead of
//! it, one arriving after 5 s goes behind it; for `HIGH` (170) the turning
//! point is 10 s, for `CRITICAL` (255) 15 s. Requests already ahead of it
//! stay ahead.
//!
//! **The bound.** After `3 × aging` of waiting, a request is ahead of every
//! request that arrives later, whatever its priority. From then on only the
//! requests already ahead of it (fewer than `max_queued`) are served first,
//! so it is admitted after at most `3 × aging` plus the time the limit takes
//! to serve `max_queued - 1` requests. Choose `aging` at most a third of
//! `max_queue_wait` if low priorities should get through rather than time
//! out under sustained high-priority load.
//!
//! With [`without_aging`](ConcurrencyLimitLayerBuilder::without_aging),
//! priority is strict: a lower priority waits as long as higher ones keep
//! arriving, and then fails with `QueueTimeout` after `max_queue_wait`.
//!
//! The arrival time is the request's [`LlmRequest::arrival`](crate::LlmRequest::arrival)
//! if set (a retry layer records it, so a retried attempt keeps its place in
//! line), else the moment of `call`. Two `call`s on two threads read the
//! clock before they take the limiter's lock, in either order; so a request
//! whose arrival is less than 1 ms before that of the last request queued,
//! at the same priority, is queued right after it: concurrent calls are
//! served in the order they took the lock. (Without this, nearly every such
//! pair would put one of them in the sorted map, and every grant would pay
//! for merging the two parts of the queue.)
//!
//! # Deadlines and timeouts
//!
//! A request waits in the queue at most `max_queue_wait`
//! ([`Error::QueueTimeout`](crate::Error::QueueTimeout)) and never past its own
//! [`deadline`](crate::LlmRequest::deadline)
//! ([`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded)). A request
//! already past its deadline at `call` is rejected without queueing, even if
//! a permit is free. A permit handed to a waiter before the timer saw its time
//! run out is kept; once the timer has seen it, the waiter is skipped. Times
//! are tokio's (with its timer's millisecond resolution), so paused-time tests
//! drive them.
//!
//! # poll_ready and the tower contract
//!
//! A request's priority is known only at `call`, so admission happens in the
//! response future, and [`poll_ready`](tower::Service::poll_ready) is always
//! ready. Reserving a permit in `poll_ready` (as tower's `ConcurrencyLimit`
//! does) would let a low-priority caller that polled first take the permit a
//! high-priority caller needs, and would block every caller behind an inner
//! service that is not ready.
//!
//! The tower contract is kept for the inner service. `poll_ready` passes the
//! caller's poll on to it without waiting: when the inner service is ready
//! and `call` admits the request at once, the request goes straight to it.
//! Otherwise the response future owns a clone of it (hence `S: Clone`, cheap
//! for HTTP clients, which are handles) and, once it holds a permit, drives
//! that clone's `poll_ready` to readiness before calling it. A not-ready
//! inner service therefore delays only requests that already hold a permit,
//! and does so while holding it. An error from the inner `poll_ready` is
//! returned by the next request's future.
//!
//! # Holding the permit until the response is done
//!
//! The permit ([`Permit`]) is moved into the response through
//! [`HoldGuard`](crate::hold::HoldGuard): the service's response type is
//! `<S::Response as HoldGuard<Permit>>::Output`. For an `http::Response<B>`
//! the permit lives in its body ([`GuardedBody`](crate::hold::GuardedBody))
//! until the body has been read to the end, has failed, or is dropped: a
//! streamed completion counts against the limit for as long as it streams.
//! A response type that is complete on arrival implements
//! [`Complete`](crate::hold::Complete) and the permit is released at once.
//!
//! # Cancel safety
//!
//! Every reservation is owned by a value whose `Drop` releases it:
//!
//! - dropping a queued [`ResponseFuture`](future::ResponseFuture) removes its
//!   entry: the queue never holds a phantom slot;
//! - if a permit had been handed to it but it was dropped before seeing it,
//!   the permit goes on to the next waiter;
//! - dropping a future that holds a permit, or a response body that holds
//!   one, releases it (to the next waiter if there is one).
//!
//! # Sharing
//!
//! Clones of a [`ConcurrencyLimit`] share one limiter. A layer from
//! [`build`](ConcurrencyLimitLayerBuilder::build) gives each service it wraps
//! its own limiter; one from
//! [`build_shared`](ConcurrencyLimitLayerBuilder::build_shared) shares one
//! limiter among all of them, like tower's `GlobalConcurrencyLimitLayer`.
//!
//! # Metrics
//!
//! Registered once per layer, all with the label `layer="concurrency"` (plus
//! `name` with [`metrics_name`](ConcurrencyLimitLayerBuilder::metrics_name)):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `llm_sluice_admitted_total` | counter | requests given a permit |
//! | `llm_sluice_in_flight` | gauge | permits held |
//! | `llm_sluice_queue_depth` | gauge | requests waiting |
//! | `llm_sluice_queue_wait_seconds` | histogram | wait of each admitted or timed-out request (0 on the fast path) |
//! | `llm_sluice_rejected_total` | counter | rejections, by `reason` (`queue_full`, `queue_timeout`, `deadline`) and `priority` (`low`, `normal`, `high`, `critical`) |
//!
//! Gauges move by increments, so several limiters (separate services of one
//! layer) add up in one series. `priority` is the request's
//! [`Priority`](crate::Priority) bucketed to its named level, so it has four
//! values whatever priorities callers use.

pub mod future;
mod layer;
pub(crate) mod limiter;
mod queue;
mod service;

pub use layer::{ConcurrencyLimitLayer, ConcurrencyLimitLayerBuilder, DEFAULT_AGING};
pub(crate) use limiter::MAX_PERMITS;
pub use limiter::{LimiterStats, Permit};
pub use service::ConcurrencyLimit;
