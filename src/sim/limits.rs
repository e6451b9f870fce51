//! The per-key limiter the upstream enforces: pure state, `now` is an
//! argument.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::config::{LimitMode, Limits, TokenCharge};

/// What the limiter reports about one limit, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LimitView {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    /// Time until the limit is back to full.
    pub(crate) reset: Duration,
}

/// Both limits, each present when configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Views {
    pub(crate) requests: Option<LimitView>,
    pub(crate) tokens: Option<LimitView>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over the limit now; fits after `retry_after`.
    NotYet { retry_after: Duration },
    /// Needs more tokens than the whole window allows: never fits.
    TooLarge { limit: u64 },
}

#[derive(Debug)]
pub(crate) struct KeyLimiter {
    state: State,
    /// Corrections to the token charge of admitted requests, due when their
    /// responses end, earliest first.
    due: BinaryHeap<Reverse<Settle>>,
}

/// A token charge to correct once the response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Settle {
    at: Instant,
    /// The request's number in the window's log.
    seq: u64,
    /// What it was charged at admission.
    charged: u64,
    /// What it is charged from `at` on.
    actual: u64,
}

#[derive(Debug)]
enum State {
    Window {
        /// Admissions in the window, oldest first: (time, tokens).
        log: VecDeque<(Instant, u64)>,
        /// The number of the oldest admission in `log`.
        first: u64,
        tokens: u64,
    },
    Bucket {
        requests: f64,
        tokens: f64,
        last: Instant,
    },
}

fn ceil_ms(secs: f64) -> Duration {
    if secs <= 0.0 || secs.is_nan() {
        return Duration::ZERO;
    }
    let ms = (secs * 1000.0).ceil();
    Duration::from_millis(ms.min(u64::MAX as f64) as u64)
}

impl KeyLimiter {
    pub(crate) fn new(limits: &Limits, now: Instant) -> Self {
        let state = match limits.mode {
            LimitMode::SlidingWindow => State::Window {
                log: VecDeque::new(),
                first: 0,
                tokens: 0,
            },
            LimitMode::Bucket { .. } => State::Bucket {
                requests: bucket_capacity(limits, limits.requests, true),
                tokens: bucket_capacity(limits, limits.tokens, false),
                last: now,
            },
        };
        KeyLimiter {
            state,
            due: BinaryHeap::new(),
        }
    }

    /// Applies the corrections due by `now`. A correction of an admission
    /// that has left the window changes nothing.
    fn settle_due(&mut self, limits: &Limits, now: Instant) {
        while let Some(Reverse(s)) = self.due.peek().copied() {
            if s.at > now {
                break;
            }
            self.due.pop();
            match &mut self.state {
                State::Window { log, first, tokens } => {
                    let Some(i) = s.seq.checked_sub(*first) else {
                        continue;
                    };
                    if let Some(entry) = log.get_mut(i as usize) {
                        *tokens = *tokens - entry.1 + s.actual;
                        entry.1 = s.actual;
                    }
                }
                State::Bucket { tokens, .. } => {
                    let cap = bucket_capacity(limits, limits.tokens, false);
                    *tokens = (*tokens + s.charged as f64 - s.actual as f64).min(cap);
                }
            }
        }
    }

