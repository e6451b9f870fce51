//! Closed-path cost of one call through a circuit breaker, against
//! `tower-resilience`'s circuit breaker and the bare service, in one group
//! so the ratios hold on a noisy machine.
//!
//! Every call is `poll_ready` + `call` + polling the response future to its
//! (immediate) end; the inner service answers at once, so what is measured is
//! the breaker's own overhead: admission, classification and recording.

use std::future::{ready, Ready};
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use futures::FutureExt;
use llm_sluice::breaker::CircuitBreakerLayer;
use llm_sluice::LlmRequest;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy)]
struct Req(u32);

impl LlmRequest for Req {}

fn inner() -> tower::util::ServiceFn<impl FnMut(Req) -> Ready<Result<u32, std::io::Error>> + Clone>
{
    tower::service_fn(|req: Req| ready(Ok::<u32, std::io::Error>(req.0)))
}

/// One call, driven without an executor (everything is ready at once).
#[inline]
fn once<S: Service<Req, Response = u32>>(svc: &mut S, i: u32) -> u32
where
    S::Error: std::fmt::Debug,
{
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_ready());
    match svc.call(Req(i)).now_or_never() {
        Some(Ok(v)) => v,
        other => panic!("not ready: {:?}", other.map(|r| r.err())),
    }
}

fn closed_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("breaker_closed_path");

    let mut bare = inner();
    group.bench_function("bare_service", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(once(&mut bare, black_box(i)))
        })
    });

    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .count_window(100)
        .consecutive_failures(5)
        .build()
        .unwrap();
    let mut sluice = layer.layer(inner());
    group.bench_function("llm_sluice_count_window", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(once(&mut sluice, black_box(i)))
        })
    });

    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .time_window(Duration::from_secs(60))
        .slow_call(Duration::from_secs(10), 0.8)
        .build()
        .unwrap();
    let mut sluice_timed = layer.layer(inner());
    group.bench_function("llm_sluice_time_window_slow_calls", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(once(&mut sluice_timed, black_box(i)))
        })
    });

    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap();
    let mut resilience = layer.layer(inner());
    group.bench_function("tower_resilience", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(once(&mut resilience, black_box(i)))
        })
    });

    group.finish();
}

/// CPU time of this thread, from `/proc/thread-self/schedstat` (Linux): time
/// the thread was descheduled by other load on the machine is not in it.
fn thread_cpu_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// With `BREAKER_BENCH_CPU=1`: per-call CPU time of each variant over many
/// calls, printed after the criterion group. On a loaded machine criterion's
/// wall-clock figures include time spent descheduled; these do not.
fn cpu_time_per_call() {
    if std::env::var_os("BREAKER_BENCH_CPU").is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    const N: u32 = 5_000_000;
    fn measure<S: Service<Req, Response = u32>>(name: &str, mut svc: S)
    where
        S::Error: std::fmt::Debug,
    {
        for i in 0..N / 10 {
            black_box(once(&mut svc, i));
        }
        let (Some(start), wall) = (thread_cpu_nanos(), std::time::Instant::now()) else {
            return;
        };
        for i in 0..N {
            black_box(once(&mut svc, black_box(i)));
        }
        let cpu = thread_cpu_nanos().unwrap_or(start) - start;
        println!(
            "cpu_time_per_call/{name}: {:.1} ns cpu, {:.1} ns wall",
            cpu as f64 / f64::from(N),
            wall.elapsed().as_nanos() as f64 / f64::from(N)
        );
    }
    measure("bare_service", inner());
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .count_window(100)
        .consecutive_failures(5)
        .build()
        .unwrap();
    measure("llm_sluice_count_window", layer.layer(inner()));
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .time_window(Duration::from_secs(60))
        .slow_call(Duration::from_secs(10), 0.8)
        .build()
        .unwrap();
    measure("llm_sluice_time_window_slow_calls", layer.layer(inner()));
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap();
    measure("tower_resilience", layer.layer(inner()));
}

criterion_group!(benches, closed_path);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    cpu_time_per_call();
}
