//! The pure state of one exact sliding window: no clock, no runtime.
//!
//! Every function takes `now`; unit tests drive it with made-up instants.

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

/// One reservation in a [`SlidingLog`]: its timestamp once and its amount
/// for each kind of budget. 32 bytes, two to a cache line.
///
/// Requests are counted one per reservation (or none, once released), so
/// the request amount is the low bit of `stamp` and the timestamp the other
/// 63 bits (292 years of nanoseconds). The burst bounds spend the request
/// and token amounts, so they need no slots of their own.
///
/// Aligned to its size, so an entry never straddles two cache lines (an
/// admission reads the oldest entry and writes the newest).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
struct Entry {
    /// `at << 1 | requests`.
    stamp: u64,
    tokens: u64,
    input: u64,
    output: u64,
}

impl Entry {
    #[inline]
    fn at(&self) -> u64 {
        self.stamp >> 1
    }

    /// The amount budget `i` (a [`Budget`](super::Budget) index) counts.
    #[inline(always)]
    fn amount(&self, i: usize) -> u64 {
        match i {
            0 | 4 => self.stamp & 1,
            1 | 5 => self.tokens,
            2 => self.input,
            _ => self.output,
        }
    }

    /// Sets the amount of kind `k` (0 requests, 1 tokens, 2 input, 3 output).
    #[inline]
    fn set_amount(&mut self, k: usize, amount: u64) {
        match k {
            0 => self.stamp = (self.stamp & !1) | amount.min(1),
            1 => self.tokens = amount,
            2 => self.input = amount,
            _ => self.output = amount,
        }
    }
}

/// The latest window time a [`SlidingLog`] can record (63 bits).
pub(crate) const MAX_TIME: u64 = u64::MAX >> 1;

/// Whether `amount` more fits under `limit` on top of `sum`: `sum + amount
/// <= limit`, where a sum past `u64::MAX` never fits. (Saturating it instead
/// let anything fit under a limit of `u64::MAX`, and the running sum then
/// wrapped.) As cheap as the saturating form: an add, its carry, a compare.
#[inline(always)]
pub(crate) fn fits(sum: u64, amount: u64, limit: u64) -> bool {
    match sum.checked_add(amount) {
        Some(total) => total <= limit,
        None => false,
    }
}

/// A burst bound's view of the log: it counts the entries from `start`,
/// over its own shorter span.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    start: u64,
    sum: u64,
}

/// An exact sliding log of every budget of one scope: one ring buffer of
/// [`Entry`]s (one per reservation still inside the window, each holding the
/// timestamp once and the amounts of every kind of budget), with a running
/// sum per budget.
///
/// Budgets are numbered as [`Budget::index`](super::Budget::index): 0 to 3
/// (requests, tokens, input and output tokens) count over the whole window
/// and share one start; the burst bounds (4 and 5) count over shorter spans
/// from starts of their own, over the same entries.
///
/// Time is in nanoseconds since an origin the owner picks (no entry or
/// `now` before it, nothing past [`MAX_TIME`]): one integer comparison per
/// entry looked at.
///
/// An entry made at `ts` counts at every `t` with `ts <= t < ts + span`,
/// i.e. at `t` a budget holds the entries of `(t - span, t]`. Admission at
/// `t` requires `sum + amount <= limit`, so every interval of length `span`
/// that ends at an admission holds at most `limit`; since any interval's
/// content is bounded by the interval ending at its last admission, *every*
/// interval of length `span` does.
///
/// Entries are numbered in order (`pushed` is the next number): entry `seq`
/// lives at `seq mod capacity` (a power of two), so a reservation can be
/// corrected in O(1) at its original timestamp. A budget that is set counts
/// only the entries pushed since (a new budget starts empty): its amounts in
/// older entries are zeroed when it is set (for the whole-window budgets,
/// which share their start) or it starts at the newest entry (the bursts).
#[derive(Clone, Default)]
#[repr(C)] // what an admission touches first, side by side
pub(crate) struct SlidingLog {
    /// Which budgets count: bit `i` for budget index `i`.
    active: u8,
    /// The next entry number.
    pushed: u64,
    /// The oldest entry still inside the window (the whole-window budgets'
    /// start, and the oldest entry kept).
    start: u64,
    /// The newest timestamp recorded: timestamps never go backwards.
    newest: u64,
    /// Running sums of budgets 0 and 1 (requests and tokens) over
    /// `start..pushed`. The sum of a budget that is not set is meaningless
    /// (it is reset when set).
    sums: [u64; 2],
    buf: Box<[Entry]>,
    /// The same for budgets 2 and 3 (input and output tokens), kept only
    /// while one of them is set: apart from the hot head, since few
    /// limiters meter them.
    io: [u64; 2],
    /// The burst bounds on requests and tokens.
    bursts: [Cursor; 2],
    /// The first entry each whole-window budget counts: where it was last
    /// set (older entries have its amount zeroed).
    since: [u64; 4],
}

