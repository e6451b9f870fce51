//! `LlmStack`: built from one configuration, in the recommended order, each
//! part optional; `StackConfig` from files; `ServiceBuilderExt`.

mod boundary;
mod config;
mod http;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use llm_sluice::fallback::FallbackLayer;
use llm_sluice::request::RequestMeta;
use llm_sluice::stack::{LlmStack, ServiceBuilderExt, StackConfig};
use llm_sluice::{CircuitState, Error, PartitionKey, TimeoutKind};
use tokio::time::{advance, Instant};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

/// A configuration with every part on and small numbers, retries off unless
/// a test turns them on.
fn small() -> StackConfig {
    let mut c = StackConfig::default();
    c.retry.enabled = false;
    c.concurrency.max_in_flight = 1;
    c.concurrency.max_queued = 10;
    c.concurrency.max_queue_wait = Duration::from_secs(30);
    c.breaker.consecutive_failures = Some(1);
    c.breaker.minimum_calls = 1;
    c.timeout.attempt = Some(Duration::from_secs(10));
    c
}

fn req() -> RequestMeta {
    RequestMeta::new()
        .tokens(10)
        .partition(PartitionKey::new("k"))
}

fn own(err: &BoxError) -> Option<&Error> {
    err.downcast_ref::<Error>()
}

#[test]
fn the_default_configuration_has_every_part_but_the_window() {
    let stack = LlmStack::from_config(&StackConfig::default()).unwrap();
    assert!(stack.rate_handle().is_none(), "no budget, no window");
    assert_eq!(
        stack.breaker_handle().map(|h| h.state()),
        Some(CircuitState::Closed)
    );
    let limit = stack.concurrency().expect("concurrency on");
    assert_eq!((limit.max_in_flight(), limit.max_queued()), (64, 1024));
    assert!(limit.is_shared(), "clones of the stack share one limiter");
    assert!(stack.retry().is_some());

    let mut config = StackConfig::default();
    config.rate.requests_per_minute = Some(60);
    assert!(LlmStack::from_config(&config)
        .unwrap()
        .rate_handle()
        .is_some());
    config.rate.enabled = false;
    assert!(LlmStack::from_config(&config)
        .unwrap()
        .rate_handle()
        .is_none());
}

