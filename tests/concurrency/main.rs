//! Tests of the concurrency limiter with its priority queue.

mod prop;

#[cfg(feature = "http")]
mod http_body;

#[cfg(feature = "metrics")]
mod metrics;

use std::task::Poll;
use std::time::Duration;

use llm_sluice::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
use llm_sluice::request::RequestMeta;
use llm_sluice::{Error, Priority};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{BoxError, Layer, Service};
use tower_test::mock;

type Mock = mock::Mock<RequestMeta, String>;
type Handle = mock::Handle<RequestMeta, String>;
type Responder = mock::SendResponse<String>;

const WAIT: Duration = Duration::from_secs(10);

fn layer(max_in_flight: usize, max_queued: usize) -> ConcurrencyLimitLayer {
    ConcurrencyLimitLayer::builder()
        .max_in_flight(max_in_flight)
        .max_queued(max_queued)
        .max_queue_wait(WAIT)
        .without_aging()
        .build()
        .unwrap()
}

fn limited(max_in_flight: usize, max_queued: usize) -> (ConcurrencyLimit<Mock>, Handle) {
    let (mock, handle) = mock::pair();
    (layer(max_in_flight, max_queued).layer(mock), handle)
}

fn req(id: u64, priority: Priority) -> RequestMeta {
    RequestMeta::new().tokens(id).priority(priority)
}

/// Follows the tower contract: `poll_ready` first, then `call`.
fn call<S>(svc: &mut S, request: RequestMeta) -> task::Spawn<S::Future>
where
    S: Service<RequestMeta>,
    S::Error: std::fmt::Debug,
{
    let mut ready = task::spawn(());
    assert_ready_ok!(ready.enter(|cx, _| svc.poll_ready(cx)));
    task::spawn(svc.call(request))
}

/// The next request the inner service received; panics if there is none.
fn next_request(handle: &mut Handle) -> (RequestMeta, Responder) {
    match handle.poll_request() {
        Poll::Ready(Some(r)) => r,
        Poll::Ready(None) => panic!("inner service closed"),
        Poll::Pending => panic!("expected a request at the inner service"),
    }
}

fn no_request(handle: &mut Handle) {
    assert!(
        handle.poll_request().is_pending(),
        "no request should have reached the inner service"
    );
}

fn error_of(err: BoxError) -> Error {
    match err.downcast_ref::<Error>() {
        Some(e) => e.clone(),
        None => panic!("expected an llm_sluice::Error, got {err}"),
    }
}

// ===== release paths =====

#[tokio::test(start_paused = true)]
async fn fast_path_runs_and_releases() {
    let (mut svc, mut handle) = limited(1, 0);
    let mut f = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f.poll());
    assert_eq!(svc.stats().in_flight, 1);
    assert_eq!(svc.stats().available, 0);
    let (r, tx) = next_request(&mut handle);
    assert_eq!(r.tokens, 1);
    tx.send_response("one".into());
    assert_eq!(assert_ready_ok!(f.poll()), "one");
    assert_eq!(svc.stats().in_flight, 0);
    assert_eq!(svc.stats().available, 1);
}

