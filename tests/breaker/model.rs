//! A model-based test: random outcomes, latencies, overlapping and dropped
//! calls and time advances drive the layer and a small reference model;
//! their states and state changes agree at every step.
//!
//! Besides the model, one rule is checked from outside it, because a model
//! written after the code can share the code's mistake: the breaker never
//! opens without a failure. Every change to open must follow, since the
//! change before it, a failed or slow call, or a call left unanswered for
//! the half-open maximum wait.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use llm_sluice::breaker::{CircuitBreakerLayer, CircuitState, StateChange};
use llm_sluice::classify::DefaultClassifier;
use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};

use super::{poll_once, run, Call, Reply, Resp, Upstream};

#[derive(Debug, Clone)]
struct Settings {
    consecutive: Option<u32>,
    rate: Option<f64>,
    slow: Option<(Duration, f64)>,
    time_window: bool,
    probes: u32,
}

const COUNT: usize = 5;
const SPAN: Duration = Duration::from_secs(10);
const BUCKETS: u64 = 20;
const MIN_CALLS: u32 = 3;
const OPEN: Duration = Duration::from_secs(5);
const MAX_OPEN: Duration = Duration::from_secs(20);
const RESET_AFTER: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy)]
enum Step {
    /// A call run to its end: answered `reply` (0: a reset) after `latency_ms`.
    Call {
        reply: u16,
        latency_ms: u64,
    },
    /// A call that stays in flight until `End` or `Cancel` picks it.
    Begin,
    /// Answers the in-flight call `pick` (modulo their number) with `reply`.
    End {
        pick: usize,
        reply: u16,
    },
    /// Drops the in-flight call `pick`: its caller gave up.
    Cancel {
        pick: usize,
    },
    Advance(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed { since: Instant },
    Open { until: Instant },
    HalfOpen { done: u32, failed: u32, slow: u32 },
}

/// How the model let a call through.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Admission {
    /// Closed, in the period numbered so.
    Closed(u64),
    /// A half-open probe with this ticket.
    Probe(u64),
}

/// The reference: plain lists and the rules as the docs state them.
struct Model {
    s: Settings,
    origin: Instant,
    phase: Phase,
    /// Bumped on every change of phase.
    period: u64,
    /// Half-open probes in flight: ticket and admission time.
    probes: Vec<(u64, Instant)>,
    next_ticket: u64,
    calls: Vec<(Instant, bool, bool)>,
    run: u32,
    openings: u32,
    changes: Vec<(CircuitState, CircuitState)>,
}

impl Model {
    fn new(s: Settings, origin: Instant) -> Self {
        Model {
            s,
            origin,
            phase: Phase::Closed { since: origin },
            period: 0,
            probes: Vec::new(),
            next_ticket: 0,
            calls: Vec::new(),
            run: 0,
            openings: 0,
            changes: Vec::new(),
        }
    }

