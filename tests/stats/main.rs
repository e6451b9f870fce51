//! Tests of the stats snapshot: percentiles, outcome counts, queue waits and
//! live state.

#[cfg(feature = "http")]
mod http;
mod prop;

use std::time::Duration;

use llm_sluice::breaker::CircuitState;
use llm_sluice::classify::{Classification, ErrorRef, Outcome};
use llm_sluice::request::RequestMeta;
use llm_sluice::stats::{Stats, StatsLayer};
use llm_sluice::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, Error, PartitionKey, RateLimitLayer, TimeoutKind,
};
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

/// `actual` is `expected` within hdrhistogram's stated precision (three
/// significant digits: 0.1 %, never below).
#[track_caller]
fn assert_close(actual: Duration, expected: Duration) {
    let tolerance = expected / 1000 + Duration::from_micros(1);
    assert!(
        actual >= expected && actual <= expected + tolerance,
        "{actual:?} is not {expected:?} within 0.1 %"
    );
}

/// A service that answers after the number of milliseconds in the request.
fn sleeper() -> impl Service<u64, Response = String, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(format!("{ms}"))
    })
}

#[tokio::test(start_paused = true)]
async fn percentiles_of_known_latencies() {
    let stats = Stats::new();
    let mut svc = stats.layer().layer(sleeper());
    // 1 ms .. 100 ms, shuffled so the order does not matter.
    let mut latencies: Vec<u64> = (1..=100).collect();
    latencies.reverse();
    latencies.swap(3, 70);
    for ms in latencies {
        svc.ready().await.unwrap().call(ms).await.unwrap();
    }
    let snap = stats.snapshot();
    assert_eq!(snap.total, 100);
    assert_eq!(snap.outcomes.success, 100);
    let e2e = snap.end_to_end;
    assert_eq!(e2e.count, 100);
    assert_close(e2e.p50, Duration::from_millis(50));
    assert_close(e2e.p95, Duration::from_millis(95));
    assert_close(e2e.p99, Duration::from_millis(99));
    assert_close(e2e.max, Duration::from_millis(100));
    // nothing queued through a concurrency limiter here
    assert_eq!(snap.queue_wait.count, 0);
    assert_eq!(snap.in_flight, None);
}

#[tokio::test(start_paused = true)]
async fn long_latencies_are_clamped_to_an_hour() {
    let stats = Stats::new();
    let mut svc = stats.layer().layer(sleeper());
    svc.ready()
        .await
        .unwrap()
        .call(2 * 3_600_000)
        .await
        .unwrap();
    svc.ready().await.unwrap().call(10).await.unwrap();
    let snap = stats.snapshot();
    assert_eq!(snap.end_to_end.count, 2, "clamped, not dropped");
    assert_close(snap.end_to_end.max, Duration::from_secs(3600));
}

/// What the inner service answers for each code.
fn answer(code: u32) -> Result<String, BoxError> {
    let own = |e: Error| -> Result<String, BoxError> { Err(Box::new(e)) };
    match code {
        0 => Ok("ok".into()),
        1 => Err(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))),
        2 => own(Error::Overloaded { queued: 3 }),
        3 => own(Error::QueueTimeout {
            waited: Duration::from_secs(1),
        }),
        4 => own(Error::RateLimited { retry_after: None }),
        5 => own(Error::CircuitOpen {
            retry_after: Duration::from_secs(1),
        }),
        6 => own(Error::DeadlineExceeded),
        7 => own(Error::RequestTooLarge {
            tokens: 10,
            limit: 5,
        }),
        8 => own(Error::Timeout {
            kind: TimeoutKind::Attempt,
        }),
        9 => {
            // a crate error wrapped by someone else is still found
            #[derive(Debug, thiserror::Error)]
            #[error("wrapped")]
            struct Wrapped(#[source] Error);
            Err(Box::new(Wrapped(Error::CircuitOpen {
                retry_after: Duration::ZERO,
            })))
        }
        _ => Err("some other failure".into()),
    }
}

