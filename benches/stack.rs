//! The full recommended stack on its success path, against the same jobs
//! done with tower's built-ins and with `tower-resilience`, in one criterion
//! group so the ratios hold on a noisy machine.
//!
//! ```text
//! cargo bench --bench stack -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Rows of the `stack` group (each: `ready().await` + `call().await` on one
//! service, in a loop inside one `block_on` of a current-thread runtime):
//!
//! - `noop`: the bare no-op inner service, the floor;
//! - `llm-sluice`: deadline → retry → breaker → concurrency → rate → attempt
//!   timeout → no-op, built with `LlmStack::from_config`, every part on,
//!   rate limits far above what the bench sends so nothing ever waits;
//! - `llm-sluice-layers`: the same layers composed by hand;
//! - `tower`: `ConcurrencyLimit` → `RateLimit` → `Retry` (a simple
//!   attempts policy) → `Timeout` → no-op, unshared (`RateLimit` is not
//!   `Clone`, so `Retry` sits inside it);
//! - `tower-buffered`: the same behind `tower::buffer::Buffer`, which is how
//!   it is shared between callers;
//! - `tower-resilience`: retry → circuit breaker → bulkhead → rate limiter →
//!   time limiter → no-op.
//!
//! The `stack_contended` group measures process CPU time (not wall time:
//! criterion's "time" there is CPU time) per call for 10,000 tasks on a
//! 2-worker runtime, each calling a clone of one shared llm-sluice stack
//! once, against 10,000 tasks each doing one bare `tokio::sync::Semaphore`
//! acquire/release, and 10,000 tasks doing nothing (the cost of spawning).
//!
//! After the groups, a summary prints per-call figures and ratios of its own
//! measurement (the fastest of several rounds in which the rows take turns,
//! so noise on a shared machine falls on every row alike), and the heap
//! allocations per request
//! of each stack, counted by a counting global allocator over 10,000 calls
//! after a warm-up. Set `STACK_SUMMARY_ONLY=1` to skip criterion.
//!
//! Nothing here pauses tokio's clock: bench builds get tokio's `test-util`
//! (a dev-dependency), and once any runtime in the process has paused time,
//! every later `tokio::time::Instant::now()` takes a locked slow path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use criterion::{Criterion, Throughput};
use llm_sluice::rate::DispatchLayer;
use llm_sluice::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, DeadlineLayer, LlmRequest, LlmStack,
    RateLimitLayer, RetryLayer, StackConfig, TimeoutLayer,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

// --- counting allocator ---------------------------------------------------

/// Counts allocations while `COUNTING` is on; otherwise one relaxed load.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// --- the request, the response, the inner service -------------------------

/// A typed request as a client would write it: cheap to clone, carries the
/// facts the layers pass inwards (deadline, arrival).
#[derive(Debug, Clone, Copy)]
struct Req {
    tokens: u64,
    deadline: Option<Instant>,
    arrival: Option<Instant>,
}

impl Req {
    fn new() -> Self {
        Req {
            tokens: 100,
            deadline: None,
            arrival: None,
        }
    }
}

