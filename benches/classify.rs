//! Cost of classifying HTTP responses and of the error-body layer.
//!
//! One group so the ratios hold on a noisy machine:
//! - `status_only`: a bare status match, the floor any classifier pays;
//! - `classify_response/*`: the full classifier on a 200 with rate-limit
//!   headers and on a 429 with delay and reset headers;
//! - `service/plain_2xx` vs `service/error_body_2xx`: a call through a bare
//!   service and through `ErrorBodyLayer` for a success (no read-ahead);
//! - `service/error_body_429_json`: a quota 429 whose JSON body is read and
//!   parsed.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Response;
use http_body_util::Full;
use llm_sluice::classify::http::classify_response;
use llm_sluice::classify::{ErrorBodyLayer, LlmResponse, Outcome};
use tower::{Layer, ServiceExt};

const QUOTA_BODY: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

fn ok_with_limits() -> Response<()> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-ratelimit-limit-requests", "60")
        .header("x-ratelimit-limit-tokens", "150000")
        .header("x-ratelimit-remaining-requests", "59")
        .header("x-ratelimit-remaining-tokens", "149984")
        .header("x-ratelimit-reset-requests", "1s")
        .header("x-ratelimit-reset-tokens", "6m0s")
        .body(())
        .unwrap()
}

fn rate_limited() -> Response<()> {
    Response::builder()
        .status(429)
        .header("content-type", "application/json")
        .header("retry-after", "Tue, 14 Nov 2023 22:13:50 GMT")
        .header("x-should-retry", "true")
        .header("x-ratelimit-remaining-requests", "0")
        .header("x-ratelimit-reset-requests", "1s")
        .header("x-ratelimit-remaining-tokens", "1200")
        .header("x-ratelimit-reset-tokens", "1h2m3.5s")
        .body(())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("classify");

    let ok = ok_with_limits();
    let limited = rate_limited();
    group.bench_function("status_only", |b| {
        b.iter(|| {
            let status = black_box(&limited).status().as_u16();
            black_box(match status {
                200..=299 => Outcome::Success,
                429 => Outcome::RateLimited {
                    quota_exhausted: false,
                },
                500..=599 => Outcome::ServerError,
                _ => Outcome::ClientError,
            })
        })
    });
    group.bench_function("classify_response/200_limits", |b| {
        b.iter(|| classify_response(black_box(&ok), black_box(now)))
    });
    group.bench_function("classify_response/429_delays", |b| {
        b.iter(|| classify_response(black_box(&limited), black_box(now)))
    });
    // What every layer's default classifier does: the same, with the wall
    // clock read as needed.
    group.bench_function("classification/200_limits", |b| {
        b.iter(|| black_box(&ok).classification())
    });

    let upstream = |status: u16| {
        tower::service_fn(move |_: ()| async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(QUOTA_BODY.as_bytes())))
                    .unwrap(),
            )
        })
    };
    let layer = ErrorBodyLayer::new();
    group.bench_function("service/plain_2xx", |b| {
        let svc = upstream(200);
        b.to_async(&rt)
            .iter(|| async { black_box(svc.oneshot(()).await.unwrap()) })
    });
    group.bench_function("service/error_body_2xx", |b| {
        let svc = layer.layer(upstream(200));
        b.to_async(&rt)
            .iter(|| async { black_box(svc.clone().oneshot(()).await.unwrap()) })
    });
    group.bench_function("service/error_body_429_json", |b| {
        let svc = layer.layer(upstream(429));
        b.to_async(&rt)
            .iter(|| async { black_box(svc.clone().oneshot(()).await.unwrap()) })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
