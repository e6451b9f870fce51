//! "How are we doing?" answered in code, without a metrics exporter.
//!
//! A [`Stats`] handle counts every request by how it ended and keeps latency
//! percentiles; [`Stats::snapshot`] returns a [`StatsSnapshot`] with plain
//! fields and a small `Display` table. [`StatsLayer`] (outermost) records
//! each request's outcome and end-to-end time; a
//! [`ConcurrencyLimitLayer`] built with
//! [`.stats(&stats)`](crate::concurrency::ConcurrencyLimitLayerBuilder::stats)
//! records queue waits and shows its in-flight and queued counts; circuit
//! breakers and rate limiters are attached by their handles.
//!
//! ```
//! use std::time::Duration;
//! use llm_sluice::request::RequestMeta;
//! use llm_sluice::stats::Stats;
//! use llm_sluice::{CircuitBreakerLayer, ConcurrencyLimitLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let client = tower::service_fn(|req: RequestMeta| async move {
//! #     Ok::<_, tower::BoxError>(format!("{} tokens", req.tokens))
//! # });
//!
//! let stats = Stats::new();
//! let breaker = CircuitBreakerLayer::builder().build()?;
//! stats.attach_breaker(breaker.handle());
//! let limit = ConcurrencyLimitLayer::builder()
//!     .max_in_flight(8)
//!     .max_queued(100)
//!     .max_queue_wait(Duration::from_secs(30))
//!     .stats(&stats) // queue waits, in flight and queued now
//!     .build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(stats.layer()) // outermost: outcomes and end-to-end time
//!     .layer(breaker)
//!     .layer(limit)
//!     .service(client);
//!
//! svc.ready().await?.call(RequestMeta::new().tokens(12)).await?;
//!
//! let now = stats.snapshot();
//! assert_eq!((now.total, now.outcomes.success), (1, 1));
//! assert_eq!((now.in_flight, now.queued), (Some(0), Some(0)));
//! assert_eq!(now.queue_wait.count, 1, "immediate admissions count as zero waits");
//! println!("{now}");
//! # Ok(())
//! # }
//! ```
//!
//! # What is counted
//!
//! [`StatsLayer`] counts each request exactly once, when it ends, under one
//! of:
//!
//! - this crate's own rejections, by the [`Error`](crate::Error) found in the
//!   error's source chain: `queue_full`, `queue_timeout`, `rate_limited`,
//!   `circuit_open`, `deadline`, `too_large` ([`RejectionCounts`]);
//! - otherwise the classifier's [`Outcome`](crate::classify::Outcome):
//!   `success`, `rate_limited`, `quota_exhausted`, `overloaded`,
//!   `server_error`, `timeout`, `transport`, `client_error`
//!   ([`OutcomeCounts`]); a custom classifier's `Rejected` with no
//!   crate error behind it is `rejected.other`;
//! - `cancelled` when the response future is dropped before it finishes.
//!
//! With a retry layer inside it, a request counts once however many
//! attempts it took (put the layer innermost to count attempts instead).
//! An error from `poll_ready` is not a request and is not counted.
//!
//! # Streams
//!
//! The response is classified when it arrives, but the request is counted,
//! and its end-to-end time taken, when the response is *done*: the layer
//! moves a small guard into the response with
//! [`HoldGuard`](crate::hold::HoldGuard). A complete response drops it at
//! once; an `http::Response` keeps it in its body until the body ends, fails
//! or is dropped, so a streamed completion's end-to-end time includes the
//! whole stream. A snapshot taken while a stream runs does not count it yet.
//!
//! # Percentiles
//!
//! Latencies go into [`hdrhistogram`] histograms with fixed bounds: 1 µs to
//! 1 hour, three significant digits (each value within 0.1 %, exact below
//! 2.048 ms). A value past the bounds is clamped to them, never dropped and
//! never a panic. `end_to_end` keeps every request that ended with a
//! response or an error (fast rejections included, cancellations not);
//! `queue_wait` keeps one value per request the concurrency limiter admitted
//! (zero when a permit was free) or timed out.
//!
//! # Cost
//!
//! Recording takes one uncontended lock: counters and histograms are split
//! into shards (one per core, up to 16, each on its own cache lines), and a
//! thread always records into the same shard. Nothing is allocated per
//! record; a shard's histograms (about 190 KB each) are made on its first
//! record. A request through [`StatsLayer`] costs two clock reads (at `call`
//! and at the end), a reference count on its thread's shard (not one count
//! shared by every thread), the classification, and that lock.
//! [`Stats::snapshot`] locks the shards one after the other and merges them;
//! it allocates and is meant for a dashboard or a log line every few
//! seconds, not for every request.
//!
//! # Cancel safety
//!
//! Dropping a [`ResponseFuture`](future::ResponseFuture) counts the request
//! as `cancelled` (once); dropping a response's guard before its body ended
//! counts the request under the outcome its response had.

pub mod future;
mod layer;
mod recorder;
mod service;
mod snapshot;

pub use layer::StatsLayer;
pub use service::StatsService;
pub use snapshot::{BreakerStats, OutcomeCounts, Percentiles, RejectionCounts, StatsSnapshot};

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::breaker::shared::Registry;
use crate::breaker::{CircuitHandle, CircuitState};
use crate::concurrency::limiter::Limiter;
use crate::concurrency::ConcurrencyLimitLayer;
use crate::rate::{Control, RateLimitHandle};
use recorder::Recorder;

