//! A model-based test: random outcomes, latencies and time advances drive
//! the layer and a small reference model; their states agree at every step.

use std::time::Duration;

use llm_sluice::breaker::{CircuitBreakerLayer, CircuitState};
use proptest::prelude::*;
use tokio::time::Instant;

use super::{run, svc, Call, Reply};

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
    Call { reply: u16, latency_ms: u64 },
    Advance(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed {
        since: Instant,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        since: Instant,
        admitted: u32,
        done: u32,
        failed: u32,
        slow: u32,
    },
}

/// The reference: plain lists and the rules as the docs state them.
struct Model {
    s: Settings,
    origin: Instant,
    phase: Phase,
    calls: Vec<(Instant, bool, bool)>,
    run: u32,
    openings: u32,
}

impl Model {
    fn state(&self) -> CircuitState {
        match self.phase {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn tick(&mut self, now: Instant) {
        match self.phase {
            Phase::Open { until } if now >= until => {
                self.phase = Phase::HalfOpen {
                    since: now,
                    admitted: 0,
                    done: 0,
                    failed: 0,
                    slow: 0,
                }
            }
            Phase::HalfOpen { since, .. } if now >= since + MAX_WAIT => self.open(now),
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
        self.phase = Phase::Open { until: now + d };
        self.calls.clear();
        self.run = 0;
    }

    /// Admits at `now`; returns the phase generation marker if admitted.
    fn admit(&mut self, now: Instant) -> bool {
        self.tick(now);
        match &mut self.phase {
            Phase::Closed { .. } => true,
            Phase::Open { .. } => false,
            Phase::HalfOpen { admitted, .. } => {
                if *admitted < self.s.probes {
                    *admitted += 1;
                    true
                } else {
                    false
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

    fn record(&mut self, admitted_in: Phase, outcome: Option<(bool, bool)>, now: Instant) {
        self.tick(now);
        if !same_phase(admitted_in, self.phase) {
            return;
        }
        match (&mut self.phase, outcome) {
            (Phase::Closed { .. }, Some((failed, slow))) => {
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
            (Phase::HalfOpen { admitted, .. }, None) => *admitted -= 1,
            (
                Phase::HalfOpen {
                    done, failed, slow, ..
                },
                Some((f, s)),
            ) => {
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
                    self.phase = Phase::Closed { since: now };
                    self.calls.clear();
                    self.run = 0;
                }
            }
            _ => {}
        }
    }
}

/// Whether two phases are the same period (the model's "generation").
fn same_phase(a: Phase, b: Phase) -> bool {
    match (a, b) {
        (Phase::Closed { since: x }, Phase::Closed { since: y }) => x == y,
        (Phase::HalfOpen { since: x, .. }, Phase::HalfOpen { since: y, .. }) => x == y,
        _ => false,
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

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (prop::sample::select(vec![200u16, 200, 500, 503, 429, 400, 0]),
              prop::sample::select(vec![0u64, 500, 2_000, 3_000, 9_000]))
            .prop_map(|(reply, latency_ms)| Step::Call { reply, latency_ms }),
        2 => prop::sample::select(vec![100u64, 1_000, 4_000, 5_000, 11_000, 31_000]).prop_map(Step::Advance),
    ]
}

fn check(s: Settings, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut b = CircuitBreakerLayer::builder()
            .minimum_calls(MIN_CALLS)
            .open_duration(OPEN)
            .open_duration_backoff(2.0, MAX_OPEN)
            .backoff_reset_after(RESET_AFTER)
            .half_open_probes(s.probes)
            .half_open_max_wait(MAX_WAIT);
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
        let mut svc = svc(&layer);
        let mut model = Model {
            s: s.clone(),
            origin,
            phase: Phase::Closed { since: origin },
            calls: Vec::new(),
            run: 0,
            openings: 0,
        };
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Step::Call { reply, latency_ms } => {
                    let latency = Duration::from_millis(latency_ms);
                    let start = Instant::now();
                    let admitted = model.admit(start);
                    let phase = model.phase;
                    let call = Call::new(if reply == 0 {
                        Reply::Reset
                    } else {
                        Reply::Status(reply)
                    })
                    .after(latency);
                    let result = run(&mut svc, call).await;
                    prop_assert_eq!(
                        matches!(result, Err(Some(_))),
                        !admitted,
                        "step {}: admission differs",
                        i
                    );
                    if admitted {
                        let end = Instant::now();
                        prop_assert_eq!(end - start, latency);
                        let outcome = match reply {
                            200 => Some((false, false)),
                            500 | 503 | 0 => Some((true, false)),
                            _ => None,
                        }
                        .map(|(f, _)| (f, s.slow.is_some_and(|(d, _)| latency > d)));
                        model.record(phase, outcome, end);
                    }
                }
            }
            let now = Instant::now();
            model.tick(now);
            prop_assert_eq!(handle.state(), model.state(), "step {}: {:?}", i, step);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn layer_agrees_with_the_reference_model(
        s in settings(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        check(s, steps)?;
    }
}
