//! The simulated upstream: limits, faults, latency, counters, both request
//! types, and the loopback server.
#![cfg(feature = "sim")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use llm_sluice::classify::{LlmResponse, Outcome};
use llm_sluice::hold::HoldGuard;
use llm_sluice::sim::{
    Count, Dist, Faults, Latency, LimitMode, SimRequest, TokenCharge, Upstream, UpstreamConfig,
};
use llm_sluice::{LlmRequest, Usage};
use proptest::prelude::*;

mod edge;
mod outage;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn instant() -> llm_sluice::sim::UpstreamBuilder {
    Upstream::builder().latency(Latency::INSTANT)
}

// ---------- configuration ----------

#[test]
fn invalid_settings_name_their_field() {
    let cases: Vec<(llm_sluice::sim::UpstreamBuilder, &str)> = vec![
        (
            Upstream::builder().requests_per_window(0),
            "requests_per_window",
        ),
        (
            Upstream::builder().tokens_per_window(0),
            "tokens_per_window",
        ),
        (Upstream::builder().window(Duration::ZERO), "window"),
        (
            Upstream::builder().limit_mode(LimitMode::Bucket {
                burst: Duration::ZERO,
            }),
            "burst",
        ),
        (
            Upstream::builder().limit_mode(LimitMode::Bucket {
                burst: Duration::from_secs(61),
            }),
            "burst",
        ),
        (
            Upstream::builder().faults(Faults {
                hang: 1.5,
                ..Faults::NONE
            }),
            "hang",
        ),
        (
            Upstream::builder().faults(Faults {
                error_500: -0.1,
                ..Faults::NONE
            }),
            "error_500",
        ),
        (Upstream::builder().faults(Faults::all(0.2)), "faults"),
        (
            Upstream::builder().time_to_first_token(Dist::Fixed(f64::NAN)),
            "time_to_first_token",
        ),
        (
            Upstream::builder().tokens_per_second(Dist::Fixed(0.0)),
            "tokens_per_second",
        ),
        (
            Upstream::builder().output_fraction(Dist::Fixed(1.5)),
            "output_fraction",
        ),
        (
            Upstream::builder().output_fraction(Dist::Uniform {
                low: 0.5,
                high: 0.2,
            }),
            "output_fraction",
        ),
        (
            Upstream::builder().default_max_tokens(0),
            "default_max_tokens",
        ),
        (Upstream::builder().tokens_per_chunk(0), "tokens_per_chunk"),
    ];
    for (builder, field) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.field(), field, "{err}");
    }
    let mut config = UpstreamConfig::default();
    config.limits.requests = Some(0);
    assert_eq!(
        Upstream::new(config).unwrap_err().field(),
        "requests_per_window"
    );
    assert!(Upstream::builder()
        .faults(Faults::all(1.0 / 6.0))
        .build()
        .is_ok());
}

#[test]
fn sim_request_is_an_llm_request() {
    let req = SimRequest::new("sk-a", 100, 50).priority(llm_sluice::Priority::HIGH);
    assert_eq!(req.token_estimate(), 150);
    assert_eq!(req.partition().unwrap().as_str(), "sk-a");
    assert_eq!(LlmRequest::priority(&req), llm_sluice::Priority::HIGH);
    assert_eq!(LlmRequest::deadline(&req), None);
}

/// Regression: `SimRequest` kept the default no-op `set_deadline` and
/// `set_arrival`, so a retry layer's `total_timeout` never reached the layers
/// inside it (the timeout layer could not bound a hang by the deadline, and
/// the retry layer itself saw no deadline) and retried attempts lost their
/// place in line.
#[test]
fn sim_request_stores_the_deadline_and_arrival_layers_set() {
    let mut req = SimRequest::new("sk-a", 1, 1);
    let at = Instant::now();
    req.set_deadline(at + Duration::from_secs(5));
    req.set_arrival(at);
    assert_eq!(
        LlmRequest::deadline(&req),
        Some(at + Duration::from_secs(5))
    );
    assert_eq!(LlmRequest::arrival(&req), Some(at));
}

