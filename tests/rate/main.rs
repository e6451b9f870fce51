//! Integration tests of the sliding-window rate limiter, on paused time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use llm_sluice::classify::{Classification, LimitState, LlmResponse, Outcome, RateLimitState};
use llm_sluice::hold::Complete;
use llm_sluice::rate::{Budget, RateLimitLayer};
use llm_sluice::request::RequestMeta;
use llm_sluice::{Error, Priority, Usage};
use parking_lot::Mutex;
use tokio::time::{advance, Instant};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{BoxError, Layer, Service, ServiceExt};

/// A response that says what it means.
#[derive(Debug, Clone)]
struct Resp(Classification);

/// Complete when it arrives: its usage, if any, is in its classification.
impl Complete for Resp {}

impl LlmResponse for Resp {
    fn classification(&self) -> Classification {
        self.0.clone()
    }
}

type Log = Arc<Mutex<Vec<(Instant, RequestMeta)>>>;

/// An upstream that records each call (time, request) and answers with
/// `answer(request)`.
fn upstream<F>(
    answer: F,
) -> (
    impl Service<RequestMeta, Response = Resp, Error = BoxError, Future: Send> + Clone,
    Log,
)
where
    F: Fn(&RequestMeta) -> Result<Resp, BoxError> + Clone + Send + 'static,
{
    let log: Log = Arc::default();
    let seen = log.clone();
    let svc = tower::service_fn(move |req: RequestMeta| {
        seen.lock().push((Instant::now(), req.clone()));
        let result = answer(&req);
        async move { result }
    });
    (svc, log)
}

fn ok(_: &RequestMeta) -> Result<Resp, BoxError> {
    Ok(Resp(Classification::success(None)))
}

fn req(tokens: u64) -> RequestMeta {
    RequestMeta::new().tokens(tokens)
}

fn err_of<T: std::fmt::Debug>(result: Result<T, BoxError>) -> Error {
    let err = result.unwrap_err();
    err.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a llm_sluice::Error: {err}"))
        .clone()
}

const MINUTE: Duration = Duration::from_secs(60);
/// The default guard band of a 60 s window.
const GUARD: Duration = llm_sluice::rate::DEFAULT_GUARD_BAND;
/// How long a reservation counts by default: the window and its guard band.
const SPAN: Duration = Duration::from_millis(60_250);

#[cfg(feature = "http")]
mod body;
mod edges;
mod guard;
mod learn;

#[tokio::test(start_paused = true)]
async fn admits_up_to_the_limit_then_waits_for_the_window() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(2)
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(req(0)).await.unwrap();
    advance(Duration::from_secs(10)).await;
    svc.ready().await.unwrap().call(req(0)).await.unwrap();
    let mut third = task::spawn(svc.ready().await.unwrap().call(req(0)));
    assert_pending!(third.poll());
    advance(Duration::from_secs(50)).await;
    assert_pending!(
        third.poll(),
        "the guard band keeps the entry a little longer"
    );
    advance(GUARD).await;
    assert!(third.is_woken());
    assert_ready!(third.poll()).unwrap();
    let log = log.lock();
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].0 - t0, SPAN, "admitted when the first entry expired");
}

#[tokio::test(start_paused = true)]
async fn too_large_requests_fail_at_once() {
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(1_000)
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let result = svc.ready().await.unwrap().call(req(1_001)).await;
    assert_eq!(
        err_of(result),
        Error::RequestTooLarge {
            tokens: 1_001,
            limit: 1_000
        }
    );
    // a request that exactly fits the whole window is fine
    svc.ready().await.unwrap().call(req(1_000)).await.unwrap();

    // the burst bound is a limit too
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(1_000)
        .token_burst(100)
        .global_tokens_per_minute(5_000)
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream(ok).0);
    let result = svc.ready().await.unwrap().call(req(101)).await;
    assert_eq!(
        err_of(result),
        Error::RequestTooLarge {
            tokens: 101,
            limit: 100
        }
    );
    // and the global budget
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(10_000)
        .global_tokens_per_minute(500)
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream(ok).0);
    let result = svc.ready().await.unwrap().call(req(501)).await;
    assert_eq!(
        err_of(result),
        Error::RequestTooLarge {
            tokens: 501,
            limit: 500
        }
    );
    assert_eq!(log.lock().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn reconciliation_refunds_at_the_original_timestamp() {
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(1_000)
        .build()
        .unwrap();
    // every response reports 200 tokens used
    let (inner, log) = upstream(|_| Ok(Resp(Classification::success(Some(Usage::new(150, 50))))));
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(req(800)).await.unwrap(); // refunded to 200 at t0
    advance(Duration::from_secs(10)).await;
    // 200 + 700 fits only thanks to the refund
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(700)));
    assert_ready!(b.poll()).unwrap(); // refunded to 200 at t0 + 10
                                      // 200 + 200 + 600: fits now again
    let mut c = task::spawn(svc.ready().await.unwrap().call(req(600)));
    assert_ready!(c.poll()).unwrap(); // 200 at t0 + 10
                                      // window holds 600 (t0, t0+10, t0+10); 500 more needs the t0 entry gone
    let mut d = task::spawn(svc.ready().await.unwrap().call(req(500)));
    assert_pending!(d.poll());
    advance(Duration::from_secs(49) + GUARD).await; // t0 + 59 s + guard
    assert_pending!(d.poll());
    // t0 + 60 s + guard: the refunded entry expires at its original time
    advance(Duration::from_secs(1)).await;
    assert_ready!(d.poll()).unwrap();
    assert_eq!(log.lock().last().unwrap().0 - t0, SPAN);
}

