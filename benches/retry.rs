//! Success-path overhead of the retry layer against `tower::retry::Retry`.
//!
//! All variants wrap the same immediately-ready upstream and are measured in
//! one group, so their ratios hold on a noisy machine.

use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use llm_sluice::request::RequestMeta;
use llm_sluice::retry::RetryLayer;
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Policy;
use tower::{BoxError, Layer, Service, ServiceExt};

/// tower's documented example policy: a fixed number of attempts.
#[derive(Clone)]
struct Attempts(usize);

impl<E> Policy<RequestMeta, u64, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut RequestMeta, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &RequestMeta) -> Option<RequestMeta> {
        Some(req.clone())
    }
}

/// tower's example policy that also stamps the request's arrival on the
/// copy, as a tower user would to keep a retried request's place in line:
/// isolates the cost of the one clock read the llm-sluice layer takes.
#[derive(Clone)]
struct AttemptsStamped(usize);

impl<E> Policy<RequestMeta, u64, E> for AttemptsStamped {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut RequestMeta, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &RequestMeta) -> Option<RequestMeta> {
        let mut copy = req.clone();
        copy.arrival = Some(tokio::time::Instant::now());
        Some(copy)
    }
}

/// The same, with tower's `TpsBudget` (deposit per success, withdraw per
/// retry): the closest tower equivalent of what the llm-sluice layer does.
#[derive(Clone)]
struct Budgeted {
    attempts: usize,
    budget: Arc<TpsBudget>,
}

impl<E> Policy<RequestMeta, u64, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut RequestMeta, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(_) if self.attempts > 0 && self.budget.withdraw() => {
                self.attempts -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &RequestMeta) -> Option<RequestMeta> {
        Some(req.clone())
    }
}

fn upstream(
) -> impl Service<RequestMeta, Response = u64, Error = BoxError, Future = Ready<Result<u64, BoxError>>>
       + Clone {
    tower::service_fn(|_req: RequestMeta| ready(Ok::<u64, BoxError>(1)))
}

fn bench<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: S,
) where
    S: Service<RequestMeta, Response = u64> + Clone + 'static,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let mut svc = svc.clone();
            async move {
                let reply = svc
                    .ready()
                    .await
                    .unwrap()
                    .call(RequestMeta::new())
                    .await
                    .unwrap();
                std::hint::black_box(reply)
            }
        })
    });
}

fn success_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("retry_success_path");

    bench(&mut group, &rt, "bare_upstream", upstream());
    bench(
        &mut group,
        &rt,
        "tower_retry_attempts",
        tower::retry::Retry::new(Attempts(2), upstream()),
    );
    bench(
        &mut group,
        &rt,
        "tower_retry_attempts_clock_read",
        tower::retry::Retry::new(AttemptsStamped(2), upstream()),
    );
    bench(
        &mut group,
        &rt,
        "tower_retry_tps_budget",
        tower::retry::Retry::new(
            Budgeted {
                attempts: 2,
                budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            },
            upstream(),
        ),
    );
    let layer = rt.block_on(async { RetryLayer::builder().build().unwrap() });
    bench(&mut group, &rt, "llm_sluice_retry", layer.layer(upstream()));
    let layer = rt.block_on(async {
        RetryLayer::builder()
            .total_timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    });
    bench(
        &mut group,
        &rt,
        "llm_sluice_retry_total_timeout",
        layer.layer(upstream()),
    );
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
