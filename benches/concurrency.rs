//! The concurrency limiter against tower's `ConcurrencyLimit` and a bare
//! tokio `Semaphore`, all in one criterion group so the ratios hold on a
//! noisy machine. A memory measurement (resident set per queued request)
//! runs after the timed benchmarks and prints its result.
//!
//! ```text
//! cargo bench --bench concurrency -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! The saturation benchmarks use an inner service whose latency is 1 ms on
//! `std::time::Instant` with an overshoot of a few µs ([`PreciseDelay`]),
//! because tokio's timer rounds a 1 ms sleep up to about 2 ms: with it, even
//! 100 workers and no limiter reach only ~46% of 100,000/s. Set
//! `SKIP_MEMORY=1` to skip the memory measurement (e.g. when profiling), and
//! `CONTENDED_PROBE=N` to print what a contended round costs each contender
//! (CPU, context switches, parks, polls per task) instead of benchmarking.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use llm_sluice::concurrency::ConcurrencyLimitLayer;
use llm_sluice::request::RequestMeta;
use tokio::sync::Semaphore;
use tower::limit::ConcurrencyLimit as TowerLimit;
use tower::{Layer, Service, ServiceExt};

const TASKS: u64 = 10_000;
const CONTENDED_LIMIT: usize = 64;
const SATURATION_REQUESTS: u64 = 5_000;
const SATURATION_LIMIT: usize = 100;
/// Client tasks in the saturation benchmarks: twice the limit, so about 100
/// requests wait in the limiter's queue at all times.
const SATURATION_CLIENTS: u64 = 200;

type Noop = tower::util::ServiceFn<fn(RequestMeta) -> std::future::Ready<Result<(), Infallible>>>;

fn noop() -> Noop {
    fn respond(_: RequestMeta) -> std::future::Ready<Result<(), Infallible>> {
        std::future::ready(Ok(()))
    }
    tower::service_fn(respond as fn(RequestMeta) -> _)
}

/// How long before its deadline a [`PreciseDelay`] asks the timer thread to
/// wake it: a little more than that thread's own wake-up latency (a futex
/// wait with 1 µs slack, then waking a parked tokio worker from outside:
/// 25-40 µs at the median here), so the wake-up is nearly always early.
const WAKE_EARLY: Duration = Duration::from_micros(50);

/// Wakes futures shortly before a `std::time::Instant` deadline passes, from
/// one thread that sleeps until the earliest (no spinning on this thread).
struct PreciseTimer {
    waiting: Mutex<BinaryHeap<Reverse<Entry>>>,
    changed: Condvar,
}

/// A registered wake-up: the heap orders by `at` only.
struct Entry {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl PreciseTimer {
    fn get() -> &'static PreciseTimer {
        static TIMER: OnceLock<&'static PreciseTimer> = OnceLock::new();
        TIMER.get_or_init(|| {
            let timer: &'static PreciseTimer = Box::leak(Box::new(PreciseTimer {
                waiting: Mutex::new(BinaryHeap::new()),
                changed: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("precise-timer".into())
                .spawn(move || timer.run())
                .unwrap();
            timer
        })
    }

    fn run(&self) {
        // The kernel's default timer slack (50 µs) would stretch every
        // wait; ask for 1 µs.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
        let mut due = Vec::new();
        let mut waiting = self.waiting.lock().unwrap();
        loop {
            let now = Instant::now();
            while waiting.peek().is_some_and(|Reverse(e)| e.at <= now) {
                due.push(waiting.pop().unwrap().0.waker);
            }
            if !due.is_empty() {
                drop(waiting);
                due.drain(..).for_each(Waker::wake);
                waiting = self.waiting.lock().unwrap();
                continue;
            }
            waiting = match waiting.peek().map(|Reverse(e)| e.at) {
                Some(at) => self.changed.wait_timeout(waiting, at - now).unwrap().0,
                None => self.changed.wait(waiting).unwrap(),
            };
        }
    }

    fn register(&self, at: Instant, waker: &Waker) {
        let mut waiting = self.waiting.lock().unwrap();
        // Wake the thread only if this deadline comes before all others
        // (with one fixed latency, deadlines arrive in order: rarely).
        let first = waiting.peek().is_none_or(|Reverse(e)| at < e.at);
        waiting.push(Reverse(Entry {
            at,
            waker: waker.clone(),
        }));
        drop(waiting);
        if first {
            self.changed.notify_one();
        }
    }
}

