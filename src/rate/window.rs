//! The pure state of one exact sliding window: no clock, no runtime.
//!
//! Every function takes `now`; unit tests drive it with made-up instants.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Whether an amount fits a budget now, later, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It fits now.
    Fits,
    /// It fits at this instant at the earliest (if nothing else is reserved
    /// meanwhile and no reservation is corrected upwards).
    NotUntil(Instant),
    /// It can never fit: the amount exceeds the whole limit.
    Never {
        /// The amount asked for.
        amount: u64,
        /// The limit it exceeds.
        limit: u64,
    },
}

impl Verdict {
    /// The later of two verdicts: `Never` wins, then the later instant.
    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (never @ Verdict::Never { .. }, _) | (_, never @ Verdict::Never { .. }) => never,
            (Verdict::NotUntil(a), Verdict::NotUntil(b)) => Verdict::NotUntil(a.max(b)),
            (Verdict::NotUntil(a), Verdict::Fits) | (Verdict::Fits, Verdict::NotUntil(a)) => {
                Verdict::NotUntil(a)
            }
            (Verdict::Fits, Verdict::Fits) => Verdict::Fits,
        }
    }
}

/// An exact sliding log: one entry per reservation still inside the window,
/// with a running sum.
///
/// An entry made at `ts` counts at every `t` with `ts <= t < ts + window`, i.e.
/// at `t` the log holds the entries of `(t - window, t]`. Admission at `t`
/// requires `sum + amount <= limit`, so every interval of length `window`
/// that ends at an admission holds at most `limit`; since any interval's
/// content is bounded by the interval ending at its last admission, *every*
/// interval of length `window` does.
///
/// Entries are identified by a sequence number (`base` + index), so a
/// reservation can be corrected in O(1) at its original timestamp.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlidingLog {
    entries: VecDeque<(Instant, u64)>,
    /// Sequence number of `entries[0]`.
    base: u64,
    /// Sum of the amounts in `entries`.
    sum: u64,
}

impl SlidingLog {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        SlidingLog::default()
    }

    /// Drops the entries that no longer count at `now`. O(1) amortized: each
    /// entry is pushed once and popped once.
    pub(crate) fn expire(&mut self, now: Instant, window: Duration) {
        // An entry at `ts` counts while `ts + window > now`, i.e. while
        // `ts > now - window`: one subtraction instead of one addition per
        // entry looked at. If `now - window` is before the clock's origin,
        // no entry (all at or after the origin) can have left the window.
        let Some(cutoff) = now.checked_sub(window) else {
            return;
        };
        while let Some(&(ts, amount)) = self.entries.front() {
            if ts > cutoff {
                break;
            }
            self.entries.pop_front();
            self.sum -= amount;
            self.base += 1;
        }
    }

    /// What is reserved in the window (after [`expire`](Self::expire)).
    pub(crate) fn sum(&self) -> u64 {
        self.sum
    }

    /// How many entries are held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `amount` fits under `limit` at `now`, and if not, from when.
    ///
    /// The wait is found by walking from the oldest entry until enough would
    /// have expired: the instant is that entry's timestamp plus the window.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        window: Duration,
        amount: u64,
        limit: u64,
    ) -> Verdict {
        if amount > limit {
            return Verdict::Never { amount, limit };
        }
        self.expire(now, window);
        let total = self.sum.saturating_add(amount);
        if total <= limit {
            return Verdict::Fits;
        }
        let need = total - limit;
        let mut freed = 0u64;
        for &(ts, entry) in &self.entries {
            freed = freed.saturating_add(entry);
            if freed >= need {
                return Verdict::NotUntil(ts + window);
            }
        }
        // Unreachable while `amount <= limit` (everything expiring frees
        // `sum >= need`); be safe anyway.
        Verdict::NotUntil(self.entries.back().map_or(now, |&(ts, _)| ts + window))
    }

    /// Records `amount` at `now` and returns its sequence number. Timestamps
    /// never go backwards: an entry is recorded at the latest of `now` and the
    /// newest entry, which can only make it expire later.
    pub(crate) fn push(&mut self, now: Instant, amount: u64) -> u64 {
        let at = match self.entries.back() {
            Some(&(last, _)) if last > now => last,
            _ => now,
        };
        self.entries.push_back((at, amount));
        self.sum = self.sum.saturating_add(amount);
        self.base + self.entries.len() as u64 - 1
    }

    /// Replaces the amount of entry `seq`, at its original timestamp. Returns
    /// the old amount, or `None` if the entry has already expired (then the
    /// correction can change nothing: the window no longer counts it).
    pub(crate) fn set(&mut self, seq: u64, amount: u64) -> Option<u64> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let entry = self.entries.get_mut(index)?;
        let old = entry.1;
        entry.1 = amount;
        self.sum = self.sum - old + amount;
        Some(old)
    }

    /// Whether nothing counts at `now`.
    pub(crate) fn is_empty_at(&mut self, now: Instant, window: Duration) -> bool {
        self.expire(now, window);
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn admits_up_to_the_limit_then_waits_for_the_oldest_entry() {
        let t0 = Instant::now();
        let mut log = SlidingLog::new();
        for i in 0..3 {
            assert_eq!(log.check(secs(t0, i), W, 1, 3), Verdict::Fits);
            log.push(secs(t0, i), 1);
        }
        assert_eq!(
            log.check(secs(t0, 10), W, 1, 3),
            Verdict::NotUntil(secs(t0, 60))
        );
        // two more need the first two entries gone
        assert_eq!(
            log.check(secs(t0, 10), W, 2, 3),
            Verdict::NotUntil(secs(t0, 61))
        );
        // at exactly ts + W the entry no longer counts
        assert_eq!(log.check(secs(t0, 60), W, 1, 3), Verdict::Fits);
        assert_eq!(log.sum(), 2);
    }

    #[test]
    fn never_when_the_amount_exceeds_the_limit() {
        let mut log = SlidingLog::new();
        assert_eq!(
            log.check(Instant::now(), W, 11, 10),
            Verdict::Never {
                amount: 11,
                limit: 10
            }
        );
    }

    #[test]
    fn set_rewrites_at_the_original_timestamp() {
        let t0 = Instant::now();
        let mut log = SlidingLog::new();
        let a = log.push(t0, 100);
        let b = log.push(secs(t0, 30), 100);
        assert_eq!(log.set(a, 10), Some(100));
        assert_eq!(log.sum(), 110);
        // the refunded entry still expires at t0 + W, the other at t0 + 90
        assert_eq!(
            log.check(secs(t0, 31), W, 95, 200),
            Verdict::NotUntil(secs(t0, 60))
        );
        assert_eq!(log.set(b, 150), Some(100));
        log.expire(secs(t0, 60), W);
        assert_eq!(log.sum(), 150);
        // an expired entry can no longer be corrected
        assert_eq!(log.set(a, 5), None);
        assert_eq!(log.sum(), 150);
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let t0 = Instant::now();
        let mut log = SlidingLog::new();
        log.push(secs(t0, 5), 1);
        log.push(secs(t0, 3), 1);
        // the second entry was recorded at t0 + 5, so both expire at t0 + 65
        assert!(!log.is_empty_at(secs(t0, 64), W));
        assert!(log.is_empty_at(secs(t0, 65), W));
        assert_eq!(log.len(), 0);
    }
}