impl LlmRequest for Req {
    fn token_estimate(&self) -> u64 {
        self.tokens
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
    fn arrival(&self) -> Option<Instant> {
        self.arrival
    }
    fn set_arrival(&mut self, at: Instant) {
        self.arrival = Some(at);
    }
}

/// The response is `()`: the default classifier treats it as a success and
/// it holds no permit (`hold::Complete`).
type Noop = tower::util::ServiceFn<fn(Req) -> Ready<Result<(), Infallible>>>;

fn noop() -> Noop {
    fn respond(_: Req) -> Ready<Result<(), Infallible>> {
        ready(Ok(()))
    }
    tower::service_fn(respond as fn(Req) -> _)
}

// --- the stacks -------------------------------------------------------------

/// Far above anything the bench sends (a few million calls a minute).
const HUGE: u64 = 1 << 40;

/// deadline → retry → breaker → concurrency → rate → attempt timeout →
/// no-op, as a user builds it: [`LlmStack`] from a [`StackConfig`].
fn sluice(
) -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static {
    let mut config = StackConfig::default();
    config.deadline = Some(Duration::from_secs(120));
    config.retry.max_retries = 2;
    config.breaker.consecutive_failures = Some(5);
    config.breaker.failure_rate = Some(0.5);
    config.breaker.count_window = Some(100);
    config.concurrency.max_in_flight = 1024;
    config.concurrency.max_queued = 16_384;
    config.concurrency.max_queue_wait = Duration::from_secs(60);
    config.rate.requests_per_minute = Some(HUGE);
    config.rate.tokens_per_minute = Some(HUGE);
    config.timeout.attempt = Some(Duration::from_secs(60));
    let stack = LlmStack::from_config(&config).unwrap();
    ServiceBuilder::new().layer(stack).service(noop())
}

/// The same layers composed by hand with `ServiceBuilder`: the difference
/// to [`sluice`] is what `LlmStack`'s optional parts cost.
fn sluice_layers(
) -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static {
    ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(120)))
        .layer(RetryLayer::builder().max_retries(2).build().unwrap())
        .layer(
            CircuitBreakerLayer::builder()
                .consecutive_failures(5)
                .failure_rate(0.5)
                .count_window(100)
                .build()
                .unwrap(),
        )
        .layer(
            RateLimitLayer::builder()
                .requests_per_minute(HUGE)
                .tokens_per_minute(HUGE)
                .build()
                .unwrap()
                .admission(),
        )
        .layer(
            ConcurrencyLimitLayer::builder()
                .max_in_flight(1024)
                .max_queued(16_384)
                .max_queue_wait(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .layer(DispatchLayer::new())
        .layer(
            TimeoutLayer::builder()
                .attempt(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .service(noop())
}

/// tower's documented attempts policy.
#[derive(Clone)]
struct Attempts(usize);

impl<Res, E> tower::retry::Policy<Req, Res, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(*req)
    }
}

/// ConcurrencyLimit → RateLimit → Retry → Timeout → no-op.
fn tower_stack() -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Send + 'static
{
    ServiceBuilder::new()
        .concurrency_limit(1024)
        .rate_limit(HUGE, Duration::from_secs(60))
        .retry(Attempts(2))
        .timeout(Duration::from_secs(60))
        .service(noop())
}

/// tower-resilience: retry → circuit breaker → bulkhead → rate limiter →
/// time limiter → no-op. Its layers nest their error types; the retry layer
/// is told the one beneath it.
fn resilience(
) -> impl Service<Req, Response = (), Error: std::fmt::Debug, Future: Send> + Clone + Send + 'static
{
    use tower_resilience::bulkhead::BulkheadLayer;
    use tower_resilience::circuitbreaker::CircuitBreakerLayer;
    use tower_resilience::ratelimiter::RateLimiterLayer;
    use tower_resilience::retry::RetryLayer;
    use tower_resilience::timelimiter::TimeLimiterLayer;

    ServiceBuilder::new()
        .layer(
            RetryLayer::<Req, (), _>::builder()
                .max_attempts(3)
                .fixed_backoff(Duration::from_millis(100))
                .build(),
        )
        .layer(
            CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window_size(100)
                .build()
                .unwrap(),
        )
        .layer(
            BulkheadLayer::builder()
                .max_concurrent_calls(1024)
                .build()
                .unwrap(),
        )
        .layer(
            RateLimiterLayer::builder()
                .limit_for_period(1 << 40)
                .refresh_period(Duration::from_secs(60))
                .timeout_duration(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .layer(
            TimeLimiterLayer::builder()
                .timeout_duration(Duration::from_secs(60))
                .build(),
        )
        .service(noop())
}

// --- measuring --------------------------------------------------------------

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `n` calls, one after another, each `ready().await` + `call().await`.
async fn calls<S>(svc: &mut S, n: u64)
where
    S: Service<Req, Response = ()>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let ready = svc.ready().await.unwrap();
        ready.call(black_box(Req::new())).await.unwrap();
    }
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the whole process (all runtime workers).
fn process_cpu() -> Duration {
    cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    cpu_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

const TASKS: u64 = 10_000;

/// What one contended task does.
#[derive(Clone)]
enum Contender<S> {
    /// Nothing: the cost of spawning and joining a task.
    Spawn,
    /// One acquire and release of a shared semaphore.
    Semaphore(Arc<Semaphore>),
    /// One call through a clone of a shared stack.
    Stack(S),
}

impl<S> Contender<S>
where
    S: Service<Req, Response = ()> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    /// Spawns `TASKS` tasks on `rt`, waits for all; returns the process CPU
    /// time it took.
    fn fan_out(&self, rt: &tokio::runtime::Runtime) -> Duration {
        rt.block_on(async {
            let start = process_cpu();
            let mut handles = Vec::with_capacity(TASKS as usize);
            for _ in 0..TASKS {
                let job = self.clone();
                handles.push(tokio::spawn(async move {
                    match job {
                        Contender::Spawn => {}
                        Contender::Semaphore(sem) => {
                            let permit = sem.acquire().await.unwrap();
                            black_box(&permit);
                        }
                        Contender::Stack(svc) => svc.oneshot(Req::new()).await.unwrap(),
                    }
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
            process_cpu() - start
        })
    }
}

fn benches(c: &mut Criterion) {
    let rt = current_thread();
    let guard = rt.enter();
    let mut group = c.benchmark_group("stack");
    group.throughput(Throughput::Elements(1));

    macro_rules! row {
        ($name:expr, $svc:expr) => {{
            let mut svc = $svc;
            group.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = StdInstant::now();
                        calls(&mut svc, iters).await;
                        start.elapsed()
                    })
                })
            });
        }};
    }
    // The floor first: the first row of a run tends to measure slow, and
    // the floor matters least.
    row!("noop", noop());
    row!("llm-sluice", sluice());
    row!("llm-sluice-layers", sluice_layers());
    row!("tower", tower_stack());
    row!(
        "tower-buffered",
        tower::buffer::Buffer::new(tower_stack(), 1024)
    );
    row!("tower-resilience", resilience());
    group.finish();
    drop(guard);

    let rt = two_workers();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("stack_contended");
    group.throughput(Throughput::Elements(TASKS));
    group.sample_size(20);
    let sem = Arc::new(Semaphore::new(1024));
    let contenders = [
        ("spawn-only", Contender::Spawn),
        ("semaphore", Contender::Semaphore(sem)),
        ("llm-sluice", Contender::Stack(sluice())),
    ];
    for (name, contender) in &contenders {
        group.bench_function(format!("cpu/{name}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| contender.fan_out(&rt)).sum())
        });
    }
    group.finish();
}

