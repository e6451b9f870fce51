//! The sliding windows the failure and slow-call rates are measured over.
//!
//! Both keep running totals, so reading a rate is O(1):
//!
//! - [`CountWindow`]: the last `n` recorded calls, a ring of one byte a call;
//! - [`TimeWindow`]: the calls of the last `d`, in [`BUCKETS`] buckets of
//!   `d / BUCKETS` each. A call leaves the window a whole bucket at a time:
//!   a call in bucket `k` counts while the current bucket is below
//!   `k + BUCKETS`, so it is remembered for between `d - d / BUCKETS` and `d`.
//!   Memory is fixed however many calls arrive.

use std::time::Duration;

use tokio::time::Instant;

/// The call failed.
pub(crate) const FAILED: u8 = 1;
/// The call was slow.
pub(crate) const SLOW: u8 = 2;

/// How many buckets a time window is split into.
pub(crate) const BUCKETS: u64 = 20;

/// What a window holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Totals {
    fn add(&mut self, flags: u8) {
        self.calls += 1;
        self.failures += u32::from(flags & FAILED != 0);
        self.slow += u32::from(flags & SLOW != 0);
    }

    fn remove(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }
}

/// The last `n` calls.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[u8]>,
    next: usize,
    len: usize,
    totals: Totals,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        CountWindow {
            ring: vec![0; size.max(1) as usize].into_boxed_slice(),
            next: 0,
            len: 0,
            totals: Totals::default(),
        }
    }

    pub(crate) fn record(&mut self, flags: u8) {
        if self.len == self.ring.len() {
            let mut old = Totals::default();
            old.add(self.ring[self.next]);
            self.totals.remove(old);
        } else {
            self.len += 1;
        }
        self.ring[self.next] = flags;
        self.next = (self.next + 1) % self.ring.len();
        self.totals.add(flags);
    }

    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.ring.len()
    }

    pub(crate) fn clear(&mut self) {
        self.next = 0;
        self.len = 0;
        self.totals = Totals::default();
    }
}

/// The calls of the last `d`, bucketed.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    origin: Instant,
    width_nanos: u128,
    buckets: Box<[Totals]>,
    /// The index of the newest bucket (buckets since `origin`).
    head: u64,
    totals: Totals,
}

impl TimeWindow {
    pub(crate) fn new(span: Duration, origin: Instant) -> Self {
        TimeWindow {
            origin,
            width_nanos: (span.as_nanos() / u128::from(BUCKETS)).max(1),
            buckets: vec![Totals::default(); BUCKETS as usize].into_boxed_slice(),
            head: 0,
            totals: Totals::default(),
        }
    }

    fn index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / self.width_nanos).unwrap_or(u64::MAX)
    }

    /// Drops the buckets that have left the window at `now`.
    pub(crate) fn advance(&mut self, now: Instant) {
        let index = self.index(now);
        if index <= self.head {
            return;
        }
        if index - self.head >= BUCKETS {
            self.buckets.fill(Totals::default());
            self.totals = Totals::default();
        } else {
            for i in self.head + 1..=index {
                let slot = &mut self.buckets[(i % BUCKETS) as usize];
                self.totals.remove(*slot);
                *slot = Totals::default();
            }
        }
        self.head = index;
    }

    pub(crate) fn record(&mut self, flags: u8, now: Instant) {
        self.advance(now);
        self.buckets[(self.head % BUCKETS) as usize].add(flags);
        self.totals.add(flags);
    }

    pub(crate) fn totals(&mut self, now: Instant) -> Totals {
        self.advance(now);
        self.totals
    }

    pub(crate) fn clear(&mut self) {
        self.buckets.fill(Totals::default());
        self.totals = Totals::default();
    }
}

/// One of the two windows.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn record(&mut self, flags: u8, now: impl FnOnce() -> Instant) {
        match self {
            Window::Count(w) => w.record(flags),
            Window::Time(w) => w.record(flags, now()),
        }
    }

    pub(crate) fn totals(&mut self, now: impl FnOnce() -> Instant) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now()),
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_forgets_the_oldest_call() {
        let mut w = CountWindow::new(3);
        w.record(FAILED);
        w.record(0);
        w.record(SLOW);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(0);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.record(FAILED | SLOW);
        w.record(0);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.clear();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn time_window_drops_whole_buckets() {
        let t0 = Instant::now();
        let mut w = TimeWindow::new(Duration::from_secs(20), t0);
        w.record(FAILED, t0);
        w.record(0, t0 + Duration::from_millis(1_500));
        assert_eq!(w.totals(t0 + Duration::from_millis(19_999)).calls, 2);
        // The first bucket (0..1s) leaves at 20s, the second at 21s.
        assert_eq!(
            w.totals(t0 + Duration::from_secs(20)),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.totals(t0 + Duration::from_secs(21)).calls, 0);
        w.record(FAILED, t0 + Duration::from_secs(100));
        assert_eq!(w.totals(t0 + Duration::from_secs(100)).failures, 1);
        assert_eq!(w.totals(t0 + Duration::from_secs(1_000)).calls, 0);
    }
}
