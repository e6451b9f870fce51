//! The chaos test: the whole recommended stack, composed with
//! `tower::ServiceBuilder`, under every fault the simulated upstream can
//! inject, in virtual time.
//!
//! fallback → retry (total deadline) → circuit breaker → rate admission →
//! concurrency limit (priority queue) → rate dispatch → attempt timeout →
//! `sim::Upstream` (typed `SimRequest` path); the fallback's secondary is a second
//! `sim::Upstream` behind its own attempt timeout.
//!
//! 100,000 requests from four API keys at four priorities, 10% of them
//! streamed, arrive at random; 5% of the callers give up at a random moment
//! and drop their future. The test asserts that no caller panics, that every
//! request has exactly one fate (a response, a typed error, or dropped), that
//! the upstream never saw more calls at once than the concurrency limit nor
//! more requests or tokens in any window than the rate limits (per key and
//! over all keys), and that at the end every permit, queue slot and window
//! waiter is back.
//!
//! Thin marker layers between the real ones record, in a task-local, how far
//! each caller's request got (waiting on the window, queued, in flight, in
//! retry backoff, at the secondary, streaming), so the callers that drop
//! their futures show they dropped them at each of those points. An audit
//! ([`audit`]) models each breaker's half-open probe slots from outside and
//! checks every probe let through and every call refused against it.

mod audit;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_sluice::breaker::{CircuitBreakerLayer, StateChange};
use llm_sluice::concurrency::ConcurrencyLimitLayer;
use llm_sluice::fallback::{FallbackLayer, RecordServedBy};
use llm_sluice::rate::{Admitted, DispatchLayer, RateLimitLayer};
use llm_sluice::retry::RetryLayer;
use llm_sluice::sim::{
    Count, Dist, Faults, Received, SimRequest, SimResponse, TokenCharge, Upstream,
};
use llm_sluice::timeout::TimeoutLayer;
use llm_sluice::{CircuitState, Error, PartitionKey, Priority};
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};

use audit::ProbeAudit;

// ---------- the scenario ----------

const REQUESTS: usize = 100_000;
const SEED: u64 = 0x5EED_C4A0;
const KEYS: [&str; 4] = ["sk-0", "sk-1", "sk-2", "sk-3"];
/// Share of the traffic per key: key 0 is hot and runs into its window.
const KEY_WEIGHTS: [f64; 4] = [0.40, 0.25, 0.20, 0.15];
/// Mean gap between arrivals (about 1,700 a minute in all).
const MEAN_GAP_SECS: f64 = 60.0 / 1_700.0;
/// Share of callers that give up at a random moment and drop their future.
const DROP_SHARE: f64 = 0.05;
/// Share of requests that stream their answer.
const STREAM_SHARE: f64 = 0.10;

const WINDOW: Duration = Duration::from_secs(60);
const MAX_IN_FLIGHT: usize = 32;
const MAX_QUEUED: usize = 300;
const RPM: u64 = 500;
const TPM: u64 = 300_000;
const GLOBAL_RPM: u64 = 1_300;
const GLOBAL_TPM: u64 = 1_000_000;
const BREAKER_OPEN: Duration = Duration::from_secs(2);
const HALF_OPEN_PROBES: u32 = 2;
const HALF_OPEN_MAX_WAIT: Duration = Duration::from_secs(60);

// ---------- where a request is: the marker layers ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Not yet past the retry layer.
    Start,
    /// An attempt passed the breaker and waits for room in the rate window
    /// (holding no permit).
    Window,
    /// The window admitted the attempt; it waits for a concurrency permit.
    Queued,
    /// The attempt is at the upstream.
    InFlight,
    /// The upstream answered; the answer is on its way out.
    Answered,
    /// An attempt finished and the retry layer has not returned: it waits
    /// for the next attempt (backoff or the server's delay).
    Backoff,
    /// The request went to the fallback's secondary.
    Secondary,
    /// The caller reads a streamed success.
    Streaming,
}

tokio::task_local! {
    static STAGE: Cell<Stage>;
}

