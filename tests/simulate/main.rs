//! The simulate example's key facts for a fixed seed, checked on a short
//! run (ten virtual minutes with an outage), not frozen as text: the
//! llm-sluice stack gets fewer 429s and more successes than the naive
//! client, the same seed gives the same report, shedding falls mostly on
//! low priority, and the chart is a well-formed SVG.
#![cfg(feature = "sim")]

#[path = "../../examples/simulate/naive.rs"]
mod naive;
#[path = "../../examples/simulate/options.rs"]
mod options;
#[path = "../../examples/simulate/plot.rs"]
mod plot;
#[path = "../../examples/simulate/report.rs"]
mod report;
#[path = "../../examples/simulate/run.rs"]
mod run;
#[path = "../../examples/simulate/sluice.rs"]
mod sluice;
#[path = "../../examples/simulate/workload.rs"]
mod workload;

use std::sync::OnceLock;
use std::time::Duration;

use options::Options;
use report::{Report, RunReport};

fn short(seed: u64) -> Options {
    Options {
        duration: Duration::from_secs(10 * 60),
        outage_start: Duration::from_secs(4 * 60),
        outage_length: Duration::from_secs(60),
        seed,
        quiet: true,
        ..Options::default()
    }
}

/// The seed-7 report, computed once for the tests that read it.
fn seven() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| run::run(&short(7)).expect("the simulation runs"))
}

#[test]
fn defaults_are_the_documented_story() {
    let opts = Options::default();
    assert_eq!(opts.duration, Duration::from_secs(3600));
    assert_eq!(opts.seed, 7);
    assert!(opts.plot.is_none());
    assert!(opts.outage_start + opts.outage_length <= opts.duration);
}

#[test]
fn sluice_gets_fewer_429s_and_more_successes_than_naive() {
    let r = seven();
    let (naive, sluice) = (&r.naive, &r.sluice);
    assert!(
        sluice.provider_429s < naive.provider_429s / 10,
        "429s: sluice {} vs naive {}",
        sluice.provider_429s,
        naive.provider_429s
    );
    assert!(
        sluice.successes > naive.successes,
        "successes: sluice {} vs naive {}",
        sluice.successes,
        naive.successes
    );
    assert!(sluice.sent_to_provider < naive.sent_to_provider);
    assert!(sluice.tokens_delivered > naive.tokens_delivered);
    assert!(naive.failed("429 from provider") > 0);
    assert_eq!(sluice.failed("429 from provider"), 0);
}

#[test]
fn every_request_is_accounted_for_once() {
    let r = seven();
    for run in [&r.naive, &r.sluice] {
        let failed: u64 = run.failures.values().sum();
        assert_eq!(run.requests, r.requests, "{}", run.name);
        assert_eq!(run.successes + failed, run.requests, "{}", run.name);
        let shed: u64 = run
            .failures
            .iter()
            .filter(|(reason, _)| reason.starts_with("shed:"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            shed,
            run.shed(),
            "{}: shed reasons match priorities",
            run.name
        );
        let sent: u64 = run.series.iter().map(|m| m.sent).sum();
        assert_eq!(
            sent, run.sent_to_provider,
            "{}: the series adds up",
            run.name
        );
        assert!(run.end_to_end.count == run.successes);
        assert!(run.end_to_end.p50 <= run.end_to_end.p95);
        assert!(run.end_to_end.p95 <= run.end_to_end.p99);
        assert!(run.queue_wait.p50 <= run.queue_wait.p99);
    }
}

#[test]
fn naive_sheds_nothing_and_has_no_breaker() {
    let naive: &RunReport = &seven().naive;
    assert_eq!(naive.shed(), 0);
    assert_eq!(naive.breaker_openings, 0);
    assert!(naive.series.iter().all(|m| m.breakers_open == 0));
}

#[test]
fn outage_opens_breakers_and_shedding_falls_mostly_on_low_priority() {
    let r = seven();
    let sluice = &r.sluice;
    assert!(sluice.breaker_openings > 0, "the outage opens breakers");
    assert!(sluice.failed("shed: circuit open") > 0);
    assert!(sluice.series.iter().any(|m| m.breakers_open > 0));
    let [low, normal, high] = sluice.shed_by_priority;
    assert!(low + normal + high > 0);
    assert!(low > high, "low {low} vs high {high}");
    // Low priority is 30% of arrivals; it takes a larger share of sheds.
    let low_share = low as f64 / (low + normal + high) as f64;
    assert!(
        low_share > 0.3,
        "low priority share of sheds {low_share:.2}"
    );
}

#[test]
fn same_seed_same_report_other_seed_differs() {
    let again = run::run(&short(7)).expect("the simulation runs");
    assert_eq!(&again, seven(), "the same seed gives the same report");
    assert_eq!(again.to_string(), seven().to_string());
    let other = run::run(&short(8)).expect("the simulation runs");
    assert_ne!(other.requests, 0);
    assert_ne!(&other, seven(), "another seed gives another report");
}

#[test]
fn table_names_every_row() {
    let text = seven().to_string();
    for row in [
        "naive client",
        "llm-sluice",
        "successes",
        "429s received",
        "calls sent to the provider",
        "low priority",
        "latency of successes, p99",
        "queue wait before first call, p50",
        "token budget charged by the provider",
        "breaker openings",
    ] {
        assert!(text.contains(row), "missing {row:?} in\n{text}");
    }
    assert!(
        !text.contains("wall time"),
        "the report holds no wall-clock value"
    );
}

#[test]
fn plot_writes_a_well_formed_svg() {
    let dir = std::env::temp_dir().join(format!("llm-sluice-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("chart.svg");
    plot::write(&path, seven()).expect("the chart is written");
    let svg = std::fs::read_to_string(&path).expect("the chart is readable");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        svg.trim_start().starts_with("<svg"),
        "{}",
        &svg[..svg.len().min(80)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    for name in [
        "naive client",
        "llm-sluice",
        "limit (RPM, all keys)",
        "limit (TPM, all keys)",
        "requests waiting in the client",
        "breaker open",
    ] {
        assert!(svg.contains(name), "the chart names {name:?}");
    }
    assert!(
        svg.matches("<polyline").count() >= 8,
        "a line per client per panel"
    );
}
