//! The pure state of one exact sliding window: no clock, no runtime.
//!
//! Every function takes `now`; unit tests drive it with made-up instants.

use std::collections::VecDeque;
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
/// Time is in nanoseconds since an origin the owner picks (no entry or
/// `now` before it): 16-byte entries, and one integer comparison per entry
/// looked at.
///
/// An entry made at `ts` counts at every `t` with `ts <= t < ts + span`,
/// i.e. at `t` the log holds the entries of `(t - span, t]`. Admission at
/// `t` requires `sum + amount <= limit`, so every interval of length `span`
/// that ends at an admission holds at most `limit`; since any interval's
/// content is bounded by the interval ending at its last admission, *every*
/// interval of length `span` does.
///
/// Entries are identified by a sequence number; the owner keeps the count
/// of entries ever pushed (`pushed`), so `entries[i]` is number
/// `pushed - len + i` and a reservation can be corrected in O(1) at its
/// original timestamp.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlidingLog {
    entries: VecDeque<(u64, u64)>,
    /// Sum of the amounts in `entries`.
    sum: u64,
}

/// [`Verdict`] in the log's own time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogVerdict {
    Fits,
    NotUntil(u64),
    Never,
}

impl SlidingLog {
    /// Drops the entries that no longer count at `now`. O(1) amortized: each
    /// entry is pushed once and popped once.
    #[inline]
    pub(crate) fn expire(&mut self, now: u64, span: u64) {
        // An entry at `ts` counts while `ts + span > now`, i.e. while
        // `ts > now - span`. If `now - span` is before the origin, no entry
        // (all at or after it) can have left the window.
        let Some(cutoff) = now.checked_sub(span) else {
            return;
        };
        while let Some(&(ts, amount)) = self.entries.front() {
            if ts > cutoff {
                break;
            }
            self.entries.pop_front();
            self.sum -= amount;
        }
    }

    /// What is reserved in the window (after [`expire`](Self::expire)).
    #[inline]
    pub(crate) fn sum(&self) -> u64 {
        self.sum
    }

    /// How many entries are held.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.sum = 0;
    }

    /// Whether `amount` fits under `limit` at `now` (already expired with
    /// [`expire`](Self::expire)), and if not, from when.
    ///
    /// The wait is found by walking from the oldest entry until enough would
    /// have expired: the instant is that entry's timestamp plus the span.
    pub(crate) fn verdict(&self, now: u64, span: u64, amount: u64, limit: u64) -> LogVerdict {
        if amount > limit {
            return LogVerdict::Never;
        }
        let total = self.sum.saturating_add(amount);
        if total <= limit {
            return LogVerdict::Fits;
        }
        let need = total - limit;
        let mut freed = 0u64;
        for &(ts, entry) in &self.entries {
            freed = freed.saturating_add(entry);
            if freed >= need {
                return LogVerdict::NotUntil(ts.saturating_add(span));
            }
        }
        // Unreachable while `amount <= limit` (everything expiring frees
        // `sum >= need`); be safe anyway.
        LogVerdict::NotUntil(
            self.entries
                .back()
                .map_or(now, |&(ts, _)| ts.saturating_add(span)),
        )
    }

    /// [`expire`](Self::expire), then [`verdict`](Self::verdict).
    #[cfg(test)]
    pub(crate) fn check(&mut self, now: u64, span: u64, amount: u64, limit: u64) -> LogVerdict {
        self.expire(now, span);
        self.verdict(now, span, amount, limit)
    }

    /// Records `amount` at `now`. Timestamps never go backwards: an entry is
    /// recorded at the latest of `now` and the newest entry, which can only
    /// make it expire later.
    #[inline]
    pub(crate) fn push(&mut self, now: u64, amount: u64) {
        let at = match self.entries.back() {
            Some(&(last, _)) if last > now => last,
            _ => now,
        };
        self.entries.push_back((at, amount));
        self.sum = self.sum.saturating_add(amount);
    }

    /// Replaces the amount of the entry `back` places before the newest
    /// (`0` is the newest), at its original timestamp. Returns the old
    /// amount, or `None` if the entry has already expired (then the
    /// correction can change nothing: the window no longer counts it).
    pub(crate) fn set(&mut self, back: u64, amount: u64) -> Option<u64> {
        let back = usize::try_from(back).ok()?;
        let index = self.entries.len().checked_sub(back)?.checked_sub(1)?;
        let entry = self.entries.get_mut(index)?;
        let old = entry.1;
        entry.1 = amount;
        self.sum = self.sum - old + amount;
        Some(old)
    }

    /// Whether nothing counts at `now`.
    pub(crate) fn is_empty_at(&mut self, now: u64, span: u64) -> bool {
        self.expire(now, span);
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000_000_000;

    fn secs(s: u64) -> u64 {
        s * 1_000_000_000
    }

    #[test]
    fn admits_up_to_the_limit_then_waits_for_the_oldest_entry() {
        let mut log = SlidingLog::default();
        for i in 0..3 {
            assert_eq!(log.check(secs(i), W, 1, 3), LogVerdict::Fits);
            log.push(secs(i), 1);
        }
        assert_eq!(log.check(secs(10), W, 1, 3), LogVerdict::NotUntil(secs(60)));
        // two more need the first two entries gone
        assert_eq!(log.check(secs(10), W, 2, 3), LogVerdict::NotUntil(secs(61)));
        // at exactly ts + W the entry no longer counts
        assert_eq!(log.check(secs(60), W, 1, 3), LogVerdict::Fits);
        assert_eq!(log.sum(), 2);
    }

    #[test]
    fn never_when_the_amount_exceeds_the_limit() {
        let mut log = SlidingLog::default();
        assert_eq!(log.check(0, W, 11, 10), LogVerdict::Never);
    }

    #[test]
    fn set_rewrites_at_the_original_timestamp() {
        let mut log = SlidingLog::default();
        log.push(0, 100);
        log.push(secs(30), 100);
        // `a` is one place before the newest, `b` the newest
        assert_eq!(log.set(1, 10), Some(100));
        assert_eq!(log.sum(), 110);
        // the refunded entry still expires at W, the other at 90 s
        assert_eq!(
            log.check(secs(31), W, 95, 200),
            LogVerdict::NotUntil(secs(60))
        );
        assert_eq!(log.set(0, 150), Some(100));
        log.expire(secs(60), W);
        assert_eq!(log.sum(), 150);
        // an expired entry can no longer be corrected
        assert_eq!(log.set(1, 5), None);
        assert_eq!(log.sum(), 150);
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut log = SlidingLog::default();
        log.push(secs(5), 1);
        log.push(secs(3), 1);
        // the second entry was recorded at 5 s, so both expire at 65 s
        assert!(!log.is_empty_at(secs(64), W));
        assert!(log.is_empty_at(secs(65), W));
        assert_eq!(log.len(), 0);
    }
}