#[tokio::test(start_paused = true)]
async fn reconciliation_extra_charge_at_the_original_timestamp() {
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(1_000)
        .build()
        .unwrap();
    // the estimate was 100, the call really used 900
    let (inner, log) = upstream(|r: &RequestMeta| {
        let used = if r.tokens == 100 { 900 } else { r.tokens };
        Ok(Resp(Classification::success(Some(Usage::new(used, 0)))))
    });
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(req(100)).await.unwrap();
    advance(Duration::from_secs(5)).await;
    // 900 + 200 > 1000: waits until the extra-charged entry expires at t0 +
    // 60 s + guard
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(200)));
    assert_pending!(b.poll());
    advance(Duration::from_secs(54) + GUARD).await;
    assert_pending!(b.poll());
    advance(Duration::from_secs(1)).await;
    assert_ready!(b.poll()).unwrap();
    assert_eq!(log.lock()[1].0 - t0, SPAN);
}

#[tokio::test(start_paused = true)]
async fn response_error_before_the_upstream_releases_the_reservation() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .tokens_per_minute(1_000)
        .build()
        .unwrap();
    // a layer further in refuses: the request never reached the upstream
    let (inner, _) = upstream(|r: &RequestMeta| {
        if r.tokens == 1 {
            Err(Box::new(Error::CircuitOpen {
                retry_after: Duration::from_secs(1),
            }) as BoxError)
        } else {
            Ok(Resp(Classification::success(None)))
        }
    });
    let mut svc = layer.layer(inner);
    let result = svc.ready().await.unwrap().call(req(1)).await;
    assert!(matches!(err_of(result), Error::CircuitOpen { .. }));
    // the request slot came back: another fits at once
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(1_000)));
    assert_ready!(b.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn transport_error_keeps_the_estimate() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .build()
        .unwrap();
    let (inner, _) = upstream(|_| {
        Err(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )) as BoxError)
    });
    let mut svc = layer.layer(inner);
    assert!(svc.ready().await.unwrap().call(req(1)).await.is_err());
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(1)));
    assert_pending!(b.poll(), "the reset request may have been counted");
}

fn too_many(delay: Duration) -> Resp {
    Resp(
        Classification::new(Outcome::RateLimited {
            quota_exhausted: false,
        })
        .with_status(429)
        .with_retry_after(Some(delay)),
    )
}

