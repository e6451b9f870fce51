//! Transit delays: the time from a call to its arrival at the upstream.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use llm_sluice::sim::{Dist, Latency, SimRequest, Upstream};
use tokio::time::Instant;
use tokio_test::{assert_pending, task};
use tower::ServiceExt;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn transit_delays_the_arrival_and_the_upstream_stamps_the_arrival() {
    let up = Upstream::builder()
        .latency(Latency::INSTANT)
        .requests_per_window(1)
        .transit(Dist::fixed(ms(40)))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut first = task::spawn(up.send(SimRequest::new("k", 1, 1)));
    assert_pending!(first.poll(), "on its way");
    assert_eq!(up.stats().received, 0);
    let ok = first.await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(t0.elapsed(), ms(40));
    assert_eq!(up.log("k")[0].at - t0, ms(40));

    // The HTTP path too.
    let req = http::Request::post("/v1/chat/completions")
        .header("authorization", "Bearer h")
        .body(Full::new(Bytes::from(r#"{"max_tokens": 1}"#)))
        .unwrap();
    let t1 = Instant::now();
    let res = ServiceExt::<http::Request<Full<Bytes>>>::oneshot(up.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.log("h")[0].at - t1, ms(40));

    // Dropped on its way: it never arrives.
    drop(up.send(SimRequest::new("gone", 1, 1)));
    tokio::time::sleep(ms(100)).await;
    assert!(up.log("gone").is_empty());
    assert_eq!(up.stats().received, 2);
}

#[tokio::test(start_paused = true)]
async fn transit_draws_are_seeded_and_requests_arrive_in_their_own_order() {
    let arrivals = |seed| async move {
        let up = Upstream::builder()
            .latency(Latency::INSTANT)
            .transit(Dist::uniform(ms(1), ms(100)))
            .seed(seed)
            .build()
            .unwrap();
        let t0 = Instant::now();
        let calls: Vec<_> = (0..20)
            .map(|_| up.send(SimRequest::new("k", 1, 1)))
            .collect();
        futures::future::join_all(calls).await;
        up.log("k").iter().map(|r| r.at - t0).collect::<Vec<_>>()
    };
    let a = arrivals(7).await;
    assert_eq!(a, arrivals(7).await, "same seed, same arrivals");
    assert_ne!(a, arrivals(8).await);
    // Logged in arrival order, which is not the call order.
    assert!(a.windows(2).all(|w| w[0] <= w[1]));
    assert!(a.first() < a.last());
    assert!(a.iter().all(|d| (ms(1)..=ms(100)).contains(d)));

    let err = Upstream::builder()
        .transit(Dist::Fixed(-1.0))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "transit");
}