#[tokio::test(start_paused = true)]
async fn service_drop_frees_capacity() {
    let (mut svc, mut handle) = limited(1, 1);
    let mut other = svc.clone();

    // A service that was polled ready and then dropped holds nothing.
    let mut ready = task::spawn(());
    assert_ready_ok!(ready.enter(|cx, _| Service::<RequestMeta>::poll_ready(&mut svc, cx)));
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    drop(svc);
    assert_eq!(
        other.stats().in_flight,
        1,
        "the in-flight request keeps its permit"
    );

    // The request admitted through the dropped service still completes and
    // releases its permit.
    next_request(&mut handle).1.send_response("one".into());
    assert_ready_ok!(f1.poll());
    assert_eq!(other.stats().available, 1);

    let mut f2 = call(&mut other, req(2, Priority::NORMAL));
    assert_pending!(f2.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 2, "admitted at once");
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_releases_capacity() {
    let (mut svc, mut handle) = limited(1, 1);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let _inflight = next_request(&mut handle);
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    assert_pending!(f2.poll());
    assert_eq!(svc.stats().queued, 1);

    drop(f1);
    assert!(f2.is_woken(), "the freed permit goes to the waiter");
    assert_eq!(svc.stats().in_flight, 1, "handed over, not put back");
    assert_pending!(f2.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 2);

    drop(f2);
    assert_eq!(svc.stats().available, 1);
    assert_eq!(svc.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn queued_future_drop_removes_entry() {
    let (mut svc, mut handle) = limited(1, 1);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    assert_pending!(f2.poll());
    assert_eq!(svc.stats().queued, 1);

    drop(f2);
    assert_eq!(svc.stats().queued, 0, "no phantom slot");
    // The slot is usable again: a new request queues instead of being shed.
    let mut f3 = call(&mut svc, req(3, Priority::NORMAL));
    assert_pending!(f3.poll());
    assert_eq!(svc.stats().queued, 1);

    next_request(&mut handle).1.send_response("one".into());
    assert_ready_ok!(f1.poll());
    assert!(f3.is_woken());
    assert_pending!(f3.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 3);
}

/// The queue emptied by a time-out and by a cancel: a permit freed
/// afterwards goes back to the pool (not to a waiter that is gone), and the
/// next request takes it at once; a request queued after that still gets the
/// hand-off.
#[tokio::test(start_paused = true)]
async fn emptied_queue_returns_permits_to_the_pool() {
    let (mut svc, mut handle) = limited(1, 2);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let (_, tx1) = next_request(&mut handle);
    let mut timed_out = call(&mut svc, req(2, Priority::NORMAL));
    assert_pending!(timed_out.poll());
    let cancelled = call(&mut svc, req(3, Priority::NORMAL));
    drop(cancelled);
    tokio::time::advance(WAIT + Duration::from_millis(1)).await;
    assert!(matches!(
        error_of(assert_ready_err!(timed_out.poll())),
        Error::QueueTimeout { .. }
    ));
    assert_eq!(svc.stats().queued, 0);

    tx1.send_response("one".into());
    assert_ready_ok!(f1.poll());
    assert_eq!(svc.stats().available, 1, "back to the pool");

    let mut f4 = call(&mut svc, req(4, Priority::NORMAL));
    assert_pending!(f4.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 4, "admitted at once");
    assert_eq!(svc.stats().available, 0);

    // Waiting again: the next release hands the permit over.
    let mut f5 = call(&mut svc, req(5, Priority::NORMAL));
    assert_pending!(f5.poll());
    drop(f4);
    assert!(f5.is_woken());
    assert_eq!(svc.stats().available, 0, "handed over, not put back");
    assert_pending!(f5.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 5);
}

#[tokio::test(start_paused = true)]
async fn unpolled_queued_future_drop_removes_entry() {
    let (mut svc, _handle) = limited(1, 2);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let f2 = call(&mut svc, req(2, Priority::NORMAL));
    assert_eq!(svc.stats().queued, 1, "the entry exists from `call` on");
    drop(f2);
    assert_eq!(svc.stats().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn granted_waiter_drop_passes_permit_on() {
    let (mut svc, mut handle) = limited(1, 2);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    let mut f3 = call(&mut svc, req(3, Priority::NORMAL));
    assert_pending!(f2.poll());
    assert_pending!(f3.poll());

    next_request(&mut handle).1.send_response("one".into());
    assert_ready_ok!(f1.poll());
    assert!(f2.is_woken(), "the head waiter is woken");
    assert!(!f3.is_woken(), "exactly one waiter is woken per permit");

    // f2 never sees its grant: its drop hands the permit to f3.
    drop(f2);
    assert!(f3.is_woken());
    assert_eq!(svc.stats().in_flight, 1);
    assert_eq!(svc.stats().queued, 0);
    assert_pending!(f3.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 3);
}

#[tokio::test(start_paused = true)]
async fn response_error_releases_capacity() {
    let (mut svc, mut handle) = limited(1, 0);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    next_request(&mut handle).1.send_error("upstream broke");
    let err = assert_ready_err!(f1.poll());
    assert_eq!(
        err.to_string(),
        "upstream broke",
        "inner errors pass through"
    );
    assert_eq!(svc.stats().available, 1);
    assert_eq!(svc.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn inner_poll_ready_error_releases_capacity() {
    let (mut svc, mut handle) = limited(1, 0);
    handle.send_error("not ready, ever");
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    let err = assert_ready_err!(f1.poll());
    assert_eq!(err.to_string(), "not ready, ever");
    assert_eq!(svc.stats().available, 1);
}

#[tokio::test(start_paused = true)]
async fn inner_poll_ready_is_driven_before_call() {
    let (mut svc, mut handle) = limited(1, 1);
    handle.allow(0);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    no_request(&mut handle);
    assert_eq!(
        svc.stats().in_flight,
        1,
        "the permit is held while the inner service gets ready"
    );

    handle.allow(1);
    assert!(f1.is_woken());
    assert_pending!(f1.poll());
    let (r, tx) = next_request(&mut handle);
    assert_eq!(r.tokens, 1);
    tx.send_response("one".into());
    assert_ready_ok!(f1.poll());
}

#[tokio::test(start_paused = true)]
async fn a_request_admitted_at_once_goes_straight_to_a_ready_inner_service() {
    let (mut svc, mut handle) = limited(1, 1);
    // `call` polls the (ready) mock first: the request reaches it inside
    // `call`, before its future is polled.
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    let (r, tx) = next_request(&mut handle);
    assert_eq!(r.tokens, 1);
    assert_eq!(svc.stats().in_flight, 1);
    // A queued one gets a clone and waits for the permit.
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    assert_pending!(f2.poll());
    no_request(&mut handle);
    tx.send_response("one".into());
    assert_ready_ok!(f1.poll());
    assert!(f2.is_woken());
    assert_pending!(f2.poll());
    let (r, _tx) = next_request(&mut handle);
    assert_eq!(r.tokens, 2);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_ready_even_when_full() {
    let (mut svc, _handle) = limited(1, 0);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let mut ready = task::spawn(());
    assert_ready_ok!(ready.enter(|cx, _| Service::<RequestMeta>::poll_ready(&mut svc, cx)));
}

// ===== ordering =====

#[tokio::test(start_paused = true)]
async fn priority_order() {
    let (mut svc, mut handle) = limited(1, 10);
    let mut f0 = call(&mut svc, req(0, Priority::NORMAL));
    assert_pending!(f0.poll());
    let mut waiting = vec![
        (10, call(&mut svc, req(10, Priority::LOW))),
        (20, call(&mut svc, req(20, Priority::NORMAL))),
        (30, call(&mut svc, req(30, Priority::CRITICAL))),
        (40, call(&mut svc, req(40, Priority::new(100)))),
        (50, call(&mut svc, req(50, Priority::HIGH))),
    ];
    for (_, f) in &mut waiting {
        assert_pending!(f.poll());
    }

    let mut tx = next_request(&mut handle).1;
    let mut current = f0;
    let mut order = Vec::new();
    while !waiting.is_empty() {
        tx.send_response("done".into());
        assert_ready_ok!(current.poll());
        let woken: Vec<u64> = waiting
            .iter()
            .filter(|(_, f)| f.is_woken())
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(woken.len(), 1, "one waiter woken per permit: {woken:?}");
        let at = waiting.iter().position(|(id, _)| *id == woken[0]).unwrap();
        let (id, mut f) = waiting.remove(at);
        assert_pending!(f.poll());
        let (r, next_tx) = next_request(&mut handle);
        assert_eq!(r.tokens, id);
        order.push(id);
        tx = next_tx;
        current = f;
    }
    assert_eq!(order, [30, 50, 40, 20, 10]);
}

#[tokio::test(start_paused = true)]
async fn fifo_within_priority() {
    let (mut svc, mut handle) = limited(1, 10);
    let mut f0 = call(&mut svc, req(0, Priority::HIGH));
    assert_pending!(f0.poll());
    let mut fs: Vec<_> = (1..=4)
        .map(|id| call(&mut svc, req(id, Priority::HIGH)))
        .collect();
    for f in &mut fs {
        assert_pending!(f.poll());
    }
    next_request(&mut handle).1.send_response("0".into());
    assert_ready_ok!(f0.poll());
    for (i, f) in fs.iter_mut().enumerate() {
        assert!(f.is_woken());
        assert_pending!(f.poll());
        let (r, tx) = next_request(&mut handle);
        assert_eq!(r.tokens, i as u64 + 1);
        tx.send_response("ok".into());
        assert_ready_ok!(f.poll());
    }
}

#[tokio::test(start_paused = true)]
async fn retry_arrival_keeps_its_place() {
    let (mut svc, mut handle) = limited(1, 10);
    let first_try = Instant::now();
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut f0 = call(&mut svc, req(0, Priority::NORMAL));
    assert_pending!(f0.poll());
    let mut newer = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(newer.poll());
    let mut retried = req(2, Priority::NORMAL);
    retried.arrival = Some(first_try);
    let mut retried = call(&mut svc, retried);
    assert_pending!(retried.poll());

    next_request(&mut handle).1.send_response("0".into());
    assert_ready_ok!(f0.poll());
    assert!(retried.is_woken() && !newer.is_woken());
    assert_pending!(retried.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 2);
}

/// Serves requests one at a time, each taking `service` time, while a HIGH
/// request arrives every `service` (and five are already waiting); a LOW
/// request joins at the start. Returns when the LOW request reached the inner
/// service, if it did within `horizon`.
async fn low_under_high_stream(
    layer: ConcurrencyLimitLayer,
    service: Duration,
    horizon: Duration,
) -> Option<Duration> {
    const LOW_ID: u64 = u64::MAX;
    let (mock, mut handle) = mock::pair::<RequestMeta, String>();
    let mut svc = layer.layer(mock);
    let start = Instant::now();
    let mut next_id = 0;
    let mut futures = Vec::new();
    let mut high = |svc: &mut ConcurrencyLimit<Mock>, futures: &mut Vec<_>| {
        next_id += 1;
        futures.push(call(svc, req(next_id, Priority::HIGH)));
    };
    for _ in 0..6 {
        high(&mut svc, &mut futures);
    }
    futures.push(call(&mut svc, req(LOW_ID, Priority::LOW)));
    let mut current: Option<Responder> = None;
    loop {
        // Twice: a permit freed late in one pass may go to a future polled
        // earlier in it.
        for _ in 0..2 {
            futures.retain_mut(|f| match f.poll() {
                Poll::Ready(result) => {
                    assert!(result.is_ok(), "no request times out in this scenario");
                    false
                }
                Poll::Pending => true,
            });
        }
        if current.is_none() {
            let (r, tx) = next_request(&mut handle);
            if r.tokens == LOW_ID {
                return Some(start.elapsed());
            }
            current = Some(tx);
        }
        if start.elapsed() >= horizon {
            return None;
        }
        tokio::time::advance(service).await;
        if let Some(tx) = current.take() {
            tx.send_response("ok".into());
        }
        high(&mut svc, &mut futures);
    }
}

#[tokio::test(start_paused = true)]
async fn aging_lets_low_through_under_high_stream() {
    let aging = Duration::from_secs(1);
    let service = Duration::from_millis(100);
    let max_queued = 40;
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_queued(max_queued)
        .max_queue_wait(Duration::from_secs(3600))
        .aging(aging)
        .build()
        .unwrap();
    // The documented bound: 3 × aging, plus serving the (fewer than
    // max_queued) requests already ahead.
    let bound = 3 * aging + service * (max_queued as u32 - 1);
    let admitted = low_under_high_stream(layer, service, bound)
        .await
        .expect("the LOW request got through within the documented bound");
    assert!(admitted <= bound);
    // HIGH is two levels above LOW: new HIGH requests fall behind it after
    // 2 × aging, and the ones ahead (those that arrived before) go first.
    assert!(admitted >= 2 * aging, "admitted after {admitted:?}");
}

#[tokio::test(start_paused = true)]
async fn without_aging_low_waits_while_high_keeps_coming() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .max_queued(40)
        .max_queue_wait(Duration::from_secs(3600))
        .without_aging()
        .build()
        .unwrap();
    let admitted =
        low_under_high_stream(layer, Duration::from_millis(100), Duration::from_secs(60)).await;
    assert_eq!(admitted, None, "strict priority: LOW waits for a gap");
}

// ===== shedding, timeouts, deadlines =====

#[tokio::test(start_paused = true)]
async fn queue_full_rejects_with_overloaded() {
    let (mut svc, _handle) = limited(1, 2);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    let mut f3 = call(&mut svc, req(3, Priority::NORMAL));
    assert_pending!(f2.poll());
    assert_pending!(f3.poll());
    let mut f4 = call(&mut svc, req(4, Priority::CRITICAL));
    let err = error_of(assert_ready_err!(f4.poll()));
    assert_eq!(err, Error::Overloaded { queued: 2 });
    assert_eq!(svc.stats().queued, 2);
}

#[tokio::test(start_paused = true)]
async fn no_queue_rejects_at_once() {
    let (mut svc, _handle) = limited(1, 0);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    assert_eq!(
        error_of(assert_ready_err!(f2.poll())),
        Error::Overloaded { queued: 0 }
    );
}

#[tokio::test(start_paused = true)]
async fn queue_timeout() {
    let (mut svc, _handle) = limited(1, 1);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    assert_pending!(f2.poll());
    tokio::time::advance(WAIT - Duration::from_millis(1)).await;
    assert_pending!(f2.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(f2.is_woken());
    assert_eq!(
        error_of(assert_ready_err!(f2.poll())),
        Error::QueueTimeout { waited: WAIT }
    );
    assert_eq!(svc.stats().queued, 0);
    assert_eq!(svc.stats().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn expired_waiter_is_skipped_by_hand_off() {
    let (mut svc, mut handle) = limited(1, 2);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let mut f2 = call(&mut svc, req(2, Priority::HIGH));
    assert_pending!(f2.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut f3 = call(&mut svc, req(3, Priority::LOW));
    assert_pending!(f3.poll());
    tokio::time::advance(WAIT - Duration::from_secs(1)).await;
    assert!(f2.is_woken(), "f2's time is up");
    // The permit is freed before the timed-out waiter runs: it goes to the
    // next live waiter, not to the one that is about to fail.
    next_request(&mut handle).1.send_response("one".into());
    assert_ready_ok!(f1.poll());
    assert!(f3.is_woken());
    assert_eq!(
        error_of(assert_ready_err!(f2.poll())),
        Error::QueueTimeout { waited: WAIT }
    );
    assert_pending!(f3.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 3);
}

#[tokio::test(start_paused = true)]
async fn grant_before_timeout_wins() {
    let (mut svc, mut handle) = limited(1, 1);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    assert_pending!(f2.poll());
    tokio::time::advance(WAIT - Duration::from_millis(1)).await;
    next_request(&mut handle).1.send_response("one".into());
    assert_ready_ok!(f1.poll());
    // Granted a moment before its time ran out; it stays granted.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_pending!(f2.poll());
    assert_eq!(next_request(&mut handle).0.tokens, 2);
}

#[tokio::test(start_paused = true)]
async fn timers_of_many_waiters_fire_in_order() {
    let (mut svc, _handle) = limited(1, 10);
    let mut f0 = call(&mut svc, req(0, Priority::NORMAL));
    assert_pending!(f0.poll());
    let start = Instant::now();
    // Deadlines in reverse order of arrival, some later than the queue wait.
    let mut waiting: Vec<_> = (1..=6u64)
        .map(|i| {
            let deadline = start + Duration::from_secs(14 - 2 * i);
            let mut f = call(&mut svc, req(i, Priority::NORMAL).deadline(deadline));
            assert_pending!(f.poll());
            (i, f)
        })
        .collect();
    let mut failed = Vec::new();
    for _ in 0..14 {
        tokio::time::advance(Duration::from_secs(1)).await;
        waiting.retain_mut(|(i, f)| match f.poll() {
            std::task::Poll::Ready(Err(e)) => {
                failed.push((*i, start.elapsed().as_secs(), error_of(e)));
                false
            }
            std::task::Poll::Ready(Ok(_)) => panic!("no permit was freed"),
            std::task::Poll::Pending => true,
        });
    }
    let wait = WAIT.as_secs();
    assert_eq!(
        failed,
        [
            (6, 2, Error::DeadlineExceeded),
            (5, 4, Error::DeadlineExceeded),
            (4, 6, Error::DeadlineExceeded),
            (3, 8, Error::DeadlineExceeded),
            // both at the queue wait; 2's deadline is exactly then too
            (1, wait, Error::QueueTimeout { waited: WAIT }),
            (2, wait, Error::DeadlineExceeded),
        ]
    );
    assert_eq!(svc.stats().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_in_queue() {
    let (mut svc, _handle) = limited(1, 1);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL).deadline(deadline));
    assert_pending!(f2.poll());
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert_pending!(f2.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        error_of(assert_ready_err!(f2.poll())),
        Error::DeadlineExceeded
    );
    assert_eq!(svc.stats().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_later_than_queue_wait_gives_queue_timeout() {
    let (mut svc, _handle) = limited(1, 1);
    let mut f1 = call(&mut svc, req(1, Priority::NORMAL));
    assert_pending!(f1.poll());
    let deadline = Instant::now() + WAIT * 2;
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL).deadline(deadline));
    assert_pending!(f2.poll());
    tokio::time::advance(WAIT).await;
    assert_eq!(
        error_of(assert_ready_err!(f2.poll())),
        Error::QueueTimeout { waited: WAIT }
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_already_past_rejected_without_queueing() {
    let (mut svc, mut handle) = limited(1, 1);
    let past = Instant::now();
    tokio::time::advance(Duration::from_millis(1)).await;
    // Even with a free permit.
    let mut f1 = call(&mut svc, req(1, Priority::CRITICAL).deadline(past));
    assert_eq!(
        error_of(assert_ready_err!(f1.poll())),
        Error::DeadlineExceeded
    );
    assert_eq!(svc.stats().available, 1);
    no_request(&mut handle);

    // And when it would have to queue.
    let mut f2 = call(&mut svc, req(2, Priority::NORMAL));
    assert_pending!(f2.poll());
    let mut f3 = call(&mut svc, req(3, Priority::NORMAL).deadline(past));
    assert_eq!(svc.stats().queued, 0, "never queued");
    assert_eq!(
        error_of(assert_ready_err!(f3.poll())),
        Error::DeadlineExceeded
    );
}

// ===== sharing =====

#[tokio::test(start_paused = true)]
async fn clones_share_one_limiter() {
    let (mut a, _handle) = limited(1, 0);
    let mut b = a.clone();
    let mut fa = call(&mut a, req(1, Priority::NORMAL));
    assert_pending!(fa.poll());
    let mut fb = call(&mut b, req(2, Priority::NORMAL));
    assert!(matches!(
        error_of(assert_ready_err!(fb.poll())),
        Error::Overloaded { .. }
    ));
    assert_eq!(b.stats().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn layer_applied_twice_gives_separate_limiters() {
    let layer = layer(1, 0);
    let (m1, _h1) = mock::pair::<RequestMeta, String>();
    let (m2, _h2) = mock::pair::<RequestMeta, String>();
    let mut a = layer.layer(m1);
    let mut b = layer.clone().layer(m2);
    assert!(!layer.is_shared() && layer.stats().is_none());
    let mut fa = call(&mut a, req(1, Priority::NORMAL));
    let mut fb = call(&mut b, req(2, Priority::NORMAL));
    assert_pending!(fa.poll());
    assert_pending!(fb.poll());
    assert_eq!(a.stats().in_flight, 1);
    assert_eq!(b.stats().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn shared_layer_shares_one_limiter() {
    let layer = ConcurrencyLimitLayer::builder()
        .max_in_flight(1)
        .build_shared()
        .unwrap();
    let (m1, _h1) = mock::pair::<RequestMeta, String>();
    let (m2, _h2) = mock::pair::<RequestMeta, String>();
    let mut a = layer.layer(m1);
    let mut b = layer.clone().layer(m2);
    let mut fa = call(&mut a, req(1, Priority::NORMAL));
    assert_pending!(fa.poll());
    let mut fb = call(&mut b, req(2, Priority::NORMAL));
    assert!(matches!(
        error_of(assert_ready_err!(fb.poll())),
        Error::Overloaded { .. }
    ));
    assert_eq!(layer.stats().map(|s| s.in_flight), Some(1));
    drop(fa);
    assert_eq!(layer.stats().map(|s| s.available), Some(1));
}

// ===== configuration =====

#[test]
fn config_errors_name_the_field() {
    let b = ConcurrencyLimitLayer::builder;
    let field = |r: Result<ConcurrencyLimitLayer, llm_sluice::ConfigError>| r.unwrap_err().field();
    assert_eq!(field(b().build()), "max_in_flight");
    assert_eq!(field(b().max_in_flight(0).build()), "max_in_flight");
    assert_eq!(
        field(b().max_in_flight(usize::MAX).build()),
        "max_in_flight"
    );
    let largest = b().max_in_flight(usize::MAX / 2).build().unwrap();
    assert_eq!(largest.max_in_flight(), usize::MAX / 2);
    assert_eq!(
        field(b().max_in_flight(1).max_queued(5).build()),
        "max_queue_wait"
    );
    assert_eq!(
        field(
            b().max_in_flight(1)
                .max_queued(5)
                .max_queue_wait(Duration::ZERO)
                .build()
        ),
        "max_queue_wait"
    );
    assert_eq!(
        field(
            b().max_in_flight(1)
                .max_queued(5)
                .max_queue_wait(WAIT)
                .aging(Duration::ZERO)
                .build_shared()
        ),
        "aging"
    );
    let ok = b().max_in_flight(4).build().unwrap();
    assert_eq!(ok.max_queued(), 0);
    assert_eq!(ok.aging(), Some(llm_sluice::concurrency::DEFAULT_AGING));
    assert!(format!("{ok:?}").contains("max_in_flight: 4"));
}

#[tokio::test]
async fn works_through_service_builder_and_ready() {
    use tower::{ServiceBuilder, ServiceExt};
    let mut svc = ServiceBuilder::new()
        .layer(layer(2, 2))
        .service_fn(|r: RequestMeta| async move { Ok::<_, BoxError>(r.tokens * 2) });
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(req(21, Priority::LOW))
        .await
        .unwrap();
    assert_eq!(out, 42);
    assert_eq!(svc.stats().available, 2);
}
