//! Half-open: a probe slot whose call came back ignored (429, caller error)
//! or was dropped goes to the next caller, and the breaker re-opens only on
//! a failure (issue 14, item 2).

use std::sync::{Arc, Mutex};

use llm_sluice::breaker::{CircuitBreakerBuilder, CircuitBreakerLayer, CircuitState, StateChange};
use tokio::time::Instant;

use super::{rejected, run, svc, Call, Reply, S};

type Log = Arc<Mutex<Vec<(CircuitState, CircuitState)>>>;

/// The reported set-up: open on the first failure for 10 s, doubling up to
/// 80 s, one probe, a 30 s maximum wait; every state change logged.
fn reported() -> (CircuitBreakerBuilder, Log) {
    let log: Log = Arc::default();
    let builder = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(10))
        .open_duration_backoff(2.0, S(80))
        .backoff_reset_after(S(3_600))
        .half_open_probes(1)
        .half_open_max_wait(S(30))
        .on_state_change({
            let log = log.clone();
            move |c: &StateChange| log.lock().unwrap().push((c.from, c.to))
        });
    (builder, log)
}

fn opened_then_half_open() -> [(CircuitState, CircuitState); 2] {
    use CircuitState::*;
    [(Closed, Open), (Open, HalfOpen)]
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_only_on_a_failure() {
    let (builder, log) = reported();
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    let start = Instant::now();
    assert_eq!(run(&mut svc, Call::fail()).await, Ok(500));
    tokio::time::advance(S(10)).await;

    // Ten minutes of nothing but 429s, one call every 7 s, each answered
    // after a second: twenty maximum waits, and not one refusal.
    let mut calls = 0;
    while start.elapsed() < S(610) {
        let answer = run(&mut svc, Call::new(Reply::Status(429)).after(S(1))).await;
        assert_eq!(answer, Ok(429), "refused at {:?}", start.elapsed());
        assert_eq!(handle.state(), CircuitState::HalfOpen);
        calls += 1;
        tokio::time::advance(S(6)).await;
    }
    assert!(calls > 80, "{calls} calls");
    assert_eq!(
        *log.lock().unwrap(),
        opened_then_half_open(),
        "no re-opening"
    );

    // A failure does re-open it, for the next, longer, open duration.
    assert_eq!(run(&mut svc, Call::fail()).await, Ok(500));
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(20))));
    tokio::time::advance(S(20)).await;
    assert_eq!(run(&mut svc, Call::ok()).await, Ok(200));
    use CircuitState::*;
    assert_eq!(
        log.lock().unwrap()[2..],
        [(HalfOpen, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_hands_its_slot_to_the_next_caller() {
    let (builder, log) = reported();
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(10)).await;
    let spawn_call = {
        let svc = svc.clone();
        move |call: Call| {
            let mut svc = svc.clone();
            tokio::spawn(async move { run(&mut svc, call).await })
        }
    };

    // The probe takes the one slot for 20 s; others are refused until its
    // maximum wait at the latest.
    let first = spawn_call(Call::new(Reply::Status(429)).after(S(20)));
    tokio::task::yield_now().await;
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(30))));
    assert_eq!(first.await.unwrap(), Ok(429));

    // Its 429 freed the slot: the next caller is the probe, and stays one
    // past 30 s after half-open began (which used to re-open the breaker).
    let second = spawn_call(Call::new(Reply::Status(400)).after(S(20)));
    tokio::task::yield_now().await;
    tokio::time::advance(S(15)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(
        run(&mut svc, Call::ok()).await,
        Err(Some(S(15))),
        "the slot is the second probe's"
    );
    assert_eq!(second.await.unwrap(), Ok(400));
    assert_eq!(run(&mut svc, Call::ok()).await, Ok(200), "handed on again");
    assert_eq!(handle.state(), CircuitState::Closed);
    use CircuitState::*;
    assert_eq!(
        *log.lock().unwrap(),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_hands_its_slot_to_the_next_caller() {
    let (builder, log) = reported();
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(10)).await;

    // Callers that give up on their probe (a client timeout, a task
    // aborted): each drop frees the slot and counts as nothing.
    let waited = tokio::time::timeout(S(5), run(&mut svc, Call::new(Reply::Hang))).await;
    assert!(waited.is_err(), "the caller timed out");
    let aborted = tokio::spawn({
        let mut svc = svc.clone();
        async move { run(&mut svc, Call::new(Reply::Hang)).await }
    });
    tokio::task::yield_now().await;
    assert!(rejected(&run(&mut svc, Call::ok()).await), "slot taken");
    aborted.abort();
    assert!(aborted.await.unwrap_err().is_cancelled());

    // Long past 30 s since half-open began: still half-open, and the next
    // caller is let through as the probe.
    tokio::time::advance(S(60)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(run(&mut svc, Call::ok()).await, Ok(200));
    use CircuitState::*;
    assert_eq!(
        *log.lock().unwrap(),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_max_wait_runs_from_each_probes_admission() {
    let (builder, log) = reported();
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(10)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);

    // Nobody calls for 25 s; then a probe that never answers.
    tokio::time::advance(S(25)).await;
    let hung = tokio::spawn({
        let mut svc = svc.clone();
        async move { run(&mut svc, Call::new(Reply::Hang)).await }
    });
    tokio::task::yield_now().await;
    tokio::time::advance(S(6)).await;
    assert_eq!(
        run(&mut svc, Call::ok()).await,
        Err(Some(S(24))),
        "the probe has 24 s of its 30 left"
    );
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // 30 s after it was let through, the hung probe is a failed probe.
    tokio::time::advance(S(24)).await;
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(
        run(&mut svc, Call::ok()).await,
        Err(Some(S(20))),
        "the second opening in a row"
    );
    assert!(!hung.is_finished());
    hung.abort();
    let _ = hung.await;
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "dropping it later changes nothing"
    );
    use CircuitState::*;
    assert_eq!(
        *log.lock().unwrap(),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Open)]
    );
}