#[tokio::test(start_paused = true)]
async fn a_429_with_a_delay_cools_the_partition_down() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(100)
        .build()
        .unwrap();
    let (inner, log) = upstream(|r: &RequestMeta| {
        if r.tokens == 429 {
            Ok(too_many(Duration::from_secs(5)))
        } else {
            Ok(Resp(Classification::success(None)))
        }
    });
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    let a = RequestMeta::new().partition("a");
    svc.ready()
        .await
        .unwrap()
        .call(a.clone().tokens(429))
        .await
        .unwrap();
    // the window has room, but partition a is cooling down: queued, not failed
    let mut queued = task::spawn(svc.ready().await.unwrap().call(a.clone()));
    assert_pending!(queued.poll());
    // another partition is not affected
    let mut other = task::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(RequestMeta::new().partition("b")),
    );
    assert_ready!(other.poll()).unwrap();
    advance(Duration::from_millis(4_999)).await;
    assert_pending!(queued.poll());
    advance(Duration::from_millis(1)).await;
    assert!(queued.is_woken());
    assert_ready!(queued.poll()).unwrap();
    assert_eq!(log.lock().last().unwrap().0 - t0, Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn remaining_and_reset_headers_clamp_the_local_view() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(100)
        .tokens_per_minute(100_000)
        .build()
        .unwrap();
    // the server says: 1 request and 500 tokens remain for 10 s
    let (inner, log) = upstream(|r: &RequestMeta| {
        let mut class = Classification::success(None);
        if r.tokens == 7 {
            class.rate_limits = Some(RateLimitState {
                requests: LimitState {
                    limit: Some(100),
                    remaining: Some(1),
                    reset: Some(Duration::from_secs(10)),
                },
                tokens: LimitState {
                    limit: None,
                    remaining: Some(500),
                    reset: Some(Duration::from_secs(20)),
                },
                ..RateLimitState::default()
            });
        }
        Ok(Resp(class))
    });
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(req(7)).await.unwrap();
    svc.ready().await.unwrap().call(req(400)).await.unwrap(); // the one remaining request
    let mut next = task::spawn(svc.ready().await.unwrap().call(req(50)));
    assert_pending!(next.poll());
    advance(Duration::from_secs(10)).await; // request clamp resets; 100 tokens remain
    assert_ready!(next.poll()).unwrap();
    let mut big = task::spawn(svc.ready().await.unwrap().call(req(60)));
    assert_pending!(big.poll(), "only 50 tokens remain until t0 + 20");
    advance(Duration::from_secs(10)).await;
    assert_ready!(big.poll()).unwrap();
    let log = log.lock();
    assert_eq!(log[2].0 - t0, Duration::from_secs(10));
    assert_eq!(log[3].0 - t0, Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_known_in_advance_is_immediate() {
    // rpm 1, max_wait 10 s: after one request the window has room again in
    // 60 s, which no waiter will live to see: refused at once, exact delay
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(req(0)).await.unwrap();
    advance(Duration::from_secs(5)).await;
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(0)));
    assert_eq!(
        err_of(assert_ready!(b.poll())),
        Error::RateLimited {
            retry_after: Some(SPAN - Duration::from_secs(5))
        }
    );
    assert_eq!(log.lock().len(), 1);
    assert_eq!(layer.handle().stats().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_before_the_next_room_is_refused_at_once() {
    let layer = RateLimitLayer::builder()
        .guard_band(Duration::ZERO) // exact figures
        .requests_per_minute(1)
        .build()
        .unwrap();
    let (inner, _) = upstream(ok);
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(req(0)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(0).deadline(deadline)));
    assert_eq!(
        err_of(assert_ready!(b.poll())),
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(60))
        }
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_the_wait() {
    // the request fits the window now, but a large one ahead of it holds
    // the head of the line until after its deadline
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(100)
        .build()
        .unwrap();
    let (inner, _) = upstream(ok);
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(req(60)).await.unwrap();
    let mut big = task::spawn(svc.ready().await.unwrap().call(req(50)));
    assert_pending!(big.poll());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut small = task::spawn(svc.ready().await.unwrap().call(req(10).deadline(deadline)));
    assert_pending!(small.poll());
    advance(Duration::from_secs(3)).await;
    assert_eq!(err_of(assert_ready!(small.poll())), Error::DeadlineExceeded);
    assert_pending!(big.poll());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_always_carries_a_positive_delay() {
    // tpm 100 with 60 spent, a 50 waiting for room, one waiter allowed: a
    // 10 that would fit now is refused for want of a place in line. Zero
    // would read as "no hint"; it is told the time the window takes to
    // free 10 tokens at its own pace (6 s).
    let layer = RateLimitLayer::builder()
        .guard_band(Duration::ZERO) // exact figures
        .tokens_per_minute(100)
        .max_waiters(1)
        .build()
        .unwrap();
    let (inner, _) = upstream(ok);
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(req(60)).await.unwrap();
    let mut big = task::spawn(svc.ready().await.unwrap().call(req(50)));
    assert_pending!(big.poll());
    let mut small = task::spawn(svc.ready().await.unwrap().call(req(10)));
    assert_eq!(
        err_of(assert_ready!(small.poll())),
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(6))
        }
    );

    // no waiting at all (max_wait 0), a window with room but a queue: the
    // same rule
    let layer = RateLimitLayer::builder()
        .guard_band(Duration::ZERO) // exact figures
        .requests_per_minute(60)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let (inner, _) = upstream(ok);
    let mut svc = layer.layer(inner);
    for _ in 0..60 {
        svc.ready().await.unwrap().call(req(0)).await.unwrap();
    }
    let mut over = task::spawn(svc.ready().await.unwrap().call(req(0)));
    assert_eq!(
        err_of(assert_ready!(over.poll())),
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(60))
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_room_moves_past_its_wait_leaves_at_once() {
    // tpm 100, max_wait 40 s. t=0: 60 tokens; t=30: 30 more. Then, at
    // t=30, a 50 waits for the 60 to expire (t=60), and a 25 queues
    // behind it (its own room would come at t=60 too). When the 50 is
    // admitted at t=60 the 25's room moves to t=90, past its wait (t=70):
    // it leaves at t=60, told to come back in 30 s, not at t=70.
    let layer = RateLimitLayer::builder()
        .guard_band(Duration::ZERO) // exact figures
        .tokens_per_minute(100)
        .max_wait(Duration::from_secs(40))
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(req(60)).await.unwrap();
    advance(Duration::from_secs(30)).await;
    svc.ready().await.unwrap().call(req(30)).await.unwrap();
    let mut big = task::spawn(svc.ready().await.unwrap().call(req(50)));
    assert_pending!(big.poll());
    let mut small = task::spawn(svc.ready().await.unwrap().call(req(25)));
    assert_pending!(small.poll());
    advance(Duration::from_secs(30)).await;
    assert_ready!(big.poll()).unwrap();
    assert!(small.is_woken());
    assert_eq!(
        err_of(assert_ready!(small.poll())),
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(30))
        }
    );
    assert_eq!(log.lock().len(), 3);
    assert_eq!(layer.handle().stats().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_beyond_max_waiters_are_shed() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .max_waiters(1)
        .build()
        .unwrap();
    let (inner, _) = upstream(ok);
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(req(0)).await.unwrap();
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(0)));
    assert_pending!(b.poll());
    let c = svc.ready().await.unwrap().call(req(0)).await;
    assert_eq!(
        err_of(c),
        Error::RateLimited {
            retry_after: Some(SPAN)
        }
    );
    assert_eq!(layer.handle().stats().waiting, 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_by_priority_then_arrival() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .window(Duration::from_secs(1))
        .max_wait(Duration::from_secs(100))
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(req(0)).await.unwrap();
    let order = [
        (1, Priority::LOW),
        (2, Priority::NORMAL),
        (3, Priority::HIGH),
        (4, Priority::NORMAL),
        (5, Priority::CRITICAL),
    ];
    let mut waiters: Vec<_> = Vec::new();
    for (id, priority) in order {
        let r = req(id).priority(priority);
        let mut fut = task::spawn(svc.ready().await.unwrap().call(r));
        assert_pending!(fut.poll());
        waiters.push(fut);
    }
    // A 1 s window's guard band is a hundredth of it.
    let span = layer.handle().limits().span(Budget::Requests);
    assert_eq!(span, Duration::from_millis(1_010));
    for _ in 0..5 {
        advance(span).await;
        for w in waiters.iter_mut() {
            if w.is_woken() {
                let _ = w.poll();
            }
        }
    }
    let served: Vec<u64> = log.lock().iter().skip(1).map(|(_, r)| r.tokens).collect();
    assert_eq!(served, vec![5, 3, 2, 4, 1]);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiter_releases_nothing_and_wakes_the_next() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(req(0)).await.unwrap();
    let mut head = task::spawn(svc.ready().await.unwrap().call(req(1)));
    assert_pending!(head.poll());
    let mut next = task::spawn(svc.ready().await.unwrap().call(req(2)));
    assert_pending!(next.poll());
    assert_eq!(handle.stats().waiting, 2);
    drop(head);
    assert!(
        next.is_woken(),
        "the next waiter takes over the head's timer"
    );
    assert_pending!(
        next.poll(),
        "the window is still full: nothing was released"
    );
    assert_eq!(handle.stats().waiting, 1);
    advance(SPAN).await;
    assert_ready!(next.poll()).unwrap();
    let log = log.lock();
    assert_eq!(log.len(), 2);
    assert_eq!((log[1].0 - t0, log[1].1.tokens), (SPAN, 2));
    assert_eq!(handle.stats().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_after_admission_keeps_the_reservation() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .build()
        .unwrap();
    let (mock, mut upstream) = tower_test::mock::pair::<RequestMeta, Resp>();
    let mut svc = layer.layer(mock);
    upstream.allow(1);
    let fut = svc.ready().await.unwrap().call(req(0));
    let _ = upstream.next_request().await.unwrap();
    drop(fut);
    upstream.allow(1);
    let mut b = task::spawn(svc.ready().await.unwrap().call(req(0)));
    assert_pending!(
        b.poll(),
        "the dropped call reached the upstream and still counts"
    );
}

#[tokio::test(start_paused = true)]
async fn no_waiter_starves_under_strict_head_of_line() {
    // a large request queued behind the window must not be starved by a
    // stream of small ones that would each fit
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(1_000)
        .max_wait(Duration::from_secs(600))
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(req(500)).await.unwrap();
    let mut large = task::spawn(svc.ready().await.unwrap().call(req(1_000)));
    assert_pending!(large.poll());
    let mut small = Vec::new();
    for _ in 0..120 {
        advance(Duration::from_secs(1)).await;
        let mut s = task::spawn(svc.ready().await.unwrap().call(req(10)));
        let _ = s.poll();
        small.push(s);
        if large.is_woken() {
            let _ = large.poll();
        }
        for s in small.iter_mut() {
            if s.is_woken() {
                let _ = s.poll();
            }
        }
    }
    let log = log.lock();
    let large_at = log
        .iter()
        .find(|(_, r)| r.tokens == 1_000)
        .expect("the large request was admitted")
        .0;
    // Polled once a second: the first look after the window (and guard
    // band) drained.
    assert_eq!(
        large_at - t0,
        Duration::from_secs(SPAN.as_secs() + 1),
        "admitted as soon as the window drained"
    );
    // nothing overtook it
    assert!(log.iter().filter(|(t, _)| *t < large_at).count() == 1);
}

#[tokio::test(start_paused = true)]
async fn runtime_limit_changes_apply_to_live_partitions() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let a = RequestMeta::new().partition("a");
    svc.ready().await.unwrap().call(a.clone()).await.unwrap();
    let mut waiting = task::spawn(svc.ready().await.unwrap().call(a.clone()));
    assert_pending!(waiting.poll());
    handle.set_limit(Budget::Requests, Some(2)).unwrap();
    assert!(waiting.is_woken());
    assert_ready!(waiting.poll()).unwrap();
    // lowered: the window of a holds 2, so with limit 1 nothing fits for a minute
    handle.set_limit(Budget::Requests, Some(1)).unwrap();
    let mut later = task::spawn(svc.ready().await.unwrap().call(a.clone()));
    assert_pending!(later.poll());
    // a token budget added at runtime applies at once
    handle.set_limit(Budget::Tokens, Some(10)).unwrap();
    let big = svc.ready().await.unwrap().call(req(11)).await;
    assert!(matches!(err_of(big), Error::RequestTooLarge { .. }));
    assert_eq!(log.lock().len(), 2);
    assert_eq!(handle.limit(Budget::Requests), Some(1));
    assert!(handle.set_limit(Budget::RequestBurst, Some(5)).is_err());
}

