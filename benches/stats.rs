//! The cost of recording into `Stats`: the `StatsLayer` next to the bare
//! service, a concurrency limiter with and without `.stats(&stats)`, and,
//! as references, a plain hdrhistogram record and one global
//! `Mutex<Histogram>`. One group per thread count so ratios hold on a noisy
//! machine.
//!
//! Each iteration readies the service, calls it and polls the response
//! future once; the inner future is ready at once, so what is measured is
//! the layer's own work.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures::task::noop_waker_ref;
use hdrhistogram::Histogram;
use llm_sluice::request::RequestMeta;
use llm_sluice::stats::Stats;
use llm_sluice::ConcurrencyLimitLayer;
use parking_lot::Mutex;
use tower::{BoxError, Layer, Service};

fn inner() -> impl Service<RequestMeta, Response = u64, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|req: RequestMeta| std::future::ready(Ok::<_, BoxError>(req.tokens)))
}

fn once<S>(svc: &mut S, cx: &mut Context<'_>) -> u64
where
    S: Service<RequestMeta, Response = u64>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let fut = pin!(svc.call(black_box(RequestMeta::new().tokens(1))));
    match fut.poll(cx) {
        Poll::Ready(Ok(n)) => n,
        _ => panic!("not ready"),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

fn limit(stats: Option<&Stats>) -> ConcurrencyLimitLayer {
    let builder = ConcurrencyLimitLayer::builder().max_in_flight(1_000);
    match stats {
        Some(stats) => builder.stats(stats),
        None => builder,
    }
    .build()
    .unwrap()
}

fn single_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut group = c.benchmark_group("stats_single_thread");

    let mut bare = inner();
    group.bench_function("bare_service", |b| b.iter(|| once(&mut bare, &mut cx)));

    let mut h = histogram();
    let mut v = 0u64;
    group.bench_function("hdrhistogram_record", |b| {
        b.iter(|| {
            v = (v + 7_919) % 5_000_000;
            h.saturating_record(black_box(v));
        })
    });

    let global = Mutex::new(histogram());
    group.bench_function("global_mutex_record", |b| {
        b.iter(|| {
            v = (v + 7_919) % 5_000_000;
            global.lock().saturating_record(black_box(v));
        })
    });

    // what the layer cannot avoid: a clock read at `call` and at the end
    group.bench_function("two_clock_reads", |b| {
        b.iter(|| {
            let start = tokio::time::Instant::now();
            black_box(tokio::time::Instant::now().saturating_duration_since(black_box(start)))
        })
    });

    let stats = Stats::new();
    let mut layered = stats.layer().layer(inner());
    group.bench_function("stats_layer", |b| b.iter(|| once(&mut layered, &mut cx)));

    let mut limited = limit(None).layer(inner());
    group.bench_function("concurrency", |b| b.iter(|| once(&mut limited, &mut cx)));

    let mut limited_stats = limit(Some(&stats)).layer(inner());
    group.bench_function("concurrency_with_stats", |b| {
        b.iter(|| once(&mut limited_stats, &mut cx))
    });

    let mut both = stats.layer().layer(limit(Some(&stats)).layer(inner()));
    group.bench_function("stats_layer_and_concurrency_with_stats", |b| {
        b.iter(|| once(&mut both, &mut cx))
    });
    group.finish();
}

/// Runs `per_thread` on 2 threads at once, `iters` times each; the time per
/// iteration is the wall time over `iters` (each thread's time per call when
/// both run together).
fn two_threads<'a, F>(iters: u64, per_thread: F) -> Duration
where
    F: Fn() -> Box<dyn FnMut() + Send + 'a> + Sync,
{
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let mut work = per_thread();
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    work();
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // the scope joins both threads before returning
        start
    })
    .elapsed()
}

fn service_loop<S>(mut svc: S) -> Box<dyn FnMut() + Send>
where
    S: Service<RequestMeta, Response = u64> + Send + 'static,
    S::Error: std::fmt::Debug,
{
    Box::new(move || {
        let mut cx = Context::from_waker(noop_waker_ref());
        black_box(once(&mut svc, &mut cx));
    })
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("stats_two_threads");

    group.bench_function("bare_service", |b| {
        b.iter_custom(|iters| two_threads(iters, || service_loop(inner())))
    });

    let global = Mutex::new(histogram());
    group.bench_function("global_mutex_record", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let global = &global;
                let mut v = 0u64;
                Box::new(move || {
                    v = (v + 7_919) % 5_000_000;
                    global.lock().saturating_record(black_box(v));
                })
            })
        })
    });

    let stats = Stats::new();
    group.bench_function("stats_layer", |b| {
        b.iter_custom(|iters| two_threads(iters, || service_loop(stats.layer().layer(inner()))))
    });
    group.finish();
}

criterion_group!(benches, single_thread, contended);
criterion_main!(benches);
