//! Circuit breaker: transitions, windows, slow calls, probes, partitions,
//! handle, metrics, and a model-based test, all on paused time.

mod half_open;
mod model;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use llm_sluice::breaker::{CircuitBreakerLayer, CircuitState, StateChange};
use llm_sluice::classify::{Classification, ErrorRef, LlmResponse, Outcome};
use llm_sluice::{Error, LlmRequest, PartitionKey};
use tower::{BoxError, Layer, Service, ServiceExt};

/// What the fake upstream does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Answers with this HTTP status.
    Status(u16),
    /// Fails with a transport error.
    Reset,
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub key: Option<PartitionKey>,
    pub reply: Reply,
    pub latency: Duration,
}

impl Call {
    pub fn new(reply: Reply) -> Self {
        Call {
            key: None,
            reply,
            latency: Duration::ZERO,
        }
    }
    pub fn ok() -> Self {
        Call::new(Reply::Status(200))
    }
    pub fn fail() -> Self {
        Call::new(Reply::Status(500))
    }
    pub fn after(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(PartitionKey::from(key));
        self
    }
}

impl LlmRequest for Call {
    fn partition(&self) -> Option<PartitionKey> {
        self.key.clone()
    }
}

/// A typed response, classified by the status rules of OpenAI-compatible
/// APIs (the crate's HTTP classifier does the same for `http::Response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    status: u16,
}

impl Resp {
    pub fn status(&self) -> u16 {
        self.status
    }
}

impl LlmResponse for Resp {
    fn classification(&self) -> Classification {
        let outcome = match self.status {
            200..=299 => Outcome::Success,
            408 => Outcome::Timeout,
            429 => Outcome::RateLimited {
                quota_exhausted: false,
            },
            529 => Outcome::Overloaded,
            400..=499 => Outcome::ClientError,
            _ => Outcome::ServerError,
        };
        Classification::new(outcome).with_status(self.status)
    }
}

pub type Upstream = tower::util::BoxCloneSyncService<Call, Resp, BoxError>;

/// An upstream that sleeps `latency` (tokio time) then does what `reply` says.
pub fn upstream() -> Upstream {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|call: Call| async move {
        if call.reply == Reply::Hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(call.latency).await;
        match call.reply {
            Reply::Status(status) => Ok(Resp { status }),
            Reply::Reset | Reply::Hang => Err(BoxError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            ))),
        }
    }))
}

type Svc = llm_sluice::breaker::CircuitBreaker<Upstream, llm_sluice::classify::DefaultClassifier>;

fn svc(layer: &CircuitBreakerLayer) -> Svc {
    layer.layer(upstream())
}

/// Runs one call to the end; `Err(Some(retry_after))` if the breaker refused it.
async fn run(svc: &mut Svc, call: Call) -> Result<u16, Option<Duration>> {
    let result = svc.ready().await.unwrap().call(call).await;
    match result {
        Ok(resp) => Ok(resp.status()),
        Err(err) => match err.downcast_ref::<Error>() {
            Some(Error::CircuitOpen { retry_after }) => Err(Some(*retry_after)),
            _ => Err(None),
        },
    }
}

fn rejected(r: &Result<u16, Option<Duration>>) -> bool {
    matches!(r, Err(Some(_)))
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_and_fail_fast() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .open_duration(S(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    run(&mut svc, Call::fail()).await.unwrap();
    run(&mut svc, Call::ok()).await.unwrap();
    run(&mut svc, Call::fail()).await.unwrap();
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "a success broke the run"
    );
    let _ = run(&mut svc, Call::new(Reply::Reset)).await;
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(S(4)).await;
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(6))));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_waits_for_minimum_calls() {
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .count_window(10)
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    for _ in 0..3 {
        run(&mut svc, Call::fail()).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed, "3 calls < minimum 4");
    run(&mut svc, Call::ok()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "3 of 4 failed");
}

#[tokio::test(start_paused = true)]
async fn count_window_forgets_old_failures() {
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .count_window(4)
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    // F F S S: 2 of 4 = 0.5 would trip, so start with one failure only.
    run(&mut svc, Call::fail()).await.unwrap();
    for _ in 0..3 {
        run(&mut svc, Call::ok()).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    // The first failure leaves the window; one new failure makes 1 of 4.
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "old failure forgotten"
    );
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "2 of the last 4");
}

