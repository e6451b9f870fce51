//! The simulate example's key facts for a fixed seed, checked on a short
//! run (ten virtual minutes with an outage), not frozen as text: the
//! llm-sluice stack gets fewer 429s and more successes than the naive
//! client, the same seed gives the same report, shedding falls mostly on
//! low priority, and the chart is a well-formed SVG. The pessimistic
//! scenario (max_tokens 4x the real completion): reconciliation delivers
//! more, no 429s under the matching rule, no provider window over its limit.
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

/// The pessimistic scenario (max_tokens 4x the real completion, a provider
/// that corrects its charge to the actual usage), on ten virtual minutes:
/// reconciliation delivers more completion tokens per minute than charging
/// at admission, llm-sluice gets no 429s from the provider whose rule its
/// window mirrors, and no key's 60 s window at the provider goes over its
/// limit under llm-sluice.
#[test]
fn pessimistic_estimates_reconciliation_delivers_more() {
    use clap::Parser;
    use options::{ProviderCharge, Scenario};

    let opts = Options::parse_from([
        "simulate",
        "--scenario",
        "pessimistic",
        "--duration",
        "10m",
        "--quiet",
    ]);
    assert_eq!(opts.scenario, Scenario::Pessimistic);
    assert_eq!(opts.provider_charge, ProviderCharge::Reconcile);
    assert_eq!(opts.estimate_factor, 4.0);
    assert!(opts.outage_length.is_zero());
    assert_eq!((opts.tpm, opts.rate, opts.error_500), (40_000, 18.0, 0.0));
    let r = run::run_pessimistic(&opts).expect("the simulation runs");
    let (naive, reconcile, admission) = (&r.base.naive, &r.base.sluice, &r.admission);
    let per_minute = RunReport::completion_per_minute;
    let used = |x: &RunReport| x.budget_used(r.base.limit_tpm);

    assert!(
        per_minute(reconcile) > 1.5 * per_minute(admission),
        "completion tokens per minute: reconcile {:.0} vs admission {:.0}",
        per_minute(reconcile),
        per_minute(admission)
    );
    assert_eq!(reconcile.provider_429s, 0, "the matching rule: no 429s");
    assert_eq!(admission.provider_429s, 0, "stricter than the provider");
    assert!(naive.provider_429s > 0);
    for run in r.runs() {
        assert!(
            run.max_window_tokens <= opts.tpm,
            "{}: a window at {} tokens over the limit {}",
            run.name,
            run.max_window_tokens,
            opts.tpm
        );
    }
    assert!(used(reconcile) > 0.75, "reconcile {:.2}", used(reconcile));
    assert!(
        (0.2..0.55).contains(&used(admission)),
        "admission {:.2}",
        used(admission)
    );

    // A provider counting actual usage only admits while its count is under
    // the limit: the naive client's bursts take windows over it, llm-sluice's
    // window (holding the estimates in flight) never does.
    let r = run::run_pessimistic(&Options {
        provider_charge: ProviderCharge::Actual,
        duration: Duration::from_secs(5 * 60),
        ..opts.clone()
    })
    .expect("the simulation runs");
    assert!(r.base.naive.max_window_tokens > opts.tpm);
    for run in [&r.base.sluice, &r.admission] {
        assert_eq!(run.provider_429s, 0, "{}", run.name);
        assert!(run.max_window_tokens <= opts.tpm, "{}", run.name);
    }

    // The matching rule for a provider that charges at admission is
    // `Charging::Admission`: no 429s there; reconciling refunds what that
    // provider still counts, and meets 429s.
    let r = run::run_pessimistic(&Options {
        provider_charge: ProviderCharge::Admission,
        duration: Duration::from_secs(5 * 60),
        ..opts.clone()
    })
    .expect("the simulation runs");
    assert_eq!(r.admission.provider_429s, 0);
    assert!(r.base.sluice.provider_429s > 0);
    for run in r.runs() {
        assert!(run.max_window_tokens <= opts.tpm, "{}", run.name);
    }

    // The default run is unchanged by the scenario's flags.
    let default = Options::default();
    assert_eq!(default.scenario, Scenario::Default);
    assert_eq!(default.provider_charge, ProviderCharge::Used);
    assert_eq!(default.tpm, 180_000);
}