/// Slots keep a copy of the limits to admit without the limits lock; every
/// runtime change must reach copies taken before it, in the unkeyed, keyed
/// and global scopes alike.
#[tokio::test(start_paused = true)]
async fn runtime_limit_changes_reach_copies_taken_before_them() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(10)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let a = || RequestMeta::new().partition("a");
    let b = || RequestMeta::new().partition("b");
    let none = RequestMeta::new;
    // the unkeyed and the keyed slots copy the build-time limits
    svc.ready().await.unwrap().call(none()).await.unwrap();
    svc.ready().await.unwrap().call(a()).await.unwrap();
    // a global budget added at runtime binds partitions whose copy predates it
    handle.set_global_limit(Budget::Requests, Some(3)).unwrap();
    svc.ready().await.unwrap().call(a()).await.unwrap();
    svc.ready().await.unwrap().call(b()).await.unwrap();
    svc.ready().await.unwrap().call(none()).await.unwrap();
    let full = svc.ready().await.unwrap().call(a()).await;
    assert!(matches!(err_of(full), Error::RateLimited { .. }));
    // raised: the global slot's copy is replaced too
    handle.set_global_limit(Budget::Requests, Some(4)).unwrap();
    svc.ready().await.unwrap().call(a()).await.unwrap();
    let full = svc.ready().await.unwrap().call(b()).await;
    assert!(matches!(err_of(full), Error::RateLimited { .. }));
    // removed: only the partition budgets remain
    handle.set_global_limit(Budget::Requests, None).unwrap();
    assert_eq!(handle.global_limit(Budget::Requests), None);
    svc.ready().await.unwrap().call(b()).await.unwrap();
    // lowered to what `a` holds (3): `a` is full, `b` (2) has one more
    handle.set_limit(Budget::Requests, Some(3)).unwrap();
    let full = svc.ready().await.unwrap().call(a()).await;
    assert!(matches!(err_of(full), Error::RateLimited { .. }));
    svc.ready().await.unwrap().call(b()).await.unwrap();
    let full = svc.ready().await.unwrap().call(b()).await;
    assert!(matches!(err_of(full), Error::RateLimited { .. }));
    assert_eq!(log.lock().len(), 8);
    assert_eq!(handle.stats().admitted, 8);
}