#[tokio::test(start_paused = true)]
async fn time_window_calls_expire() {
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .time_window(S(20))
        .minimum_calls(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    run(&mut svc, Call::fail()).await.unwrap();
    // Both failures leave the 20 s window.
    tokio::time::advance(S(21)).await;
    run(&mut svc, Call::fail()).await.unwrap();
    run(&mut svc, Call::ok()).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "only 2 calls in window"
    );
    run(&mut svc, Call::ok()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed, "1 of 3 failed");
    tokio::time::advance(S(5)).await;
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "2 of 4 failed");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_even_when_successful() {
    let layer = CircuitBreakerLayer::builder()
        .slow_call(S(2), 0.5)
        .count_window(4)
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::ok().after(S(3))).await.unwrap();
    run(&mut svc, Call::ok().after(S(2))).await.unwrap(); // not slower than 2 s
    run(&mut svc, Call::ok()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    run(&mut svc, Call::ok().after(S(5))).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "2 of 4 slow");
}

#[tokio::test(start_paused = true)]
async fn half_open_probes_close_the_breaker() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(10))
        .half_open_probes(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(10)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let mut a = svc.clone();
    let mut b = svc.clone();
    let p1 = tokio::spawn(async move { run(&mut a, Call::ok().after(S(1))).await });
    let p2 = tokio::spawn(async move { run(&mut b, Call::ok().after(S(1))).await });
    tokio::task::yield_now().await;
    assert!(rejected(&run(&mut svc, Call::ok()).await), "only 2 probes");
    assert_eq!(p1.await.unwrap(), Ok(200));
    assert_eq!(p2.await.unwrap(), Ok(200));
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(run(&mut svc, Call::ok()).await, Ok(200));
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens_with_growing_duration() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(10))
        .open_duration_backoff(2.0, S(30))
        .backoff_reset_after(S(100))
        .half_open_probes(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(10))));
    tokio::time::advance(S(10)).await;
    run(&mut svc, Call::fail()).await.unwrap(); // the probe fails
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(20))));
    tokio::time::advance(S(20)).await;
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(30))), "capped");
    tokio::time::advance(S(30)).await;
    run(&mut svc, Call::ok()).await.unwrap(); // the probe succeeds
    assert_eq!(handle.state(), CircuitState::Closed);
    // Tripping again soon keeps growing...
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(30))));
    tokio::time::advance(S(30)).await;
    run(&mut svc, Call::ok()).await.unwrap();
    // ...but after a healthy closed period it is back at its base.
    tokio::time::advance(S(100)).await;
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(10))));
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_releases_probe_slot() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(1))
        .half_open_probes(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(1)).await;
    let probe = svc.ready().await.unwrap().call(Call::new(Reply::Hang));
    assert!(rejected(&run(&mut svc, Call::ok()).await), "slot taken");
    drop(probe);
    assert_eq!(
        handle.state(),
        CircuitState::HalfOpen,
        "drop counts as nothing"
    );
    assert_eq!(run(&mut svc, Call::ok()).await, Ok(200), "slot given back");
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_probe_gives_its_slot_back() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(1))
        .half_open_probes(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(1)).await;
    assert_eq!(run(&mut svc, Call::new(Reply::Status(429))).await, Ok(429));
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(run(&mut svc, Call::ok()).await, Ok(200));
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_reopens_when_probes_hang() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(60))
        .half_open_probes(1)
        .half_open_max_wait(S(30))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(60)).await;
    let late = tokio::spawn({
        let mut svc = svc.clone();
        async move { run(&mut svc, Call::ok().after(S(40))).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(run(&mut svc, Call::ok()).await, Err(Some(S(30))));
    tokio::time::advance(S(30)).await;
    assert_eq!(handle.state(), CircuitState::Open, "probe never finished");
    // The late probe's success arrives after the re-opening: not counted.
    assert_eq!(late.await.unwrap(), Ok(200));
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn caller_errors_and_429_are_neither_success_nor_failure() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    for status in [400, 401, 404, 422, 429] {
        assert_eq!(
            run(&mut svc, Call::new(Reply::Status(status))).await,
            Ok(status)
        );
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    run(&mut svc, Call::new(Reply::Status(529))).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "500 then 529 in a row");
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_408_are_failures() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::new(Reply::Status(408))).await.unwrap();
    let mut timed = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .timeout(S(1))
        .service(upstream());
    let err = timed
        .ready()
        .await
        .unwrap()
        .call(Call::ok().after(S(5)))
        .await
        .unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "layer clones share the breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn custom_classifier_decides_what_fails() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .classifier(|r: Result<&Resp, ErrorRef<'_>>| match r {
            Ok(resp) if resp.status() == 404 => Classification::new(Outcome::ServerError),
            _ => Classification::success(None),
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream());
    svc.ready().await.unwrap().call(Call::fail()).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "500 is a success here"
    );
    svc.ready()
        .await
        .unwrap()
        .call(Call::new(Reply::Status(404)))
        .await
        .unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn outcomes_from_an_older_state_are_ignored() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .open_duration(S(1))
        .half_open_probes(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    let slow = tokio::spawn({
        let mut svc = svc.clone();
        async move { run(&mut svc, Call::fail().after(S(3))).await }
    });
    tokio::task::yield_now().await;
    run(&mut svc, Call::fail()).await.unwrap();
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(S(1)).await;
    run(&mut svc, Call::ok()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    // The failure admitted while closed long ago lands now: not counted.
    slow.await.unwrap().unwrap();
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "only one failure counts"
    );
}