/// [`Verdict`] in the log's own time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogVerdict {
    Fits,
    NotUntil(u64),
    Never,
}

impl SlidingLog {
    /// How many bytes from its start an admission reads when only requests
    /// and tokens are limited: `active` to `buf`.
    #[cfg(test)]
    pub(crate) const HOT_BYTES: usize = std::mem::offset_of!(SlidingLog, io);

    /// The budgets that count (bit `i` for index `i`).
    #[inline]
    pub(crate) fn active(&self) -> u8 {
        self.active
    }

    /// Makes the budgets of `mask` the ones that count. A budget newly set
    /// starts empty; the sums of budgets no longer set stop meaning
    /// anything. With none set, every entry is forgotten. O(entries) when a
    /// whole-window budget is newly set (a runtime limit change), else O(1).
    pub(crate) fn activate(&mut self, mask: u8) {
        let added = mask & !self.active;
        if mask == 0 {
            self.start = self.pushed;
        }
        for k in 0..4 {
            if added & (1 << k) != 0 {
                let m = self.mask();
                for seq in self.start..self.pushed {
                    self.buf[seq as usize & m].set_amount(k, 0);
                }
                *self.sum_mut(k) = 0;
                self.since[k] = self.pushed;
            }
        }
        for j in 0..2 {
            if added & (1 << (4 + j)) != 0 {
                self.bursts[j] = Cursor {
                    start: self.pushed,
                    sum: 0,
                };
            }
        }
        self.active = mask;
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.buf.len().wrapping_sub(1)
    }

    /// Drops the entries that no longer count at `now` in the whole-window
    /// budgets (`span` is the window). O(1) amortized: each entry is pushed
    /// once and passed once.
    #[inline]
    pub(crate) fn expire(&mut self, now: u64, span: u64) {
        // An entry at `ts` counts while `ts + span > now`, i.e. while
        // `ts > now - span`. If `now - span` is before the origin, no entry
        // (all at or after it) can have left the window.
        let Some(cutoff) = now.checked_sub(span) else {
            return;
        };
        // `at <= cutoff` exactly when `stamp <= cutoff << 1 | 1`.
        let bound = (cutoff.min(MAX_TIME) << 1) | 1;
        let m = self.mask();
        let io = self.active & 0b1100 != 0;
        while self.start != self.pushed {
            let e = self.buf[self.start as usize & m];
            if e.stamp > bound {
                break;
            }
            self.sums[0] = self.sums[0].wrapping_sub(e.stamp & 1);
            self.sums[1] = self.sums[1].wrapping_sub(e.tokens);
            if io {
                self.io[0] = self.io[0].wrapping_sub(e.input);
                self.io[1] = self.io[1].wrapping_sub(e.output);
            }
            self.start += 1;
        }
    }

    /// Drops the entries that no longer count at `now` in burst bound `j`
    /// (0 requests, 1 tokens) over its `span`, no longer than the window (so
    /// it never looks before the whole-window start, after
    /// [`expire`](Self::expire) at the same `now`).
    #[inline]
    pub(crate) fn expire_burst(&mut self, j: usize, now: u64, span: u64) {
        let Some(cutoff) = now.checked_sub(span) else {
            return;
        };
        let bound = (cutoff.min(MAX_TIME) << 1) | 1;
        let m = self.mask();
        let mut c = self.bursts[j];
        // Before this loop the cursor may lag behind `start` (entries the
        // window expired first); they are still in the buffer (nothing was
        // pushed since) and leave the burst here too.
        while c.start != self.pushed {
            let e = self.buf[c.start as usize & m];
            if e.stamp > bound {
                break;
            }
            c.sum = c.sum.wrapping_sub(e.amount(4 + j));
            c.start += 1;
        }
        debug_assert!(c.start >= self.start || self.active & (16 << j) == 0);
        self.bursts[j] = c;
    }