#[tokio::test(start_paused = true)]
async fn retry_total_timeout_reaches_the_timeout_layer_through_sim_request() {
    use llm_sluice::retry::RetryLayer;
    use llm_sluice::timeout::TimeoutLayer;
    use llm_sluice::{Error, TimeoutKind};

    let up = Upstream::builder()
        .faults(Faults {
            hang: 1.0,
            ..Faults::NONE
        })
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .total_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        // a long attempt timeout: only the request's deadline ends the hang
        // at 5 s (without it the attempt times out at 60 s and is retried)
        .layer(
            TimeoutLayer::builder()
                .attempt(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .service(up.clone());
    let start = Instant::now();
    let err = svc
        .oneshot(SimRequest::new("sk-a", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<Error>(),
        Some(&Error::Timeout {
            kind: TimeoutKind::Total
        })
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(up.stats().received, 1, "a total timeout is not retried");
    assert_eq!(up.stats().in_flight, 0);
}

// ---------- latency ----------

#[tokio::test(start_paused = true)]
async fn latency_is_time_to_first_token_plus_generation() {
    let up = Upstream::builder()
        .time_to_first_token(Dist::fixed(ms(200)))
        .tokens_per_second(Dist::Fixed(40.0))
        .output_fraction(Dist::Fixed(0.5))
        .build()
        .unwrap();
    let start = Instant::now();
    let res = up.send(SimRequest::new("k", 10, 80)).await.unwrap();
    // 40 of 80 tokens at 40/s after 0.2 s.
    assert_eq!(start.elapsed(), ms(1200));
    assert_eq!(res.usage, Some(Usage::new(10, 40)));
    assert_eq!(res.classification().outcome, Outcome::Success);
    assert_eq!(res.classification().usage, Some(Usage::new(10, 40)));
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_run_and_distributions_stay_in_range() {
    async fn run(seed: u64) -> Vec<(u16, Duration, Option<Usage>)> {
        let up = Upstream::builder()
            .time_to_first_token(Dist::LogNormal {
                median: 0.4,
                sigma: 0.5,
            })
            .tokens_per_second(Dist::Uniform {
                low: 20.0,
                high: 80.0,
            })
            .output_fraction(Dist::Uniform {
                low: 0.1,
                high: 1.0,
            })
            .faults(Faults {
                error_500: 0.1,
                overloaded_529: 0.1,
                ..Faults::NONE
            })
            .seed(seed)
            .build()
            .unwrap();
        let mut out = Vec::new();
        for i in 0..200 {
            let start = Instant::now();
            let res = up.send(SimRequest::new("k", 10, 100 + i)).await.unwrap();
            if let Some(u) = res.usage {
                assert!(u.completion_tokens >= 10 && u.completion_tokens <= 100 + i);
            }
            out.push((res.status, start.elapsed(), res.usage));
        }
        out
    }
    let a = run(7).await;
    assert_eq!(
        a,
        run(7).await,
        "same seed, same statuses, latencies, usage"
    );
    assert_ne!(a, run(8).await, "another seed, another run");
    let distinct: std::collections::HashSet<_> = a.iter().map(|r| r.1).collect();
    assert!(distinct.len() > 100, "latencies vary");
    assert!(a.iter().any(|r| r.0 == 500) && a.iter().any(|r| r.0 == 529));
}

// ---------- sliding window ----------

#[tokio::test(start_paused = true)]
async fn sliding_window_refuses_with_the_exact_delay() {
    let up = instant().requests_per_window(3).build().unwrap();
    for _ in 0..3 {
        assert_eq!(
            up.send(SimRequest::new("k", 1, 1)).await.unwrap().status,
            200
        );
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    // At t = 30 s: the first admission (t = 0) leaves the window at 60 s.
    let refused = up.send(SimRequest::new("k", 1, 1)).await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.retry_after, Some(Duration::from_secs(30)));
    let c = refused.classification();
    assert_eq!(
        c.outcome,
        Outcome::RateLimited {
            quota_exhausted: false
        }
    );
    assert!(c.is_retryable());
    let limits = c.rate_limits.unwrap().requests;
    assert_eq!(
        (limits.limit, limits.remaining),
        (Some(3), Some(0)),
        "x-ratelimit state"
    );
    // Another key has its own budget.
    assert_eq!(
        up.send(SimRequest::new("other", 1, 1))
            .await
            .unwrap()
            .status,
        200
    );
    // One millisecond early is still refused; on time is admitted.
    tokio::time::advance(Duration::from_secs(30) - ms(1)).await;
    assert_eq!(
        up.send(SimRequest::new("k", 1, 1)).await.unwrap().status,
        429
    );
    tokio::time::advance(ms(1)).await;
    assert_eq!(
        up.send(SimRequest::new("k", 1, 1)).await.unwrap().status,
        200
    );
    let stats = up.stats();
    assert_eq!(
        (stats.received, stats.admitted, stats.rate_limited),
        (7, 5, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn token_limit_counts_requested_tokens_and_refuses_the_impossible() {
    let up = instant().tokens_per_window(1000).build().unwrap();
    assert_eq!(
        up.send(SimRequest::new("k", 300, 300))
            .await
            .unwrap()
            .status,
        200
    );
    let refused = up.send(SimRequest::new("k", 300, 300)).await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.retry_after, Some(Duration::from_secs(60)));
    assert_eq!(
        refused.rate_limits.unwrap().tokens.remaining,
        Some(400),
        "600 of 1000 spent"
    );
    assert_eq!(
        up.send(SimRequest::new("k", 200, 200))
            .await
            .unwrap()
            .status,
        200
    );

    let too_large = up.send(SimRequest::new("k", 900, 200)).await.unwrap();
    assert_eq!(too_large.status, 429);
    assert!(too_large.quota_exhausted);
    assert!(!too_large.classification().is_retryable());
    assert_eq!(up.stats().too_large, 1);
}

#[tokio::test(start_paused = true)]
async fn used_token_charge_counts_what_was_generated() {
    let up = instant()
        .tokens_per_window(1000)
        .token_charge(TokenCharge::Used)
        .output_fraction(Dist::Fixed(0.5))
        .build()
        .unwrap();
    for _ in 0..2 {
        up.send(SimRequest::new("k", 100, 800)).await.unwrap();
    }
    // Each charged 100 + 400.
    let log = up.log("k");
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.charged_tokens == 500 && r.admitted));
    assert_eq!(
        up.send(SimRequest::new("k", 1, 0)).await.unwrap().status,
        429
    );
}

// ---------- bucket ----------

/// `Reconcile`: charged prompt + `max_tokens` at admission, corrected to
/// the actual usage when the response ends, at the arrival instant; the
/// rate-limit state reports the window as the rule counts it.
#[tokio::test(start_paused = true)]
async fn reconcile_token_charge_is_corrected_when_the_response_ends() {
    let up = Upstream::builder()
        .tokens_per_window(1000)
        .token_charge(TokenCharge::Reconcile)
        .time_to_first_token(Dist::fixed(Duration::from_secs(1)))
        .tokens_per_second(Dist::Fixed(100.0))
        .output_fraction(Dist::Fixed(0.25))
        .build()
        .unwrap();
    let t0 = Instant::now();
    // 100 + 800 charged now; 100 + 200 from the end (1 s + 2 s).
    let first = tokio::spawn(up.send(SimRequest::new("k", 100, 800)));
    tokio::task::yield_now().await;
    let refused = up.send(SimRequest::new("k", 50, 100)).await.unwrap();
    assert_eq!(refused.status, 429, "900 + 150 > 1000 before the end");
    assert_eq!(refused.rate_limits.unwrap().tokens.remaining, Some(100));
    let done = first.await.unwrap().unwrap();
    assert_eq!(done.usage.unwrap().total_tokens, 300);
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    // 300 counted now: 700 more fit, 701 do not.
    let ok = up.send(SimRequest::new("k", 100, 600)).await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.rate_limits.unwrap().tokens.remaining, Some(0));
    let log = up.log("k");
    assert_eq!(log[0].charged_tokens, 300, "the final charge");
    assert_eq!(log[2].charged_tokens, 100 + 150);
    // The first request's correction holds at its arrival instant: at 60 s
    // it leaves the window with what it was corrected to.
    tokio::time::sleep_until(t0 + Duration::from_secs(60)).await;
    let ok = up.send(SimRequest::new("k", 100, 600)).await.unwrap();
    assert_eq!(ok.status, 200, "{:?}", ok.rate_limits);
}

/// `Actual`: nothing charged at admission; admitted while the usage
/// counted is below the limit, so a burst can take the window past it; the
/// usage counts from the response's end, at the arrival instant.
#[tokio::test(start_paused = true)]
async fn actual_token_charge_counts_usage_and_admits_while_there_is_room() {
    let up = Upstream::builder()
        .tokens_per_window(1000)
        .token_charge(TokenCharge::Actual)
        .time_to_first_token(Dist::fixed(Duration::from_secs(1)))
        .tokens_per_second(Dist::Fixed(400.0))
        .build()
        .unwrap();
    let t0 = Instant::now();
    // Three of 900 at once: nothing is counted until they end (at 3 s).
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(up.send(SimRequest::new("k", 100, 800))))
        .collect();
    for call in calls {
        let r = call.await.unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.rate_limits.unwrap().tokens.remaining, Some(1000));
    }
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    // 2,700 counted: no room until two of them leave the window at 60 s.
    let refused = up.send(SimRequest::new("k", 1, 1)).await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.retry_after, Some(Duration::from_secs(57)));
    let state = refused.rate_limits.unwrap().tokens;
    assert_eq!((state.limit, state.remaining), (Some(1000), Some(0)));
    // At 60 s all three leave the window (they arrived together).
    tokio::time::sleep_until(t0 + Duration::from_secs(60)).await;
    let ok = up.send(SimRequest::new("k", 100, 800)).await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.rate_limits.unwrap().tokens.remaining, Some(1000));
    let log = up.log("k");
    assert!(log
        .iter()
        .filter(|r| r.admitted)
        .all(|r| r.charged_tokens == 900));
    let peak = up.peak("k", Duration::from_secs(60), Count::Admitted);
    assert_eq!(peak.tokens, 2_700, "over the limit, as the rule allows");
}