#[tokio::test(start_paused = true)]
async fn every_outcome_and_rejection_is_counted_once() {
    let stats = Stats::new();
    let inner = tower::service_fn(|code: u32| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        answer(code)
    });
    let mut svc = stats.layer().layer(inner);
    for code in 0..=10 {
        let _ = svc.ready().await.unwrap().call(code).await;
    }
    let snap = stats.snapshot();
    assert_eq!(snap.total, 11);
    let o = snap.outcomes;
    assert_eq!(o.success, 1);
    assert_eq!(o.transport, 2, "an io reset and an unknown error");
    assert_eq!(o.timeout, 1);
    assert_eq!(
        (o.rate_limited, o.server_error, o.client_error, o.cancelled),
        (0, 0, 0, 0)
    );
    let r = snap.rejected;
    assert_eq!(r.queue_full, 1);
    assert_eq!(r.queue_timeout, 1);
    assert_eq!(r.rate_limited, 1);
    assert_eq!(r.circuit_open, 2, "one of them wrapped");
    assert_eq!(r.deadline, 1);
    assert_eq!(r.too_large, 1);
    assert_eq!(r.other, 0);
    assert_eq!(r.total(), 7);
    assert_eq!(o.total() + r.total(), snap.total);
    assert_eq!(snap.end_to_end.count, 11, "errors keep their latency");
    assert_close(snap.end_to_end.max, Duration::from_millis(5));
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_counts_cancelled_once() {
    let stats = Stats::new();
    let (mut svc, mut handle) = mock::spawn_layer::<u32, String, _>(stats.layer());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(1));
    assert_pending!(fut.poll());
    let (_, _respond) = handle.next_request().await.unwrap();
    advance(Duration::from_secs(3)).await;
    assert_eq!(
        stats.snapshot().total,
        0,
        "running requests are not counted"
    );
    drop(fut);
    let snap = stats.snapshot();
    assert_eq!(snap.total, 1);
    assert_eq!(snap.outcomes.cancelled, 1);
    assert_eq!(snap.end_to_end.count, 0, "a cancelled call has no latency");

    // dropped before its first poll: still exactly one count
    assert_ready_ok!(svc.poll_ready());
    drop(svc.call(2));
    assert_eq!(stats.snapshot().outcomes.cancelled, 2);
    assert_eq!(stats.snapshot().total, 2);
}

#[tokio::test(start_paused = true)]
async fn custom_classifier_decides_outcomes() {
    let stats = Stats::new();
    // calls "slow" answers server errors and everything else a rejection
    let classifier = |result: Result<&String, ErrorRef<'_>>| match result {
        Ok(s) if s.as_str() == "slow" => Classification::new(Outcome::ServerError),
        _ => Classification::new(Outcome::Rejected),
    };
    let inner = tower::service_fn(|s: &'static str| async move {
        match s {
            "fail" => Err::<String, BoxError>("nope".into()),
            "open" => Err(Box::new(Error::CircuitOpen {
                retry_after: Duration::ZERO,
            }) as BoxError),
            other => Ok(other.to_owned()),
        }
    });
    let layer: StatsLayer<_> = StatsLayer::new(stats.clone()).classifier(classifier);
    let mut svc = layer.layer(inner);
    for s in ["slow", "fine", "fail", "open"] {
        let _ = svc.ready().await.unwrap().call(s).await;
    }
    let snap = stats.snapshot();
    assert_eq!(snap.outcomes.server_error, 1);
    assert_eq!(snap.rejected.other, 2, "rejections with no crate error");
    assert_eq!(
        snap.rejected.circuit_open, 1,
        "the crate's own errors count by reason whatever the classifier says"
    );
    assert_eq!(snap.total, 4);
}