    /// Expires budget `i` at `now` over `span` (the window for 0 to 3).
    #[inline(always)]
    pub(crate) fn expire_budget(&mut self, i: usize, now: u64, span: u64) {
        match i {
            4 | 5 => self.expire_burst(i - 4, now, span),
            _ => self.expire(now, span),
        }
    }

    /// What budget `i` holds (after expiring it).
    #[inline(always)]
    pub(crate) fn sum(&self, i: usize) -> u64 {
        match i {
            4 | 5 => self.bursts[i - 4].sum,
            2 | 3 => self.io[i - 2],
            _ => self.sums[i],
        }
    }

    /// The running sum of whole-window budget `k` (0 to 3).
    fn sum_mut(&mut self, k: usize) -> &mut u64 {
        match k {
            2 | 3 => &mut self.io[k - 2],
            _ => &mut self.sums[k],
        }
    }

    /// The first entry budget `i` looks at.
    #[inline]
    fn start_of(&self, i: usize) -> u64 {
        match i {
            4 | 5 => self.bursts[i - 4].start,
            _ => self.start,
        }
    }

    /// How many entries are held.
    #[inline]
    pub(crate) fn len(&self) -> u64 {
        self.pushed - self.start
    }

    /// Whether `amount` fits budget `i` under `limit` at `now` (expired with
    /// [`expire_budget`](Self::expire_budget)), and if not, from when.
    ///
    /// The wait is found by walking from the budget's oldest entry until
    /// enough would have expired: the instant is that entry's timestamp plus
    /// the span.
    pub(crate) fn verdict(
        &self,
        i: usize,
        now: u64,
        span: u64,
        amount: u64,
        limit: u64,
    ) -> LogVerdict {
        if amount > limit {
            return LogVerdict::Never;
        }
        let sum = self.sum(i);
        if fits(sum, amount, limit) {
            return LogVerdict::Fits;
        }
        // `sum + amount > limit` (perhaps past `u64::MAX`) with `amount <=
        // limit`: what must expire, computed without forming the sum.
        let need = sum - (limit - amount);
        let mut freed = 0u64;
        let m = self.mask();
        for seq in self.start_of(i)..self.pushed {
            let e = &self.buf[seq as usize & m];
            freed = freed.saturating_add(e.amount(i));
            if freed >= need {
                return LogVerdict::NotUntil(e.at().saturating_add(span));
            }
        }
        // Unreachable while `amount <= limit` (everything expiring frees
        // `sum >= need`); be safe anyway.
        LogVerdict::NotUntil(self.newest.max(now).saturating_add(span))
    }

    /// [`expire_budget`](Self::expire_budget), then
    /// [`verdict`](Self::verdict).
    #[cfg(test)]
    pub(crate) fn check(
        &mut self,
        i: usize,
        now: u64,
        span: u64,
        amount: u64,
        limit: u64,
    ) -> LogVerdict {
        self.expire_budget(i, now, span);
        self.verdict(i, now, span, amount, limit)
    }

    /// Records a reservation of `amounts` (by budget index; the request
    /// amount counts as one when not zero) at `now`, for every budget, and
    /// returns its number. Timestamps never go backwards: an entry is
    /// recorded at the latest of `now` and the newest entry, which can only
    /// make it expire later.
    ///
    /// Sums add without overflow checks, and need none: a budget's sum stays
    /// at most its limit when the reservation was checked to fit ([`fits`]
    /// never lets a sum pass `u64::MAX`), which is the caller's part.
    ///
    /// Into an empty log the entry goes where the newest one was (the
    /// numbers in between are skipped: no reservation has them), so a
    /// partition that is used now and then keeps touching one cache line of
    /// its buffer, the one it read to find the log empty.
    #[inline(always)]
    pub(crate) fn push(&mut self, now: u64, amounts: &[u64; 6]) -> u64 {
        let at = now.min(MAX_TIME).max(self.newest);
        self.newest = at;
        if self.start == self.pushed && self.pushed != 0 {
            self.restart();
        }
        if self.len() == self.buf.len() as u64 {
            self.grow();
        }
        let request = u64::from(amounts[0] != 0);
        let seq = self.pushed;
        let m = self.mask();
        self.buf[seq as usize & m] = Entry {
            stamp: (at << 1) | request,
            tokens: amounts[1],
            input: amounts[2],
            output: amounts[3],
        };
        self.sums[0] = self.sums[0].wrapping_add(request);
        self.sums[1] = self.sums[1].wrapping_add(amounts[1]);
        if self.active & 0b1100 != 0 {
            self.io[0] = self.io[0].wrapping_add(amounts[2]);
            self.io[1] = self.io[1].wrapping_add(amounts[3]);
        }
        if self.active & 0b11_0000 != 0 {
            self.bursts[0].sum = self.bursts[0].sum.wrapping_add(request);
            self.bursts[1].sum = self.bursts[1].sum.wrapping_add(amounts[1]);
        }
        self.pushed = seq + 1;
        seq
    }