// --- the summary -----------------------------------------------------------

const SUMMARY_CALLS: u64 = 100_000;
const SUMMARY_RUNS: usize = 7;
const ALLOC_CALLS: u64 = 10_000;

struct Row {
    name: &'static str,
    wall_ns: f64,
    cpu_ns: f64,
    allocs: f64,
}

/// One row of the uncontended summary: a service behind a closure that
/// sends it `n` calls on a runtime, so rows of different types can take
/// turns.
struct Runner {
    name: &'static str,
    run: Box<RunCalls>,
}

/// Sends `n` calls on the runtime.
type RunCalls = dyn FnMut(&tokio::runtime::Runtime, u64);

fn runner<S>(name: &'static str, mut svc: S) -> Runner
where
    S: Service<Req, Response = ()> + 'static,
    S::Error: std::fmt::Debug,
{
    Runner {
        name,
        run: Box::new(move |rt, n| rt.block_on(calls(&mut svc, n))),
    }
}

/// Per-call wall and thread-CPU time of each row (the fastest of
/// `SUMMARY_RUNS` rounds, the rows taking turns within a round, so a burst
/// of noise on the shared machine hits every row alike rather than one),
/// then allocations per call.
fn measure(rt: &tokio::runtime::Runtime, runners: &mut [Runner]) -> Vec<Row> {
    for r in runners.iter_mut() {
        (r.run)(rt, SUMMARY_CALLS / 10);
    }
    let mut best = vec![(f64::MAX, f64::MAX); runners.len()];
    for _ in 0..SUMMARY_RUNS {
        for (r, best) in runners.iter_mut().zip(&mut best) {
            let (w0, c0) = (StdInstant::now(), thread_cpu());
            (r.run)(rt, SUMMARY_CALLS);
            let (w, c) = (w0.elapsed(), thread_cpu() - c0);
            best.0 = best.0.min(w.as_nanos() as f64 / SUMMARY_CALLS as f64);
            best.1 = best.1.min(c.as_nanos() as f64 / SUMMARY_CALLS as f64);
        }
    }
    runners
        .iter_mut()
        .zip(best)
        .map(|(r, (wall_ns, cpu_ns))| {
            ALLOCATIONS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            (r.run)(rt, ALLOC_CALLS);
            COUNTING.store(false, Ordering::SeqCst);
            let allocs = ALLOCATIONS.load(Ordering::SeqCst) as f64 / ALLOC_CALLS as f64;
            Row {
                name: r.name,
                wall_ns,
                cpu_ns,
                allocs,
            }
        })
        .collect()
}

fn summary() {
    let rt = current_thread();
    let guard = rt.enter();
    let buffered = tower::buffer::Buffer::new(tower_stack(), 1024);
    let rows = measure(
        &rt,
        &mut [
            runner("noop", noop()),
            runner("llm-sluice", sluice()),
            runner("llm-sluice-layers", sluice_layers()),
            runner("tower", tower_stack()),
            runner("tower-buffered", buffered),
            runner("tower-resilience", resilience()),
        ],
    );
    // Ratios from thread CPU time: on a shared machine wall time includes
    // time spent descheduled.
    let floor = rows[0].cpu_ns;
    let ours = rows[1].cpu_ns - floor;
    println!();
    println!(
        "summary: uncontended, per call (min of {SUMMARY_RUNS} interleaved rounds of {SUMMARY_CALLS}), \
         allocations over {ALLOC_CALLS} calls"
    );
    println!(
        "{:<18} {:>9} {:>9} {:>11} {:>13} {:>12}",
        "stack", "wall ns", "cpu ns", "added cpu", "llm-sluice/x", "allocs/call"
    );
    for row in &rows {
        let added = row.cpu_ns - floor;
        let ratio = if row.name == "noop" {
            String::from("-")
        } else {
            format!("{:.2}x", ours / added)
        };
        println!(
            "{:<18} {:>9.1} {:>9.1} {:>11.1} {:>13} {:>12.2}",
            row.name, row.wall_ns, row.cpu_ns, added, ratio, row.allocs
        );
    }

    drop(guard);

    let rt = two_workers();
    let _guard = rt.enter();
    let sem = Arc::new(Semaphore::new(1024));
    let contenders = [
        ("spawn-only", Contender::Spawn),
        ("semaphore", Contender::Semaphore(sem)),
        ("llm-sluice", Contender::Stack(sluice())),
    ];
    for _ in 0..2 {
        // warm-up: the runtime's task slabs, the stack's state
        for c in &contenders {
            c.1.fan_out(&rt);
        }
    }
    // Here each contender runs its rounds back to back: every round spawns
    // 10,000 tasks, whose sizes differ between contenders, and taking turns
    // would have each round start on the allocator's free lists of another
    // contender's tasks rather than in the steady state of its own.
    let mut cpu = [0f64; 3];
    for (i, (_, c)) in contenders.iter().enumerate() {
        cpu[i] = (0..SUMMARY_RUNS)
            .map(|_| c.fan_out(&rt).as_nanos() as f64 / TASKS as f64)
            .fold(f64::MAX, f64::min);
    }
    println!();
    println!(
        "summary: contended, {TASKS} tasks on 2 workers, process CPU per call \
         (min of {SUMMARY_RUNS} runs)"
    );
    for (i, (name, _)) in contenders.iter().enumerate() {
        println!("{name:<18} {:>9.1} ns", cpu[i]);
    }
    // Spawning and joining a task is most of each figure; it is the same
    // for both, so the ratio includes it (as the goal's is stated).
    println!("llm-sluice / semaphore: {:.2}x", cpu[2] / cpu[1]);
}

/// `STACK_PROFILE=N`: only N calls (5,000,000 if N is not a number) of the
/// llm-sluice stack, uncontended, for a profiler to watch (`perf record`,
/// or `valgrind --tool=callgrind` with a small N for instruction counts).
fn profile(calls_wanted: Option<u64>) {
    let rt = current_thread();
    let _guard = rt.enter();
    let mut svc = sluice();
    rt.block_on(calls(&mut svc, calls_wanted.unwrap_or(5_000_000)));
}

fn main() {
    if let Some(n) = std::env::var_os("STACK_PROFILE") {
        return profile(n.to_str().and_then(|n| n.parse().ok()));
    }
    if std::env::var_os("STACK_SUMMARY_ONLY").is_none() {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c);
        c.final_summary();
    }
    summary();
}