/// `Admission`, the default: charged prompt + `max_tokens`, never corrected.
#[tokio::test(start_paused = true)]
async fn admission_token_charge_is_never_corrected() {
    let up = instant()
        .tokens_per_window(1000)
        .output_fraction(Dist::Fixed(0.25))
        .build()
        .unwrap();
    assert_eq!(up.config().limits.charge, TokenCharge::Admission);
    let ok = up.send(SimRequest::new("k", 100, 800)).await.unwrap();
    assert_eq!(ok.usage.unwrap().total_tokens, 300);
    tokio::time::advance(Duration::from_secs(10)).await;
    let refused = up.send(SimRequest::new("k", 1, 100)).await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.rate_limits.unwrap().tokens.remaining, Some(100));
    assert_eq!(up.log("k")[0].charged_tokens, 900);
}

#[tokio::test(start_paused = true)]
async fn bucket_refuses_a_burst_the_window_would_admit() {
    let bucket = instant()
        .requests_per_window(60)
        .limit_mode(LimitMode::Bucket {
            burst: Duration::from_secs(1),
        })
        .build()
        .unwrap();
    let window = instant().requests_per_window(60).build().unwrap();
    let mut admitted = (0, 0);
    for _ in 0..10 {
        admitted.0 += (bucket
            .send(SimRequest::new("k", 1, 1))
            .await
            .unwrap()
            .status
            == 200) as u32;
        admitted.1 += (window
            .send(SimRequest::new("k", 1, 1))
            .await
            .unwrap()
            .status
            == 200) as u32;
    }
    assert_eq!(admitted, (1, 10), "60 RPM as a bucket is one a second");
    let refused = bucket.send(SimRequest::new("k", 1, 1)).await.unwrap();
    assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
    // Spaced one a second, all pass.
    for _ in 0..120 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            bucket
                .send(SimRequest::new("k", 1, 1))
                .await
                .unwrap()
                .status,
            200
        );
    }
}