/// Completes once `std::time::Instant::now()` has passed its deadline.
///
/// Why not a plain sleep: tokio's timer rounds a 1 ms sleep up to about
/// 2 ms, and a timer thread that wakes the task *at* the deadline adds its
/// own wake-up latency (futex wake plus unparking a tokio worker: 25-40 µs
/// at the median on this machine, 4% of a 1 ms latency, so even 100 workers
/// and no limiter missed 95% of 100,000/s). So the timer thread wakes the
/// task [`WAKE_EARLY`] (50 µs) before the deadline, and the task then yields
/// (wakes itself, goes to the back of its worker's run queue) until the
/// deadline has passed. Its own overshoot is one pass of the worker's run
/// queue: about 2-3 µs at the median (measured; 90th percentile under
/// 20 µs), plus whatever the OS adds when it preempts a worker on a busy
/// machine. The price is CPU: a worker spins for the last ≤ 50 µs of each
/// delay instead of parking. The same delay serves every saturation row
/// (llm-sluice, tower and the no-limiter ceiling).
struct PreciseDelay {
    at: Instant,
}

impl Future for PreciseDelay {
    type Output = Result<(), Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let now = Instant::now();
        if now >= self.at {
            return Poll::Ready(Ok(()));
        }
        if now + WAKE_EARLY >= self.at {
            // Nearly due: yield until it is.
            cx.waker().wake_by_ref();
        } else {
            PreciseTimer::get().register(self.at - WAKE_EARLY, cx.waker());
        }
        Poll::Pending
    }
}

type Slow = tower::util::ServiceFn<fn(RequestMeta) -> PreciseDelay>;

/// An inner service with a latency of 1 ms (plus a few µs, see
/// [`PreciseDelay`]).
fn slow() -> Slow {
    fn respond(_: RequestMeta) -> PreciseDelay {
        PreciseDelay {
            at: Instant::now() + Duration::from_millis(1),
        }
    }
    tower::service_fn(respond as fn(RequestMeta) -> _)
}

fn ours(max_in_flight: usize, max_queued: usize) -> ConcurrencyLimitLayer {
    let mut b = ConcurrencyLimitLayer::builder()
        .max_in_flight(max_in_flight)
        .max_queued(max_queued);
    if max_queued > 0 {
        b = b.max_queue_wait(Duration::from_secs(3600));
    }
    b.build().unwrap()
}

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

