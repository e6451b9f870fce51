//! Each token charging rule against the simulated provider that counts by
//! it: steady overload with pessimistic estimates (`max_tokens` four times
//! the real completion), one key, ten windows.
//!
//! A client whose rule matches the provider's gets no `429`s and uses at
//! least 95% of the budget; one whose rule does not either runs into the
//! provider's limit or leaves the budget unused, and says so in
//! `llm_sluice_rate_charging_mismatch_total`.

use std::time::Duration;

use llm_sluice::rate::{Budget, Charging, RateLimitLayer};
use llm_sluice::sim::{Dist, SimRequest, TokenCharge, Upstream};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

const TPM: u64 = 20_000;
const WINDOWS: u64 = 10;
/// Each request: 100 prompt tokens and `max_tokens` 400, of which the
/// provider generates a quarter: estimated 500, used 200.
const PROMPT: u64 = 100;
const MAX_TOKENS: u64 = 400;

/// What one run did.
#[derive(Debug)]
struct Run {
    /// Requests the provider received.
    received: u64,
    /// `429`s the provider sent.
    refused: u64,
    /// The provider's count of the admitted requests that arrived after the
    /// first window, over the limit of those windows: the budget used in
    /// steady state.
    used: f64,
    /// `llm_sluice_rate_charging_mismatch_total{budget="tokens"}`.
    mismatches: u64,
}

/// Five times what a provider that counts actual usage allows (100 calls a
/// minute), for ten windows, through a window with the `client` rule in
/// front of a provider with the `provider` rule.
async fn run(provider: TokenCharge, client: Charging) -> Run {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let upstream = Upstream::builder()
        .tokens_per_window(TPM)
        .token_charge(provider)
        .time_to_first_token(Dist::fixed(Duration::from_millis(500)))
        .tokens_per_second(Dist::Fixed(200.0))
        .output_fraction(Dist::Fixed(0.25))
        .seed(11)
        .build()
        .unwrap();
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(TPM)
        .charging(Budget::Tokens, client)
        .max_wait(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    let start = Instant::now();
    let horizon = Duration::from_secs(60 * WINDOWS);
    let every = Duration::from_millis(120);
    let mut tasks = Vec::new();
    for i in 0..(horizon.as_millis() / every.as_millis()) as u32 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + every * i).await;
            let call = svc.oneshot(SimRequest::new("k", PROMPT, MAX_TOKENS));
            let _ = tokio::time::timeout_at(start + horizon, call).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let steady = start + Duration::from_secs(60);
    let counted: u64 = upstream
        .log("k")
        .iter()
        .filter(|r| r.admitted && r.at >= steady && r.at < start + horizon)
        .map(|r| r.charged_tokens)
        .sum();
    let mismatches = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            let key = key.key();
            key.name() == "llm_sluice_rate_charging_mismatch_total"
                && key
                    .labels()
                    .any(|l| l.key() == "budget" && l.value() == "tokens")
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("{other:?}"),
        })
        .sum();
    let run = Run {
        received: upstream.stats().received,
        refused: upstream.stats().rate_limited,
        used: counted as f64 / (TPM * (WINDOWS - 1)) as f64,
        mismatches,
    };
    println!("provider {provider:?}, client {client:?}: {run:?}");
    run
}

#[tokio::test(start_paused = true)]
async fn a_client_counting_as_its_provider_does_uses_the_budget_without_429s() {
    for (provider, client) in [
        (TokenCharge::Admission, Charging::Admission),
        (TokenCharge::Reconcile, Charging::Reconcile),
        (TokenCharge::Actual, Charging::Actual),
        // The same in the window: the estimate holds the room until usage.
        (TokenCharge::Actual, Charging::Reconcile),
        (TokenCharge::Reconcile, Charging::Actual),
    ] {
        let run = run(provider, client).await;
        assert_eq!(run.refused, 0, "{provider:?} / {client:?}: {run:?}");
        assert!(run.used >= 0.95, "{provider:?} / {client:?}: {run:?}");
        assert_eq!(run.mismatches, 0, "{provider:?} / {client:?}: {run:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_charging_at_admission_leaves_a_correcting_provider_idle_and_says_so() {
    for provider in [TokenCharge::Reconcile, TokenCharge::Actual] {
        let run = run(provider, Charging::Admission).await;
        assert_eq!(run.refused, 0, "{provider:?}: {run:?}");
        // 500 reserved for 200 counted: 40% of the budget.
        assert!(run.used < 0.45, "{provider:?}: {run:?}");
        assert!(run.mismatches > 0, "{provider:?}: {run:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_refunding_what_its_provider_charged_at_admission_is_refused_and_says_so() {
    for client in [Charging::Reconcile, Charging::Actual] {
        let run = run(TokenCharge::Admission, client).await;
        // More than the 40 calls of 500 a window the provider admits, the
        // rest refused (the remaining count the provider reports clamps the
        // window until its reset, so they stay few).
        assert!(run.received > 40 * WINDOWS, "{client:?}: {run:?}");
        assert!(run.refused > 0, "{client:?}: {run:?}");
        assert!(run.mismatches > 0, "{client:?}: {run:?}");
    }
}
