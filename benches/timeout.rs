//! Success-path overhead of the timeout and fallback layers, next to tower's
//! own `Timeout` and a bare service, in one group so ratios hold on a noisy
//! machine.
//!
//! Each iteration readies the service, calls it and polls the response
//! future once; the inner future is ready at once, so what is measured is
//! the layer's own work (timer set-up, request copy, result check), not the
//! timer wheel.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::task::noop_waker_ref;
use llm_sluice::fallback::FallbackLayer;
use llm_sluice::request::RequestMeta;
use llm_sluice::timeout::{DeadlineLayer, TimeoutLayer};
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

fn success_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let mut cx = Context::from_waker(noop_waker_ref());
    let limit = Duration::from_secs(30);

    let mut group = c.benchmark_group("timeout_success_path");

    let mut bare = inner();
    group.bench_function("bare_service", |b| b.iter(|| once(&mut bare, &mut cx)));

    let mut tower_timeout = tower::timeout::TimeoutLayer::new(limit).layer(inner());
    group.bench_function("tower_timeout", |b| {
        b.iter(|| once(&mut tower_timeout, &mut cx))
    });

    let mut attempt = TimeoutLayer::builder()
        .attempt(limit)
        .build()
        .unwrap()
        .layer(inner());
    group.bench_function("sluice_timeout_attempt", |b| {
        b.iter(|| once(&mut attempt, &mut cx))
    });

    let mut all = TimeoutLayer::builder()
        .attempt(limit)
        .first_chunk(limit)
        .idle(limit)
        .total(limit)
        .build()
        .unwrap()
        .layer(inner());
    group.bench_function("sluice_timeout_all_four", |b| {
        b.iter(|| once(&mut all, &mut cx))
    });

    let mut deadline = DeadlineLayer::new(limit).layer(inner());
    group.bench_function("sluice_deadline", |b| {
        b.iter(|| once(&mut deadline, &mut cx))
    });

    let mut fallback = FallbackLayer::new(inner()).layer(inner());
    group.bench_function("sluice_fallback", |b| {
        b.iter(|| once(&mut fallback, &mut cx))
    });

    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