    fn state(&self) -> CircuitState {
        match self.phase {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn set(&mut self, phase: Phase) {
        let from = self.state();
        self.phase = phase;
        self.period += 1;
        self.probes.clear();
        self.changes.push((from, self.state()));
    }

    fn tick(&mut self, now: Instant) {
        match self.phase {
            Phase::Open { until } if now >= until => self.set(Phase::HalfOpen {
                done: 0,
                failed: 0,
                slow: 0,
            }),
            Phase::HalfOpen { .. } => {
                // A probe unanswered for the maximum wait is a failed probe.
                while matches!(self.phase, Phase::HalfOpen { .. }) {
                    let Some(&(ticket, since)) = self.probes.iter().min_by_key(|p| (p.1, p.0))
                    else {
                        break;
                    };
                    if now < since + MAX_WAIT {
                        break;
                    }
                    self.probes.retain(|p| p.0 != ticket);
                    self.probe_done(true, false, now);
                }
            }
            _ => {}
        }
    }

    fn open(&mut self, now: Instant) {
        if let Phase::Closed { since } = self.phase {
            if now - since >= RESET_AFTER {
                self.openings = 0;
            }
        }
        let d = (OPEN * 2u32.pow(self.openings.min(10))).min(MAX_OPEN);
        self.openings += 1;
        self.set(Phase::Open { until: now + d });
        self.calls.clear();
        self.run = 0;
    }

    fn admit(&mut self, now: Instant) -> Option<Admission> {
        self.tick(now);
        match self.phase {
            Phase::Closed { .. } => Some(Admission::Closed(self.period)),
            Phase::Open { .. } => None,
            Phase::HalfOpen { done, .. } => {
                // Counted probes keep their slots; ones in flight hold theirs.
                if done + (self.probes.len() as u32) < self.s.probes {
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    self.probes.push((ticket, now));
                    Some(Admission::Probe(ticket))
                } else {
                    None
                }
            }
        }
    }

    fn in_window(&self, now: Instant) -> Vec<(bool, bool)> {
        if self.s.time_window {
            let w = SPAN.as_nanos() / BUCKETS as u128;
            let idx = |t: Instant| (t - self.origin).as_nanos() / w;
            self.calls
                .iter()
                .filter(|(t, ..)| idx(now) - idx(*t) < BUCKETS as u128)
                .map(|&(_, f, s)| (f, s))
                .collect()
        } else {
            let skip = self.calls.len().saturating_sub(COUNT);
            self.calls[skip..].iter().map(|&(_, f, s)| (f, s)).collect()
        }
    }

    fn probe_done(&mut self, f: bool, s: bool, now: Instant) {
        let Phase::HalfOpen { done, failed, slow } = &mut self.phase else {
            return;
        };
        *done += 1;
        *failed += f as u32;
        *slow += s as u32;
        let n = self.s.probes as f64;
        let bad = match self.s.rate {
            Some(r) => *failed as f64 >= r * n,
            None => *failed > 0,
        } || self.s.slow.is_some_and(|(_, r)| *slow as f64 >= r * n);
        if bad {
            self.open(now);
        } else if *done == self.s.probes {
            self.set(Phase::Closed { since: now });
            self.calls.clear();
            self.run = 0;
        }
    }

    /// A call let through as `admission` ended: `outcome` is `(failed,
    /// slow)` if it counts, `None` if it is neither success nor failure.
    fn record(&mut self, admission: Admission, outcome: Option<(bool, bool)>, now: Instant) {
        self.tick(now);
        match admission {
            Admission::Closed(period) => {
                let (Phase::Closed { .. }, Some((failed, slow))) = (self.phase, outcome) else {
                    return;
                };
                if period != self.period {
                    return;
                }
                self.run = if failed { self.run + 1 } else { 0 };
                self.calls.push((now, failed, slow));
                let w = self.in_window(now);
                let n = w.len() as f64;
                let fails = w.iter().filter(|c| c.0).count() as f64;
                let slows = w.iter().filter(|c| c.1).count() as f64;
                let rates = w.len() as u32 >= MIN_CALLS
                    && (self.s.rate.is_some_and(|r| fails >= r * n)
                        || self.s.slow.is_some_and(|(_, r)| slows >= r * n));
                if self.s.consecutive.is_some_and(|c| self.run >= c) || rates {
                    self.open(now);
                }
            }
            Admission::Probe(_) => {
                if !self.cancel(admission) {
                    return; // an earlier phase's, or counted as hung
                }
                // Ignored: the slot is free again, nothing else changes.
                if let Some((f, s)) = outcome {
                    self.probe_done(f, s, now);
                }
            }
        }
    }

    /// A call's future was dropped: a probe frees its slot. Returns whether
    /// it was a probe in flight in this phase.
    fn cancel(&mut self, admission: Admission) -> bool {
        let Admission::Probe(ticket) = admission else {
            return false;
        };
        let before = self.probes.len();
        self.probes.retain(|p| p.0 != ticket);
        self.probes.len() < before
    }
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop::option::of(1u32..4),
        prop::option::of(prop::sample::select(vec![0.3, 0.5, 1.0])),
        prop::option::of(prop::sample::select(vec![0.5, 1.0])),
        any::<bool>(),
        1u32..4,
    )
        .prop_map(|(consecutive, rate, slow, time_window, probes)| {
            let mut s = Settings {
                consecutive,
                rate,
                slow: slow.map(|r| (Duration::from_secs(2), r)),
                time_window,
                probes,
            };
            if s.consecutive.is_none() && s.rate.is_none() && s.slow.is_none() {
                s.rate = Some(0.5); // the builder's default
            }
            s
        })
}

fn reply() -> impl Strategy<Value = u16> {
    // 429 and 400 twice as often as in traffic: they are what half-open
    // must pass through without changing state.
    prop::sample::select(vec![200u16, 200, 500, 503, 429, 429, 400, 400, 0])
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (reply(), prop::sample::select(vec![0u64, 500, 2_000, 3_000, 9_000]))
            .prop_map(|(reply, latency_ms)| Step::Call { reply, latency_ms }),
        2 => Just(Step::Begin),
        2 => (any::<usize>(), reply()).prop_map(|(pick, reply)| Step::End { pick, reply }),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        2 => prop::sample::select(vec![100u64, 1_000, 4_000, 5_000, 11_000, 31_000]).prop_map(Step::Advance),
    ]
}

