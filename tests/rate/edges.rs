//! Both ends of the `u64` range: usage reports, limits and estimates near
//! `u64::MAX` (issue 14, item 1).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A client that casts `-1` to `u64` reports `u64::MAX` tokens. Two
/// 100-token requests in flight on one partition (TPM 1,000), the first
/// reporting that, the second nothing: the absurd report fills the window
/// until its entry expires, one window (and guard band) after admission,
/// and then the partition takes requests again. It used to stay refused
/// until evicted: the sum saturated when the usage was added, then both
/// entries were subtracted and it wrapped to 2^64 - 100 in an empty log.
#[tokio::test(start_paused = true)]
async fn absurd_usage_never_wedges_a_partition() {
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(1_000)
        .max_wait(Duration::from_secs(600))
        .build()
        .unwrap();
    let span = layer.handle().limits().span(Budget::Tokens);
    let answered = Arc::new(AtomicUsize::new(0));
    let (inner, log) = upstream(move |_r: &RequestMeta| {
        let first = answered.fetch_add(1, Ordering::Relaxed) == 0;
        let usage = first.then(|| Usage::new(u64::MAX, 0));
        Ok(Resp(Classification::success(usage)))
    });
    let mut svc = layer.layer(inner);
    let tenant = |tokens| req(tokens).partition("tenant");
    let t0 = Instant::now();
    // Both admitted (in `call`) before either answers.
    let first = svc.ready().await.unwrap().call(tenant(100));
    let second = svc.ready().await.unwrap().call(tenant(100));
    first.await.unwrap();
    second.await.unwrap();

    // The report fills the window while its entry counts...
    let mut next = task::spawn(svc.ready().await.unwrap().call(tenant(100)));
    assert_pending!(next.poll());
    advance(span - Duration::from_millis(1)).await;
    assert_pending!(next.poll());
    // ...and no longer once it has left: the partition recovers.
    advance(Duration::from_millis(1)).await;
    assert_ready!(next.poll()).unwrap();
    assert_eq!(log.lock()[2].0 - t0, span);

    // The check: five minutes on, requests fit at once.
    advance(Duration::from_secs(300)).await;
    for tokens in [0, 900] {
        let mut call = task::spawn(svc.ready().await.unwrap().call(tenant(tokens)));
        assert_ready!(call.poll()).unwrap();
    }
    assert_eq!(log.lock().len(), 5);
}

/// Limits and estimates at the top of the range are exact: a limit of
/// `u64::MAX` admits up to it and no further (a saturating sum took any
/// request as fitting there, and the running sum wrapped), an estimate of
/// `u64::MAX` fits only an empty window of that limit, and above a lower
/// limit it can never fit.
#[tokio::test(start_paused = true)]
async fn limits_and_estimates_near_u64_max_never_wrap() {
    let max = u64::MAX;
    let build = |tokens: u64| {
        RateLimitLayer::builder()
            .tokens_per_minute(tokens)
            .output_tokens_per_minute(tokens)
            .global_tokens_per_minute(tokens)
            .max_wait(Duration::ZERO)
            .build()
            .unwrap()
    };
    let layer = build(max);
    let span = layer.handle().limits().span(Budget::Tokens);
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    svc.ready()
        .await
        .unwrap()
        .call(req(max - 10))
        .await
        .unwrap();
    let over = svc.ready().await.unwrap().call(req(20)).await;
    assert!(matches!(err_of(over), Error::RateLimited { .. }));
    svc.ready().await.unwrap().call(req(10)).await.unwrap();
    let over = svc.ready().await.unwrap().call(req(1)).await;
    assert!(matches!(err_of(over), Error::RateLimited { .. }));
    assert_eq!(log.lock().len(), 2);

    // u64::MAX itself: into an empty window only.
    advance(span).await;
    svc.ready().await.unwrap().call(req(max)).await.unwrap();
    let over = svc.ready().await.unwrap().call(req(1)).await;
    assert!(matches!(err_of(over), Error::RateLimited { .. }));
    advance(span).await;
    svc.ready().await.unwrap().call(req(1)).await.unwrap();
    assert_eq!(log.lock().len(), 4);

    // Above a limit just under the top: never.
    let mut svc = build(max - 1).layer(upstream(ok).0);
    let never = svc.ready().await.unwrap().call(req(max)).await;
    assert_eq!(
        err_of(never),
        Error::RequestTooLarge {
            tokens: max,
            limit: max - 1
        }
    );
    svc.ready().await.unwrap().call(req(max - 1)).await.unwrap();
}

/// Usage near `u64::MAX` under a limit near `u64::MAX` counts as
/// [`MAX_USAGE_TOKENS`]: the window holds that much, the rest of the limit
/// stays usable, and nothing wraps.
#[tokio::test(start_paused = true)]
async fn usage_near_u64_max_counts_as_the_cap_under_any_limit() {
    use llm_sluice::rate::MAX_USAGE_TOKENS;
    let max = u64::MAX;
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(max)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let (inner, log) = upstream(|r: &RequestMeta| {
        let usage = (r.tokens == 10).then(|| Usage::new(u64::MAX - 1, 7));
        Ok(Resp(Classification::success(usage)))
    });
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(req(10)).await.unwrap();
    let room = max - MAX_USAGE_TOKENS;
    let over = svc.ready().await.unwrap().call(req(room + 1)).await;
    assert!(matches!(err_of(over), Error::RateLimited { .. }));
    svc.ready().await.unwrap().call(req(room)).await.unwrap();
    assert_eq!(log.lock().len(), 2);
}

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
