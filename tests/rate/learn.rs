//! Issue 15, items 1 and 5 at the layer: each token budget's charging rule,
//! the charging mismatch metric, and limits learned from the wire in the
//! handle and the gauge.

use llm_sluice::rate::{Charging, LearnLimits};
use llm_sluice::PartitionKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use super::*;

/// A success reporting `usage`.
fn used(usage: Usage) -> Result<Resp, BoxError> {
    Ok(Resp(Classification::success(Some(usage))))
}

/// The series of a snapshot, as `name{k=v,...}` with the labels in the
/// order they were given.
fn series(snapshotter: &Snapshotter) -> HashMap<String, f64> {
    let mut seen = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let value = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        seen.insert(format!("{}{{{}}}", key.name(), labels.join(",")), value);
    }
    seen
}

/// `Admission`: usage neither refunds nor charges extra in that budget.
/// `Reconcile` (the default) corrects it. Each budget follows its own rule:
/// here the input budget is corrected while the total is not.
#[tokio::test(start_paused = true)]
async fn an_admission_charged_budget_is_never_corrected_by_usage() {
    for (charging, admitted_at_once) in [(Charging::Admission, false), (Charging::Reconcile, true)]
    {
        let layer = RateLimitLayer::builder()
            .tokens_per_minute(1_000)
            .input_tokens_per_minute(1_000)
            .charging(Budget::Tokens, charging)
            .build()
            .unwrap();
        assert_eq!(layer.handle().charging(Budget::Tokens), Some(charging));
        assert_eq!(
            layer.handle().charging(Budget::InputTokens),
            Some(Charging::Reconcile)
        );
        assert_eq!(layer.handle().charging(Budget::Requests), None);
        // 600 estimated, 100 used (50 in, 50 out).
        let (inner, _) = upstream(|r: &RequestMeta| match r.tokens {
            600 => used(Usage::new(50, 50)),
            _ => ok(r),
        });
        let mut svc = layer.layer(inner);
        svc.ready().await.unwrap().call(req(600)).await.unwrap();
        // 500 more: fits the input budget (corrected to 50) in both; the
        // total only where it was corrected.
        let mut next = task::spawn(svc.ready().await.unwrap().call(req(500)));
        if admitted_at_once {
            assert_ready!(next.poll()).unwrap();
        } else {
            assert_pending!(next.poll(), "{charging:?}: the estimate stands");
            advance(SPAN).await;
            assert_ready!(next.poll()).unwrap();
        }
    }
}

#[test]
fn only_token_budgets_have_a_charging_rule() {
    let err = RateLimitLayer::builder()
        .requests_per_minute(10)
        .charging(Budget::Requests, Charging::Admission)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "charging");
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(10)
        .token_charging(Charging::Actual)
        .build()
        .unwrap();
    let handle = layer.handle();
    for budget in [Budget::Tokens, Budget::InputTokens, Budget::OutputTokens] {
        assert_eq!(handle.charging(budget), Some(Charging::Actual));
    }
    assert_eq!(handle.learn_limits(), LearnLimits::TightenOnly);
}

/// A window charging at admission in front of a provider that counts
/// actual usage: the provider's remaining count says it counted well below
/// what the window held, and the metric says so. A report that agrees says
/// nothing.
#[test]
fn a_provider_counting_below_an_admission_window_is_a_charging_mismatch() {
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
                .tokens_per_minute(10_000)
                .charging(Budget::Tokens, Charging::Admission)
                .build()
                .unwrap();
            // The provider counts `r.tokens / 10` for each call so far.
            let counted = Arc::new(Mutex::new(0u64));
            let (inner, _) = upstream(move |r: &RequestMeta| {
                let mut counted = counted.lock();
                *counted += r.tokens / 10;
                let mut class = Classification::success(Some(Usage::new(r.tokens / 10, 0)));
                class.rate_limits = Some(RateLimitState {
                    tokens: LimitState {
                        limit: Some(10_000),
                        remaining: Some(10_000 - *counted),
                        reset: None,
                    },
                    ..RateLimitState::default()
                });
                Ok(Resp(class))
            });
            let mut svc = layer.layer(inner);
            // 900 held, 90 counted: within a tenth of the limit.
            svc.ready().await.unwrap().call(req(900)).await.unwrap();
            let quiet = series(&snapshotter);
            assert_eq!(
                quiet.get("llm_sluice_rate_charging_mismatch_total{layer=rate,budget=tokens}"),
                Some(&0.0),
                "{quiet:?}"
            );
            // 3,900 held, 390 counted: 3,510 apart.
            svc.ready().await.unwrap().call(req(3_000)).await.unwrap();
        })
    });
    let seen = series(&snapshotter);
    assert_eq!(
        seen.get("llm_sluice_rate_charging_mismatch_total{layer=rate,budget=tokens}"),
        Some(&1.0),
        "{seen:?}"
    );
    // Nothing was refunded: the window charges at admission.
    assert_eq!(
        seen.get("llm_sluice_rate_tokens_refunded_total{layer=rate}"),
        Some(&0.0),
        "{seen:?}"
    );
}