    /// Renumbers an empty log (with a buffer) so that the next entry goes
    /// into the newest entry's place: `pushed - 1 + capacity`. Nothing is
    /// held, so every budget (burst bounds too: their spans are at most the
    /// window) starts there empty; a ticket for an older number finds it
    /// before `start` and changes nothing.
    #[inline(always)]
    fn restart(&mut self) {
        let next = self.pushed - 1 + self.buf.len() as u64;
        self.start = next;
        self.pushed = next;
        self.sums = [0; 2];
        // The cold parts only when in use (their values mean nothing
        // otherwise, and are reset when a budget is set).
        if self.active & 0b1100 != 0 {
            self.io = [0; 2];
        }
        if self.active & 0b11_0000 != 0 {
            self.bursts = [Cursor {
                start: next,
                sum: 0,
            }; 2];
        }
    }

    /// Doubles the buffer (amortized O(1) per push; never per admission once
    /// the window's peak is reached).
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        // From two entries (one cache line): most partitions hold few.
        let cap = (self.buf.len() * 2).max(2);
        let mut buf = vec![Entry::default(); cap].into_boxed_slice();
        let (old, new) = (self.mask(), cap - 1);
        for seq in self.start..self.pushed {
            buf[seq as usize & new] = self.buf[seq as usize & old];
        }
        self.buf = buf;
    }

    /// Replaces the amounts of reservation `seq` with `amounts` (by budget
    /// index), at its original timestamp, in every budget that still counts
    /// it (a budget set after it, or an entry that has left the window, is
    /// not changed: the correction can change nothing there).
    ///
    /// Every sum stays the exact sum of the amounts its entries hold, so
    /// expiring them all leaves it at zero. An amount is therefore stored
    /// only as large as every sum counting it can take without passing
    /// `u64::MAX`: the entry holds what was added, and it is what leaves
    /// when the entry expires. (Saturating the sum instead would subtract
    /// more at expiry than was added, and wrap an emptied window to near
    /// 2^64.) Only a correction onto a window already holding nearly 2^64
    /// is cut, and such a window is full for every limit anyway; the layer
    /// caps reported usage far below that
    /// ([`MAX_USAGE_TOKENS`](super::limits::MAX_USAGE_TOKENS)).
    pub(crate) fn set(&mut self, seq: u64, amounts: &[u64; 6]) {
        if seq < self.start || seq >= self.pushed {
            return;
        }
        let index = seq as usize & self.mask();
        for (k, &amount) in amounts.iter().enumerate().take(4) {
            if self.active & (1 << k) == 0 || seq < self.since[k] {
                continue;
            }
            let old = self.buf[index].amount(k);
            // The burst bound on the same amount, if it counts the entry.
            let burst = k < 2 && self.active & (16 << k) != 0 && seq >= self.bursts[k].start;
            // Each sum without this entry (exact: it counts `old`; wrapping
            // only so that a broken caller cannot make it panic).
            let rest = self.sum(k).wrapping_sub(old);
            let burst_rest = burst.then(|| self.bursts[k].sum.wrapping_sub(old));
            let room = match burst_rest {
                Some(b) => u64::MAX - rest.max(b),
                None => u64::MAX - rest,
            };
            let entry = &mut self.buf[index];
            entry.set_amount(k, amount.min(room));
            let new = entry.amount(k);
            *self.sum_mut(k) = rest.wrapping_add(new);
            if let Some(b) = burst_rest {
                self.bursts[k].sum = b.wrapping_add(new);
            }
        }
    }

    /// The amount budget `i` counts for reservation `seq`, if it is held.
    #[cfg(test)]
    pub(crate) fn amount(&self, seq: u64, i: usize) -> Option<u64> {
        (seq >= self.start && seq < self.pushed)
            .then(|| self.buf[seq as usize & self.mask()].amount(i))
    }

    /// Whether nothing counts at `now` in any budget (the window is the
    /// longest span). Changes nothing unless every entry has left the
    /// window: then all are dropped at once (so no burst bound is left
    /// looking at entries before the whole-window start).
    pub(crate) fn is_empty_at(&mut self, now: u64, window: u64) -> bool {
        if self.start == self.pushed {
            return true;
        }
        let all_out = now
            .checked_sub(window)
            .is_some_and(|cutoff| self.newest <= cutoff);
        if all_out {
            self.start = self.pushed;
            self.sums = [0; 2];
            self.io = [0; 2];
            self.bursts = [Cursor {
                start: self.pushed,
                sum: 0,
            }; 2];
        }
        all_out
    }
}

