//! The rate limiter against a server that reports its rate-limit state on
//! every response, as OpenAI-compatible servers do.
//!
//! A server's `x-ratelimit-reset-*` is the time until its window is *full*
//! again, while a sliding-window or bucket server frees capacity continuously
//! before that. Reading "at most `remaining` until `reset`" literally stalls a
//! saturated client for most of each window; these tests hold the layer to
//! using what the server really allows, and to honouring usage it cannot see.
#![cfg(feature = "sim")]

use std::time::Duration;

use llm_sluice::sim::{Dist, SimRequest, Upstream};
use llm_sluice::RateLimitLayer;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

mod charging;
mod learn;

const RPM: u64 = 60;

fn upstream(ttft: Duration) -> Upstream {
    Upstream::builder()
        .requests_per_window(RPM)
        .time_to_first_token(Dist::fixed(ttft))
        .tokens_per_second(Dist::Fixed(1_000.0))
        .seed(5)
        .build()
        .unwrap()
}

/// Saturating demand for ten windows through the layer; returns what the
/// upstream received and refused.
async fn saturate(upstream: &Upstream, key: &'static str) -> (u64, u64) {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(RPM)
        .max_wait(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    let start = Instant::now();
    let horizon = Duration::from_secs(600);
    // Two arrivals a second against one a second allowed: always a backlog.
    let mut tasks = Vec::new();
    for i in 0..(2 * horizon.as_secs()) {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_millis(500 * i)).await;
            tokio::time::timeout_at(start + horizon, svc.oneshot(SimRequest::new(key, 10, 10)))
                .await
        }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let stats = upstream.stats();
    (stats.received, stats.rate_limited)
}

#[tokio::test(start_paused = true)]
async fn server_feedback_with_latency_does_not_starve_a_saturated_client() {
    for ttft in [
        Duration::ZERO,
        Duration::from_secs(2),
        Duration::from_secs(10),
    ] {
        let up = upstream(ttft);
        let (received, refused) = saturate(&up, "key").await;
        let capacity = RPM * 10;
        assert_eq!(refused, 0, "ttft {ttft:?}: the server refused requests");
        assert!(
            received * 100 >= capacity * 99,
            "ttft {ttft:?}: {received} of {capacity} allowed requests sent"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn usage_the_server_saw_and_the_client_did_not_is_honoured() {
    // Another client spends 40 of the key's 60 requests first.
    let up = upstream(Duration::ZERO);
    for _ in 0..40 {
        up.send(SimRequest::new("shared", 10, 10)).await.unwrap();
    }
    let (received, refused) = saturate(&up, "shared").await;
    // The first answer reveals the unseen 40; the layer must not run into
    // the server's limit because of them (at most the one request that
    // revealed them, plus none after).
    assert!(refused <= 1, "{refused} refusals after the server said");
    // Over ten windows the unseen usage costs only what it really took.
    assert!(received >= 40 + RPM * 10 * 99 / 100 - 40, "{received}");
}

/// A 429 whose `retry-after` is more seconds than a `Duration` holds used to
/// read as no delay, so no cooldown started and the partition kept sending.
/// Saturated, it cools the partition down for the layer's longest cooldown
/// (31 days, so `now + delay` cannot overflow), and other partitions go on.
#[tokio::test(start_paused = true)]
async fn a_429_asking_for_forever_cools_the_partition_down() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use llm_sluice::{Error, PartitionKey};
    use tower::{BoxError, Layer, Service};

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = tower::service_fn(move |_req: http::Request<String>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(429)
                    .header("retry-after", "1e20")
                    .body(String::new())
                    .unwrap(),
            )
        }
    });
    let max_wait = Duration::from_secs(3_600);
    let layer = RateLimitLayer::builder()
        .requests_per_minute(RPM)
        .max_wait(max_wait)
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    let request = |key: &str| {
        let mut req = http::Request::new(String::new());
        req.extensions_mut().insert(PartitionKey::new(key));
        req
    };

    let first = svc.ready().await.unwrap().call(request("k")).await.unwrap();
    assert_eq!(first.status(), 429);
    // One request of 60 in the window: only a cooldown keeps the next out.
    let start = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request("k"))
        .await
        .unwrap_err();
    match err.downcast_ref::<Error>() {
        Some(Error::RateLimited {
            retry_after: Some(after),
        }) => assert!(
            *after > Duration::from_secs(30 * 24 * 3_600),
            "the cooldown runs for about 31 days: {after:?}"
        ),
        other => panic!("expected a rate limit error, got {other:?} ({err})"),
    }
    // Refused at once: the cooldown outlasts `max_wait`, so waiting could
    // only end in the same refusal. It never reached the upstream.
    assert_eq!(Instant::now(), start);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the cooling partition sent nothing"
    );

    let other = svc.ready().await.unwrap().call(request("other")).await;
    assert_eq!(
        other.unwrap().status(),
        429,
        "another partition is not cooling"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