fn queue_layer(stats: &Stats, wait: Duration) -> ConcurrencyLimitLayer {
    ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_queued(4)
        .max_queue_wait(wait)
        .stats(stats)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn queue_wait_recorded_for_queued_and_immediate_requests() {
    let stats = Stats::new();
    let stack = ServiceBuilder::new()
        .layer(stats.layer())
        .layer(queue_layer(&stats, Duration::from_secs(10)))
        .into_inner();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, String, _>(stack);

    assert_ready_ok!(svc.poll_ready());
    let mut first = task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(first.poll());
    let (_, respond_first) = handle.next_request().await.unwrap();

    assert_ready_ok!(svc.poll_ready());
    let mut second = task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(second.poll());

    let live = stats.snapshot();
    assert_eq!((live.in_flight, live.queued), (Some(1), Some(1)));
    assert_eq!(live.queue_wait.count, 1, "the immediate admission");
    assert_eq!(live.queue_wait.max, Duration::ZERO);

    advance(Duration::from_secs(3)).await;
    respond_first.send_response("a".into());
    assert_eq!(assert_ready_ok!(first.poll()), "a");
    assert!(second.is_woken());
    assert_pending!(second.poll());
    let (_, respond_second) = handle.next_request().await.unwrap();
    let live = stats.snapshot();
    assert_eq!((live.in_flight, live.queued), (Some(1), Some(0)));
    advance(Duration::from_secs(1)).await;
    respond_second.send_response("b".into());
    assert_eq!(assert_ready_ok!(second.poll()), "b");

    let snap = stats.snapshot();
    assert_eq!((snap.in_flight, snap.queued), (Some(0), Some(0)));
    assert_eq!(snap.outcomes.success, 2);
    assert_eq!(snap.queue_wait.count, 2);
    assert_eq!(snap.queue_wait.p50, Duration::ZERO);
    assert_close(snap.queue_wait.max, Duration::from_secs(3));
    assert_close(snap.end_to_end.max, Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_and_queue_full_are_rejections_with_their_wait() {
    let stats = Stats::new();
    let stack = ServiceBuilder::new()
        .layer(stats.layer())
        .layer(
            ConcurrencyLimitLayer::builder()
                .max_in_flight(1)
                .max_queued(1)
                .max_queue_wait(Duration::from_secs(2))
                .stats(&stats)
                .build()
                .unwrap(),
        )
        .into_inner();
    let (mut svc, mut handle) = mock::spawn_layer::<RequestMeta, String, _>(stack);
    assert_ready_ok!(svc.poll_ready());
    let mut running = task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(running.poll());
    let _held = handle.next_request().await.unwrap();
    assert_ready_ok!(svc.poll_ready());
    let mut waiting = task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(waiting.poll());
    assert_ready_ok!(svc.poll_ready());
    let mut shed = task::spawn(svc.call(RequestMeta::new()));
    assert_ready_err!(shed.poll());

    advance(Duration::from_secs(2)).await;
    assert_ready_err!(waiting.poll());
    let snap = stats.snapshot();
    assert_eq!(snap.rejected.queue_full, 1);
    assert_eq!(snap.rejected.queue_timeout, 1);
    assert_eq!(snap.total, 2, "the running request has not ended");
    assert_eq!(snap.queue_wait.count, 2, "immediate + timed out");
    assert_close(snap.queue_wait.max, Duration::from_secs(2));
    drop(running);
    assert_eq!(stats.snapshot().outcomes.cancelled, 1);
    assert_eq!(stats.snapshot().in_flight, Some(0));
}

#[tokio::test(start_paused = true)]
async fn concurrency_state_is_attached_once_and_dropped_with_its_services() {
    let stats = Stats::new();
    let plain = queue_layer(&Stats::new(), Duration::from_secs(1));
    assert!(
        !stats.attach_concurrency(&plain),
        "a per-service layer has no limiter to attach"
    );
    let shared = ConcurrencyLimitLayer::builder()
        .max_in_flight(2)
        .stats(&stats)
        .build_shared()
        .unwrap();
    assert!(stats.attach_concurrency(&shared), "already attached: no-op");
    let (mock, mut handle) = mock::pair::<RequestMeta, String>();
    let mut svc = shared.layer(mock);
    let mut call = task::spawn(svc.ready().await.unwrap().call(RequestMeta::new()));
    assert_pending!(call.poll());
    let _respond = handle.next_request().await.unwrap();
    assert_eq!(
        stats.snapshot().in_flight,
        Some(1),
        "counted once although attached twice"
    );
    drop(call);
    assert_eq!(stats.snapshot().in_flight, Some(0));

    // a per-service layer built with `.stats` attaches each limiter it makes,
    // and a limiter drops out when its services are gone
    let stats = Stats::new();
    let layer = queue_layer(&stats, Duration::from_secs(1));
    let a = layer.layer(mock::pair::<RequestMeta, String>().0);
    let b = layer.layer(mock::pair::<RequestMeta, String>().0);
    assert_eq!(stats.snapshot().in_flight, Some(0));
    drop((a, b));
    assert_eq!(stats.snapshot().in_flight, None);
}

#[tokio::test(start_paused = true)]
async fn breaker_state_is_reflected_live() {
    let stats = Stats::new();
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    stats.attach_breaker(breaker.handle());
    let snap = stats.snapshot();
    assert_eq!(snap.breakers.len(), 1);
    assert_eq!(snap.breakers[0].state, CircuitState::Closed);
    assert_eq!((snap.breakers[0].closed, snap.breakers[0].open), (1, 0));

    let mut svc = ServiceBuilder::new()
        .layer(stats.layer())
        .layer(breaker.clone())
        .service(tower::service_fn(|_: RequestMeta| async {
            Ok::<_, BoxError>("ok".to_owned())
        }));
    breaker.handle().force_open();
    let snap = stats.snapshot();
    assert_eq!(snap.breakers[0].state, CircuitState::ForcedOpen);
    assert_eq!((snap.breakers[0].closed, snap.breakers[0].open), (0, 1));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(RequestMeta::new())
        .await
        .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::CircuitOpen { .. })
    ));
    assert_eq!(stats.snapshot().rejected.circuit_open, 1);
    breaker.handle().reset();
    assert_eq!(stats.snapshot().breakers[0].state, CircuitState::Closed);

    // per partition: counts by state
    let keyed = CircuitBreakerLayer::builder()
        .per_partition(16)
        .build()
        .unwrap();
    stats.attach_breaker(keyed.handle());
    let handle = keyed.handle();
    handle.force_open_partition(&PartitionKey::from("a"));
    handle.force_closed_partition(&PartitionKey::from("b"));
    let snap = stats.snapshot();
    assert_eq!(snap.breakers.len(), 2);
    let b = snap.breakers[1];
    assert_eq!(b.partitions, 2);
    assert_eq!(b.state, CircuitState::Closed, "the unkeyed breaker");
    assert_eq!(b.open, 1);
    assert_eq!(b.half_open, 0);
    assert_eq!(b.closed, 3, "unkeyed, overflow and b");
}