impl std::fmt::Debug for SlidingLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlidingLog")
            .field("entries", &self.len())
            .field("capacity", &self.buf.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000_000_000;
    const REQ: usize = 0;
    const TOK: usize = 1;
    const REQ_BURST: usize = 4;

    fn secs(s: u64) -> u64 {
        s * 1_000_000_000
    }

    /// One request of `tokens`, as `Demand::amounts` lays it out.
    fn call(tokens: u64) -> [u64; 6] {
        [1, tokens, tokens, tokens, 1, tokens]
    }

    fn log(mask: u8) -> SlidingLog {
        let mut log = SlidingLog::default();
        log.activate(mask);
        log
    }

    #[test]
    fn admits_up_to_the_limit_then_waits_for_the_oldest_entry() {
        let mut log = log(0b1);
        for i in 0..3 {
            assert_eq!(log.check(REQ, secs(i), W, 1, 3), LogVerdict::Fits);
            log.push(secs(i), &call(0));
        }
        assert_eq!(
            log.check(REQ, secs(10), W, 1, 3),
            LogVerdict::NotUntil(secs(60))
        );
        // two more need the first two entries gone
        assert_eq!(
            log.check(REQ, secs(10), W, 2, 3),
            LogVerdict::NotUntil(secs(61))
        );
        // at exactly ts + W the entry no longer counts
        assert_eq!(log.check(REQ, secs(60), W, 1, 3), LogVerdict::Fits);
        assert_eq!(log.sum(REQ), 2);
    }

    #[test]
    fn never_when_the_amount_exceeds_the_limit() {
        let mut log = log(0b10);
        assert_eq!(log.check(TOK, 0, W, 11, 10), LogVerdict::Never);
    }

    #[test]
    fn set_rewrites_at_the_original_timestamp() {
        let mut log = log(0b11);
        let a = log.push(0, &call(100));
        let b = log.push(secs(30), &call(100));
        log.set(a, &call(10));
        assert_eq!(log.sum(TOK), 110);
        assert_eq!(log.sum(REQ), 2);
        // the refunded entry still expires at W, the other at 90 s
        assert_eq!(
            log.check(TOK, secs(31), W, 95, 200),
            LogVerdict::NotUntil(secs(60))
        );
        log.set(b, &call(150));
        log.expire(secs(60), W);
        assert_eq!(log.sum(TOK), 150);
        // an expired entry can no longer be corrected
        log.set(a, &call(5));
        assert_eq!(log.sum(TOK), 150);
        // a release gives the request back too
        log.set(b, &[0; 6]);
        assert_eq!((log.sum(REQ), log.sum(TOK)), (0, 0));
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut log = log(0b1);
        log.push(secs(5), &call(0));
        log.push(secs(3), &call(0));
        // the second entry was recorded at 5 s, so both expire at 65 s
        assert!(!log.is_empty_at(secs(64), W));
        assert_eq!(log.len(), 2);
        assert!(log.is_empty_at(secs(65), W));
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn budgets_share_entries_and_expire_together() {
        let mut log = log(0b1111);
        log.push(0, &[1, 30, 20, 10, 1, 30]);
        log.push(secs(1), &[1, 7, 5, 2, 1, 7]);
        assert_eq!(
            [0, 1, 2, 3].map(|i| log.sum(i)),
            [2, 37, 25, 12],
            "one entry carries every amount"
        );
        log.expire(secs(60), W);
        assert_eq!([0, 1, 2, 3].map(|i| log.sum(i)), [1, 7, 5, 2]);
        log.expire(secs(61), W);
        assert_eq!([0, 1, 2, 3].map(|i| log.sum(i)), [0, 0, 0, 0]);
    }

    #[test]
    fn a_burst_bound_expires_over_its_own_span_from_its_own_start() {
        let span = secs(5);
        let mut log = log(0b1_0001);
        for s in 0..3 {
            log.push(secs(s), &call(1));
        }
        log.expire(secs(6), W);
        log.expire_burst(0, secs(6), span);
        // the window still holds all three, the burst only the one at 2 s
        assert_eq!((log.sum(REQ), log.sum(REQ_BURST)), (3, 1));
        assert_eq!(
            log.verdict(REQ_BURST, secs(6), span, 1, 1),
            LogVerdict::NotUntil(secs(7))
        );
        assert_eq!(
            log.verdict(REQ, secs(6), W, 1, 3),
            LogVerdict::NotUntil(secs(60))
        );
        // a release reaches the burst only while it counts the entry
        log.set(2, &[0; 6]);
        assert_eq!((log.sum(REQ), log.sum(REQ_BURST)), (2, 0));
        log.set(0, &[0; 6]);
        assert_eq!((log.sum(REQ), log.sum(REQ_BURST)), (1, 0));
    }

    #[test]
    fn a_budget_set_later_starts_empty_and_ignores_older_corrections() {
        let mut log = log(0b1);
        let old = log.push(0, &call(50));
        // tokens and the token burst are set now: they count nothing yet
        log.activate(0b10_0011);
        assert_eq!((log.sum(TOK), log.sum(5)), (0, 0));
        assert_eq!(log.amount(old, TOK), Some(0));
        let new = log.push(secs(1), &call(40));
        assert_eq!((log.sum(REQ), log.sum(TOK), log.sum(5)), (2, 40, 40));
        // the older reservation is corrected where it counts: requests only
        log.set(old, &call(500));
        assert_eq!((log.sum(REQ), log.sum(TOK), log.sum(5)), (2, 40, 40));
        log.set(new, &call(45));
        assert_eq!((log.sum(TOK), log.sum(5)), (45, 45));
        // expiring the older entry takes nothing from the tokens
        log.expire(secs(60), W);
        assert_eq!((log.sum(REQ), log.sum(TOK)), (1, 45));
        // unset everything: every entry is forgotten
        log.activate(0);
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn an_emptied_log_reuses_the_newest_place_and_ignores_old_tickets() {
        let mut log = log(0b11_0011);
        let a = log.push(secs(1), &call(10));
        let b = log.push(secs(2), &call(20));
        log.expire(secs(62), W);
        log.expire_burst(0, secs(62), secs(5));
        log.expire_burst(1, secs(62), secs(5));
        assert_eq!(log.len(), 0);
        let c = log.push(secs(62), &call(30));
        // the new entry sits where `b` was, under a new number
        let m = log.buf.len() - 1;
        assert_eq!(c as usize & m, b as usize & m);
        assert!(c > b);
        assert_eq!([0, 1, 4, 5].map(|i| log.sum(i)), [1, 30, 1, 30]);
        // corrections of the expired reservations change nothing
        log.set(a, &call(500));
        log.set(b, &[0; 6]);
        assert_eq!([0, 1, 4, 5].map(|i| log.sum(i)), [1, 30, 1, 30]);
        log.set(c, &call(7));
        assert_eq!([0, 1, 4, 5].map(|i| log.sum(i)), [1, 7, 1, 7]);
        // a timestamp earlier than the newest is still recorded at it
        let d = log.push(secs(61), &call(1));
        assert_eq!(d, c + 1);
        assert!(!log.is_empty_at(secs(121), W));
        assert!(log.is_empty_at(secs(122), W));
    }

    /// Issue 14, in the log: a correction to `u64::MAX` (a client's `-1`
    /// cast to `u64`) of one of two reservations, then both expire. The
    /// sum must be 0 again, not 2^64 - 100, so a 0-token request fits.
    #[test]
    fn an_absurd_correction_leaves_an_emptied_log_at_zero() {
        let mut log = log(0b11);
        let a = log.push(0, &call(100));
        log.push(0, &call(100));
        log.set(a, &call(u64::MAX));
        assert_eq!(log.sum(TOK), u64::MAX, "held exactly, not past 2^64");
        assert_eq!(
            log.check(TOK, secs(30), W, 0, 1_000),
            LogVerdict::NotUntil(W)
        );
        log.expire(W, W);
        assert_eq!((log.len(), log.sum(REQ), log.sum(TOK)), (0, 0, 0));
        assert_eq!(log.check(TOK, secs(300), W, 0, 1_000), LogVerdict::Fits);
        assert_eq!(log.check(TOK, secs(300), W, 1_000, 1_000), LogVerdict::Fits);
    }

    /// Under a limit of `u64::MAX` a sum past it must not count as fitting
    /// (a saturating sum let anything in, and the running sum wrapped).
    #[test]
    fn a_limit_of_u64_max_is_never_exceeded() {
        let max = u64::MAX;
        let mut log = log(0b10);
        assert_eq!(log.check(TOK, 0, W, max - 10, max), LogVerdict::Fits);
        log.push(0, &call(max - 10));
        assert_eq!(log.check(TOK, 1, W, 20, max), LogVerdict::NotUntil(W));
        assert_eq!(log.check(TOK, 1, W, 10, max), LogVerdict::Fits);
        assert_eq!(log.check(TOK, 1, W, max, max), LogVerdict::NotUntil(W));
        assert_eq!(log.check(TOK, 1, W, max, max - 1), LogVerdict::Never);
        log.expire(W, W);
        assert_eq!(log.check(TOK, W, W, max, max), LogVerdict::Fits);
    }

    /// A correction that no sum can hold is stored as what they can: the
    /// entry gives back exactly what it added when it expires.
    #[test]
    fn a_correction_is_held_only_as_far_as_every_sum_can_take_it() {
        let mut log = log(0b10_0011);
        let a = log.push(0, &call(10));
        let b = log.push(1, &call(10));
        log.set(a, &call(u64::MAX - 15));
        assert_eq!((log.sum(TOK), log.sum(5)), (u64::MAX - 5, u64::MAX - 5));
        log.set(b, &call(u64::MAX));
        assert_eq!((log.sum(TOK), log.sum(5)), (u64::MAX, u64::MAX));
        assert_eq!(log.amount(b, TOK), Some(15));
        log.set(a, &call(1));
        assert_eq!((log.sum(TOK), log.sum(5)), (16, 16));
        log.expire(W + 1, W);
        log.expire_burst(1, W + 1, W);
        assert_eq!((log.sum(TOK), log.sum(5)), (0, 0));
    }

    #[test]
    fn growing_keeps_entries_in_order_across_the_wrap() {
        let mut log = log(0b11);
        // fill, expire some, wrap around, then grow past the wrap
        for s in 0..8 {
            log.push(secs(s), &call(s + 1));
        }
        log.expire(W + secs(4), W);
        assert_eq!(log.len(), 3);
        for s in 8..40 {
            log.push(W + secs(s), &call(s + 1));
        }
        assert_eq!(log.len(), 35);
        let expected: u64 = (6..=8).chain(9..=40).sum();
        assert_eq!(log.sum(TOK), expected);
        // the wait walks the entries in time order
        assert_eq!(
            log.verdict(TOK, W + secs(40), W, 6 + 7, expected),
            LogVerdict::NotUntil(W + secs(6))
        );
        for seq in 5..40 {
            assert_eq!(log.amount(seq, TOK), Some(seq + 1));
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// The window of these tests, in the log's units.
        const SPAN: u64 = 1_000;

        /// Amounts from the whole range, the edges most of all.
        fn amount() -> impl Strategy<Value = u64> {
            prop_oneof![
                0u64..2_000,
                (u64::MAX - 2_000)..=u64::MAX,
                Just(1u64 << 40),
                any::<u64>(),
            ]
        }

        fn limit() -> impl Strategy<Value = u64> {
            prop_oneof![1u64..5_000, (u64::MAX - 5_000)..=u64::MAX, any::<u64>()]
        }

        #[derive(Debug, Clone)]
        enum Op {
            /// Time moves on by this much, then a reservation of these
            /// token, input and output amounts, made as the store makes it:
            /// only if every budget set says it fits.
            Push(u64, [u64; 3]),
            /// A correction, as usage makes it, of the reservation this far
            /// back from the newest (past the oldest too: expired tickets).
            Set(u64, [u64; 4]),
            /// Time moves on; every budget expires.
            Advance(u64),
            /// The budgets set change (a runtime limit change).
            Activate(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            let step = prop_oneof![0u64..3, 0..SPAN, (SPAN - 2)..(SPAN + 2)];
            prop_oneof![
                4 => (step.clone(), [amount(), amount(), amount()]).prop_map(|(dt, a)| Op::Push(dt, a)),
                3 => (0u64..40, 0u64..2, [amount(), amount(), amount()])
                    .prop_map(|(back, r, [t, i, o])| Op::Set(back, [r, t, i, o])),
                1 => step.prop_map(Op::Advance),
                1 => mask().prop_map(Op::Activate),
            ]
        }

        /// A valid set of budgets: a burst only with the budget it paces.
        fn mask() -> impl Strategy<Value = u8> {
            (1u8..16, 0u8..4).prop_map(|(whole, bursts)| whole | ((bursts & whole & 0b11) << 4))
        }

        /// What budget `i` counts, entry by entry, without a running sum.
        fn counted(log: &SlidingLog, i: usize) -> u128 {
            (log.start_of(i)..log.pushed)
                .map(|seq| u128::from(log.buf[seq as usize & log.mask()].amount(i)))
                .sum()
        }

        fn check_sums(log: &SlidingLog) -> Result<(), TestCaseError> {
            for i in (0..6).filter(|i| log.active() & (1 << i) != 0) {
                prop_assert_eq!(u128::from(log.sum(i)), counted(log, i), "budget {}", i);
            }
            Ok(())
        }

        proptest! {
            /// The running sums are exact: each is the sum of the amounts
            /// its entries hold (so never past `u64::MAX`), a reservation
            /// checked to fit leaves every sum within its limit, and once
            /// everything has expired every sum is 0 again. (The sum of a
            /// budget that is not set means nothing and is not looked at.)
            #[test]
            fn sums_are_exact_and_an_emptied_log_holds_zero(
                mask in mask(),
                limits in [limit(), limit(), limit(), limit(), limit(), limit()],
                burst_spans in [1u64..=SPAN, 1u64..=SPAN],
                ops in proptest::collection::vec(op(), 1..80),
            ) {
                let span = |i: usize| if i >= 4 { burst_spans[i - 4] } else { SPAN };
                let mut log = log(mask);
                let mut now = 0u64;
                for op in ops {
                    match op {
                        Op::Push(dt, [tokens, input, output]) => {
                            now += dt;
                            let amounts = [1, tokens, input, output, 1, tokens];
                            let active = log.active();
                            let mut fits = true;
                            for i in (0..6).filter(|i| active & (1 << i) != 0) {
                                let v = log.check(i, now, span(i), amounts[i], limits[i]);
                                fits &= v == LogVerdict::Fits;
                            }
                            if fits {
                                log.push(now, &amounts);
                                for i in (0..6).filter(|i| active & (1 << i) != 0) {
                                    prop_assert!(log.sum(i) <= limits[i], "budget {} over", i);
                                }
                            }
                        }
                        Op::Set(back, [request, tokens, input, output]) => {
                            let seq = log.pushed.wrapping_sub(1 + back);
                            log.set(seq, &[request, tokens, input, output, request, tokens]);
                        }
                        Op::Advance(dt) => {
                            now += dt;
                            for i in 0..6 {
                                if log.active() & (1 << i) != 0 {
                                    log.expire_budget(i, now, span(i));
                                }
                            }
                        }
                        Op::Activate(mask) => log.activate(mask),
                    }
                    check_sums(&log)?;
                }
                // Everything expires.
                now += SPAN;
                for i in 0..6 {
                    if log.active() & (1 << i) != 0 {
                        log.expire_budget(i, now, span(i));
                        prop_assert_eq!(log.sum(i), 0, "budget {} after expiry", i);
                    }
                }
                prop_assert_eq!(log.len(), 0);
                prop_assert!(log.is_empty_at(now, SPAN));
            }
        }
    }
}