fn mark(stage: Stage) {
    let _ = STAGE.try_with(|s| s.set(stage));
}

pin_project_lite::pin_project! {
    /// Marks `stage` when the inner future finishes. (A named future rather
    /// than an `async` block: an `async` block here trips rustc's
    /// higher-ranked `Send` check on the `E: Into<BoxError>` bounds when the
    /// caller is spawned.)
    struct Marked<F> {
        #[pin]
        future: F,
        stage: Stage,
    }
}

impl<F: std::future::Future> std::future::Future for Marked<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.future.poll(cx));
        mark(*this.stage);
        std::task::Poll::Ready(out)
    }
}

fn marked<F>(stage: Stage, future: F) -> Marked<F> {
    Marked { future, stage }
}

// ---------- what happened to each request ----------

#[derive(Debug)]
enum Fate {
    /// A response (the last one, after retries and any fallback).
    Response { status: u16, secondary: bool },
    /// A typed error of this crate.
    Own(&'static str),
    /// The upstream's own error (a connection reset).
    Io(std::io::ErrorKind),
    /// The caller dropped its future.
    Dropped(Stage),
}

fn own_name(err: &Error) -> &'static str {
    match err {
        Error::Overloaded { .. } => "overloaded",
        Error::QueueTimeout { .. } => "queue_timeout",
        Error::DeadlineExceeded => "deadline_exceeded",
        Error::RequestTooLarge { .. } => "request_too_large",
        Error::RateLimited { .. } => "rate_limited",
        Error::CircuitOpen { .. } => "circuit_open",
        Error::Timeout { kind } => match kind.as_str() {
            "attempt" => "timeout_attempt",
            "total" => "timeout_total",
            "first_chunk" => "timeout_first_chunk",
            _ => "timeout_idle",
        },
        _ => "other_own_error",
    }
}

fn fate_of(result: Result<SimResponse, BoxError>) -> Fate {
    match result {
        Ok(response) => Fate::Response {
            status: response.status,
            secondary: response.served_by().is_some(),
        },
        Err(err) => {
            if let Some(own) = err.downcast_ref::<Error>() {
                Fate::Own(own_name(own))
            } else if let Some(io) = err.downcast_ref::<std::io::Error>() {
                Fate::Io(io.kind())
            } else {
                panic!("an error that is neither llm_sluice::Error nor the upstream's: {err:?}")
            }
        }
    }
}

// ---------- the run ----------

/// The most requests (and charged tokens) within any window of `WINDOW`
/// over all keys together.
fn global_peak(logs: &[Received]) -> (u64, u64) {
    let mut sorted: Vec<_> = logs.iter().map(|r| (r.at, r.charged_tokens)).collect();
    sorted.sort_by_key(|&(at, _)| at);
    let mut queue = std::collections::VecDeque::new();
    let (mut tokens, mut peak_requests, mut peak_tokens) = (0u64, 0u64, 0u64);
    for (at, t) in sorted {
        while let Some(&(front, ft)) = queue.front() {
            if front + WINDOW > at {
                break;
            }
            queue.pop_front();
            tokens -= ft;
        }
        queue.push_back((at, t));
        tokens += t;
        peak_requests = peak_requests.max(queue.len() as u64);
        peak_tokens = peak_tokens.max(tokens);
    }
    (peak_requests, peak_tokens)
}