// ---------- faults ----------

#[tokio::test(start_paused = true)]
async fn every_fault_kind_happens_at_about_its_rate() {
    let up = instant().faults(Faults::all(0.1)).seed(3).build().unwrap();
    let n = 3000;
    let (mut ok, mut s500, mut s503, mut s529, mut quota, mut resets, mut hangs) =
        (0, 0, 0, 0, 0, 0, 0);
    for _ in 0..n {
        let mut fut = task::spawn(up.send(SimRequest::new("k", 1, 1)));
        match fut.poll() {
            std::task::Poll::Pending => {
                hangs += 1;
                tokio::time::advance(Duration::from_secs(3600)).await;
                assert_pending!(fut.poll(), "a hang never answers");
            }
            std::task::Poll::Ready(Ok(res)) => match res.status {
                200 => ok += 1,
                500 => s500 += 1,
                503 => s503 += 1,
                529 => {
                    assert_eq!(res.classification().outcome, Outcome::Overloaded);
                    s529 += 1
                }
                429 => {
                    assert!(res.quota_exhausted);
                    assert!(!res.classification().is_retryable());
                    quota += 1
                }
                other => panic!("unexpected status {other}"),
            },
            std::task::Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
                let boxed: tower::BoxError = Box::new(e);
                let c = llm_sluice::classify::classify_error(&*boxed);
                assert_eq!(c.outcome, Outcome::Transport);
                resets += 1;
            }
        }
    }
    let f = up.stats().faults;
    assert_eq!(
        (
            f.error_500,
            f.error_503,
            f.overloaded_529,
            f.quota_429,
            f.reset,
            f.hang
        ),
        (s500, s503, s529, quota, resets, hangs),
        "the counters match what callers saw"
    );
    assert_eq!(ok + f.total(), n);
    for count in [s500, s503, s529, quota, resets, hangs] {
        assert!((200..400).contains(&count), "{count} of {n} at rate 0.1");
    }
    assert_eq!(up.stats().in_flight, 0, "dropped hangs left the count");
}

