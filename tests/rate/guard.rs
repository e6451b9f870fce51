//! The guard band at the window edge (issue 14, item 8): each reservation
//! counts for the window plus the guard band.

use llm_sluice::rate::DEFAULT_GUARD_BAND;
use llm_sluice::stack::{LlmStack, StackConfig};

use super::*;

#[test]
fn guard_band_defaults_to_250ms_and_at_most_a_hundredth_of_the_window() {
    let limits = |builder: llm_sluice::rate::Builder| builder.build().unwrap().handle().limits();
    let l = limits(
        RateLimitLayer::builder()
            .requests_per_minute(60)
            .request_burst(5),
    );
    assert_eq!(DEFAULT_GUARD_BAND, Duration::from_millis(250));
    assert_eq!(l.guard_band(), DEFAULT_GUARD_BAND);
    assert_eq!(l.window(), MINUTE);
    assert_eq!(l.span(Budget::Requests), MINUTE + DEFAULT_GUARD_BAND);
    // Not a burst's: the pacing interval stays `window * burst / limit`.
    assert_eq!(l.span(Budget::RequestBurst), Duration::from_secs(5));

    let short = RateLimitLayer::builder()
        .tokens_per_minute(10)
        .window(Duration::from_secs(10));
    assert_eq!(limits(short).guard_band(), Duration::from_millis(100));
    let tiny = RateLimitLayer::builder()
        .tokens_per_minute(10)
        .window(Duration::from_millis(1));
    assert_eq!(limits(tiny).guard_band(), Duration::from_micros(10));

    let set = |guard| {
        RateLimitLayer::builder()
            .requests_per_minute(60)
            .guard_band(guard)
            .build()
    };
    assert_eq!(
        set(Duration::ZERO)
            .unwrap()
            .handle()
            .limits()
            .span(Budget::Requests),
        MINUTE
    );
    let almost = MINUTE - Duration::from_nanos(1);
    assert_eq!(set(almost).unwrap().handle().limits().guard_band(), almost);
    for too_long in [MINUTE, MINUTE * 2] {
        assert_eq!(set(too_long).unwrap_err().field(), "guard_band");
    }
}

/// An entry leaves at admission + window + guard band, in the partition's
/// budgets and the global ones, and a global budget set at runtime gets the
/// same guard band.
#[tokio::test(start_paused = true)]
async fn an_entry_counts_for_the_window_plus_the_guard_band() {
    let guard = Duration::from_millis(300);
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .global_tokens_per_minute(100)
        .guard_band(guard)
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    svc.ready()
        .await
        .unwrap()
        .call(req(0).partition("a"))
        .await
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call(req(100).partition("b"))
        .await
        .unwrap();
    let mut a = task::spawn(svc.ready().await.unwrap().call(req(0).partition("a")));
    let mut c = task::spawn(svc.ready().await.unwrap().call(req(1).partition("c")));
    assert_pending!(a.poll());
    assert_pending!(c.poll());
    advance(MINUTE).await;
    assert_pending!(a.poll(), "at the window's end the entry still counts");
    assert_pending!(c.poll(), "in the global budget too");
    advance(guard - Duration::from_millis(1)).await;
    assert_pending!(a.poll());
    assert_pending!(c.poll());
    advance(Duration::from_millis(1)).await;
    assert_ready!(a.poll()).unwrap();
    assert_ready!(c.poll()).unwrap();
    assert!(log.lock()[2..]
        .iter()
        .all(|(t, _)| *t - t0 == MINUTE + guard));
}

/// A global budget first set at runtime counts with the layer's guard band
/// too.
#[tokio::test(start_paused = true)]
async fn a_global_budget_set_at_runtime_keeps_the_guard_band() {
    let guard = Duration::from_millis(300);
    let layer = RateLimitLayer::builder()
        .requests_per_minute(100)
        .guard_band(guard)
        .build()
        .unwrap();
    layer
        .handle()
        .set_global_limit(Budget::Requests, Some(1))
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    svc.ready()
        .await
        .unwrap()
        .call(req(0).partition("a"))
        .await
        .unwrap();
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(0).partition("b")));
    advance(MINUTE + guard - Duration::from_millis(1)).await;
    assert_pending!(b.poll());
    advance(Duration::from_millis(1)).await;
    assert_ready!(b.poll()).unwrap();
    assert_eq!(log.lock()[1].0 - t0, MINUTE + guard);
}

#[test]
fn rate_config_sets_the_guard_band_and_names_it_when_invalid() {
    let stack_guard = |guard: Option<Duration>| {
        let mut config = StackConfig::default();
        config.rate.requests_per_minute = Some(60);
        config.rate.guard_band = guard;
        LlmStack::from_config(&config)
            .map(|stack| stack.rate_handle().unwrap().limits().guard_band())
    };
    assert_eq!(stack_guard(None).unwrap(), DEFAULT_GUARD_BAND);
    assert_eq!(stack_guard(Some(Duration::ZERO)).unwrap(), Duration::ZERO);
    let ms = Duration::from_millis(100);
    assert_eq!(stack_guard(Some(ms)).unwrap(), ms);
    let err = stack_guard(Some(MINUTE)).unwrap_err();
    assert_eq!((err.section(), err.field()), (Some("rate"), "guard_band"));
}

#[cfg(feature = "serde")]
#[test]
fn rate_config_reads_and_writes_the_guard_band() {
    let config: StackConfig = toml::from_str("[rate]\nguard_band = \"0s\"\n").unwrap();
    assert_eq!(config.rate.guard_band, Some(Duration::ZERO));
    // "off" turns it off; only a missing field means the default
    let config: StackConfig = toml::from_str("[rate]\nguard_band = \"off\"\n").unwrap();
    assert_eq!(config.rate.guard_band, Some(Duration::ZERO));
    let config: StackConfig = toml::from_str("[rate]\nguard_band = \"400ms\"\n").unwrap();
    assert_eq!(config.rate.guard_band, Some(Duration::from_millis(400)));
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("guard_band = \"400ms\""), "{text}");
    assert_eq!(toml::from_str::<StackConfig>(&text).unwrap(), config);
    // Left out: the default, and not written back.
    let default = StackConfig::default();
    assert_eq!(default.rate.guard_band, None);
    let text = toml::to_string(&default).unwrap();
    assert!(!text.contains("guard_band"), "{text}");
}