fn to_reply(code: u16) -> Reply {
    if code == 0 {
        Reply::Reset
    } else {
        Reply::Status(code)
    }
}

/// `(failed, slow)` for a counted outcome, `None` for an ignored one.
fn outcome(s: &Settings, code: u16, took: Duration) -> Option<(bool, bool)> {
    let failed = match code {
        200 => false,
        500 | 503 | 0 => true,
        _ => return None,
    };
    Some((failed, s.slow.is_some_and(|(d, _)| took > d)))
}

/// Where a held call's answer comes from: set before the call, taken by
/// the upstream when the breaker lets the call through.
type Slot = Arc<Mutex<Option<oneshot::Receiver<Reply>>>>;

/// The test upstream, except that a `Hang` call waits for the answer sent
/// through the receiver in `slot` (and hangs for good without one).
fn held_upstream(slot: Slot) -> Upstream {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |call: Call| {
        let held = (call.reply == Reply::Hang)
            .then(|| slot.lock().unwrap().take())
            .flatten();
        async move {
            let reply = match (call.reply, held) {
                (Reply::Hang, Some(rx)) => rx.await.unwrap_or(Reply::Hang),
                (reply, _) => reply,
            };
            if reply == Reply::Hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(call.latency).await;
            match reply {
                Reply::Status(status) => Ok(Resp { status }),
                Reply::Reset | Reply::Hang => Err(BoxError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset",
                ))),
            }
        }
    }))
}

type Svc = llm_sluice::breaker::CircuitBreaker<Upstream, DefaultClassifier>;
type HeldFuture = Pin<Box<<Svc as Service<Call>>::Future>>;

/// A call in flight, held by the test.
struct Held {
    future: HeldFuture,
    answer: oneshot::Sender<Reply>,
    admission: Admission,
    start: Instant,
}

fn is_circuit_open(err: &BoxError) -> bool {
    matches!(
        err.downcast_ref::<llm_sluice::Error>(),
        Some(llm_sluice::Error::CircuitOpen { .. })
    )
}