#[tokio::test(start_paused = true)]
async fn full_stack_survives_chaos() {
    let wall = std::time::Instant::now();
    let started = Instant::now();

    // The primary: a provider with per-key limits above the client's, every
    // fault, log-normal time to first token, varied generation speed.
    let primary = Upstream::builder()
        .requests_per_window(550)
        .tokens_per_window(330_000)
        .token_charge(TokenCharge::Used)
        .faults(Faults {
            error_500: 0.015,
            error_503: 0.015,
            overloaded_529: 0.01,
            hang: 0.005,
            reset: 0.01,
            quota_429: 0.005,
        })
        .time_to_first_token(Dist::LogNormal {
            median: 0.3,
            sigma: 0.5,
        })
        .tokens_per_second(Dist::Uniform {
            low: 100.0,
            high: 300.0,
        })
        .output_fraction(Dist::Uniform {
            low: 0.2,
            high: 1.0,
        })
        .seed(SEED)
        .build()
        .unwrap();
    // The secondary: no limits, a few faults of every kind, its own attempt
    // timeout (so its hangs end too).
    let backup = Upstream::builder()
        .faults(Faults::all(0.01))
        .time_to_first_token(Dist::LogNormal {
            median: 0.5,
            sigma: 0.5,
        })
        .tokens_per_second(Dist::Fixed(150.0))
        .seed(SEED ^ 0xFF)
        .build()
        .unwrap();

    let concurrency = ConcurrencyLimitLayer::builder()
        .max_in_flight(MAX_IN_FLIGHT)
        .max_queued(MAX_QUEUED)
        .max_queue_wait(Duration::from_secs(15))
        .build_shared()
        .unwrap();
    let rate = RateLimitLayer::builder()
        .window(WINDOW)
        .requests_per_minute(RPM)
        .tokens_per_minute(TPM)
        .global_requests_per_minute(GLOBAL_RPM)
        .global_tokens_per_minute(GLOBAL_TPM)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let rate_handle = rate.handle();
    let changes = Arc::new(Mutex::new(Vec::<StateChange>::new()));
    let audit = ProbeAudit::default();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .failure_rate(0.25)
        .count_window(10)
        .minimum_calls(5)
        .open_duration(BREAKER_OPEN)
        .half_open_probes(HALF_OPEN_PROBES)
        .half_open_max_wait(HALF_OPEN_MAX_WAIT)
        .per_partition(16)
        .on_state_change({
            let changes = changes.clone();
            let audit = audit.clone();
            move |change: &StateChange| {
                audit.state_changed(change);
                changes.lock().unwrap().push(change.clone());
            }
        })
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    let retry = RetryLayer::builder()
        .max_retries(3)
        .backoff_base(Duration::from_millis(500))
        .backoff_cap(Duration::from_secs(8))
        .total_timeout(Duration::from_secs(30))
        .seed(SEED)
        .build()
        .unwrap();
    let attempt_timeout = TimeoutLayer::builder()
        .attempt(Duration::from_secs(8))
        .build()
        .unwrap();

    let secondary = ServiceBuilder::new()
        .map_request(|req: SimRequest| {
            mark(Stage::Secondary);
            req
        })
        .layer(attempt_timeout.clone())
        .service(backup.clone());
    let fallback = FallbackLayer::builder(secondary)
        .name("backup")
        .build()
        .unwrap();

    let stack = ServiceBuilder::new()
        .layer(fallback)
        .layer(retry)
        .map_future(|f| marked(Stage::Backoff, f))
        .layer(audit.rejections_layer(breaker_handle.clone()))
        .layer(breaker.clone())
        .layer(audit.probes_layer(breaker_handle.clone()))
        .map_request(|req: SimRequest| {
            mark(Stage::Window);
            req
        })
        .layer(rate.admission())
        .map_request(|req: Admitted<SimRequest>| {
            mark(Stage::Queued);
            req
        })
        .layer(concurrency.clone())
        .layer(DispatchLayer::new())
        .layer(attempt_timeout)
        .map_future(|f| marked(Stage::Answered, f))
        .map_request(|req: SimRequest| {
            mark(Stage::InFlight);
            req
        })
        .service(primary.clone());

    // The callers: seeded arrivals, keys, sizes, priorities and give-ups.
    let mut rng = fastrand::Rng::with_seed(SEED);
    let priorities = [
        Priority::LOW,
        Priority::NORMAL,
        Priority::HIGH,
        Priority::CRITICAL,
    ];
    let mut callers = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let gap = -(1.0 - rng.f64()).ln() * MEAN_GAP_SECS;
        tokio::time::sleep(Duration::from_secs_f64(gap)).await;

        let pick = rng.f64();
        let mut acc = 0.0;
        let key = KEYS
            .iter()
            .zip(KEY_WEIGHTS)
            .find(|(_, w)| {
                acc += w;
                pick < acc
            })
            .map_or(KEYS[KEYS.len() - 1], |(k, _)| *k);
        let req = SimRequest::new(key, rng.u64(100..=1_000), rng.u64(50..=600))
            .priority(priorities[rng.usize(..priorities.len())])
            .stream(rng.f64() < STREAM_SHARE);
        let give_up = (rng.f64() < DROP_SHARE)
            // most give up early (seconds), a few late (up to 25 s)
            .then(|| Duration::from_secs_f64(0.05 + rng.f64().powi(2) * 25.0));

        let svc = stack.clone();
        let caller = STAGE.scope(Cell::new(Stage::Start), async move {
            let call = async move {
                let mut result = svc.oneshot(req).await;
                // A streamed success holds its permit until the stream ends.
                if let Some(stream) = result.as_mut().ok().and_then(SimResponse::take_stream) {
                    mark(Stage::Streaming);
                    stream.await;
                }
                fate_of(result)
            };
            match give_up {
                None => call.await,
                Some(after) => tokio::time::timeout(after, call)
                    .await
                    .unwrap_or_else(|_| Fate::Dropped(STAGE.with(Cell::get))),
            }
        });
        callers.push((key, tokio::spawn(caller)));
    }

    // Every caller ends, none panics, each with exactly one fate.
    let mut fates: BTreeMap<String, u64> = BTreeMap::new();
    let mut dropped: BTreeMap<Stage, u64> = BTreeMap::new();
    let (mut answered, mut errors, mut dropped_total) = (0u64, 0u64, 0u64);
    let mut per_key: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (key, caller) in callers {
        let fate = caller.await.expect("a caller panicked");
        let kind = match &fate {
            Fate::Response { status: 200, .. } => "ok",
            Fate::Own("queue_timeout") => "queue_timeout",
            Fate::Own("rate_limited") => "rate_limited",
            Fate::Dropped(_) => "dropped",
            _ => "other",
        };
        *per_key.entry((key, kind)).or_default() += 1;
        match fate {
            Fate::Response { status, secondary } => {
                answered += 1;
                let by = if secondary { "secondary" } else { "primary" };
                *fates.entry(format!("{by} {status}")).or_default() += 1;
            }
            Fate::Own(name) => {
                errors += 1;
                *fates.entry(format!("error {name}")).or_default() += 1;
            }
            Fate::Io(kind) => {
                errors += 1;
                *fates.entry(format!("io {kind:?}")).or_default() += 1;
            }
            Fate::Dropped(stage) => {
                dropped_total += 1;
                *dropped.entry(stage).or_default() += 1;
            }
        }
    }
    let virtual_elapsed = started.elapsed();
    let stats = primary.stats();
    let backup_stats = backup.stats();
    eprintln!("fates: {fates:#?}");
    eprintln!("dropped at: {dropped:?}");
    eprintln!("per key: {per_key:?}");
    eprintln!("primary: {stats:?}");
    eprintln!("secondary: {backup_stats:?}");

    assert_eq!(
        answered + errors + dropped_total,
        REQUESTS as u64,
        "every request has exactly one fate"
    );
    assert_eq!(fates.values().sum::<u64>(), answered + errors);
    assert_eq!(dropped.values().sum::<u64>(), dropped_total);
    assert!(
        fates.get("primary 200").copied().unwrap_or(0) > REQUESTS as u64 / 2,
        "most requests succeed at the primary: {fates:?}"
    );

    // Callers gave up at every point a request can be.
    for stage in [
        Stage::Queued,
        Stage::Window,
        Stage::InFlight,
        Stage::Backoff,
        Stage::Streaming,
    ] {
        assert!(
            dropped.get(&stage).copied().unwrap_or(0) > 0,
            "no caller dropped its future at {stage:?}: {dropped:?}"
        );
    }

    // Every fault happened at the primary.
    let f = stats.faults;
    for (name, n) in [
        ("500", f.error_500),
        ("503", f.error_503),
        ("529", f.overloaded_529),
        ("hang", f.hang),
        ("reset", f.reset),
        ("quota", f.quota_429),
    ] {
        assert!(n > 0, "the primary never injected {name}");
    }

    // The concurrency limit held at the upstream, and everything is back.
    assert!(
        stats.max_in_flight <= MAX_IN_FLIGHT as u64,
        "the upstream saw {} at once, the limit is {MAX_IN_FLIGHT}",
        stats.max_in_flight
    );
    assert_eq!(stats.in_flight, 0, "primary calls left in flight");
    assert_eq!(backup_stats.in_flight, 0, "secondary calls left in flight");
    let limiter = concurrency.stats().expect("a shared limiter");
    assert_eq!(
        (limiter.in_flight, limiter.queued, limiter.available),
        (0, 0, MAX_IN_FLIGHT),
        "concurrency permits or queue slots not returned"
    );
    let rate_stats = rate_handle.stats();
    assert_eq!(rate_stats.waiting, 0, "rate waiters left");
    assert_eq!(
        rate_stats.admitted, stats.received,
        "every request the window admitted reached the upstream, and no other"
    );

    // The rate limits held at the upstream, per key and over all keys,
    // for what it admitted and for everything it received.
    let mut all = Vec::new();
    for key in KEYS {
        for count in [Count::Admitted, Count::Received] {
            let peak = primary.peak(key, WINDOW, count);
            assert!(
                peak.requests <= RPM && peak.tokens <= TPM,
                "{key} ({count:?}): {peak:?} in one window, the limits are {RPM} requests, {TPM} tokens"
            );
        }
        all.extend(primary.log(key));
    }
    let (global_requests, global_tokens) = global_peak(&all);
    assert!(
        global_requests <= GLOBAL_RPM && global_tokens <= GLOBAL_TPM,
        "all keys: {global_requests} requests, {global_tokens} tokens in one window"
    );

    // The breakers opened, probed and closed again, and their probe slots
    // always matched the probes really in flight.
    let changes = changes.lock().unwrap().clone();
    let count = |from: CircuitState, to: CircuitState| {
        changes
            .iter()
            .filter(|c| c.from == from && c.to == to)
            .count()
    };
    let opened = count(CircuitState::Closed, CircuitState::Open);
    let half_opened = count(CircuitState::Open, CircuitState::HalfOpen);
    let closed = count(CircuitState::HalfOpen, CircuitState::Closed);
    let reopened = count(CircuitState::HalfOpen, CircuitState::Open);
    eprintln!(
        "breaker: {opened} opened, {half_opened} half-opened, {closed} closed by probes, {reopened} re-opened by probes"
    );
    assert!(opened > 0 && half_opened > 0 && closed > 0 && reopened > 0);
    let violations = audit.violations();
    assert!(
        violations.is_empty(),
        "probe slots did not match the probes in flight: {violations:#?}"
    );
    eprintln!(
        "probe audit: {} probes, {} half-open rejections checked",
        audit.probes(),
        audit.rejections()
    );
    assert!(audit.probes() > 0 && audit.rejections() > 0);

    // No half-open breaker is left without a free probe slot: with nothing
    // in flight, each must let a call through. Let the open ones reach
    // half-open first.
    tokio::time::advance(BREAKER_OPEN).await;
    let mut probed = 0;
    for key in KEYS {
        let key = PartitionKey::new(key);
        if breaker_handle.partition_state(&key) == Some(CircuitState::HalfOpen) {
            probed += 1;
            let probe = breaker.layer(tower::service_fn(|_req: SimRequest| async {
                Ok::<_, BoxError>(())
            }));
            let result = probe.oneshot(SimRequest::new(key.clone(), 1, 1)).await;
            assert!(
                result.is_ok(),
                "{key:?} is half-open with nothing in flight but refused a probe: {result:?}"
            );
        }
    }

    eprintln!(
        "{REQUESTS} requests in {virtual_elapsed:?} of virtual time, {:?} of wall time; \
         {probed} half-open breakers probed; global peak {global_requests} requests, \
         {global_tokens} tokens",
        wall.elapsed()
    );
}