#[tokio::test(start_paused = true)]
async fn partitions_have_their_own_breakers() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .per_partition(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail().key("model-a")).await.unwrap();
    assert!(rejected(&run(&mut svc, Call::ok().key("model-a")).await));
    assert_eq!(run(&mut svc, Call::ok().key("model-b")).await, Ok(200));
    assert_eq!(
        run(&mut svc, Call::ok()).await,
        Ok(200),
        "unkeyed is separate"
    );
    let a = PartitionKey::from("model-a");
    assert_eq!(handle.partition_state(&a), Some(CircuitState::Open));
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.partitions(), 2);
}

#[tokio::test(start_paused = true)]
async fn partition_memory_is_bounded() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .per_partition(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail().key("a")).await.unwrap();
    // `a` is open (not idle): new keys share the overflow breaker.
    run(&mut svc, Call::fail().key("b")).await.unwrap();
    assert!(
        rejected(&run(&mut svc, Call::ok().key("c")).await),
        "c shares b's overflow breaker"
    );
    assert_eq!(handle.partitions(), 1);
    // Healthy keys are idle and make room, once the map looks for idle
    // entries again (a fruitless look is not repeated within a second).
    handle.reset_all();
    tokio::time::advance(S(1)).await;
    assert_eq!(run(&mut svc, Call::ok().key("d")).await, Ok(200));
    assert_eq!(
        handle.partition_state(&PartitionKey::from("d")),
        Some(CircuitState::Closed)
    );
    assert!(
        handle.partition_state(&PartitionKey::from("a")).is_none(),
        "evicted"
    );
    for i in 0..200 {
        run(&mut svc, Call::ok().key(&format!("k{i}")))
            .await
            .unwrap();
    }
    assert_eq!(handle.partitions(), 1);
}

#[tokio::test(start_paused = true)]
async fn handle_forces_and_resets() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    handle.force_open();
    tokio::time::advance(S(60)).await;
    assert_eq!(
        handle.state(),
        CircuitState::ForcedOpen,
        "does not time out"
    );
    assert!(rejected(&run(&mut svc, Call::ok()).await));
    handle.force_closed();
    for _ in 0..5 {
        run(&mut svc, Call::fail()).await.unwrap();
    }
    assert_eq!(
        handle.state(),
        CircuitState::ForcedClosed,
        "nothing recorded"
    );
    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    run(&mut svc, Call::fail()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    handle.reset();
    assert_eq!(run(&mut svc, Call::ok()).await, Ok(200));
}