    /// Admits a request charged `cost` tokens at `now`, or says why not;
    /// the admission's number, for [`settle`](Self::settle), when the
    /// window recorded it.
    ///
    /// With [`TokenCharge::Actual`] the cost is zero and the token limit
    /// admits while the usage counted is below it; otherwise the cost must
    /// fit.
    pub(crate) fn admit(
        &mut self,
        limits: &Limits,
        now: Instant,
        cost: u64,
    ) -> (Result<Option<u64>, Refusal>, Views) {
        self.settle_due(limits, now);
        if let Some(limit) = limits.tokens {
            if cost > limit {
                return (Err(Refusal::TooLarge { limit }), self.views(limits, now));
            }
        }
        if limits.requests.is_none() && limits.tokens.is_none() {
            return (Ok(None), Views::default());
        }
        // Under `Actual` nothing is charged now: the request needs room, any.
        let need = match limits.charge {
            TokenCharge::Actual => 1,
            _ => cost,
        };
        let verdict = match &mut self.state {
            State::Window { log, first, tokens } => {
                while let Some(&(at, t)) = log.front() {
                    if at + limits.window > now {
                        break;
                    }
                    log.pop_front();
                    *first += 1;
                    *tokens -= t;
                }
                let mut wait = Duration::ZERO;
                if let Some(limit) = limits.requests {
                    let count = log.len() as u64;
                    if count + 1 > limit {
                        // The oldest `count + 1 - limit` must expire first.
                        let k = (count + 1 - limit) as usize;
                        wait = wait.max(log[k - 1].0 + limits.window - now);
                    }
                }
                if let Some(limit) = limits.tokens {
                    if tokens.saturating_add(need) > limit {
                        let mut freed = 0;
                        for &(at, t) in log.iter() {
                            freed += t;
                            if (*tokens - freed).saturating_add(need) <= limit {
                                wait = wait.max(at + limits.window - now);
                                break;
                            }
                        }
                    }
                }
                if wait.is_zero() {
                    let seq = *first + log.len() as u64;
                    log.push_back((now, cost));
                    *tokens += cost;
                    Ok(Some(seq))
                } else {
                    Err(Refusal::NotYet { retry_after: wait })
                }
            }
            State::Bucket {
                requests,
                tokens,
                last,
            } => {
                let elapsed = now.saturating_duration_since(*last).as_secs_f64();
                *last = now;
                let window = limits.window.as_secs_f64();
                let mut wait = 0.0f64;
                let mut refill = |level: &mut f64, limit: Option<u64>, need: f64, is_req: bool| {
                    if let Some(limit) = limit {
                        let rate = limit as f64 / window;
                        let cap = bucket_capacity(limits, Some(limit), is_req);
                        *level = (*level + rate * elapsed).min(cap);
                        let need = need.min(cap);
                        if *level < need {
                            wait = wait.max((need - *level) / rate);
                        }
                    }
                };
                refill(requests, limits.requests, 1.0, true);
                let need = match limits.charge {
                    // Any room: a level above zero.
                    TokenCharge::Actual => f64::MIN_POSITIVE,
                    _ => cost as f64,
                };
                refill(tokens, limits.tokens, need, false);
                if wait <= 0.0 {
                    if limits.requests.is_some() {
                        *requests -= 1.0;
                    }
                    if limits.tokens.is_some() {
                        *tokens -= cost as f64;
                    }
                    Ok(Some(0))
                } else {
                    Err(Refusal::NotYet {
                        retry_after: ceil_ms(wait),
                    })
                }
            }
        };
        (verdict, self.views(limits, now))
    }

    /// Corrects admission `seq`'s token charge from `charged` to `actual`
    /// at `at` (when its response ends).
    pub(crate) fn settle(&mut self, seq: u64, at: Instant, charged: u64, actual: u64) {
        if charged != actual {
            self.due.push(Reverse(Settle {
                at,
                seq,
                charged,
                actual,
            }));
        }
    }

    /// Spends one request of the request limit on a refused request, for an
    /// upstream where refusals count against the limit.
    pub(crate) fn charge_refused(&mut self, limits: &Limits, now: Instant) {
        if limits.requests.is_none() {
            return;
        }
        match &mut self.state {
            State::Window { log, .. } => log.push_back((now, 0)),
            State::Bucket { requests, .. } => *requests -= 1.0,
        }
    }

    /// The state of both limits at `now` (after any admission).
    fn views(&self, limits: &Limits, now: Instant) -> Views {
        match &self.state {
            State::Window { log, tokens, .. } => {
                let reset = log.back().map_or(Duration::ZERO, |&(at, _)| {
                    (at + limits.window).saturating_duration_since(now)
                });
                Views {
                    requests: limits.requests.map(|limit| LimitView {
                        limit,
                        remaining: limit.saturating_sub(log.len() as u64),
                        reset,
                    }),
                    tokens: limits.tokens.map(|limit| LimitView {
                        limit,
                        remaining: limit.saturating_sub(*tokens),
                        reset,
                    }),
                }
            }
            State::Bucket {
                requests, tokens, ..
            } => {
                let window = limits.window.as_secs_f64();
                let view = |level: f64, limit: u64, is_req: bool| {
                    let cap = bucket_capacity(limits, Some(limit), is_req);
                    let rate = limit as f64 / window;
                    LimitView {
                        limit,
                        remaining: level.max(0.0).floor() as u64,
                        reset: ceil_ms((cap - level) / rate),
                    }
                };
                Views {
                    requests: limits.requests.map(|l| view(*requests, l, true)),
                    tokens: limits.tokens.map(|l| view(*tokens, l, false)),
                }
            }
        }
    }
}

/// A full bucket: `limit * burst / window`, at least one request.
fn bucket_capacity(limits: &Limits, limit: Option<u64>, is_requests: bool) -> f64 {
    let (Some(limit), LimitMode::Bucket { burst }) = (limit, limits.mode) else {
        return 0.0;
    };
    let cap = limit as f64 * burst.as_secs_f64() / limits.window.as_secs_f64();
    if is_requests {
        cap.max(1.0)
    } else {
        cap.max(f64::MIN_POSITIVE)
    }
}

