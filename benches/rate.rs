//! Per-admission cost of the sliding-window limiter, against `governor` and
//! `tower::limit::RateLimit`, in one group; plus the utilization of a
//! saturating paced run (printed before the group).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use futures::FutureExt;
use governor::{Quota, RateLimiter};
use llm_sluice::rate::RateLimitLayer;
use llm_sluice::{LlmRequest, PartitionKey};
use parking_lot::Mutex;
use tower::{Layer, Service, ServiceExt};

/// A minimal request: tokens and an optional key.
#[derive(Clone)]
struct Req {
    tokens: u64,
    key: Option<PartitionKey>,
}

impl LlmRequest for Req {
    fn token_estimate(&self) -> u64 {
        self.tokens
    }
    fn partition(&self) -> Option<PartitionKey> {
        self.key.clone()
    }
}

const KEYS: usize = 10_000;

fn admission(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let keys: Vec<PartitionKey> = (0..KEYS)
        .map(|i| PartitionKey::new(format!("sk-bench-key-{i}")))
        .collect();

    let mut group = c.benchmark_group("rate_admission");

    // llm-sluice, one partition: requests and tokens budgets that never bind
    // (a 10 ms window keeps the logs short under the real clock).
    let layer = RateLimitLayer::builder()
        .requests_per_minute(u64::MAX / 4)
        .tokens_per_minute(u64::MAX / 4)
        .window(Duration::from_millis(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_r: Req| async {
        Ok::<_, tower::BoxError>(())
    }));
    let unkeyed = Req {
        tokens: 100,
        key: None,
    };
    group.bench_function("sluice_unkeyed", |b| {
        b.iter(|| {
            let fut = svc.call(black_box(unkeyed.clone()));
            black_box(fut.now_or_never().unwrap().is_ok());
        })
    });

    // llm-sluice, 10,000 partitions.
    let layer = RateLimitLayer::builder()
        .requests_per_minute(u64::MAX / 4)
        .tokens_per_minute(u64::MAX / 4)
        .window(Duration::from_millis(10))
        .max_partitions(4 * KEYS)
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_r: Req| async {
        Ok::<_, tower::BoxError>(())
    }));
    let reqs: Vec<Req> = keys
        .iter()
        .map(|k| Req {
            tokens: 100,
            key: Some(k.clone()),
        })
        .collect();
    let mut i = 0;
    group.bench_function("sluice_keyed_10k", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let fut = svc.call(black_box(reqs[i].clone()));
            black_box(fut.now_or_never().unwrap().is_ok());
        })
    });

    // governor: GCRA, direct and keyed, check_n with the same token amount.
    let quota = Quota::per_second(NonZeroU32::new(u32::MAX).unwrap());
    let direct = RateLimiter::direct(quota);
    let n = NonZeroU32::new(100).unwrap();
    group.bench_function("governor_direct_check_n", |b| {
        b.iter(|| black_box(direct.check_n(black_box(n)).unwrap().is_ok()))
    });
    let keyed = RateLimiter::<PartitionKey, _, _>::keyed(quota);
    let mut i = 0;
    group.bench_function("governor_keyed_10k_check_n", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(keyed.check_key_n(black_box(&keys[i]), n).unwrap().is_ok())
        })
    });

    // tower's fixed-window RateLimit, through poll_ready + call.
    let mut tower_svc = tower::limit::RateLimitLayer::new(u64::MAX / 4, Duration::from_secs(3600))
        .layer(tower::service_fn(|_r: Req| async {
            Ok::<_, tower::BoxError>(())
        }));
    group.bench_function("tower_rate_limit", |b| {
        b.iter(|| {
            let ready = tower_svc.ready().now_or_never().unwrap().unwrap();
            let fut = ready.call(black_box(unkeyed.clone()));
            black_box(fut.now_or_never().unwrap().is_ok());
        })
    });
    // References: the clock read every admission pays (tokio's clock is
    // slower here because dev-dependencies enable its `test-util`).
    group.bench_function("ref_tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    group.bench_function("ref_std_instant_now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    group.finish();
}

/// Saturating demand for 10 windows on paused time: prints the share of the
/// request and token limits that was admitted.
fn saturation() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (rpm, tpm) = (1_000u64, 100_000u64);
    let window = Duration::from_secs(60);
    let (requests, tokens) = rt.block_on(async move {
        let layer = RateLimitLayer::builder()
            .requests_per_minute(rpm)
            .tokens_per_minute(tpm)
            .max_wait(Duration::from_secs(3_600))
            .build()
            .unwrap();
        let admitted = Arc::new(Mutex::new((0u64, 0u64)));
        let end = tokio::time::Instant::now() + 10 * window;
        let seen = admitted.clone();
        let svc = layer.layer(tower::service_fn(move |r: Req| {
            if tokio::time::Instant::now() < end {
                let mut s = seen.lock();
                s.0 += 1;
                s.1 += r.tokens;
            }
            async { Ok::<_, tower::BoxError>(()) }
        }));
        let mut tasks = Vec::new();
        for worker in 0..64u64 {
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = worker;
                while tokio::time::Instant::now() < end {
                    let tokens = 1 + (i * 7_919) % 199;
                    i += 64;
                    let r = Req { tokens, key: None };
                    let _ = svc.ready().await.unwrap().call(r).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let a = *admitted.lock();
        a
    });
    println!(
        "saturation over 10 windows: requests {:.2}% of {} allowed, tokens {:.2}% of {} allowed",
        100.0 * requests as f64 / (10 * rpm) as f64,
        10 * rpm,
        100.0 * tokens as f64 / (10 * tpm) as f64,
        10 * tpm,
    );
}

criterion_group!(benches, admission);

fn main() {
    saturation();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
