//! Cost of one call into the simulated upstream's typed path, next to a
//! no-op `tower::service_fn`, so simulations of 100,000 requests know what
//! the upstream itself costs.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use criterion::{criterion_group, criterion_main, Criterion};
use llm_sluice::sim::{Faults, Latency, SimRequest, Upstream};
use llm_sluice::PartitionKey;
use tower::Service;

fn poll_now<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the call was expected to answer at once"),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = rt.enter();
    let key = PartitionKey::new("sk-bench");
    let mut group = c.benchmark_group("sim_typed_call");

    let mut noop =
        tower::service_fn(
            |req: SimRequest| async move { Ok::<_, std::io::Error>(req.prompt_tokens) },
        );
    group.bench_function("service_fn_noop", |b| {
        b.iter(|| poll_now(noop.call(SimRequest::new(key.clone(), 10, 10))).unwrap())
    });

    let plain = Upstream::builder()
        .latency(Latency::INSTANT)
        .record_log(false)
        .build()
        .unwrap();
    group.bench_function("upstream_no_limits", |b| {
        b.iter(|| poll_now(plain.send(SimRequest::new(key.clone(), 10, 10))).unwrap())
    });

    // Limits that never refuse (a huge window budget), faults off: the
    // sliding window log grows and is pruned as in a long simulation.
    let limited = Upstream::builder()
        .latency(Latency::INSTANT)
        .requests_per_window(u64::MAX / 4)
        .tokens_per_window(u64::MAX / 4)
        .faults(Faults::NONE)
        .record_log(false)
        .build()
        .unwrap();
    group.bench_function("upstream_sliding_window", |b| {
        b.iter(|| {
            rt.block_on(tokio::time::advance(std::time::Duration::from_millis(1)));
            poll_now(limited.send(SimRequest::new(key.clone(), 10, 10))).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
