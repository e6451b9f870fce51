//! Defects found in review of the composed layers, one test each, so they
//! stay fixed.
use std::time::Duration;

use llm_sluice::breaker::{CircuitBreakerLayer, CircuitState};
use llm_sluice::concurrency::ConcurrencyLimitLayer;
use llm_sluice::rate::RateLimitLayer;
use llm_sluice::request::{Annotated, RequestMeta};
use llm_sluice::timeout::TimeoutLayer;
use llm_sluice::Error;
use tokio::time::{advance, Instant};
use tokio_test::{assert_pending, task};
use tower::{BoxError, Layer, Service, ServiceExt};

fn err_of<T: std::fmt::Debug>(result: Result<T, BoxError>) -> Error {
    let err = result.unwrap_err();
    err.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a llm_sluice::Error: {err}"))
        .clone()
}

/// "No limit" written as `Duration::MAX` used to pass the builders and panic
/// at the first request that added it to the clock.
#[test]
fn durations_too_long_for_the_clock_are_refused_at_build() {
    let err = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_queued(10)
        .max_queue_wait(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_queue_wait");
    let err = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .half_open_max_wait(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "half_open_max_wait");
    let err = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration_backoff(2.0, Duration::from_secs(60))
        .backoff_reset_after(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "backoff_reset_after");
    // 31 days is still fine.
    assert!(ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_queued(1)
        .max_queue_wait(Duration::from_secs(31 * 24 * 3600))
        .build()
        .is_ok());
}

fn http_upstream(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
) -> impl Service<RequestMeta, Response = http::Response<String>, Error = BoxError, Future: Send> + Clone
{
    tower::service_fn(move |_r: RequestMeta| async move {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        Ok::<_, BoxError>(b.body(String::new()).unwrap())
    })
}

/// A server delay too large for the clock (a server bug or a hostile proxy)
/// used to panic the rate limiter; it is capped instead.
#[tokio::test(start_paused = true)]
async fn huge_server_delays_do_not_panic_the_rate_limiter() {
    for (status, headers) in [
        (
            429,
            &[("retry-after", "18446744073709551615")] as &'static [_],
        ),
        (
            200,
            &[
                ("x-ratelimit-remaining-requests", "5"),
                ("x-ratelimit-reset-requests", "18446744073709551615s"),
            ],
        ),
    ] {
        let layer = RateLimitLayer::builder()
            .requests_per_minute(10)
            .build()
            .unwrap();
        let mut svc = layer.layer(http_upstream(status, headers));
        let fut = svc.ready().await.unwrap().call(RequestMeta::new());
        let response = tokio::spawn(fut)
            .await
            .expect("the response future panicked");
        assert_eq!(response.unwrap().status().as_u16(), status);
    }
}

/// A waiter with a short deadline queued behind a head that waits long used
/// to outlive its deadline: the head's timer did not cover it.
#[tokio::test(start_paused = true)]
async fn rate_waiter_fails_at_its_deadline_behind_a_long_head() {
    // The newcomer fits the window alone (a refusal known in advance would
    // fail it at once otherwise), but head of line is strict.
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(100)
        .max_wait(Duration::from_secs(120))
        .build()
        .unwrap();
    let inner = tower::service_fn(|_r: RequestMeta| async { Ok::<_, BoxError>(()) });
    let mut svc = layer.layer(inner);
    svc.ready()
        .await
        .unwrap()
        .call(RequestMeta::new().tokens(60))
        .await
        .unwrap();
    advance(Duration::from_secs(1)).await;
    // The head: fits at 60 s.
    let mut head = task::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(RequestMeta::new().tokens(50)),
    );
    assert_pending!(head.poll());
    advance(Duration::from_secs(1)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut short = task::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(RequestMeta::new().tokens(10).deadline(deadline)),
    );
    assert_pending!(short.poll());
    advance(Duration::from_secs(3)).await;
    // The head re-armed for the newcomer's deadline and failed it on time.
    if head.is_woken() {
        assert_pending!(head.poll());
    }
    assert!(short.is_woken(), "not woken at its deadline");
    assert_eq!(
        err_of(tokio_test::assert_ready!(short.poll())),
        Error::DeadlineExceeded
    );
}

/// The concurrency limiter's one timer used to be re-armed only by the waiter
/// with the next expiry; a waiter never polled has no waker, so the others
/// outlived their queue wait.
#[tokio::test(start_paused = true)]
async fn concurrency_waiters_time_out_when_the_next_to_expire_was_never_polled() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_queued(10)
        .max_queue_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_r: RequestMeta| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, BoxError>(())
    }));
    let mut running = task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(running.poll()); // holds the permit for an hour
    let mut a = task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(a.poll()); // expires at 10 s
    advance(Duration::from_secs(1)).await;
    let _never_polled = svc.call(RequestMeta::new()); // expires at 11 s
    advance(Duration::from_secs(1)).await;
    let mut c = task::spawn(svc.call(RequestMeta::new()));
    assert_pending!(c.poll()); // expires at 12 s
    advance(Duration::from_secs(8)).await;
    assert!(a.is_woken());
    assert!(matches!(
        err_of(tokio_test::assert_ready!(a.poll())),
        Error::QueueTimeout { .. }
    ));
    advance(Duration::from_secs(2)).await; // t = 12 s
    assert!(c.is_woken(), "not woken at the end of its queue wait");
    assert!(matches!(
        err_of(tokio_test::assert_ready!(c.poll())),
        Error::QueueTimeout { .. }
    ));
}

/// In the recommended order the attempt timeout sits inside the breaker, so
/// a hung upstream's timeouts reach the breaker as failures and trip it.
#[tokio::test(start_paused = true)]
async fn a_hung_upstream_trips_the_breaker_in_the_recommended_order() {
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let svc = tower::ServiceBuilder::new()
        .layer(breaker)
        .layer(
            TimeoutLayer::builder()
                .attempt(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .service_fn(|_r: Annotated<()>| async {
            std::future::pending::<()>().await;
            Ok::<(), BoxError>(())
        });
    for _ in 0..3 {
        let r = svc
            .clone()
            .oneshot(Annotated::new((), RequestMeta::new()))
            .await;
        assert!(matches!(err_of(r), Error::Timeout { .. }));
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let r = svc
        .clone()
        .oneshot(Annotated::new((), RequestMeta::new()))
        .await;
    assert!(matches!(err_of(r), Error::CircuitOpen { .. }));
}