#[tokio::test(start_paused = true)]
async fn state_change_callback_sees_every_transition() {
    let seen: Arc<Mutex<Vec<(CircuitState, CircuitState)>>> = Arc::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(1))
        .half_open_probes(1)
        .on_state_change({
            let seen = seen.clone();
            move |c: &StateChange| seen.lock().unwrap().push((c.from, c.to))
        })
        .build()
        .unwrap();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(1)).await;
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(1)).await;
    run(&mut svc, Call::ok()).await.unwrap();
    use CircuitState::*;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed)
        ]
    );
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_count_calls_transitions_and_rejections() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = CircuitBreakerLayer::builder()
                .consecutive_failures(2)
                .build()
                .unwrap();
            let mut svc = svc(&layer);
            run(&mut svc, Call::ok()).await.unwrap();
            run(&mut svc, Call::fail()).await.unwrap();
            run(&mut svc, Call::new(Reply::Status(400))).await.unwrap();
            run(&mut svc, Call::fail()).await.unwrap();
            assert!(rejected(&run(&mut svc, Call::ok()).await));
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, labels: &[(&str, &str)]| -> Option<&DebugValue> {
        snapshot
            .iter()
            .find(|(key, ..)| {
                let k = key.key();
                k.name() == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| k.labels().any(|l| l.key() == *lk && l.value() == *lv))
            })
            .map(|(.., value)| value)
    };
    let counter = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    assert_eq!(
        counter("llm_sluice_breaker_calls_total", &[("outcome", "success")]),
        1
    );
    assert_eq!(
        counter("llm_sluice_breaker_calls_total", &[("outcome", "failure")]),
        2
    );
    assert_eq!(
        counter("llm_sluice_breaker_calls_total", &[("outcome", "ignored")]),
        1
    );
    assert_eq!(
        counter(
            "llm_sluice_breaker_transitions_total",
            &[("from", "closed"), ("to", "open")]
        ),
        1
    );
    assert_eq!(
        counter(
            "llm_sluice_rejected_total",
            &[("layer", "breaker"), ("reason", "circuit_open")]
        ),
        1
    );
    match find("llm_sluice_breaker_state", &[]) {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 2.0),
        other => panic!("state gauge: {other:?}"),
    }
}

#[test]
fn invalid_settings_fail_at_build() {
    let b = CircuitBreakerLayer::builder;
    let field = |r: Result<CircuitBreakerLayer, llm_sluice::ConfigError>| r.unwrap_err().field();
    assert_eq!(
        field(b().consecutive_failures(0).build()),
        "consecutive_failures"
    );
    assert_eq!(field(b().failure_rate(0.0).build()), "failure_rate");
    assert_eq!(field(b().failure_rate(1.5).build()), "failure_rate");
    assert_eq!(field(b().failure_rate(f64::NAN).build()), "failure_rate");
    assert_eq!(field(b().count_window(0).build()), "count_window");
    assert_eq!(
        field(b().time_window(Duration::ZERO).build()),
        "time_window"
    );
    assert_eq!(
        field(b().count_window(5).time_window(S(1)).build()),
        "time_window"
    );
    assert_eq!(field(b().minimum_calls(0).build()), "minimum_calls");
    assert_eq!(
        field(b().slow_call(Duration::ZERO, 0.5).build()),
        "slow_call"
    );
    assert_eq!(field(b().slow_call(S(1), 0.0).build()), "slow_call");
    assert_eq!(
        field(b().open_duration(Duration::ZERO).build()),
        "open_duration"
    );
    assert_eq!(
        field(b().open_duration_backoff(0.5, S(60)).build()),
        "open_duration_backoff"
    );
    assert_eq!(
        field(b().open_duration_backoff(2.0, S(1)).build()),
        "open_duration_backoff"
    );
    assert_eq!(field(b().half_open_probes(0).build()), "half_open_probes");
    assert_eq!(
        field(b().half_open_max_wait(Duration::ZERO).build()),
        "half_open_max_wait"
    );
    assert_eq!(field(b().per_partition(0).build()), "per_partition");
    assert!(b().build().is_ok());
}

/// A probe racing clone, polled once.
fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    fut.poll(&mut Context::from_waker(&waker))
}