#[tokio::test(start_paused = true)]
async fn global_budget_holds_across_partitions() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(10)
        .global_requests_per_minute(3)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    let mut ok_count = 0;
    for i in 0..6 {
        let r = RequestMeta::new().partition(format!("key-{i}"));
        if svc.ready().await.unwrap().call(r).await.is_ok() {
            ok_count += 1;
        }
    }
    assert_eq!(ok_count, 3);
    assert_eq!(log.lock().len(), 3);
    assert_eq!(layer.handle().global_limit(Budget::Requests), Some(3));
}

#[tokio::test(start_paused = true)]
async fn partitions_are_bounded_and_invented_keys_share_the_overflow_budget() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .max_partitions(4)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, log) = upstream(ok);
    let mut svc = layer.layer(inner);
    for i in 0..1_000 {
        let r = RequestMeta::new().partition(format!("invented-{i}"));
        let _ = svc.ready().await.unwrap().call(r).await;
    }
    let stats = handle.stats();
    assert!(
        stats.partitions <= 4,
        "live partitions {}",
        stats.partitions
    );
    // each own partition admitted one, the shared overflow window one more
    assert!(log.lock().len() <= 5, "admitted {}", log.lock().len());
    // once the windows are empty, the partitions are idle and can go
    advance(SPAN).await;
    assert_eq!(handle.evict_idle(), stats.partitions);
    assert_eq!(handle.stats().partitions, 0);
    // and a new key gets its own window again
    svc.ready()
        .await
        .unwrap()
        .call(RequestMeta::new().partition("fresh"))
        .await
        .unwrap();
    assert_eq!(handle.stats().partitions, 1);
}

