//! The learned output estimate: it converges to the quantile of the
//! traffic, follows a change, and is used only without a maximum.

use super::*;

fn no_max(model: &str) -> String {
    format!(r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "abcd"}}]}}"#)
}

/// The nearest-rank p95 of `values`, by sorting.
fn p95(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[(sorted.len() * 95).div_ceil(100) - 1]
}

#[test]
fn the_learned_output_converges_to_the_p95_of_recent_completions() {
    let history = CompletionHistory::new();
    let estimator = ChatEstimator::new().history(history.clone());
    let body = no_max("gpt-4o-mini");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut seen = Vec::new();
    for i in 0..1_000 {
        let estimate = estimator.estimate(body.as_bytes());
        if i < 20 {
            // Fewer than 20 completions: the default.
            assert_eq!(estimate.output, 256, "after {i}");
        } else {
            let recent = &seen[seen.len().saturating_sub(256)..];
            assert_eq!(estimate.output, p95(recent), "after {i}");
        }
        // Completions of 20 to 400 tokens, most of them short.
        let completion = 20 + rng.u64(0..=380) * rng.u64(0..=100) / 100;
        history.record("gpt-4o-mini", completion);
        seen.push(completion);
    }
    // Another model learns nothing from this one.
    let other = no_max("gpt-4o");
    assert_eq!(estimator.estimate(other.as_bytes()).output, 256);
    assert_eq!(history.samples("gpt-4o-mini"), 256);
}

#[test]
fn the_learned_output_follows_a_change_within_one_window() {
    let history = CompletionHistory::builder().window(100).build().unwrap();
    let estimator = ChatEstimator::new().history(history.clone());
    let body = no_max("m");
    for _ in 0..100 {
        history.record("m", 100);
    }
    assert_eq!(estimator.estimate(body.as_bytes()).output, 100);
    // Completions grow tenfold: once 5% of the window is long, the p95 is.
    for i in 1..=100 {
        history.record("m", 1_000);
        let expected = if i >= 6 { 1_000 } else { 100 };
        assert_eq!(estimator.estimate(body.as_bytes()).output, expected, "{i}");
    }
}

#[test]
fn a_maximum_wins_over_the_history_and_n_multiplies_it() {
    let history = CompletionHistory::builder().min_samples(1).build().unwrap();
    history.record("m", 40);
    let estimator = ChatEstimator::new().history(history);
    let with_max = r#"{"model": "m", "max_tokens": 500, "messages": []}"#;
    assert_eq!(estimator.estimate(with_max.as_bytes()).output, 500);
    let three = r#"{"model": "m", "n": 3, "messages": []}"#;
    assert_eq!(estimator.estimate(three.as_bytes()).output, 120);
    // No model: the history's default.
    assert_eq!(estimator.estimate(br#"{"messages": []}"#).output, 256);
}

#[test]
fn model_defaults_apply_before_enough_samples() {
    let history = CompletionHistory::builder()
        .min_samples(2)
        .model_default("big", 8_192)
        .build()
        .unwrap();
    let estimator = ChatEstimator::new().history(history.clone());
    let big = no_max("big");
    assert_eq!(estimator.estimate(big.as_bytes()).output, 8_192);
    history.record("big", 300);
    assert_eq!(estimator.estimate(big.as_bytes()).output, 8_192);
    history.record("big", 200);
    assert_eq!(estimator.estimate(big.as_bytes()).output, 300);
}
