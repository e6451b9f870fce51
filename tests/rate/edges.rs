//! Both ends of the `u64` range: usage reports, limits and estimates near
//! `u64::MAX` (issue 14, item 1).

use super::*;

/// A capped report is counted (`llm_sluice_rate_usage_capped_total`), and
/// the token counters move by the capped amount, not by 2^64.
#[cfg(feature = "metrics")]
#[test]
fn capped_usage_is_counted_and_the_token_counters_stay_sane() {
    use llm_sluice::rate::MAX_USAGE_TOKENS;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let layer = RateLimitLayer::builder()
                .tokens_per_minute(u64::MAX)
                .build()
                .unwrap();
            let (inner, _) = upstream(|r: &RequestMeta| {
                let usage = match r.tokens {
                    100 => Usage::new(u64::MAX, 0),
                    _ => Usage::new(MAX_USAGE_TOKENS, 0),
                };
                Ok(Resp(Classification::success(Some(usage))))
            });
            let mut svc = layer.layer(inner);
            svc.ready().await.unwrap().call(req(100)).await.unwrap();
            // At the cap exactly: taken as it is.
            svc.ready().await.unwrap().call(req(0)).await.unwrap();
        })
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| {
        snapshot
            .iter()
            .find(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Counter(c) => *c,
                other => panic!("{name}: {other:?}"),
            })
    };
    assert_eq!(counter("llm_sluice_rate_usage_capped_total"), Some(1));
    assert_eq!(
        counter("llm_sluice_rate_tokens_reserved_total"),
        Some(2 * MAX_USAGE_TOKENS)
    );
}