#[tokio::test(start_paused = true)]
async fn quota_errors_do_not_spend_the_limits() {
    let up = instant()
        .requests_per_window(1)
        .faults(Faults {
            quota_429: 1.0,
            ..Faults::NONE
        })
        .build()
        .unwrap();
    for _ in 0..5 {
        let res = up.send(SimRequest::new("k", 1, 1)).await.unwrap();
        assert!(res.quota_exhausted && res.retry_after.is_none());
    }
    let s = up.stats();
    assert_eq!(
        (s.received, s.admitted, s.rate_limited, s.faults.quota_429),
        (5, 0, 0, 5)
    );
}

// ---------- in flight ----------

#[tokio::test(start_paused = true)]
async fn response_future_drop_releases_in_flight() {
    let up = Upstream::builder()
        .time_to_first_token(Dist::fixed(Duration::from_secs(1)))
        .build()
        .unwrap();
    let mut a = task::spawn(up.send(SimRequest::new("k", 1, 10)));
    let mut b = task::spawn(up.send(SimRequest::new("k", 1, 10)));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_eq!((up.stats().in_flight, up.stats().max_in_flight), (2, 2));
    drop(a);
    assert_eq!(up.stats().in_flight, 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(b.is_woken());
    assert!(assert_ready!(b.poll()).is_ok());
    let s = up.stats();
    assert_eq!((s.in_flight, s.max_in_flight, s.received), (0, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn streamed_typed_response_holds_in_flight_and_guard_until_the_end() {
    let up = Upstream::builder()
        .time_to_first_token(Dist::fixed(ms(100)))
        .tokens_per_second(Dist::Fixed(10.0))
        .build()
        .unwrap();
    let start = Instant::now();
    let res = up
        .send(SimRequest::new("k", 5, 20).stream(true))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), ms(100), "answers at the first token");
    let guard = Arc::new(());
    let mut res = res.hold_guard(guard.clone());
    assert_eq!(Arc::strong_count(&guard), 2, "guard kept by the stream");
    assert_eq!(up.stats().in_flight, 1);
    let stream = res.take_stream().unwrap();
    assert_eq!(stream.ends_at(), start + ms(2100));
    let usage = stream.await;
    assert_eq!(usage, Usage::new(5, 20));
    assert_eq!(start.elapsed(), ms(2100));
    assert_eq!(Arc::strong_count(&guard), 1, "released at the end");
    assert_eq!(up.stats().in_flight, 0);

    // Dropping the response mid-stream releases both.
    let res = up
        .send(SimRequest::new("k", 5, 20).stream(true))
        .await
        .unwrap();
    let res = res.hold_guard(guard.clone());
    assert_eq!((Arc::strong_count(&guard), up.stats().in_flight), (2, 1));
    drop(res);
    assert_eq!((Arc::strong_count(&guard), up.stats().in_flight), (1, 0));

    // A non-streamed response drops the guard at once.
    let res = up.send(SimRequest::new("k", 5, 20)).await.unwrap();
    let _res = res.hold_guard(guard.clone());
    assert_eq!(Arc::strong_count(&guard), 1);
}

// ---------- log and peak ----------

#[tokio::test(start_paused = true)]
async fn peak_counts_received_and_admitted_separately() {
    let up = instant().requests_per_window(2).build().unwrap();
    for _ in 0..5 {
        up.send(SimRequest::new("k", 10, 10)).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let window = Duration::from_secs(60);
    let received = up.peak("k", window, Count::Received);
    let admitted = up.peak("k", window, Count::Admitted);
    assert_eq!((received.requests, received.tokens), (5, 100));
    assert_eq!((admitted.requests, admitted.tokens), (2, 40));
    // In any 2-second window at most 2 arrived.
    assert_eq!(
        up.peak("k", Duration::from_secs(2), Count::Received)
            .requests,
        2
    );
    assert_eq!(up.peak("none", window, Count::Received).requests, 0);
    assert_eq!(up.keys().len(), 1);
    assert_eq!(up.log("k").iter().filter(|r| r.admitted).count(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever arrives, the sliding window never admits more than its limits
    /// in any window, and a bucket never more than its burst plus the rate.
    #[test]
    fn limits_hold_in_every_window(
        gaps in prop::collection::vec(0u64..3_000, 1..150),
        sizes in prop::collection::vec(1u64..400, 150),
        bucket in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let window = Duration::from_secs(10);
            let burst = Duration::from_secs(2);
            let mode = if bucket { LimitMode::Bucket { burst } } else { LimitMode::SlidingWindow };
            let up = instant()
                .window(window)
                .requests_per_window(5)
                .tokens_per_window(1000)
                .limit_mode(mode)
                .build()
                .unwrap();
            for (gap, size) in gaps.iter().zip(&sizes) {
                tokio::time::advance(ms(*gap)).await;
                up.send(SimRequest::new("k", *size, 0)).await.unwrap();
            }
            let peak = up.peak("k", window, Count::Admitted);
            if bucket {
                // burst (1 request, 200 tokens) + one window's refill; a
                // request larger than the bucket may leave it in debt.
                prop_assert!(peak.requests <= 1 + 5);
                prop_assert!(peak.tokens <= 200 + 1000 + 400);
            } else {
                prop_assert!(peak.requests <= 5);
                prop_assert!(peak.tokens <= 1000);
            }
            prop_assert_eq!(up.stats().admitted + up.stats().rate_limited, gaps.len() as u64);
            Ok(())
        })?;
    }
}

// ---------- HTTP, in process ----------

fn chat(key: Option<&str>, body: serde_json::Value) -> http::Request<Full<Bytes>> {
    let mut b =
        http::Request::post("/v1/chat/completions").header("content-type", "application/json");
    if let Some(key) = key {
        b = b.header("authorization", format!("Bearer {key}"));
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

async fn call_http(
    up: &Upstream,
    req: http::Request<Full<Bytes>>,
) -> http::Response<llm_sluice::sim::SimBody> {
    ServiceExt::<http::Request<Full<Bytes>>>::oneshot(up.clone(), req)
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn http_json_completion_with_usage_and_rate_headers() {
    let up = Upstream::builder()
        .requests_per_window(2)
        .tokens_per_window(10_000)
        .time_to_first_token(Dist::fixed(ms(250)))
        .tokens_per_second(Dist::Fixed(100.0))
        .build()
        .unwrap();
    let body = serde_json::json!({
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to me"}],
        "max_tokens": 50
    });
    let start = Instant::now();
    let res = call_http(&up, chat(Some("sk-1"), body.clone())).await;
    assert_eq!(start.elapsed(), ms(750));
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(res.headers()["x-ratelimit-reset-requests"], "1m0s");
    assert_eq!(res.headers()["x-ratelimit-limit-tokens"], "10000");
    // prompt: (4 + 3) + (4 + 4) = 15 tokens; charged 15 + 50.
    assert_eq!(res.headers()["x-ratelimit-remaining-tokens"], "9935");
    assert_eq!(res.extensions().get::<Usage>(), Some(&Usage::new(15, 50)));
    assert_eq!(up.stats().in_flight, 1, "in flight until the body is read");
    let json: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(up.stats().in_flight, 0);
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "gpt-test");
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(json["usage"]["prompt_tokens"], 15);
    assert_eq!(json["usage"]["completion_tokens"], 50);
    assert_eq!(json["usage"]["total_tokens"], 65);

    tokio::time::advance(Duration::from_secs(10)).await;
    call_http(&up, chat(Some("sk-1"), body.clone())).await;
    tokio::time::advance(ms(1500)).await;
    let refused = call_http(&up, chat(Some("sk-1"), body)).await;
    assert_eq!(refused.status(), 429);
    // Admissions at 0 s and 10.75 s; now is 13 s. The first leaves the window
    // at 60 s (retry in 47 s), the last at 70.75 s (full again in 57.75 s).
    let h = refused.headers();
    assert_eq!(h["retry-after-ms"], "47000");
    assert_eq!(h["retry-after"], "47");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert_eq!(h["x-ratelimit-reset-requests"], "57.75s");
    let json: serde_json::Value =
        serde_json::from_slice(&refused.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test(start_paused = true)]
async fn http_stream_yields_chunks_in_virtual_time_with_usage_and_done() {
    let up = Upstream::builder()
        .time_to_first_token(Dist::fixed(ms(400)))
        .tokens_per_second(Dist::Fixed(10.0))
        .tokens_per_chunk(2)
        .build()
        .unwrap();
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6,
        "stream": true,
        "stream_options": {"include_usage": true}
    });
    let start = Instant::now();
    let res = call_http(&up, chat(Some("sk-1"), body)).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "headers at once");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        events.push((start.elapsed(), String::from_utf8(data.to_vec()).unwrap()));
    }
    assert_eq!(up.stats().in_flight, 0);
    assert!(events
        .iter()
        .all(|(_, e)| e.starts_with("data: ") && e.ends_with("\n\n")));
    let times: Vec<_> = events.iter().map(|e| e.0).collect();
    // Tokens 2, 4, 6 at 0.4 s + (n - 1) / 10 s; then finish, usage, [DONE].
    assert_eq!(
        times,
        vec![ms(500), ms(700), ms(900), ms(900), ms(900), ms(900)]
    );
    let parse = |e: &str| -> serde_json::Value {
        serde_json::from_str(e.trim_start_matches("data: ").trim()).unwrap()
    };
    let first = parse(&events[0].1);
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["choices"][0]["delta"]["content"], "The quick ");
    assert_eq!(parse(&events[3].1)["choices"][0]["finish_reason"], "length");
    let usage = parse(&events[4].1);
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    assert_eq!(usage["usage"]["prompt_tokens"], 5);
    assert_eq!(events[5].1, "data: [DONE]\n\n");
}

#[tokio::test(start_paused = true)]
async fn http_stream_body_drop_releases_in_flight() {
    let up = Upstream::builder().build().unwrap();
    let body = serde_json::json!({"messages": [], "max_tokens": 100, "stream": true});
    let res = call_http(&up, chat(Some("sk-1"), body.clone())).await;
    let mut body_stream = res.into_body();
    let first = body_stream.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(up.stats().in_flight, 1);
    drop(body_stream);
    assert_eq!(up.stats().in_flight, 0);
    // Without include_usage there is no usage chunk.
    let res = call_http(&up, chat(Some("sk-1"), body)).await;
    let text = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(!text.contains("\"usage\""));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test(start_paused = true)]
async fn http_errors_and_faults() {
    let up = instant().build().unwrap();
    let res = call_http(&up, chat(None, serde_json::json!({"messages": []}))).await;
    assert_eq!(res.status(), 401);
    let bad = http::Request::post("/v1/chat/completions")
        .header("authorization", "Bearer k")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    assert_eq!(call_http(&up, bad).await.status(), 400);
    let unknown = http::Request::get("/v1/nothing")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(call_http(&up, unknown).await.status(), 404);
    let models = http::Request::get("/v1/models")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = call_http(&up, models).await;
    let json: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["data"][0]["id"], llm_sluice::sim::MODEL);
    let s = up.stats();
    assert_eq!((s.bad_requests, s.received), (3, 0));

    let quota = instant()
        .faults(Faults {
            quota_429: 1.0,
            ..Faults::NONE
        })
        .build()
        .unwrap();
    let res = call_http(&quota, chat(Some("k"), serde_json::json!({"messages": []}))).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let json: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["error"]["code"], "insufficient_quota");

    let overloaded = instant()
        .faults(Faults {
            overloaded_529: 1.0,
            ..Faults::NONE
        })
        .build()
        .unwrap();
    let res = call_http(
        &overloaded,
        chat(Some("k"), serde_json::json!({"messages": []})),
    )
    .await;
    assert_eq!(res.status().as_u16(), 529);

    let reset = instant()
        .faults(Faults {
            reset: 1.0,
            ..Faults::NONE
        })
        .build()
        .unwrap();
    let err = ServiceExt::<http::Request<Full<Bytes>>>::oneshot(
        reset.clone(),
        chat(Some("k"), serde_json::json!({"messages": []})),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

    let hang = instant()
        .faults(Faults {
            hang: 1.0,
            ..Faults::NONE
        })
        .build()
        .unwrap();
    let mut svc = hang.clone();
    let mut fut = task::spawn(Service::<http::Request<Full<Bytes>>>::call(
        &mut svc,
        chat(Some("k"), serde_json::json!({"messages": []})),
    ));
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_pending!(fut.poll());
    assert_eq!(hang.stats().in_flight, 1);
    drop(fut);
    assert_eq!(hang.stats().in_flight, 0);
}