/// Spawns `clients` tasks that each send `n / clients` requests, one after
/// another, through their own clone of `svc`; waits for all.
async fn clients<S>(svc: &S, clients: u64, n: u64)
where
    S: Service<RequestMeta> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
    S::Response: Send,
{
    let per_client = n / clients;
    let mut handles = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        let mut svc = svc.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..per_client {
                svc.ready()
                    .await
                    .unwrap()
                    .call(RequestMeta::new())
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

/// Spawns `n` tasks that each call a clone of `svc` once; waits for all.
/// With `count_polls`, every task's polls are counted (into `POLLS`).
async fn fan_out<S>(svc: &S, n: u64, count_polls: bool)
where
    S: Service<RequestMeta> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
    S::Response: Send,
{
    let mut handles = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let svc = svc.clone();
        let call = async move { svc.oneshot(RequestMeta::new()).await.map(drop) };
        handles.push(if count_polls {
            tokio::spawn(counted(call))
        } else {
            tokio::spawn(call)
        });
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrency");

    // --- uncontended: ready + call against a no-op service -------------
    // Each sample runs its iterations in one `block_on`, the same for all.
    let rt = current_thread();
    group.throughput(Throughput::Elements(1));
    // Baseline first: the first benchmark of a run tends to measure slow.
    {
        let sem = Arc::new(Semaphore::new(1000));
        group.bench_function("uncontended/semaphore", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let permit = sem.acquire().await.unwrap();
                        black_box(&permit);
                    }
                    start.elapsed()
                })
            })
        });
    }

    {
        let mut svc = TowerLimit::new(noop(), 1000);
        group.bench_function("uncontended/tower", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let svc = svc.ready().await.unwrap();
                        svc.call(black_box(RequestMeta::new())).await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    {
        let mut svc = ours(1000, 0).layer(noop());
        group.bench_function("uncontended/llm-sluice", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let svc = svc.ready().await.unwrap();
                        svc.call(black_box(RequestMeta::new())).await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    {
        // The full stack always sets a deadline: admission then reads the
        // clock once (to reject a request already past it), still without
        // the lock.
        let mut svc = ours(1000, 0).layer(noop());
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        group.bench_function("uncontended/llm-sluice-deadline", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let svc = svc.ready().await.unwrap();
                        svc.call(black_box(RequestMeta::new().deadline(far)))
                            .await
                            .unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    // --- contended: 10,000 tasks, 2 workers, one shared limiter --------
    let rt = two_workers();
    let inner = tower::service_fn(|_: RequestMeta| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(())
    });
    group.throughput(Throughput::Elements(TASKS));
    group.sample_size(20);
    {
        let svc = ours(CONTENDED_LIMIT, TASKS as usize).layer(inner);
        group.bench_function("contended/llm-sluice", |b| {
            b.to_async(&rt).iter(|| fan_out(&svc, TASKS, false))
        });
    }
    {
        let svc = TowerLimit::new(inner, CONTENDED_LIMIT);
        group.bench_function("contended/tower", |b| {
            b.to_async(&rt).iter(|| fan_out(&svc, TASKS, false))
        });
    }

    // --- saturation: 1 ms inner latency, limit 100 ----------------------
    // Theoretical: 100 in flight / 1 ms = 100,000 requests/s. 200 clients
    // send back to back, so the limiter is saturated with a queue of about
    // 100 the whole time (a task per request would measure spawning).
    let slow = slow();
    group.throughput(Throughput::Elements(SATURATION_REQUESTS));
    group.sample_size(10);
    {
        let svc = ours(SATURATION_LIMIT, SATURATION_REQUESTS as usize).layer(slow);
        group.bench_function("saturation/llm-sluice", |b| {
            b.to_async(&rt)
                .iter(|| clients(&svc, SATURATION_CLIENTS, SATURATION_REQUESTS))
        });
    }
    {
        let svc = TowerLimit::new(slow, SATURATION_LIMIT);
        group.bench_function("saturation/tower", |b| {
            b.to_async(&rt)
                .iter(|| clients(&svc, SATURATION_CLIENTS, SATURATION_REQUESTS))
        });
    }
    // The ceiling on this machine: exactly 100 workers, each serving its
    // share back to back, no limiter at all.
    group.bench_function("saturation/ideal-100-workers", |b| {
        b.to_async(&rt).iter(|| async {
            let per_worker = SATURATION_REQUESTS / SATURATION_LIMIT as u64;
            let mut handles = Vec::new();
            for _ in 0..SATURATION_LIMIT {
                let mut svc = slow;
                handles.push(tokio::spawn(async move {
                    for _ in 0..per_worker {
                        svc.ready()
                            .await
                            .unwrap()
                            .call(RequestMeta::new())
                            .await
                            .unwrap();
                    }
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
        })
    });
    group.finish();
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Resident memory per queued request: 100,000 requests wait behind one
/// in-flight request, each future boxed and polled once (so its timer
/// exists). Compared with 100,000 queued `Semaphore::acquire_owned` futures.
fn memory() {
    const N: usize = 100_000;
    let rt = current_thread();
    rt.block_on(async {
        let noop_waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&noop_waker);
        let request_size = std::mem::size_of::<RequestMeta>();

        // An inner service that never answers, so the first request keeps
        // the only permit.
        let never =
            tower::service_fn(|_: RequestMeta| std::future::pending::<Result<(), Infallible>>());
        let mut svc = ours(1, N).layer(never);
        let mut blocker = Box::pin(svc.call(RequestMeta::new()));
        let _ = blocker.as_mut().poll(&mut cx);
        let mut futures = Vec::with_capacity(N);
        let before = resident_bytes();
        for _ in 0..N {
            let mut f = Box::pin(svc.call(RequestMeta::new()));
            assert!(f.as_mut().poll(&mut cx).is_pending());
            futures.push(f);
        }
        let after = resident_bytes();
        assert_eq!(svc.stats().queued, N);
        let per = (after - before) as f64 / N as f64;
        let future_size = std::mem::size_of_val(&*futures[0]);
        println!(
            "memory/llm-sluice: {per:.0} bytes resident per queued request \
             (the request itself {request_size} bytes, {:.0} beyond it; \
             future {future_size} bytes incl. the request and the inner service)",
            per - request_size as f64
        );
        drop(futures);
        drop(blocker);

        let sem = Arc::new(Semaphore::new(1));
        let _held = sem.clone().try_acquire_owned().unwrap();
        let mut futures = Vec::with_capacity(N);
        let before = resident_bytes();
        for _ in 0..N {
            let mut f = Box::pin(sem.clone().acquire_owned());
            assert!(f.as_mut().poll(&mut cx).is_pending());
            futures.push(f);
        }
        let after = resident_bytes();
        let per = (after - before) as f64 / N as f64;
        println!("memory/semaphore: {per:.0} bytes resident per queued acquire_owned future");
    });
}

/// The contended comparison as paired rounds: each pair runs one round of
/// `fan_out` through tower's limiter and one through ours, back to back on
/// the same runtime, in alternating order (ABBA), and compares the two. A
/// burst of noise on this shared machine then lands inside one pair and
/// moves one ratio, not a whole criterion sample set. Prints the median,
/// the spread and how many pairs went to llm-sluice. `CONTENDED_PAIRS=N`
/// sets the number of pairs (40 by default; 0 skips it);
/// `CONTENDED_ONLY=ours` (or `tower`) runs only that contender's rounds, N
/// of them, for a profiler to watch.
fn contended_pairs() {
    let pairs: usize = std::env::var("CONTENDED_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    if pairs == 0 {
        return;
    }
    let rt = two_workers();
    let inner = tower::service_fn(|_: RequestMeta| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(())
    });
    let sluice = ours(CONTENDED_LIMIT, TASKS as usize).layer(inner);
    let tower = TowerLimit::new(inner, CONTENDED_LIMIT);
    let time = |ours: bool| {
        let start = Instant::now();
        if ours {
            rt.block_on(fan_out(&sluice, TASKS, false));
        } else {
            rt.block_on(fan_out(&tower, TASKS, false));
        }
        start.elapsed().as_secs_f64()
    };
    if let Ok(only) = std::env::var("CONTENDED_ONLY") {
        for _ in 0..pairs {
            time(only == "ours");
        }
        return;
    }
    // Warm-up: both contenders' task sizes in the allocator's free lists.
    for _ in 0..3 {
        time(true);
        time(false);
    }
    let mut ratios: Vec<f64> = (0..pairs)
        .map(|pair| {
            let (ours, tower) = if pair % 2 == 0 {
                let t = time(false);
                (time(true), t)
            } else {
                let o = time(true);
                (o, time(false))
            };
            // Throughput ratio: tower's time over ours.
            tower / ours
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let won = ratios.iter().filter(|&&r| r >= 1.0).count();
    let quartile = |q: usize| ratios[(ratios.len() - 1) * q / 4];
    println!(
        "contended pairs: llm-sluice throughput / tower's over {pairs} ABBA pairs of {TASKS} \
         tasks: median {:.3}x, quartiles {:.3}x-{:.3}x, range {:.3}x-{:.3}x; \
         llm-sluice at least tower's in {won} of {pairs}",
        quartile(2),
        quartile(1),
        quartile(3),
        ratios[0],
        ratios[ratios.len() - 1],
    );
}

/// What one contended round costs each contender, as medians over
/// `CONTENDED_PROBE=N` rounds of each (ABBA order): wall time, process CPU
/// time, context switches (voluntary, involuntary), worker parks, worker busy
/// time, and polls per task (a queued request takes three: enqueue, grant,
/// inner service done; one admitted at once two). Also prints the size of
/// the spawned future, the service and its response future. For finding out
/// *why* one is faster, not for the figures.
fn contended_probe(rounds: usize) {
    let rt = two_workers();
    let inner = tower::service_fn(|_: RequestMeta| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(())
    });
    let sluice = ours(CONTENDED_LIMIT, TASKS as usize).layer(inner);
    let tower = TowerLimit::new(inner, CONTENDED_LIMIT);
    fn sizes<S>(svc: &S) -> [usize; 3]
    where
        S: Service<RequestMeta> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: std::fmt::Debug + Send,
        S::Response: Send,
    {
        let svc = svc.clone();
        let task = counted(async move { svc.oneshot(RequestMeta::new()).await.map(drop) });
        [
            std::mem::size_of_val(&task),
            std::mem::size_of::<S>(),
            std::mem::size_of::<S::Future>(),
        ]
    }
    println!(
        "probe sizes (spawned future, service, response future): llm-sluice {:?}, tower {:?}",
        sizes(&sluice),
        sizes(&tower)
    );
    /// CPU seconds, voluntary and involuntary context switches so far.
    fn usage() -> [f64; 3] {
        // SAFETY: `getrusage` fills the zeroed struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
        [
            secs(u.ru_utime) + secs(u.ru_stime),
            u.ru_nvcsw as f64,
            u.ru_nivcsw as f64,
        ]
    }
    let metrics = rt.metrics();
    let workers = metrics.num_workers();
    let parks = || {
        (0..workers)
            .map(|w| metrics.worker_park_count(w))
            .sum::<u64>() as f64
    };
    let busy = || {
        (0..workers)
            .map(|w| metrics.worker_total_busy_duration(w).as_secs_f64())
            .sum::<f64>()
    };
    const COLUMNS: usize = 7;
    let mut samples: [[Vec<f64>; COLUMNS]; 2] = Default::default();
    for round in 0..rounds * 2 {
        let which = (round + round / 2) % 2;
        POLLS.store(0, Ordering::Relaxed);
        let (u0, p0, b0) = (usage(), parks(), busy());
        let start = Instant::now();
        if which == 0 {
            rt.block_on(fan_out(&sluice, TASKS, true));
        } else {
            rt.block_on(fan_out(&tower, TASKS, true));
        }
        let wall = start.elapsed().as_secs_f64();
        let u1 = usage();
        let row = [
            wall * 1e3,
            (u1[0] - u0[0]) * 1e3,
            u1[1] - u0[1],
            u1[2] - u0[2],
            parks() - p0,
            (busy() - b0) * 1e3,
            POLLS.load(Ordering::Relaxed) as f64 / TASKS as f64,
        ];
        for (column, value) in samples[which].iter_mut().zip(row) {
            column.push(value);
        }
    }
    for (name, columns) in ["llm-sluice", "tower"].iter().zip(samples.iter_mut()) {
        let m: Vec<f64> = columns
            .iter_mut()
            .map(|c| {
                c.sort_by(f64::total_cmp);
                c[c.len() / 2]
            })
            .collect();
        println!(
            "probe {name}: wall {:.2} ms, cpu {:.2} ms, switches {:.0} voluntary {:.0} \
             involuntary, parks {:.0}, busy {:.2} ms, polls/task {:.2}",
            m[0], m[1], m[2], m[3], m[4], m[5], m[6]
        );
    }
}

/// Polls of the tasks of [`fan_out`] with `count_polls` that have finished.
static POLLS: AtomicU64 = AtomicU64::new(0);

pin_project_lite::pin_project! {
    /// Counts its polls into [`POLLS`] when it completes.
    struct Counted<F> {
        #[pin]
        inner: F,
        polls: u64,
    }
}

fn counted<F>(inner: F) -> Counted<F> {
    Counted { inner, polls: 0 }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        *this.polls += 1;
        let output = ready!(this.inner.poll(cx));
        POLLS.fetch_add(*this.polls, Ordering::Relaxed);
        Poll::Ready(output)
    }
}

fn main() {
    if let Some(rounds) = std::env::var("CONTENDED_PROBE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        contended_probe(rounds);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let start = Instant::now();
    benches(&mut c);
    c.final_summary();
    contended_pairs();
    if std::env::var_os("SKIP_MEMORY").is_none() {
        memory();
    }
    eprintln!("total bench time {:?}", start.elapsed());
}