/// Formats a duration the way Go's `time.Duration` prints, as
/// `x-ratelimit-reset-*` headers carry it: `0s`, `12ms`, `1.5s`, `6m0s`,
/// `1h2m3.5s`. Rounded up to whole milliseconds, so a client that waits this
/// long is never early.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        secs = format!("{h}h{m}m{secs}");
    } else if m > 0 {
        secs = format!("{m}m{secs}");
    }
    secs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: Option<u64>, tokens: Option<u64>, mode: LimitMode) -> Limits {
        Limits {
            requests,
            tokens,
            mode,
            ..Limits::default()
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(go_duration(Duration::from_micros(11_200)), "12ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(3_723_500)), "1h2m3.5s");
        assert_eq!(go_duration(Duration::from_millis(1)), "1ms");
        assert_eq!(go_duration(Duration::from_millis(999)), "999ms");
        assert_eq!(go_duration(Duration::from_millis(1000)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1001)), "1.001s");
        assert_eq!(go_duration(Duration::from_millis(59_990)), "59.99s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn window_admits_up_to_the_limit_and_names_the_wait() {
        let l = limits(Some(2), None, LimitMode::SlidingWindow);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&l, t0);
        assert!(k.admit(&l, t0, 1).0.is_ok());
        let (ok, views) = k.admit(&l, t0 + Duration::from_secs(10), 1);
        assert!(ok.is_ok());
        let r = views.requests.unwrap();
        assert_eq!(
            (r.limit, r.remaining, r.reset),
            (2, 0, Duration::from_secs(60))
        );
        let (err, _) = k.admit(&l, t0 + Duration::from_secs(20), 1);
        assert_eq!(
            err,
            Err(Refusal::NotYet {
                retry_after: Duration::from_secs(40)
            })
        );
        // At exactly 60 s the first admission has left the window.
        assert!(k.admit(&l, t0 + Duration::from_secs(60), 1).0.is_ok());
        assert!(k.admit(&l, t0 + Duration::from_secs(61), 1).0.is_err());
    }

    #[test]
    fn window_counts_tokens_and_refuses_the_impossible() {
        let l = limits(None, Some(100), LimitMode::SlidingWindow);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&l, t0);
        assert!(k.admit(&l, t0, 60).0.is_ok());
        assert!(k.admit(&l, t0 + Duration::from_secs(5), 30).0.is_ok());
        // 90 used; 50 more needs the first 60 to expire at t0 + 60 s.
        let (err, v) = k.admit(&l, t0 + Duration::from_secs(6), 50);
        assert_eq!(
            err,
            Err(Refusal::NotYet {
                retry_after: Duration::from_secs(54)
            })
        );
        assert_eq!(v.tokens.unwrap().remaining, 10);
        assert_eq!(
            k.admit(&l, t0, 101).0,
            Err(Refusal::TooLarge { limit: 100 })
        );
    }

    #[test]
    fn bucket_refills_continuously() {
        // 60 per minute with a one-second burst: one request a second.
        let l = limits(
            Some(60),
            None,
            LimitMode::Bucket {
                burst: Duration::from_secs(1),
            },
        );
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&l, t0);
        assert!(k.admit(&l, t0, 1).0.is_ok());
        assert_eq!(
            k.admit(&l, t0, 1).0,
            Err(Refusal::NotYet {
                retry_after: Duration::from_secs(1)
            })
        );
        assert_eq!(
            k.admit(&l, t0 + Duration::from_millis(500), 1).0,
            Err(Refusal::NotYet {
                retry_after: Duration::from_millis(500)
            })
        );
        assert!(k.admit(&l, t0 + Duration::from_secs(1), 1).0.is_ok());
    }

    #[test]
    fn bucket_admits_a_large_request_into_debt_only_when_full() {
        // 600 tokens a minute, 10 s burst: capacity 100, refill 10/s.
        let l = limits(
            None,
            Some(600),
            LimitMode::Bucket {
                burst: Duration::from_secs(10),
            },
        );
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&l, t0);
        assert!(k.admit(&l, t0, 300).0.is_ok(), "full bucket admits");
        // Level is now -200: back to full (100) after 30 s.
        assert_eq!(
            k.admit(&l, t0, 300).0,
            Err(Refusal::NotYet {
                retry_after: Duration::from_secs(30)
            })
        );
        assert!(k.admit(&l, t0 + Duration::from_secs(30), 300).0.is_ok());
    }
}