fn check(s: Settings, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let changes: Arc<Mutex<Vec<StateChange>>> = Arc::default();
        let mut b = CircuitBreakerLayer::builder()
            .minimum_calls(MIN_CALLS)
            .open_duration(OPEN)
            .open_duration_backoff(2.0, MAX_OPEN)
            .backoff_reset_after(RESET_AFTER)
            .half_open_probes(s.probes)
            .half_open_max_wait(MAX_WAIT)
            .on_state_change({
                let changes = changes.clone();
                move |c: &StateChange| changes.lock().unwrap().push(c.clone())
            });
        if let Some(n) = s.consecutive {
            b = b.consecutive_failures(n);
        }
        if let Some(r) = s.rate {
            b = b.failure_rate(r);
        }
        if let Some((d, r)) = s.slow {
            b = b.slow_call(d, r);
        }
        b = if s.time_window {
            b.time_window(SPAN)
        } else {
            b.count_window(COUNT as u32)
        };
        let origin = Instant::now();
        let layer = b.build().unwrap();
        let handle = layer.handle();
        let slot: Slot = Arc::default();
        let mut svc: Svc = layer.layer(held_upstream(slot.clone()));
        let mut model = Model::new(s.clone(), origin);
        let mut held: Vec<Held> = Vec::new();
        // The outside rule: a failure (or a call unanswered for the maximum
        // wait) seen since the last state change.
        let mut failure_seen = false;
        let mut seen_changes = 0;
        for (i, step) in steps.into_iter().enumerate() {
            let mut failed_now = false;
            match step {
                Step::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Step::Call { reply, latency_ms } => {
                    let latency = Duration::from_millis(latency_ms);
                    let start = Instant::now();
                    let admitted = model.admit(start);
                    let call = Call::new(to_reply(reply)).after(latency);
                    let result = run(&mut svc, call).await;
                    prop_assert_eq!(
                        matches!(result, Err(Some(_))),
                        admitted.is_none(),
                        "step {}: admission differs",
                        i
                    );
                    if let Some(admission) = admitted {
                        let end = Instant::now();
                        prop_assert_eq!(end - start, latency);
                        let o = outcome(&s, reply, latency);
                        failed_now |= o.is_some_and(|(f, slow)| f || slow) || latency >= MAX_WAIT;
                        model.record(admission, o, end);
                    }
                }
                Step::Begin => {
                    let start = Instant::now();
                    let admitted = model.admit(start);
                    let (answer, rx) = oneshot::channel();
                    *slot.lock().unwrap() = Some(rx);
                    svc.ready().await.unwrap();
                    let mut future = Box::pin(svc.call(Call::new(Reply::Hang)));
                    let polled = poll_once(future.as_mut());
                    // Refused calls never reach the upstream: take the
                    // receiver back so no later call finds it.
                    slot.lock().unwrap().take();
                    match (polled, admitted) {
                        (Poll::Pending, Some(admission)) => held.push(Held {
                            future,
                            answer,
                            admission,
                            start,
                        }),
                        (Poll::Ready(Err(e)), None) if is_circuit_open(&e) => {}
                        (polled, admitted) => {
                            let got = match polled {
                                Poll::Pending => "in flight".to_owned(),
                                Poll::Ready(r) => format!("{:?}", r.map(|r| r.status())),
                            };
                            return Err(TestCaseError::fail(format!(
                                "step {i}: model {admitted:?}, layer {got}"
                            )));
                        }
                    }
                }
                Step::End { pick, reply } => {
                    if !held.is_empty() {
                        let call = held.remove(pick % held.len());
                        let _ = call.answer.send(to_reply(reply));
                        let result = call.future.await;
                        let end = Instant::now();
                        prop_assert_eq!(
                            result.map(|r| r.status()).ok(),
                            (reply != 0).then_some(reply),
                            "step {}",
                            i
                        );
                        let o = outcome(&s, reply, end - call.start);
                        failed_now |= o.is_some_and(|(f, slow)| f || slow);
                        model.record(call.admission, o, end);
                    }
                }
                Step::Cancel { pick } => {
                    if !held.is_empty() {
                        let call = held.remove(pick % held.len());
                        drop(call.future);
                        model.cancel(call.admission);
                    }
                }
            }
            let now = Instant::now();
            failed_now |= held.iter().any(|h| now - h.start >= MAX_WAIT);
            model.tick(now);
            prop_assert_eq!(handle.state(), model.state(), "step {}: {:?}", i, step);
            let log: Vec<(CircuitState, CircuitState)> = changes
                .lock()
                .unwrap()
                .iter()
                .map(|c| (c.from, c.to))
                .collect();
            prop_assert_eq!(&log, &model.changes, "step {}: {:?}", i, step);
            let new = &log[seen_changes..];
            for &(from, to) in new {
                prop_assert!(
                    to != CircuitState::Open || failure_seen || failed_now,
                    "step {}: {:?} -> {:?} without a failure",
                    i,
                    from,
                    to
                );
                failure_seen = false;
            }
            // A step's failure may come after its changes (a probe let
            // through by the change fails): credit it to what follows. This
            // can only make the rule more lenient, never report a false
            // failure.
            failure_seen = if new.is_empty() {
                failure_seen || failed_now
            } else {
                failed_now
            };
            seen_changes = log.len();
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn layer_agrees_with_the_reference_model(
        s in settings(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        check(s, steps)?;
    }
}

/// The reported sequence, as steps: the model and the outside rule would
/// each have caught the breaker re-opening on 429s alone.
#[test]
fn model_replays_one_failure_then_only_429s() {
    let s = Settings {
        consecutive: Some(1),
        rate: None,
        slow: None,
        time_window: false,
        probes: 1,
    };
    let mut steps = vec![Step::Call {
        reply: 500,
        latency_ms: 0,
    }];
    for _ in 0..12 {
        steps.push(Step::Advance(5_000));
        steps.push(Step::Call {
            reply: 429,
            latency_ms: 500,
        });
        steps.push(Step::Begin);
        steps.push(Step::End {
            pick: 0,
            reply: 429,
        });
        steps.push(Step::Begin);
        steps.push(Step::Cancel { pick: 0 });
    }
    check(s, steps).unwrap();
}
