//! Outage windows and latency spikes.

use std::time::Duration;

use llm_sluice::classify::{LlmResponse, Outcome};
use llm_sluice::sim::{Dist, Latency, SimRequest, Upstream};
use tokio::time::Instant;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn outage_answers_its_status_in_its_window_only_and_spends_no_budget() {
    let up = Upstream::builder()
        .latency(Latency::INSTANT)
        .requests_per_window(100)
        .outage(secs(10), secs(5), 529)
        .outage(secs(30), secs(1), 503)
        .build()
        .unwrap();
    let start = up.started_at();
    let mut seen = Vec::new();
    for t in [0, 9, 10, 12, 14, 15, 29, 30, 31] {
        tokio::time::sleep_until(start + secs(t)).await;
        let res = up.send(SimRequest::new("k", 1, 1)).await.unwrap();
        seen.push((t, res.status));
    }
    assert_eq!(
        seen,
        [
            (0, 200),
            (9, 200),
            (10, 529),
            (12, 529),
            (14, 529),
            (15, 200),
            (29, 200),
            (30, 503),
            (31, 200),
        ],
        "[start, start + length) is down, the rest is up"
    );
    let stats = up.stats();
    assert_eq!(stats.faults.outage, 4);
    assert_eq!(stats.received, 9);
    assert_eq!(
        stats.admitted, 5,
        "requests met by an outage spend no budget"
    );
    let log = up.log("k");
    assert_eq!(log.iter().filter(|r| !r.admitted).count(), 4);
}

#[tokio::test(start_paused = true)]
async fn outage_status_is_classified_as_a_server_failure() {
    let up = Upstream::builder()
        .latency(Latency::INSTANT)
        .outage(Duration::ZERO, secs(60), 529)
        .build()
        .unwrap();
    let res = up.send(SimRequest::new("k", 1, 1)).await.unwrap();
    assert_eq!(res.classification().outcome, Outcome::Overloaded);
}

#[test]
fn invalid_outages_and_spikes_name_their_field() {
    let err = Upstream::builder()
        .outage(secs(1), Duration::ZERO, 503)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "outage");
    let err = Upstream::builder()
        .outage(secs(1), secs(1), 429)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "outage");
    let err = Upstream::builder()
        .latency_spikes(1.5, Dist::Fixed(1.0))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "latency_spikes");
    let err = Upstream::builder()
        .latency_spikes(0.1, Dist::Fixed(-1.0))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "latency_spikes");
}

#[tokio::test(start_paused = true)]
async fn latency_spikes_slow_about_their_share_by_the_extra_delay() {
    let up = Upstream::builder()
        .time_to_first_token(Dist::Fixed(0.5))
        .tokens_per_second(Dist::Fixed(f64::INFINITY))
        .latency_spikes(0.2, Dist::Fixed(10.0))
        .seed(11)
        .build()
        .unwrap();
    let n = 2000;
    let mut slow = 0;
    for _ in 0..n {
        let begun = Instant::now();
        let res = up.send(SimRequest::new("k", 1, 1)).await.unwrap();
        assert_eq!(res.status, 200);
        match begun.elapsed() {
            d if d == Duration::from_millis(500) => {}
            d if d == Duration::from_millis(10_500) => slow += 1,
            d => panic!("unexpected latency {d:?}"),
        }
    }
    assert_eq!(up.stats().faults.latency_spike, slow);
    assert!((300..500).contains(&slow), "{slow} of {n} at rate 0.2");
}

#[tokio::test(start_paused = true)]
async fn no_spikes_configured_keeps_the_seed_draws() {
    // A seed without spikes gives the same latencies as before the option
    // existed: spikes only draw when set.
    async fn latencies(up: Upstream) -> Vec<Duration> {
        let mut out = Vec::new();
        for _ in 0..50 {
            let begun = Instant::now();
            up.send(SimRequest::new("k", 1, 10)).await.unwrap();
            out.push(begun.elapsed());
        }
        out
    }
    let base = || {
        Upstream::builder()
            .time_to_first_token(Dist::uniform(
                Duration::from_millis(100),
                Duration::from_millis(900),
            ))
            .seed(5)
    };
    let plain = latencies(base().build().unwrap()).await;
    let zero_rate = latencies(
        base()
            .latency_spikes(0.0, Dist::Fixed(9.0))
            .build()
            .unwrap(),
    )
    .await;
    assert_eq!(plain.len(), 50);
    assert!(plain.windows(2).any(|w| w[0] != w[1]), "latencies vary");
    assert_ne!(plain, zero_rate, "setting spikes draws more (documented)");
    assert!(
        zero_rate.iter().all(|d| *d <= Duration::from_millis(1100)),
        "rate 0 never spikes"
    );
}

#[tokio::test(start_paused = true)]
async fn counted_refusals_keep_a_resending_client_out() {
    // 2 requests a minute; a client that resends every 10 s after a 429.
    async fn successes(count_refused: bool) -> (u64, u64) {
        let up = Upstream::builder()
            .latency(Latency::INSTANT)
            .requests_per_window(2)
            .count_refused(count_refused)
            .build()
            .unwrap();
        let mut ok = 0;
        for _ in 0..18 {
            let res = up.send(SimRequest::new("k", 1, 1)).await.unwrap();
            ok += u64::from(res.status == 200);
            tokio::time::sleep(secs(10)).await;
        }
        (ok, up.stats().rate_limited)
    }
    assert_eq!(successes(false).await, (6, 12), "2 a minute over 3 minutes");
    let (ok, refused) = successes(true).await;
    assert_eq!(ok + refused, 18);
    assert!(ok < 6, "refusals spend the window: {ok} admitted");
}
