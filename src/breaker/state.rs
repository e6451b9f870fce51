//! The breaker's state machine: pure, with the time passed in.
//!
//! Everything here is plain data driven by `now` arguments, so unit tests and
//! the model-based test drive it without a runtime. [`Machine`] is kept behind
//! a mutex by the service; the closed path only reads an atomic mirror of its
//! state and generation (see `shared.rs`).

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::window::{CountWindow, TimeWindow, Totals, Window, FAILED, SLOW};

/// The state of one circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls pass through; outcomes are recorded.
    Closed,
    /// A limited number of probe calls pass; the rest fail fast.
    HalfOpen,
    /// Calls fail fast until the open duration has passed.
    Open,
    /// Forced open through a [`CircuitHandle`](super::CircuitHandle): calls
    /// fail fast until the handle closes or resets the breaker.
    ForcedOpen,
    /// Forced closed through a [`CircuitHandle`](super::CircuitHandle): calls
    /// pass and outcomes are not recorded, until the handle resets it.
    ForcedClosed,
}

impl CircuitState {
    /// A short lowercase name, used in metric labels and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::ForcedClosed => "forced_closed",
        }
    }

    /// Whether calls pass freely (closed or forced closed).
    pub const fn is_closed(self) -> bool {
        matches!(self, CircuitState::Closed | CircuitState::ForcedClosed)
    }

    /// The value of the `llm_sluice_breaker_state` gauge: 0 closed, 1
    /// half-open, 2 open.
    pub const fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed | CircuitState::ForcedClosed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open | CircuitState::ForcedOpen => 2.0,
        }
    }

    pub(crate) const fn code(self) -> u64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::ForcedClosed => 1,
            CircuitState::HalfOpen => 2,
            CircuitState::Open => 3,
            CircuitState::ForcedOpen => 4,
        }
    }

    pub(crate) const fn index(self) -> usize {
        self.code() as usize
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which window the rates are measured over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    Count(u32),
    Time(Duration),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_call: Option<(Duration, f64)>,
    pub(crate) window: WindowKind,
    /// Already capped at the size of a count window.
    pub(crate) minimum_calls: u32,
    pub(crate) open_duration: Duration,
    pub(crate) backoff_multiplier: f64,
    pub(crate) max_open_duration: Duration,
    pub(crate) backoff_reset_after: Duration,
    pub(crate) half_open_probes: u32,
    pub(crate) half_open_max_wait: Duration,
}

impl Config {
    fn uses_window(&self) -> bool {
        self.failure_rate.is_some() || self.slow_call.is_some()
    }

    /// The open duration after `openings` earlier consecutive openings.
    pub(crate) fn open_duration_after(&self, openings: u32) -> Duration {
        let factor = self.backoff_multiplier.powi(openings.min(1_000) as i32);
        let secs = self.open_duration.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_open_duration.as_secs_f64() {
            self.max_open_duration
        } else {
            Duration::from_secs_f64(secs).min(self.max_open_duration)
        }
    }

    /// Whether `part` of `whole` reaches `rate`.
    fn reaches(part: u32, whole: u32, rate: f64) -> bool {
        whole > 0 && f64::from(part) >= rate * f64::from(whole)
    }
}

/// What a finished call was, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// Counted: a success or a failure, slow or not.
    Counted { failed: bool, slow: bool },
    /// Neither success nor failure (a caller error, a 429): not counted.
    Ignored,
}