/// Counts requests by outcome and keeps latency percentiles; a cheap,
/// cloneable handle.
///
/// Clones share everything: record through one, read through another. See
/// the [module docs](self).
#[derive(Clone)]
pub struct Stats {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: Recorder,
    attached: Mutex<Attached>,
}

#[derive(Default)]
/// The live state shown in snapshots, held weakly: a part whose services and
/// layers are all gone drops out, and rebuilding a stack against the same
/// `Stats` replaces its parts instead of adding to them.
struct Attached {
    limiters: Vec<Weak<Limiter>>,
    breakers: Vec<Weak<Registry>>,
    rates: Vec<Weak<dyn Control>>,
}

/// Keeps a weak reference to `item` in `list`, once, dropping dead ones.
fn attach_weak<T: ?Sized>(list: &mut Vec<Weak<T>>, item: &Arc<T>) {
    list.retain(|w| w.strong_count() > 0);
    if !list
        .iter()
        .any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(item)))
    {
        list.push(Arc::downgrade(item));
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// A new, empty handle.
    pub fn new() -> Self {
        Stats::from_recorder(Recorder::new())
    }

    fn from_recorder(recorder: Recorder) -> Self {
        Stats {
            inner: Arc::new(Inner {
                recorder,
                attached: Mutex::new(Attached::default()),
            }),
        }
    }

    /// A [`StatsLayer`] recording into this handle, with the
    /// [`DefaultClassifier`](crate::classify::DefaultClassifier). Put it
    /// outermost.
    pub fn layer(&self) -> StatsLayer {
        StatsLayer::new(self.clone())
    }

    /// What the handle knows now. Counts and percentiles are summed over
    /// the shards (each read under its lock, one after the other); live
    /// counts are read from the attached layers.
    pub fn snapshot(&self) -> StatsSnapshot {
        let (counts, end_to_end, queue_wait) = self.inner.recorder.merged();
        let mut snapshot = StatsSnapshot::from_counts(&counts, &end_to_end, &queue_wait);
        let attached = self.inner.attached.lock();
        for limiter in attached.limiters.iter().filter_map(Weak::upgrade) {
            let live = limiter.stats();
            *snapshot.in_flight.get_or_insert(0) += live.in_flight;
            *snapshot.queued.get_or_insert(0) += live.queued;
        }
        for rate in attached.rates.iter().filter_map(Weak::upgrade) {
            *snapshot.rate_waiting.get_or_insert(0) += rate.waiting();
        }
        snapshot.breakers = attached
            .breakers
            .iter()
            .filter_map(Weak::upgrade)
            .map(|registry| breaker_stats(&CircuitHandle { registry }))
            .collect();
        snapshot
    }

    /// Forgets every count and latency recorded so far (attached layers stay
    /// attached). Requests running now are counted when they end.
    pub fn reset(&self) {
        self.inner.recorder.reset();
    }

    /// Shows the in-flight and queued counts of a concurrency layer made by
    /// [`build_shared`](crate::concurrency::ConcurrencyLimitLayerBuilder::build_shared).
    /// Returns `false`, attaching nothing, for a layer that gives each
    /// service its own limiter: build that one with
    /// [`.stats(&stats)`](crate::concurrency::ConcurrencyLimitLayerBuilder::stats),
    /// which attaches every limiter it makes (and records queue waits).
    /// Attaching the same limiter twice counts it once.
    pub fn attach_concurrency(&self, layer: &ConcurrencyLimitLayer) -> bool {
        match layer.shared_limiter() {
            Some(limiter) => {
                self.attach_limiter(limiter);
                true
            }
            None => false,
        }
    }

    /// Shows the state of a circuit breaker layer's breakers, from its
    /// [`handle`](crate::CircuitBreakerLayer::handle). Held weakly, and
    /// once however often it is attached.
    pub fn attach_breaker(&self, handle: CircuitHandle) {
        attach_weak(&mut self.inner.attached.lock().breakers, &handle.registry);
    }

    /// Shows how many requests wait for room in a rate limiter, from its
    /// [`handle`](crate::RateLimitLayer::handle). Held weakly, and once
    /// however often it is attached.
    pub fn attach_rate(&self, handle: RateLimitHandle) {
        attach_weak(&mut self.inner.attached.lock().rates, &handle.control);
    }

    /// Attaches one limiter (kept weakly: a limiter whose services are all
    /// gone drops out).
    pub(crate) fn attach_limiter(&self, limiter: &Arc<Limiter>) {
        attach_weak(&mut self.inner.attached.lock().limiters, limiter);
    }

    /// Keeps one queue wait.
    #[inline]
    pub(crate) fn record_queue_wait(&self, waited: Duration) {
        self.inner.recorder.record_queue_wait(waited);
    }

    #[inline]
    pub(crate) fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }
}

fn breaker_stats(handle: &CircuitHandle) -> BreakerStats {
    let mut stats = BreakerStats {
        state: handle.state(),
        partitions: handle.partitions(),
        closed: 0,
        half_open: 0,
        open: 0,
    };
    handle.for_each_state(|state| match state {
        CircuitState::Closed | CircuitState::ForcedClosed => stats.closed += 1,
        CircuitState::HalfOpen => stats.half_open += 1,
        CircuitState::Open | CircuitState::ForcedOpen => stats.open += 1,
    });
    stats
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attached = self.inner.attached.lock();
        f.debug_struct("Stats")
            .field("shards", &self.inner.recorder.shard_count())
            .field("concurrency", &attached.limiters.len())
            .field("breakers", &attached.breakers.len())
            .field("rates", &attached.rates.len())
            .finish()
    }
}