/// What a partition learned shows in the handle, in the stats and in the
/// gauge, with the partition's label when the layer has them.
#[test]
fn learned_limits_show_in_the_handle_and_the_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let key = PartitionKey::new("sk-a");
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let layer = RateLimitLayer::builder()
                .requests_per_minute(120)
                .partition_label(4)
                .build()
                .unwrap();
            let handle = layer.handle();
            let (inner, log) = upstream(|r: &RequestMeta| {
                let mut class = Classification::success(None);
                if r.partition.is_some() {
                    class.rate_limits = Some(RateLimitState {
                        requests: LimitState {
                            limit: Some(60),
                            remaining: Some(59),
                            reset: None,
                        },
                        tokens: LimitState {
                            limit: Some(90_000),
                            remaining: Some(89_000),
                            reset: None,
                        },
                        ..RateLimitState::default()
                    });
                }
                Ok(Resp(class))
            });
            let mut svc = layer.layer(inner);
            assert_eq!(handle.learned(Some(&key)), None, "no window yet");
            svc.ready().await.unwrap().call(req(1)).await.unwrap();
            assert_eq!(handle.learned(None), None, "nothing reported unkeyed");
            svc.ready()
                .await
                .unwrap()
                .call(req(1).partition(key.clone()))
                .await
                .unwrap();
            let learned = handle.learned(Some(&key)).unwrap();
            assert_eq!(learned.reported(Budget::Requests), Some(60));
            assert_eq!(learned.limit(Budget::Requests), Some(60));
            // No token limit configured: the reported one is adopted.
            assert_eq!(learned.limit(Budget::Tokens), Some(90_000));
            assert_eq!(learned.refused(Budget::Requests), None);
            assert_eq!(handle.stats().learned, 1);
            assert_eq!(handle.limit(Budget::Requests), Some(120));
            // The partition holds 60 a window now, not 120.
            for _ in 0..59 {
                svc.ready()
                    .await
                    .unwrap()
                    .call(req(1).partition(key.clone()))
                    .await
                    .unwrap();
            }
            let mut next = task::spawn(
                svc.ready()
                    .await
                    .unwrap()
                    .call(req(1).partition(key.clone())),
            );
            assert_pending!(next.poll());
            assert_eq!(log.lock().len(), 61);
        })
    });
    let seen = series(&snapshotter);
    let part = format!("{:08x}", key.fingerprint());
    let gauge = |budget: &str| {
        format!("llm_sluice_rate_learned_limit{{layer=rate,budget={budget},partition={part}}}")
    };
    assert_eq!(seen.get(&gauge("requests")), Some(&60.0), "{seen:?}");
    assert_eq!(seen.get(&gauge("tokens")), Some(&90_000.0), "{seen:?}");
    assert_eq!(
        seen.get(&gauge("input_tokens")),
        Some(&0.0),
        "no limit there"
    );
}

/// A `429` the window did not expect (no headers) caps the partition at
/// what the window held before the refused request; the cap holds while
/// `429`s come, then lapses ten windows after the last, and the partition
/// takes its configured limit again. Other partitions never learned it.
#[tokio::test(start_paused = true)]
async fn a_limit_taught_by_a_429_lapses_ten_windows_after_the_last() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let refusing = refuse.clone();
    let (inner, log) = upstream(move |r: &RequestMeta| {
        // The provider allows 6 a window.
        if r.tokens == 7 && refusing.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(too_many(Duration::ZERO))
        } else {
            ok(r)
        }
    });
    let mut svc = layer.layer(inner);
    let key = PartitionKey::new("tenant");
    let send = |tokens| req(tokens).partition(key.clone());
    for _ in 0..6 {
        svc.ready().await.unwrap().call(send(1)).await.unwrap();
    }
    svc.ready().await.unwrap().call(send(7)).await.unwrap();
    let learned = handle.learned(Some(&key)).unwrap();
    assert_eq!(learned.refused(Budget::Requests), Some(6));
    assert_eq!(learned.limit(Budget::Requests), Some(6));
    assert_eq!(handle.learned(None), None);
    // The next window holds 6.
    advance(SPAN).await;
    for _ in 0..6 {
        svc.ready().await.unwrap().call(send(1)).await.unwrap();
    }
    let mut seventh = task::spawn(svc.ready().await.unwrap().call(send(1)));
    assert_pending!(seventh.poll());
    advance(SPAN).await;
    assert_ready!(seventh.poll()).unwrap();
    // Ten windows (and guard bands) after the 429 the cap is gone.
    refuse.store(false, std::sync::atomic::Ordering::Relaxed);
    advance(SPAN * 7).await;
    assert!(handle.learned(Some(&key)).is_some());
    advance(SPAN).await;
    assert_eq!(handle.learned(Some(&key)), None);
    assert_eq!(handle.stats().learned, 0);
    let before = log.lock().len();
    for _ in 0..10 {
        svc.ready().await.unwrap().call(send(1)).await.unwrap();
    }
    assert_eq!(log.lock().len(), before + 10, "10 a window again");
}