#[tokio::test(start_paused = true)]
async fn rate_waiters_are_reflected_live() {
    let stats = Stats::new();
    let rate = RateLimitLayer::builder()
        .requests_per_minute(1)
        .max_wait(Duration::from_secs(120))
        .build()
        .unwrap();
    stats.attach_rate(rate.handle());
    assert_eq!(stats.snapshot().rate_waiting, Some(0));
    let mut svc = ServiceBuilder::new()
        .layer(stats.layer())
        .layer(rate)
        .service(tower::service_fn(|_: RequestMeta| async {
            Ok::<_, BoxError>("ok".to_owned())
        }));
    svc.ready()
        .await
        .unwrap()
        .call(RequestMeta::new())
        .await
        .unwrap();
    let mut waiting = task::spawn(svc.ready().await.unwrap().call(RequestMeta::new()));
    assert_pending!(waiting.poll());
    assert_eq!(stats.snapshot().rate_waiting, Some(1));
    // One window and its default guard band.
    let span = Duration::from_millis(60_250);
    advance(span).await;
    assert_ready_ok!(waiting.poll());
    let snap = stats.snapshot();
    assert_eq!(snap.rate_waiting, Some(0));
    assert_eq!(snap.outcomes.success, 2);
    assert_close(snap.end_to_end.max, span);
}

