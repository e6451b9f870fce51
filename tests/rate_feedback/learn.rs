//! Limits learned from the wire against the simulated provider: a window
//! configured above the provider's limit (the proxy at 120 a minute in front
//! of a provider at 60, which got 121 `429`s in 267 requests and never
//! adapted), with and without rate-limit headers, and with no limit
//! configured at all.

use std::time::Duration;

use llm_sluice::rate::{Budget, Builder, LearnLimits, RateLimitHandle, RateLimitLayer};
use llm_sluice::sim::{Count, Dist, SimRequest, Upstream};
use llm_sluice::PartitionKey;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

const WINDOW: Duration = Duration::from_secs(60);
const WINDOWS: u32 = 10;

/// A provider at `rpm` a minute per key, answering in about half a second,
/// with or without rate-limit headers.
fn provider(rpm: u64, headers: bool) -> Upstream {
    Upstream::builder()
        .requests_per_window(rpm)
        .time_to_first_token(Dist::fixed(Duration::from_millis(500)))
        .tokens_per_second(Dist::Fixed(1_000.0))
        .rate_limit_headers(headers)
        .seed(3)
        .build()
        .unwrap()
}

/// What the provider did, window by window.
#[derive(Debug)]
struct Run {
    /// `429`s in each window.
    refused: Vec<u64>,
    /// Requests admitted in each window.
    admitted: Vec<u64>,
}

impl Run {
    fn refused_after_the_first_window(&self) -> u64 {
        self.refused[1..].iter().sum()
    }
}

/// Five requests a second (300 a minute, five times the provider's 60) for
/// ten windows through `layer`, on key `k`.
async fn drive(upstream: &Upstream, builder: Builder) -> (Run, RateLimitHandle) {
    let layer = builder
        .max_wait(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    let start = Instant::now();
    let horizon = WINDOW * WINDOWS;
    let every = Duration::from_millis(200);
    let mut tasks = Vec::new();
    for i in 0..(horizon.as_millis() / every.as_millis()) as u32 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + every * i).await;
            let call = svc.oneshot(SimRequest::new("k", 10, 10));
            let _ = tokio::time::timeout_at(start + horizon, call).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut run = Run {
        refused: vec![0; WINDOWS as usize],
        admitted: vec![0; WINDOWS as usize],
    };
    for r in upstream.log("k") {
        let w = ((r.at - start).as_secs() / WINDOW.as_secs()) as usize;
        if w < WINDOWS as usize {
            if r.admitted {
                run.admitted[w] += 1;
            } else {
                run.refused[w] += 1;
            }
        }
    }
    (run, handle)
}

fn key() -> PartitionKey {
    PartitionKey::new("k")
}

/// Without rate-limit headers the provider says nothing but its `429`s:
/// the first teaches the window what it held, and from the second window
/// on none come. Not learning, the window keeps running into them.
#[tokio::test(start_paused = true)]
async fn a_429_the_window_did_not_expect_teaches_it_the_provider_limit() {
    let up = provider(60, false);
    let (run, handle) = drive(&up, RateLimitLayer::builder().requests_per_minute(120)).await;
    println!("learning from 429s: {run:?}");
    assert!(run.refused[0] > 0, "{run:?}");
    assert_eq!(run.refused_after_the_first_window(), 0, "{run:?}");
    // The budget is still used: 60 a window, less a guard band's worth.
    for admitted in &run.admitted[1..] {
        assert!(*admitted >= 59, "{run:?}");
    }
    let learned = handle.learned(Some(&key())).unwrap();
    assert_eq!(learned.refused(Budget::Requests), Some(60));
    assert_eq!(learned.limit(Budget::Requests), Some(60));
    assert_eq!(learned.reported(Budget::Requests), None);
    assert_eq!(handle.limit(Budget::Requests), Some(120), "configured");
    assert_eq!(handle.stats().learned, 1);

    // The same without learning: a 429 every window, for good.
    let up = provider(60, false);
    let builder = RateLimitLayer::builder()
        .requests_per_minute(120)
        .learn_limits(LearnLimits::Off);
    let (off, handle) = drive(&up, builder).await;
    println!("not learning: {off:?}");
    assert!(off.refused.iter().all(|&n| n > 0), "{off:?}");
    assert!(handle.learned(Some(&key())).is_none());
}

/// With headers the first answer reports the provider's limit: the window
/// takes it at once.
#[tokio::test(start_paused = true)]
async fn a_reported_limit_below_the_configured_one_is_taken_at_once() {
    let up = provider(60, true);
    let (run, handle) = drive(&up, RateLimitLayer::builder().requests_per_minute(120)).await;
    println!("learning from headers: {run:?}");
    assert_eq!(run.refused_after_the_first_window(), 0, "{run:?}");
    // Only the requests sent before the first answer came back can be
    // refused.
    assert!(run.refused[0] <= 3, "{run:?}");
    let learned = handle.learned(Some(&key())).unwrap();
    assert_eq!(learned.reported(Budget::Requests), Some(60));
    assert_eq!(learned.limit(Budget::Requests), Some(60));

    let up = provider(60, true);
    let builder = RateLimitLayer::builder()
        .requests_per_minute(120)
        .learn_limits(LearnLimits::Off);
    let (off, _) = drive(&up, builder).await;
    println!("not learning, headers: {off:?}");
    // The remaining count alone clamps the window only until each reset:
    // 429s come back, more every window.
    assert!(off.refused_after_the_first_window() > 0, "{off:?}");
}

/// No limit configured: every partition starts unlimited and adopts the
/// limit the provider reports.
#[tokio::test(start_paused = true)]
async fn with_no_limit_configured_a_partition_adopts_the_provider_limit() {
    let up = provider(60, true);
    let builder = RateLimitLayer::builder().learn_limits(LearnLimits::TightenOnly);
    let (run, handle) = drive(&up, builder).await;
    println!("zero configuration: {run:?}");
    assert_eq!(handle.limit(Budget::Requests), None, "nothing configured");
    let learned = handle.learned(Some(&key())).unwrap();
    assert_eq!(learned.limit(Budget::Requests), Some(60));
    assert_eq!(run.refused_after_the_first_window(), 0, "{run:?}");
    for admitted in &run.admitted[1..] {
        assert!(*admitted >= 59, "{run:?}");
    }
    // Without `learn_limits` a builder with no budget is refused.
    let err = RateLimitLayer::builder().build().unwrap_err();
    assert_eq!(err.field(), "requests_per_minute");
}

/// Tighten-only never goes above a configured limit the provider exceeds;
/// `Follow` does.
#[tokio::test(start_paused = true)]
async fn tighten_only_never_raises_a_configured_limit_and_follow_does() {
    let up = provider(60, true);
    let (run, handle) = drive(&up, RateLimitLayer::builder().requests_per_minute(30)).await;
    assert!(handle.learned(Some(&key())).is_none(), "nothing in force");
    let peak = up.peak("k", WINDOW, Count::Received);
    assert!(peak.requests <= 30, "{peak:?} {run:?}");

    let up = provider(60, true);
    let builder = RateLimitLayer::builder()
        .requests_per_minute(30)
        .learn_limits(LearnLimits::Follow);
    let (run, handle) = drive(&up, builder).await;
    let learned = handle.learned(Some(&key())).unwrap();
    assert_eq!(learned.limit(Budget::Requests), Some(60));
    assert_eq!(run.refused.iter().sum::<u64>(), 0, "{run:?}");
    for admitted in &run.admitted[1..] {
        assert!(*admitted >= 59, "{run:?}");
    }
}