#[tokio::test(start_paused = true)]
async fn half_open_race_admits_exactly_n_probes() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(1))
        .half_open_probes(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::fail()).await.unwrap();
    tokio::time::advance(S(1)).await;
    // 40 clones, each polled concurrently by its own task.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut svc = svc.clone();
        tasks.spawn(async move { run(&mut svc, Call::ok().after(S(2))).await });
    }
    let mut passed = 0;
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => passed += 1,
            Err(Some(_)) => refused += 1,
            Err(None) => panic!("unexpected error"),
        }
    }
    assert_eq!((passed, refused), (3, 37));
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[test]
fn half_open_race_across_threads_admits_exactly_n_probes() {
    // No runtime: tokio's clock falls back to the system clock, and a 1 ns
    // open duration makes the breaker half-open at its next look.
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_nanos(1))
        .half_open_probes(5)
        .half_open_max_wait(S(3_600))
        .build()
        .unwrap();
    let handle = layer.handle();
    let base = svc(&layer);
    let mut first = base.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let r = rt.block_on(async { first.ready().await.unwrap().call(Call::fail()).await });
    assert!(r.is_ok());
    for round in 0..3 {
        let barrier = std::sync::Barrier::new(16);
        let passed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let mut held = Vec::new();
            for _ in 0..16 {
                let mut svc = base.clone();
                let barrier = &barrier;
                let passed = &passed;
                held.push(s.spawn(move || {
                    barrier.wait();
                    let mut fut = Box::pin(svc.call(Call::new(Reply::Hang)));
                    let pending = poll_once(fut.as_mut()).is_pending();
                    if pending {
                        passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    // Hold the probe until every thread has tried.
                    barrier.wait();
                    drop(fut);
                }));
            }
        });
        assert_eq!(passed.into_inner(), 5, "round {round}");
        assert_eq!(
            handle.state(),
            CircuitState::HalfOpen,
            "drops count as nothing"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_forwards_inner_readiness_and_errors_pass_through() {
    use tokio_test::{assert_pending, assert_ready_ok};
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mut svc, mut mock) = tower_test::mock::spawn_layer::<Call, Resp, _>(layer);
    mock.allow(0);
    assert_pending!(svc.poll_ready());
    mock.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Call::ok());
    let (req, send) = mock.next_request().await.unwrap();
    assert_eq!(req, Call::ok());
    send.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "reset",
    ));
    let err = fut.await.unwrap_err();
    assert!(
        err.is::<std::io::Error>(),
        "the inner error passes through boxed"
    );
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "and counted as a failure"
    );
    // Open: refused without reaching the inner service.
    mock.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let err = svc.call(Call::ok()).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::CircuitOpen { .. })
    ));
    assert!(mock.poll_request().is_pending(), "inner never called");
}

#[tokio::test(start_paused = true)]
async fn idle_partitions_are_evicted_and_callbacks_name_the_key() {
    let seen: Arc<Mutex<Vec<Option<PartitionKey>>>> = Arc::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(S(1))
        .half_open_probes(1)
        .per_partition(8)
        .on_state_change({
            let seen = seen.clone();
            move |c: &StateChange| seen.lock().unwrap().push(c.partition.clone())
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    run(&mut svc, Call::ok().key("healthy")).await.unwrap();
    run(&mut svc, Call::fail().key("sick")).await.unwrap();
    assert_eq!(handle.partitions(), 2);
    assert_eq!(handle.evict_idle(), 1, "only the healthy breaker is idle");
    assert_eq!(
        handle.partition_state(&PartitionKey::from("sick")),
        Some(CircuitState::Open)
    );
    tokio::time::advance(S(1)).await;
    run(&mut svc, Call::ok().key("sick")).await.unwrap();
    assert_eq!(
        handle.evict_idle(),
        0,
        "remembers its opening for the backoff"
    );
    tokio::time::advance(S(1)).await;
    assert_eq!(
        handle.evict_idle(),
        1,
        "healthy for backoff_reset_after: idle"
    );
    assert_eq!(handle.partitions(), 0);
    let sick = Some(PartitionKey::from("sick"));
    assert_eq!(*seen.lock().unwrap(), [sick.clone(), sick.clone(), sick]);
}