#[tokio::test(start_paused = true)]
async fn reset_forgets_counts_but_keeps_attachments() {
    let stats = Stats::new();
    let _limit = queue_layer(&stats, Duration::from_secs(1)).layer(sleeper_meta());
    let mut svc = stats.layer().layer(sleeper());
    svc.ready().await.unwrap().call(7).await.unwrap();
    assert_eq!(stats.snapshot().total, 1);
    let clone = stats.clone();
    clone.reset();
    let snap = stats.snapshot();
    assert_eq!(snap.total, 0);
    assert_eq!(snap.end_to_end.count, 0);
    assert_eq!(snap.in_flight, Some(0), "still attached");
}

fn sleeper_meta() -> impl Service<RequestMeta, Response = String, Error = BoxError> + Clone {
    tower::service_fn(|_: RequestMeta| async { Ok::<_, BoxError>(String::new()) })
}

#[tokio::test(start_paused = true)]
async fn display_prints_a_table() {
    let stats = Stats::new();
    // attached weakly: the breaker shows while its layer lives
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    stats.attach_breaker(breaker.handle());
    let mut svc = stats.layer().layer(sleeper());
    for ms in [1, 20, 300, 4000] {
        svc.ready().await.unwrap().call(ms).await.unwrap();
    }
    let text = stats.snapshot().to_string();
    println!("{text}");
    assert!(text.starts_with("requests                   4\n"), "{text}");
    assert!(
        text.contains("  success                  4 100.0%"),
        "{text}"
    );
    assert!(
        text.contains("  rejected                 0   0.0%"),
        "{text}"
    );
    assert!(
        text.contains("in flight -, queued -, rate waiting -"),
        "{text}"
    );
    assert!(text.contains("breaker 0: closed"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("end_to_end"))
        .unwrap_or_else(|| panic!("no end_to_end row: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        ["end_to_end", "4", "20.0ms", "4.00s", "4.00s", "4.00s"]
    );
    assert!(text.contains("queue_wait           0       0µs"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_from_many_threads_add_up() {
    let stats = Stats::new();
    let svc = stats.layer().layer(tower::service_fn(|n: u32| async move {
        tokio::task::yield_now().await;
        if n.is_multiple_of(4) {
            Err::<String, BoxError>(Box::new(Error::Overloaded { queued: 0 }))
        } else {
            Ok(String::new())
        }
    }));
    let tasks: Vec<_> = (0..400u32)
        .map(|n| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let _ = svc.ready().await.unwrap().call(n).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let snap = stats.snapshot();
    assert_eq!(snap.total, 400);
    assert_eq!(snap.outcomes.success, 300);
    assert_eq!(snap.rejected.queue_full, 100);
    assert_eq!(snap.end_to_end.count, 400);
}

#[test]
fn attached_parts_count_once_and_drop_out_with_their_layers() {
    let stats = Stats::new();
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    let rate = RateLimitLayer::builder()
        .requests_per_minute(10)
        .build()
        .unwrap();
    for _ in 0..2 {
        stats.attach_breaker(breaker.handle());
        stats.attach_rate(rate.handle());
    }
    let both = stats.snapshot();
    assert_eq!(both.breakers.len(), 1, "attached twice, shown once");
    assert_eq!(both.rate_waiting, Some(0));

    // a stack rebuilt against the same Stats replaces its parts: the old
    // ones are not kept alive nor counted
    drop((breaker, rate));
    let gone = stats.snapshot();
    assert!(gone.breakers.is_empty(), "{:?}", gone.breakers);
    assert_eq!(gone.rate_waiting, None);
}
