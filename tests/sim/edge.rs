//! Transit delays, and a client at the provider's limits across them (issue
//! 14, item 8: 429s at the window edge).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use llm_sluice::rate::RateLimitLayer;
use llm_sluice::sim::{Count, Dist, Latency, SimRequest, Upstream};
use tokio::time::Instant;
use tokio_test::{assert_pending, task};
use tower::{Layer, Service, ServiceExt};

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

/// What the provider saw of one client run.
#[derive(Debug)]
struct Run {
    /// Requests it refused with a 429.
    refused: u64,
    /// Requests and tokens it admitted in the measured windows, as a share
    /// of what its limits allow there.
    requests: f64,
    tokens: f64,
    /// The most requests it received in any window (its limit is 60).
    peak_requests: u64,
}

const RPM: u64 = 60;
const TPM: u64 = 60_000;
const WINDOW: Duration = Duration::from_secs(60);

/// A client run against a provider enforcing 60 RPM and 60,000 TPM over a
/// 60 s sliding window.
struct Scenario {
    /// The client's guard band; `None` for the default.
    guard: Option<Duration>,
    /// Whether requests reach the provider 5 to 120 ms after admission
    /// (uniform, seeded) rather than at once.
    transit: bool,
    /// Request sizes: spread over `lo..=hi` tokens.
    tokens: (u64, u64),
    /// Windows measured, after one to warm up (the first admits a whole
    /// window's budget at once).
    windows: u32,
    seed: u64,
}

impl Scenario {
    /// Steady overload: 8 workers send back to back through a rate layer
    /// with exactly the provider's limits. The provider's window starts at
    /// each request's arrival.
    async fn run(&self) -> Run {
        let mut up = Upstream::builder()
            .latency(Latency::INSTANT)
            .requests_per_window(RPM)
            .tokens_per_window(TPM)
            .seed(self.seed);
        if self.transit {
            up = up.transit(Dist::uniform(ms(5), ms(120)));
        }
        let up = up.build().unwrap();
        let mut builder = RateLimitLayer::builder()
            .requests_per_minute(RPM)
            .tokens_per_minute(TPM)
            .max_wait(Duration::from_secs(3_600));
        if let Some(guard) = self.guard {
            builder = builder.guard_band(guard);
        }
        let svc = builder.build().unwrap().layer(up.clone());
        let t0 = Instant::now();
        let end = t0 + WINDOW * (self.windows + 1);
        let (lo, hi) = self.tokens;
        let mut workers = Vec::new();
        for worker in 0..8u64 {
            let mut svc = svc.clone();
            workers.push(tokio::spawn(async move {
                let mut i = worker;
                while Instant::now() < end {
                    let tokens = lo + (i * 7_919) % (hi - lo + 1);
                    i += 8;
                    let req = SimRequest::new("sk-edge", tokens / 2, tokens - tokens / 2);
                    let ready = ServiceExt::<SimRequest>::ready(&mut svc).await.unwrap();
                    let _ = ready.call(req).await;
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let measured = (t0 + WINDOW)..end;
        let admitted: Vec<(f64, u64)> = up
            .log("sk-edge")
            .into_iter()
            .filter(|r| r.admitted && measured.contains(&r.at))
            .map(|r| ((r.at - t0).as_secs_f64(), r.charged_tokens))
            .collect();
        let requests: Vec<_> = admitted.iter().map(|&(at, _)| (at, 1)).collect();
        Run {
            refused: up.stats().rate_limited,
            requests: utilization(&requests, RPM),
            tokens: utilization(&admitted, TPM),
            peak_requests: up.peak("sk-edge", WINDOW, Count::Received).requests,
        }
    }
}

/// What a run of admissions `(time in seconds, amount)` made of a budget of
/// `limit` per window, in the long run: the window's length over the time
/// the admissions took, on average, to add up to one `limit` more.
///
/// Counting what fell between two instants would depend on where they
/// fall: under overload admissions come in waves one `window + guard`
/// apart, and a wave more or less at either end moves the count by a
/// window's worth. Averaging "the time from the admission that reached
/// amount `c` to the one that reached `c + limit`" over every `c` does not
/// (for waves of exactly `limit` it is exactly their spacing).
fn utilization(admissions: &[(f64, u64)], limit: u64) -> f64 {
    let total: u64 = admissions.iter().map(|&(_, amount)| amount).sum();
    assert!(total > 2 * limit, "too short a run to measure");
    // The integral of "when the cumulative amount reached c" over c in
    // [from, to).
    let integral = |from: u64, to: u64| {
        let mut sum = 0.0;
        let mut before = 0u64;
        for &(at, amount) in admissions {
            let after = before + amount;
            let overlap = after.min(to).saturating_sub(before.max(from));
            sum += at * overlap as f64;
            before = after;
        }
        sum
    };
    let span = (total - limit) as f64;
    let period = (integral(limit, total) - integral(0, total - limit)) / span;
    WINDOW.as_secs_f64() / period
}

/// With the default guard band, a client at the provider's own limits gets
/// no 429 although transit moves every request's arrival by a different
/// amount (5 to 120 ms); with no guard band the same client gets them, and
/// sends more than the limit into some window of the provider's (so the
/// test can fail).
#[tokio::test(start_paused = true)]
async fn a_client_at_the_providers_limits_gets_no_429_across_transit() {
    for seed in [1, 2, 3] {
        let scenario = |guard| Scenario {
            guard,
            transit: true,
            // 1,000 tokens on average: both budgets bind.
            tokens: (200, 1_800),
            windows: 10,
            seed,
        };
        let guarded = scenario(None).run().await;
        let bare = scenario(Some(Duration::ZERO)).run().await;
        println!("seed {seed}: default guard band {guarded:?}");
        println!("seed {seed}: no guard band      {bare:?}");
        assert_eq!(guarded.refused, 0, "seed {seed}: {guarded:?}");
        assert!(guarded.peak_requests <= RPM, "seed {seed}: {guarded:?}");
        assert!(bare.refused > 0, "seed {seed}: {bare:?}");
        assert!(bare.peak_requests > RPM, "seed {seed}: {bare:?}");
    }
}

/// What the guard band costs under steady overload, over 100 windows: the
/// budget that binds is still used to at least 98% of the provider's limit
/// (by requests when requests are small, by tokens when they are large),
/// and less than a point below the same workload with no guard band and no
/// transit (the most it can get: variable sizes leave a little of a token
/// budget unused). Each reservation counts for `window + guard`, so the
/// cost is `guard / (window + guard)`: 0.41% by default.

#[tokio::test(start_paused = true)]
async fn the_guard_band_costs_a_small_share_of_the_limit() {
    for (binds, tokens) in [("requests", (100, 900)), ("tokens", (1_100, 1_900))] {
        let scenario = |guard, transit| Scenario {
            guard,
            transit,
            tokens,
            windows: 100,
            seed: 1,
        };
        let guarded = scenario(None, true).run().await;
        let ideal = scenario(Some(Duration::ZERO), false).run().await;
        println!("{binds} bind, default guard band, transit: {guarded:?}");
        println!("{binds} bind, no guard band, no transit:   {ideal:?}");
        assert_eq!(guarded.refused, 0);
        let (used, most) = match binds {
            "requests" => (guarded.requests, ideal.requests),
            _ => (guarded.tokens, ideal.tokens),
        };
        assert!(used >= 0.98, "{binds}: {used:.4}");
        assert!(
            used <= 1.0 && most <= 1.0,
            "{binds}: {used:.4} of {most:.4}"
        );
        assert!(used > most - 0.01, "{binds}: {used:.4} of {most:.4}");
    }
}