#[test]
fn invalid_values_name_their_section_and_field() {
    type Edit = fn(&mut StackConfig);
    let cases: [(Edit, Option<&str>, &str); 12] = [
        (
            |c| c.rate.tokens_per_minute = Some(0),
            Some("rate"),
            "tokens_per_minute",
        ),
        (
            |c| {
                c.rate.requests_per_minute = Some(10);
                c.rate.window = Duration::ZERO;
            },
            Some("rate"),
            "window",
        ),
        (
            |c| c.concurrency.max_in_flight = 0,
            Some("concurrency"),
            "max_in_flight",
        ),
        (
            |c| c.breaker.failure_rate = Some(1.5),
            Some("breaker"),
            "failure_rate",
        ),
        (
            |c| {
                c.breaker.slow_call_threshold = Some(Duration::from_secs(5));
                c.breaker.slow_call_rate = 1.5;
            },
            Some("breaker"),
            "slow_call_rate",
        ),
        (
            |c| c.breaker.slow_call_threshold = Some(Duration::ZERO),
            Some("breaker"),
            "slow_call_threshold",
        ),
        (
            |c| c.breaker.open_duration_multiplier = Some(0.5),
            Some("breaker"),
            "open_duration_multiplier",
        ),
        (
            |c| {
                c.breaker.open_duration_multiplier = Some(2.0);
                c.breaker.max_open_duration = Duration::from_secs(1);
            },
            Some("breaker"),
            "max_open_duration",
        ),
        (
            |c| c.retry.budget_ratio = -1.0,
            Some("retry"),
            "budget_ratio",
        ),
        (
            |c| c.timeout.attempt = Some(Duration::ZERO),
            Some("timeout"),
            "attempt",
        ),
        (|c| c.deadline = Some(Duration::ZERO), None, "deadline"),
        (|c| c.deadline = Some(Duration::MAX), None, "deadline"),
    ];
    for (edit, section, field) in cases {
        let mut config = StackConfig::default();
        edit(&mut config);
        let err = LlmStack::from_config(&config).unwrap_err();
        assert_eq!((err.section(), err.field()), (section, field), "{err}");
        let shown = err.to_string();
        match section {
            Some(s) => assert!(shown.contains(&format!("`{s}.{field}`")), "{shown}"),
            None => assert!(shown.contains(&format!("`{field}`")), "{shown}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn disabled_parts_pass_requests_and_errors_through() {
    let mut config = StackConfig::default();
    config.retry.enabled = false;
    config.breaker.enabled = false;
    config.concurrency.enabled = false;
    config.timeout.enabled = false;
    let stack = LlmStack::from_config(&config).unwrap();
    assert!(stack.concurrency().is_none() && stack.breaker_handle().is_none());
    assert!(stack.retry().is_none() && stack.timeout().is_none());
    assert!(stack.rate_handle().is_none());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(stack)
        .service_fn(move |r: RequestMeta| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if r.tokens == 0 {
                    Err::<u64, BoxError>("inner failure".into())
                } else {
                    Ok(r.tokens)
                }
            }
        });
    assert_eq!(svc.clone().oneshot(req()).await.unwrap(), 10);
    // A transport-like failure, which an enabled retry part would retry,
    // reaches the inner service once.
    let err = svc.oneshot(RequestMeta::new()).await.unwrap_err();
    assert_eq!(err.to_string(), "inner failure");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_fails_at_once_even_when_the_queue_is_full() {
    let mut config = small();
    config.concurrency.max_queued = 0;
    let stack = LlmStack::from_config(&config).unwrap();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack.clone()).service(inner);

    // the only permit is held by a hanging call, and there is no queue
    let hanging = tokio::spawn(svc.clone().oneshot(req()));
    let (_, _hang) = upstream.next_request().await.unwrap();
    let err = svc.clone().oneshot(req()).await.unwrap_err();
    assert!(
        matches!(own(&err), Some(Error::Overloaded { .. })),
        "{err:?}"
    );

    // with the circuit open, the breaker answers before the queue: a breaker
    // inside the queue would still shed this as Overloaded
    stack.breaker_handle().unwrap().force_open();
    let err = svc.clone().oneshot(req()).await.unwrap_err();
    assert!(
        matches!(own(&err), Some(Error::CircuitOpen { .. })),
        "{err:?}"
    );
    assert_eq!(stack.concurrency().unwrap().stats().unwrap().in_flight, 1);
    hanging.abort();
}

#[tokio::test(start_paused = true)]
async fn retries_stop_when_the_circuit_opens() {
    let mut config = small();
    config.retry.enabled = true;
    config.retry.max_retries = 5;
    config.retry.budget = false;
    config.retry.seed = Some(7);
    config.breaker.consecutive_failures = Some(2);
    let stack = LlmStack::from_config(&config).unwrap();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack).service(inner);

    let call = tokio::spawn(svc.oneshot(req()));
    for _ in 0..2 {
        let (_, reply) = upstream.next_request().await.unwrap();
        reply.send_error(Box::new(Error::Timeout {
            kind: TimeoutKind::Attempt,
        }));
    }
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(own(&err), Some(Error::CircuitOpen { .. })),
        "{err:?}"
    );
    // the third attempt met the open breaker: nothing more reached upstream
    assert!(matches!(
        upstream.poll_request(),
        std::task::Poll::Pending | std::task::Poll::Ready(None)
    ));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_wait_in_the_queue() {
    let mut config = small();
    config.deadline = Some(Duration::from_secs(5));
    let stack = LlmStack::from_config(&config).unwrap();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack).service(inner);

    let hanging = tokio::spawn(svc.clone().oneshot(req()));
    let (_, _hang) = upstream.next_request().await.unwrap();
    let start = Instant::now();
    let err = svc.oneshot(req()).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "not the 30 s queue wait"
    );
    assert!(
        matches!(
            own(&err),
            Some(
                Error::DeadlineExceeded
                    | Error::Timeout {
                        kind: TimeoutKind::Total
                    }
            )
        ),
        "{err:?}"
    );
    hanging.abort();
}