impl Record {
    /// A plain success: not slow.
    pub(crate) const SUCCESS: Record = Record::Counted {
        failed: false,
        slow: false,
    };

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Record::Counted {
                failed: false,
                slow: false,
            } => "success",
            Record::Counted {
                failed: true,
                slow: false,
            } => "failure",
            Record::Counted {
                failed: false,
                slow: true,
            } => "slow_success",
            Record::Counted {
                failed: true,
                slow: true,
            } => "slow_failure",
            Record::Ignored => "ignored",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Record::Counted {
                failed: false,
                slow: false,
            } => 0,
            Record::Counted {
                failed: true,
                slow: false,
            } => 1,
            Record::Counted {
                failed: false,
                slow: true,
            } => 2,
            Record::Counted {
                failed: true,
                slow: true,
            } => 3,
            Record::Ignored => 4,
        }
    }

    pub(crate) const ALL: [Record; 5] = [
        Record::Counted {
            failed: false,
            slow: false,
        },
        Record::Counted {
            failed: true,
            slow: false,
        },
        Record::Counted {
            failed: false,
            slow: true,
        },
        Record::Counted {
            failed: true,
            slow: true,
        },
        Record::Ignored,
    ];
}

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
}

/// What admission decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Pass, in the closed state of this generation.
    Closed(u64),
    /// Pass as the half-open probe with this ticket.
    Probe(u64),
    /// Fail fast; trying again may pass after this long.
    Rejected(Duration),
}

/// Which admission a finished call had: what its outcome is checked against
/// to tell whether it still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Let through closed (or forced closed) in this generation.
    Closed(u64),
    /// Let through as the half-open probe with this ticket.
    Probe(u64),
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed {
        since: Instant,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// Probes whose outcome was counted (hung ones included): their
        /// slots stay taken until the phase ends.
        completed: u32,
        failures: u32,
        slow: u32,
    },
    ForcedOpen,
    ForcedClosed,
}

/// A half-open probe in flight: its ticket (the permit holds the same) and
/// when it was let through.
#[derive(Debug, Clone, Copy)]
struct Probe {
    ticket: u64,
    since: Instant,
}

/// The state machine of one breaker.
#[derive(Debug)]
pub(crate) struct Machine {
    phase: Phase,
    /// Bumped on every transition; outcomes of calls admitted under an older
    /// generation are ignored.
    generation: u64,
    window: Option<Window>,
    consecutive: u32,
    /// Consecutive openings, for the growing open duration.
    openings: u32,
    /// The probes in flight in this half-open phase, oldest first; emptied
    /// on every transition. A probe that leaves it without a counted outcome
    /// (ignored, or its future dropped) frees its slot for the next caller.
    /// Kept across phases so a breaker that keeps probing allocates once.
    probes: Vec<Probe>,
    /// The next probe's ticket: unique over the breaker's life, so an
    /// outcome of a probe from an earlier half-open phase (or one already
    /// counted as hung) finds no ticket and is ignored.
    next_ticket: u64,
}