#[tokio::test(start_paused = true)]
async fn busy_partitions_are_not_evicted() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream(ok).0);
    svc.ready()
        .await
        .unwrap()
        .call(RequestMeta::new().partition("a"))
        .await
        .unwrap();
    advance(Duration::from_secs(59) + GUARD).await;
    assert_eq!(handle.evict_idle(), 0, "its window still counts a request");
    advance(Duration::from_secs(1)).await;
    assert_eq!(handle.evict_idle(), 1);
}

/// A bucket-style upstream: capacity `burst`, refilled at `rate` per `per`;
/// counts requests it had to reject.
struct Bucket {
    capacity: u128,
    per_nanos: u128,
    rate: u128,
    /// tokens * per_nanos, to stay in integers
    level: u128,
    last: Instant,
    rejected: u64,
}

impl Bucket {
    fn new(capacity: u64, rate: u64, per: Duration, now: Instant) -> Self {
        let per_nanos = per.as_nanos();
        Bucket {
            capacity: u128::from(capacity),
            per_nanos,
            rate: u128::from(rate),
            level: u128::from(capacity) * per_nanos,
            last: now,
            rejected: 0,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = (now - self.last).as_nanos();
        self.last = now;
        self.level = (self.level + elapsed * self.rate).min(self.capacity * self.per_nanos);
        if self.level >= self.per_nanos {
            self.level -= self.per_nanos;
            true
        } else {
            self.rejected += 1;
            false
        }
    }
}

#[tokio::test(start_paused = true)]
async fn burst_bound_keeps_a_bucket_upstream_happy() {
    for (rpm, burst) in [(60u64, 1u64), (60, 5), (7, 2), (1_000, 10)] {
        let layer = RateLimitLayer::builder()
            .requests_per_minute(rpm)
            .request_burst(burst)
            .max_wait(Duration::from_secs(3_600))
            .build()
            .unwrap();
        let bucket = Arc::new(Mutex::new(Bucket::new(burst, rpm, MINUTE, Instant::now())));
        let b = bucket.clone();
        let inner = tower::service_fn(move |_r: RequestMeta| {
            let accepted = b.lock().take(Instant::now());
            async move {
                if accepted {
                    Ok::<_, BoxError>(Resp(Classification::success(None)))
                } else {
                    Ok(too_many(Duration::ZERO))
                }
            }
        });
        let svc = layer.layer(inner);
        let mut tasks = Vec::new();
        for _ in 0..(3 * rpm) {
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                svc.ready().await.unwrap().call(req(0)).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(bucket.lock().rejected, 0, "rpm {rpm} burst {burst}");
        assert_eq!(layer.handle().stats().admitted, 3 * rpm);
    }

    // without the bound, the same bucket rejects most of the burst
    let layer = RateLimitLayer::builder()
        .requests_per_minute(60)
        .build()
        .unwrap();
    let bucket = Arc::new(Mutex::new(Bucket::new(1, 60, MINUTE, Instant::now())));
    let mut svc = layer.layer(tower::service_fn({
        let b = bucket.clone();
        move |_r: RequestMeta| {
            let accepted = b.lock().take(Instant::now());
            async move { Ok::<_, BoxError>(accepted) }
        }
    }));
    for _ in 0..60 {
        svc.ready().await.unwrap().call(req(0)).await.unwrap();
    }
    assert!(bucket.lock().rejected > 50);
}

/// Saturating demand for 10 windows: admitted requests and tokens reach at
/// least 99% of what the limits allow.
#[tokio::test(start_paused = true)]
async fn saturation_uses_at_least_99_percent_of_the_limits() {
    let (rpm, tpm) = (1_000u64, 100_000u64);
    let layer = RateLimitLayer::builder()
        .requests_per_minute(rpm)
        .tokens_per_minute(tpm)
        .max_wait(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let svc = layer.layer(inner);
    let t0 = Instant::now();
    let end = t0 + 10 * MINUTE;
    let mut tasks = Vec::new();
    for worker in 0..64u64 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while Instant::now() < end {
                // 50..=150 tokens, 100 on average: both budgets bind
                let tokens = 50 + (i * 37) % 101;
                i += 64;
                let _ = svc.ready().await.unwrap().call(req(tokens)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let in_time: Vec<_> = log
        .lock()
        .iter()
        .filter(|(t, _)| *t < end)
        .cloned()
        .collect();
    let requests = in_time.len() as u64;
    let tokens: u64 = in_time.iter().map(|(_, r)| r.tokens).sum();
    let (req_util, tok_util) = (
        requests as f64 / (10 * rpm) as f64,
        tokens as f64 / (10 * tpm) as f64,
    );
    // one of the two budgets binds at any time; the binding one is used fully
    assert!(
        req_util.max(tok_util) >= 0.99,
        "requests {req_util:.4}, tokens {tok_util:.4}"
    );
    assert!(req_util <= 1.0 && tok_util <= 1.0);

    // tokens alone: variable sizes, the token budget is used to >= 99%
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(tpm)
        .max_wait(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let (inner, log) = upstream(ok);
    let svc = layer.layer(inner);
    let t0 = Instant::now();
    let end = t0 + 10 * MINUTE;
    let mut tasks = Vec::new();
    for worker in 0..32u64 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while Instant::now() < end {
                let tokens = 1 + (i * 7_919) % 500;
                i += 32;
                let _ = svc.ready().await.unwrap().call(req(tokens)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tokens: u64 = log
        .lock()
        .iter()
        .filter(|(t, _)| *t < end)
        .map(|(_, r)| r.tokens)
        .sum();
    let util = tokens as f64 / (10 * tpm) as f64;
    println!("token utilization over 10 windows: {util:.4}");
    assert!((0.99..=1.0).contains(&util), "token utilization {util:.4}");
}

/// Checks that in every interval of length `window` the admitted amounts of
/// each group stay within `limit`. Intervals ending at an admission are the
/// worst case.
fn assert_window_holds(
    admissions: &[(Instant, u64)],
    window: Duration,
    limit: u64,
    what: &str,
) -> Result<(), proptest::test_runner::TestCaseError> {
    for (i, &(t, _)) in admissions.iter().enumerate() {
        let sum: u64 = admissions[..=i]
            .iter()
            .filter(|(s, _)| *s + window > t)
            .map(|(_, a)| a)
            .sum();
        proptest::prop_assert!(
            sum <= limit,
            "{what}: {sum} > {limit} in the window ending at {t:?}"
        );
    }
    Ok(())
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Arrival {
        at_ms: u64,
        tokens: u64,
        partition: u8,
        priority: u8,
    }

    fn arrival() -> impl Strategy<Value = Arrival> {
        (0u64..30_000, 0u64..400, 0u8..3, any::<u8>()).prop_map(
            |(at_ms, tokens, partition, priority)| Arrival {
                at_ms,
                tokens,
                partition,
                priority,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn every_sliding_interval_holds_at_most_the_limit(
            rpm in 1u64..8,
            tpm in 400u64..1_500,
            global_rpm in 2u64..16,
            global_tpm in 400u64..3_000,
            window_ms in 1_000u64..10_000,
            arrivals in proptest::collection::vec(arrival(), 1..60),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let window = Duration::from_millis(window_ms);
            let log = rt.block_on(async {
                let layer = RateLimitLayer::builder()
                    .requests_per_minute(rpm)
                    .tokens_per_minute(tpm)
                    .global_requests_per_minute(global_rpm)
                    .global_tokens_per_minute(global_tpm)
                    .window(window)
                    .max_wait(window * 4)
                    .build()
                    .unwrap();
                let (inner, log) = upstream(ok);
                let svc = layer.layer(inner);
                let t0 = Instant::now();
                let mut tasks = Vec::new();
                for a in arrivals {
                    let mut svc = svc.clone();
                    tasks.push(tokio::spawn(async move {
                        tokio::time::sleep_until(t0 + Duration::from_millis(a.at_ms)).await;
                        let r = RequestMeta::new()
                            .tokens(a.tokens)
                            .partition(format!("p{}", a.partition))
                            .priority(Priority::new(a.priority));
                        let _ = svc.ready().await.unwrap().call(r).await;
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                let log = log.lock().clone();
                log
            });
            let mut by_partition: HashMap<String, Vec<(Instant, RequestMeta)>> = HashMap::new();
            for (t, r) in &log {
                by_partition
                    .entry(r.partition.as_ref().unwrap().as_str().to_owned())
                    .or_default()
                    .push((*t, r.clone()));
            }
            for (key, entries) in &by_partition {
                let reqs: Vec<_> = entries.iter().map(|(t, _)| (*t, 1)).collect();
                let toks: Vec<_> = entries.iter().map(|(t, r)| (*t, r.tokens)).collect();
                assert_window_holds(&reqs, window, rpm, &format!("{key} requests"))?;
                assert_window_holds(&toks, window, tpm, &format!("{key} tokens"))?;
            }
            let reqs: Vec<_> = log.iter().map(|(t, _)| (*t, 1)).collect();
            let toks: Vec<_> = log.iter().map(|(t, r)| (*t, r.tokens)).collect();
            assert_window_holds(&reqs, window, global_rpm, "global requests")?;
            assert_window_holds(&toks, window, global_tpm, "global tokens")?;
        }
    }
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_report_admissions_rejections_refunds_and_cooldowns() {
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
                .tokens_per_minute(1_000)
                .max_wait(Duration::ZERO)
                .build()
                .unwrap();
            let (inner, _) = upstream(|r: &RequestMeta| {
                if r.tokens == 429 {
                    Ok(too_many(Duration::from_secs(1)))
                } else {
                    Ok(Resp(Classification::success(Some(Usage::new(100, 0)))))
                }
            });
            let mut svc = layer.layer(inner);
            svc.ready().await.unwrap().call(req(300)).await.unwrap(); // refund 200
            let _ = svc.ready().await.unwrap().call(req(2_000)).await; // too large
            let _ = svc.ready().await.unwrap().call(req(429)).await; // cooldown
            let _ = svc.ready().await.unwrap().call(req(1)).await; // cooling: wait_timeout
        })
    });
    let mut seen = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let value = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        seen.insert(name, value);
    }
    let get = |name: &str| {
        seen.get(name)
            .copied()
            .unwrap_or_else(|| panic!("{name} missing in {seen:?}"))
    };
    assert_eq!(get("llm_sluice_admitted_total{layer=rate}"), 2.0);
    assert_eq!(
        get("llm_sluice_rate_tokens_reserved_total{layer=rate}"),
        729.0
    );
    assert_eq!(
        get("llm_sluice_rate_tokens_refunded_total{layer=rate}"),
        200.0
    );
    assert_eq!(get("llm_sluice_rate_cooldowns_total{layer=rate}"), 1.0);
    assert_eq!(get("llm_sluice_rate_wait_seconds{layer=rate}"), 2.0);
    assert_eq!(
        get("llm_sluice_rejected_total{layer=rate,reason=too_large}"),
        1.0
    );
    assert_eq!(
        get("llm_sluice_rejected_total{layer=rate,reason=wait_timeout}"),
        1.0
    );
    assert_eq!(get("llm_sluice_partitions{layer=rate}"), 0.0);
}