#[tokio::test(start_paused = true)]
async fn the_fallback_serves_once_the_primary_gave_up() {
    let mut config = small();
    config.breaker.enabled = false;
    let secondary = tower::service_fn(|_: RequestMeta| async { Ok::<_, BoxError>("secondary") });
    let stack = LlmStack::builder(config)
        .fallback(FallbackLayer::new(secondary))
        .build()
        .unwrap();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new().layer(stack).service(inner);

    let call = tokio::spawn(svc.oneshot(req()));
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_error(Box::new(Error::Timeout {
        kind: TimeoutKind::Attempt,
    }));
    assert_eq!(call.await.unwrap().unwrap(), "secondary");
}

#[tokio::test(start_paused = true)]
async fn breaker_changes_reach_the_callback() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let stack = LlmStack::builder(small())
        .on_breaker_change(move |change| log.lock().unwrap().push((change.from, change.to)))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(stack)
        .service_fn(|_: RequestMeta| async { Err::<(), BoxError>("down".into()) });
    assert!(svc.oneshot(req()).await.is_err());
    assert_eq!(
        *seen.lock().unwrap(),
        [(CircuitState::Closed, CircuitState::Open)]
    );
}

#[tokio::test(start_paused = true)]
async fn service_builder_ext_adds_the_layers_in_the_order_written() {
    let stack = LlmStack::from_config(&small()).unwrap();
    let mut svc = ServiceBuilder::new()
        .llm_deadline(Duration::from_secs(1))
        .llm_stack(stack)
        .service_fn(|r: RequestMeta| async move {
            tokio::time::sleep(Duration::from_secs(r.tokens)).await;
            Ok::<_, BoxError>(r.tokens)
        });
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(RequestMeta::new())
            .await
            .unwrap(),
        0
    );
    // the outer one-second deadline wins over the stack's ten-second attempt timeout
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(RequestMeta::new().tokens(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            own(&err),
            Some(
                Error::Timeout {
                    kind: TimeoutKind::Total
                } | Error::DeadlineExceeded
            )
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn stats_given_to_the_stack_see_queue_waits_breakers_and_outcomes() {
    let stats = llm_sluice::stats::Stats::new();
    let stack = LlmStack::builder(small()).stats(&stats).build().unwrap();
    let (inner, mut upstream) = mock::pair::<RequestMeta, &'static str>();
    let svc = ServiceBuilder::new()
        .layer(stats.layer())
        .layer(stack.clone())
        .service(inner);

    let first = tokio::spawn(svc.clone().oneshot(req()));
    let (_, first_reply) = upstream.next_request().await.unwrap();
    let second = tokio::spawn(svc.clone().oneshot(req()));
    tokio::task::yield_now().await;
    advance(Duration::from_secs(2)).await;
    let now = stats.snapshot();
    assert_eq!((now.in_flight, now.queued), (Some(1), Some(1)));

    first_reply.send_response("one");
    assert_eq!(first.await.unwrap().unwrap(), "one");
    let (_, second_reply) = upstream.next_request().await.unwrap();
    second_reply.send_error("connection reset");
    assert!(second.await.unwrap().is_err());

    let end = stats.snapshot();
    assert_eq!(
        (end.total, end.outcomes.success, end.outcomes.transport),
        (2, 1, 1),
        "{end}"
    );
    assert_eq!(
        end.queue_wait.count, 2,
        "the immediate admission counts too"
    );
    assert!(
        end.queue_wait.max >= Duration::from_secs(2),
        "{:?}",
        end.queue_wait
    );
    assert_eq!(end.breakers.len(), 1);
    assert_eq!(
        end.breakers[0].state,
        CircuitState::Open,
        "one failure opens it here"
    );
    assert_eq!((end.in_flight, end.queued), (Some(0), Some(0)));
}