impl Machine {
    pub(crate) fn new(cfg: &Config, now: Instant) -> Self {
        let window = cfg.uses_window().then(|| match cfg.window {
            WindowKind::Count(n) => Window::Count(CountWindow::new(n)),
            WindowKind::Time(d) => Window::Time(TimeWindow::new(d, now)),
        });
        Machine {
            phase: Phase::Closed { since: now },
            generation: 0,
            window,
            consecutive: 0,
            openings: 0,
            probes: Vec::new(),
            next_ticket: 0,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether recording a plain success (not slow) would change nothing:
    /// closed, no run of failures, and a window that is a full count window
    /// of successes (or no window). The service skips the lock then.
    pub(crate) fn quiet(&self) -> bool {
        matches!(self.phase, Phase::Closed { .. })
            && self.consecutive == 0
            && match &self.window {
                None => true,
                Some(Window::Count(w)) => {
                    w.is_full() && w.totals().failures == 0 && w.totals().slow == 0
                }
                Some(Window::Time(_)) => false,
            }
    }

    /// The state as last computed, without applying time.
    pub(crate) fn current(&self) -> CircuitState {
        match self.phase {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
            Phase::ForcedOpen => CircuitState::ForcedOpen,
            Phase::ForcedClosed => CircuitState::ForcedClosed,
        }
    }

    /// Applies what time alone causes: open → half-open when the open
    /// duration has passed; in half-open, a probe still in flight
    /// `half_open_max_wait` after it was let through counts as a failed
    /// probe (which re-opens the breaker if the failures reach the rate).
    /// Time never re-opens a breaker by itself: an idle half-open breaker,
    /// or one whose probes all came back ignored, stays half-open.
    pub(crate) fn tick(&mut self, cfg: &Config, now: Instant) -> Option<Transition> {
        match self.phase {
            Phase::Open { until } if now >= until => Some(self.enter_half_open()),
            Phase::HalfOpen { .. } => {
                while let Some(oldest) = self.probes.first() {
                    if now < oldest.since + cfg.half_open_max_wait {
                        break;
                    }
                    // Hung: an upstream that does not answer a probe is not
                    // healthy. Its late outcome will find no ticket.
                    self.probes.remove(0);
                    let t = self.count_probe(cfg, true, false, now);
                    if t.is_some() {
                        return t;
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// The state at `now`, after [`tick`](Self::tick).
    pub(crate) fn state(
        &mut self,
        cfg: &Config,
        now: Instant,
    ) -> (CircuitState, Option<Transition>) {
        let t = self.tick(cfg, now);
        (self.current(), t)
    }

    /// Decides whether a call may pass at `now`.
    pub(crate) fn admit(&mut self, cfg: &Config, now: Instant) -> (Admit, Option<Transition>) {
        let t = self.tick(cfg, now);
        let admit = match &mut self.phase {
            Phase::Closed { .. } | Phase::ForcedClosed => Admit::Closed(self.generation),
            Phase::Open { until } => Admit::Rejected(until.saturating_duration_since(now)),
            Phase::ForcedOpen => Admit::Rejected(cfg.open_duration),
            Phase::HalfOpen { completed, .. } => {
                let taken = u64::from(*completed) + self.probes.len() as u64;
                if taken < u64::from(cfg.half_open_probes) {
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    // Admission times stay in order even when racing callers
                    // read the clock in one order and lock in the other, so
                    // the oldest probe is always the first.
                    let since = self.probes.last().map_or(now, |p| p.since.max(now));
                    self.probes.push(Probe { ticket, since });
                    Admit::Probe(ticket)
                } else {
                    // Every slot is taken, so a probe is in flight (counted
                    // probes alone would have ended the phase). By the
                    // oldest one's maximum wait, it has answered or counts
                    // as failed.
                    let wait = self.probes.first().map_or(cfg.half_open_max_wait, |p| {
                        (p.since + cfg.half_open_max_wait).saturating_duration_since(now)
                    });
                    Admit::Rejected(wait)
                }
            }
        };
        (admit, t)
    }

    /// Records the outcome of a call admitted as `pass`.
    pub(crate) fn record(
        &mut self,
        cfg: &Config,
        pass: Pass,
        record: Record,
        now: impl FnMut() -> Instant,
    ) -> Option<Transition> {
        let mut cached = None;
        let mut clock = now;
        let mut now = move || *cached.get_or_insert_with(&mut clock);
        if matches!(self.phase, Phase::Open { .. } | Phase::HalfOpen { .. }) {
            // Time first: a probe that hung past the maximum wait counts as
            // failed before this outcome (which may be its own, then late
            // and not counted twice).
            if let Some(t) = self.tick(cfg, now()) {
                return Some(t);
            }
        }
        match pass {
            Pass::Closed(generation) => {
                if generation != self.generation {
                    return None;
                }
                let (Phase::Closed { .. }, Record::Counted { failed, slow }) = (self.phase, record)
                else {
                    return None;
                };
                if failed {
                    self.consecutive += 1;
                } else {
                    self.consecutive = 0;
                }
                let trip_consecutive = cfg
                    .consecutive_failures
                    .is_some_and(|n| self.consecutive >= n);
                let trip_rate = match &mut self.window {
                    Some(window) => {
                        let flags = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
                        window.record(flags, &mut now);
                        let totals = window.totals(&mut now);
                        Self::rates_trip(cfg, totals)
                    }
                    None => false,
                };
                (trip_consecutive || trip_rate).then(|| self.open(cfg, now()))
            }
            Pass::Probe(ticket) => {
                if !self.take_probe(ticket) {
                    return None;
                }
                match record {
                    Record::Counted { failed, slow } => self.count_probe(cfg, failed, slow, now()),
                    // Neither success nor failure (a 429, a caller error):
                    // the slot is free for the next caller, and nothing
                    // changes state. Re-opening takes a failure.
                    Record::Ignored => None,
                }
            }
        }
    }

    /// Takes the probe `ticket` out of the in-flight list; `false` if it is
    /// not there (an earlier phase's, or already counted as hung).
    fn take_probe(&mut self, ticket: u64) -> bool {
        if !matches!(self.phase, Phase::HalfOpen { .. }) {
            return false;
        }
        match self.probes.iter().position(|p| p.ticket == ticket) {
            Some(i) => {
                self.probes.remove(i);
                true
            }
            None => false,
        }
    }

    /// Counts one probe's outcome: re-opens once the probes' failures (or
    /// slow calls) reach the rate, closes once all probes are counted.
    fn count_probe(
        &mut self,
        cfg: &Config,
        failed: bool,
        slow: bool,
        now: Instant,
    ) -> Option<Transition> {
        let Phase::HalfOpen {
            completed,
            failures,
            slow: slow_count,
        } = &mut self.phase
        else {
            return None;
        };
        *completed += 1;
        *failures += u32::from(failed);
        *slow_count += u32::from(slow);
        let n = cfg.half_open_probes;
        let failing = match cfg.failure_rate {
            Some(rate) => Config::reaches(*failures, n, rate),
            None => *failures > 0,
        } || cfg
            .slow_call
            .is_some_and(|(_, rate)| Config::reaches(*slow_count, n, rate));
        if failing {
            Some(self.open(cfg, now))
        } else if *completed >= n {
            Some(self.close(now))
        } else {
            None
        }
    }

    fn rates_trip(cfg: &Config, totals: Totals) -> bool {
        if totals.calls < cfg.minimum_calls {
            return false;
        }
        cfg.failure_rate
            .is_some_and(|rate| Config::reaches(totals.failures, totals.calls, rate))
            || cfg
                .slow_call
                .is_some_and(|(_, rate)| Config::reaches(totals.slow, totals.calls, rate))
    }

    /// Frees the slot of a probe whose call ended without an outcome (its
    /// future was dropped): the next caller is let through as a probe.
    /// Nothing is counted, so this never changes the state.
    pub(crate) fn release_probe(&mut self, ticket: u64) {
        self.take_probe(ticket);
    }

    /// Forces a state from a handle: `Open`/`ForcedOpen` force open,
    /// `ForcedClosed` forces closed, `Closed` resets (fresh window, open
    /// duration back to its base).
    pub(crate) fn force(&mut self, target: CircuitState, now: Instant) -> Option<Transition> {
        let from = self.current();
        match target {
            CircuitState::Closed => {
                self.openings = 0;
                self.close(now);
            }
            CircuitState::ForcedClosed => {
                self.reset_counts();
                self.set_phase(Phase::ForcedClosed);
            }
            CircuitState::Open | CircuitState::ForcedOpen => {
                self.set_phase(Phase::ForcedOpen);
            }
            CircuitState::HalfOpen => {
                self.enter_half_open();
            }
        }
        let to = self.current();
        (from != to).then_some(Transition { from, to })
    }

    /// Whether the breaker holds nothing a fresh one would not: closed, no
    /// failure or slow call remembered, open duration back at its base.
    pub(crate) fn is_idle(&mut self, cfg: &Config, now: Instant) -> bool {
        let Phase::Closed { since } = self.phase else {
            return false;
        };
        let window_clean = match &mut self.window {
            Some(w) => {
                let t = w.totals(|| now);
                t.failures == 0 && t.slow == 0
            }
            None => true,
        };
        window_clean
            && self.consecutive == 0
            && (self.openings == 0 || now >= since + cfg.backoff_reset_after)
    }

    /// Every transition goes through here: a new generation, and no probe
    /// of the old phase left in flight (their outcomes find no ticket).
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation += 1;
        self.probes.clear();
    }

    fn reset_counts(&mut self) {
        self.consecutive = 0;
        if let Some(w) = &mut self.window {
            w.clear();
        }
    }

    fn open(&mut self, cfg: &Config, now: Instant) -> Transition {
        let from = self.current();
        if let Phase::Closed { since } = self.phase {
            if now >= since + cfg.backoff_reset_after {
                self.openings = 0;
            }
        }
        let duration = cfg.open_duration_after(self.openings);
        self.openings = self.openings.saturating_add(1);
        self.set_phase(Phase::Open {
            until: now + duration,
        });
        self.reset_counts();
        Transition {
            from,
            to: CircuitState::Open,
        }
    }

    fn enter_half_open(&mut self) -> Transition {
        let from = self.current();
        self.set_phase(Phase::HalfOpen {
            completed: 0,
            failures: 0,
            slow: 0,
        });
        Transition {
            from,
            to: CircuitState::HalfOpen,
        }
    }

    fn close(&mut self, now: Instant) -> Transition {
        let from = self.current();
        self.set_phase(Phase::Closed { since: now });
        self.reset_counts();
        Transition {
            from,
            to: CircuitState::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Record = Record::Counted {
        failed: false,
        slow: false,
    };
    const FAIL: Record = Record::Counted {
        failed: true,
        slow: false,
    };

    fn cfg() -> Config {
        Config {
            consecutive_failures: Some(3),
            failure_rate: None,
            slow_call: None,
            window: WindowKind::Count(10),
            minimum_calls: 5,
            open_duration: Duration::from_secs(10),
            backoff_multiplier: 2.0,
            max_open_duration: Duration::from_secs(35),
            backoff_reset_after: Duration::from_secs(60),
            half_open_probes: 2,
            half_open_max_wait: Duration::from_secs(30),
        }
    }

    fn admit_gen(m: &mut Machine, cfg: &Config, now: Instant) -> Pass {
        match m.admit(cfg, now).0 {
            Admit::Closed(g) => Pass::Closed(g),
            Admit::Probe(t) => Pass::Probe(t),
            Admit::Rejected(d) => panic!("rejected for {d:?}"),
        }
    }

    #[test]
    fn consecutive_failures_open_and_probes_close() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut m = Machine::new(&cfg, t0);
        for _ in 0..2 {
            let g = admit_gen(&mut m, &cfg, t0);
            assert_eq!(m.record(&cfg, g, FAIL, || t0), None);
        }
        let g = admit_gen(&mut m, &cfg, t0);
        assert_eq!(
            m.record(&cfg, g, OK, || t0),
            None,
            "a success resets the run"
        );
        for _ in 0..2 {
            let g = admit_gen(&mut m, &cfg, t0);
            m.record(&cfg, g, FAIL, || t0);
        }
        let g = admit_gen(&mut m, &cfg, t0);
        let t = m.record(&cfg, g, FAIL, || t0).unwrap();
        assert_eq!((t.from, t.to), (CircuitState::Closed, CircuitState::Open));
        assert_eq!(
            m.admit(&cfg, t0 + Duration::from_secs(4)).0,
            Admit::Rejected(Duration::from_secs(6))
        );
        let t1 = t0 + Duration::from_secs(10);
        let (a, t) = m.admit(&cfg, t1);
        let Admit::Probe(first) = a else {
            panic!("not a probe: {a:?}")
        };
        assert_eq!(t.unwrap().to, CircuitState::HalfOpen);
        let second = admit_gen(&mut m, &cfg, t1);
        assert!(matches!(m.admit(&cfg, t1).0, Admit::Rejected(_)));
        assert_eq!(m.record(&cfg, Pass::Probe(first), OK, || t1), None);
        assert_eq!(
            m.record(&cfg, Pass::Probe(first), OK, || t1),
            None,
            "one outcome per probe"
        );
        let t = m.record(&cfg, second, OK, || t1).unwrap();
        assert_eq!(t.to, CircuitState::Closed);
    }

    #[test]
    fn ignored_and_dropped_probes_hand_their_slots_on_without_reopening() {
        let cfg = Config {
            half_open_probes: 1,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut m = Machine::new(&cfg, t0);
        m.force(CircuitState::HalfOpen, t0);
        // Far past any maximum wait counted from entering half-open.
        for i in 0..20u64 {
            let now = t0 + Duration::from_secs(25 * i);
            let probe = admit_gen(&mut m, &cfg, now);
            assert!(matches!(m.admit(&cfg, now).0, Admit::Rejected(_)));
            if i % 2 == 0 {
                assert_eq!(m.record(&cfg, probe, Record::Ignored, || now), None);
            } else {
                let Pass::Probe(ticket) = probe else {
                    panic!("not a probe: {probe:?}")
                };
                m.release_probe(ticket);
            }
            assert_eq!(m.current(), CircuitState::HalfOpen);
        }
        let now = t0 + Duration::from_secs(1_000);
        let probe = admit_gen(&mut m, &cfg, now);
        let t = m.record(&cfg, probe, FAIL, || now).unwrap();
        assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
    }

    #[test]
    fn a_probe_hung_past_the_max_wait_counts_as_failed() {
        let cfg = Config {
            failure_rate: Some(0.5),
            half_open_probes: 4,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut m = Machine::new(&cfg, t0);
        m.force(CircuitState::HalfOpen, t0);
        let wait = cfg.half_open_max_wait;
        let hung = admit_gen(&mut m, &cfg, t0);
        let later = t0 + Duration::from_secs(10);
        let slow = admit_gen(&mut m, &cfg, later);
        // One hung of four: below the rate, still half-open, slot kept.
        assert_eq!(m.tick(&cfg, t0 + wait), None);
        assert_eq!(m.current(), CircuitState::HalfOpen);
        let ok = admit_gen(&mut m, &cfg, t0 + wait);
        assert_eq!(m.record(&cfg, ok, OK, || t0 + wait), None);
        // The hung probe's late outcome is not counted again.
        assert_eq!(m.record(&cfg, hung, OK, || t0 + wait), None);
        let _last = admit_gen(&mut m, &cfg, t0 + wait);
        assert!(
            matches!(m.admit(&cfg, t0 + wait).0, Admit::Rejected(d) if d == Duration::from_secs(10)),
            "refused until the oldest probe in flight is due"
        );
        // The second hung probe reaches the rate: re-opened by failures.
        let t = m.tick(&cfg, later + wait).unwrap();
        assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
        assert_eq!(m.record(&cfg, slow, OK, || later + wait), None);
    }

    #[test]
    fn open_duration_grows_and_is_capped() {
        let cfg = cfg();
        assert_eq!(cfg.open_duration_after(0), Duration::from_secs(10));
        assert_eq!(cfg.open_duration_after(1), Duration::from_secs(20));
        assert_eq!(cfg.open_duration_after(2), Duration::from_secs(35));
        assert_eq!(cfg.open_duration_after(u32::MAX), Duration::from_secs(35));
    }

    #[test]
    fn stale_generations_are_ignored() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut m = Machine::new(&cfg, t0);
        let old = admit_gen(&mut m, &cfg, t0);
        m.force(CircuitState::ForcedOpen, t0);
        m.force(CircuitState::Closed, t0);
        for _ in 0..5 {
            assert_eq!(m.record(&cfg, old, FAIL, || t0), None);
        }
        assert_eq!(m.current(), CircuitState::Closed);
    }
}