// ---------- loopback server ----------

#[cfg(feature = "sim-server")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_server_speaks_the_chat_completions_api() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let up = Upstream::builder()
        .time_to_first_token(Dist::fixed(ms(1)))
        .tokens_per_second(Dist::Fixed(f64::INFINITY))
        .requests_per_window(100)
        .build()
        .unwrap();
    let (addr, handle) = llm_sluice::sim::serve(up.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}/v1/chat/completions");

    let test = async {
        let req = |stream: bool| {
            http::Request::post(&url)
                .header("authorization", "Bearer sk-loop")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::json!({
                        "model": "m",
                        "messages": [{"role": "user", "content": "hello"}],
                        "max_tokens": 8,
                        "stream": stream,
                        "stream_options": {"include_usage": true}
                    })
                    .to_string(),
                )))
                .unwrap()
        };
        let res = client.request(req(false)).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "99");
        let json: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(json["usage"]["completion_tokens"], 8);

        let res = client.request(req(true)).await.unwrap();
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let text = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(text.to_vec()).unwrap();
        let events: Vec<_> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        // 8 token chunks, finish, usage, [DONE].
        assert_eq!(events.len(), 11);
        // "hello": 4 + 2 prompt tokens, plus 8.
        assert!(events[9].contains("\"total_tokens\":14"), "{}", events[9]);
        assert_eq!(events[10], "data: [DONE]");

        let models = http::Request::get(format!("http://{addr}/v1/models"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(client.request(models).await.unwrap().status(), 200);
    };
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .expect("loopback test finished");
    assert_eq!(up.stats().received, 2);
    tokio::time::timeout(Duration::from_secs(20), handle.shutdown())
        .await
        .expect("graceful shutdown finished");
    drop(client);
}

// ---------- many requests through a limiter ----------

#[tokio::test(start_paused = true)]
async fn max_in_flight_shows_what_a_concurrency_limit_in_front_allowed() {
    let up = Upstream::builder()
        .time_to_first_token(Dist::LogNormal {
            median: 0.5,
            sigma: 0.8,
        })
        .tokens_per_second(Dist::Uniform {
            low: 20.0,
            high: 100.0,
        })
        .faults(Faults {
            error_500: 0.05,
            reset: 0.05,
            ..Faults::NONE
        })
        .seed(11)
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .buffer(20_000)
        .concurrency_limit(8)
        .service(up.clone());
    let n = 20_000u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let svc = svc.clone();
        let req = SimRequest::new(format!("sk-{}", i % 4), 100, 10 + i % 90);
        tasks.push(tokio::spawn(async move {
            match svc.oneshot(req).await {
                Ok(res) => res.status,
                Err(_) => 0,
            }
        }));
    }
    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap()).or_insert(0u64) += 1;
    }
    let s = up.stats();
    assert_eq!(s.received, n, "every request reached the upstream once");
    assert_eq!(by_status.values().sum::<u64>(), n);
    assert_eq!(by_status.get(&0).copied().unwrap_or(0), s.faults.reset);
    assert_eq!(by_status[&500], s.faults.error_500);
    assert_eq!(by_status[&200], s.succeeded);
    assert_eq!(
        s.max_in_flight, 8,
        "the limit in front, as the upstream saw it"
    );
    assert_eq!(s.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn hundred_thousand_typed_requests_are_cheap() {
    let up = Upstream::builder()
        .requests_per_window(1_000)
        .tokens_per_window(500_000)
        .faults(Faults::all(0.02))
        .seed(5)
        .build()
        .unwrap();
    let wall = std::time::Instant::now();
    let mut futures = Vec::with_capacity(1000);
    for i in 0..100_000u64 {
        futures.push(up.send(SimRequest::new(["a", "b", "c"][(i % 3) as usize], 50, 200)));
        if futures.len() == 1000 {
            tokio::time::advance(Duration::from_secs(20)).await;
            futures.clear();
        }
    }
    let s = up.stats();
    assert_eq!(s.received, 100_000);
    assert_eq!(s.in_flight, 0);
    eprintln!("100k typed requests: {:?} wall, {s:?}", wall.elapsed());
}
