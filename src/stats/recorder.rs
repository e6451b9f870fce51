//! The recording side: counters and histograms in per-thread shards.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// The smallest latency told apart from zero: 1 µs (values are kept in whole
/// microseconds).
pub(crate) const LOWEST_MICROS: u64 = 1;
/// The largest latency kept as it is: 1 hour. Longer ones are recorded as
/// 1 hour.
pub(crate) const HIGHEST_MICROS: u64 = 3_600_000_000;
/// Significant decimal digits kept: a recorded value is off by at most one
/// part in a thousand (0.1 %), and exact below 2.048 ms.
pub(crate) const SIGNIFICANT_DIGITS: u8 = 3;

/// Every way a request can end, as an index into the shard counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Success = 0,
    RateLimited,
    QuotaExhausted,
    Overloaded,
    ServerError,
    Timeout,
    Transport,
    ClientError,
    Cancelled,
    QueueFull,
    QueueTimeout,
    LocalRateLimited,
    CircuitOpen,
    Deadline,
    TooLarge,
    OtherRejected,
}

pub(crate) const KINDS: usize = Kind::OtherRejected as usize + 1;

/// What one shard (or the sum of all of them) has counted.
pub(crate) type Counts = [u64; KINDS];

/// A histogram with the fixed bounds above.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// A duration in whole microseconds, clamped to the histogram's range (the
/// histogram's `saturating_record` clamps what is still too large).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Default)]
pub(crate) struct ShardData {
    pub(crate) counts: Counts,
    /// Made on the first record in this shard, so idle shards cost nothing.
    pub(crate) end_to_end: Option<Histogram<u64>>,
    pub(crate) queue_wait: Option<Histogram<u64>>,
}

impl ShardData {
    fn reset(&mut self) {
        self.counts = [0; KINDS];
        if let Some(h) = &mut self.end_to_end {
            h.reset();
        }
        if let Some(h) = &mut self.queue_wait {
            h.reset();
        }
    }
}

/// One shard, alone on its cache lines so that two threads recording into
/// two shards never write to the same line.
///
/// Each shard is its own `Arc`: a request's [`Recording`] holds its
/// shard, so the reference count a request touches is per shard too, not
/// one count that every thread bounces.
///
/// [`Recording`]: super::future::Recording
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Shard(Mutex<ShardData>);

impl Shard {
    /// Counts one request that ended as `kind`, with its end-to-end time if
    /// it is to be kept.
    #[inline]
    pub(crate) fn record_end(&self, kind: Kind, elapsed: Option<Duration>) {
        let mut data = self.0.lock();
        let count = &mut data.counts[kind as usize];
        *count = count.saturating_add(1);
        if let Some(elapsed) = elapsed {
            data.end_to_end
                .get_or_insert_with(new_histogram)
                .saturating_record(micros(elapsed));
        }
    }
}

/// Counters and histograms split into shards; a thread always records into
/// the same shard, so threads rarely meet on a lock.
pub(crate) struct Recorder {
    shards: Box<[Arc<Shard>]>,
    /// `shards.len() - 1` (the length is a power of two).
    mask: usize,
}

/// Hands each thread the next shard index, round robin.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// This thread's index (the same for every `Recorder`).
#[inline]
fn thread_index() -> usize {
    THREAD_INDEX
        .try_with(|cell| match cell.get() {
            Some(index) => index,
            None => {
                let index = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
                cell.set(Some(index));
                index
            }
        })
        // A thread being torn down (its thread-locals gone) shares shard 0.
        .unwrap_or(0)
}

impl Recorder {
    /// One shard per available core (rounded up to a power of two, at most
    /// 16).
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards(cores)
    }

    pub(crate) fn with_shards(shards: usize) -> Self {
        let n = shards.clamp(1, 16).next_power_of_two();
        Recorder {
            shards: (0..n).map(|_| Arc::new(Shard::default())).collect(),
            mask: n - 1,
        }
    }

    /// This thread's shard.
    #[inline]
    pub(crate) fn shard(&self) -> &Arc<Shard> {
        &self.shards[thread_index() & self.mask]
    }

    /// Counts one request in this thread's shard.
    #[cfg(test)]
    pub(crate) fn record_end(&self, kind: Kind, elapsed: Option<Duration>) {
        self.shard().record_end(kind, elapsed);
    }

    /// Keeps one queue wait.
    #[inline]
    pub(crate) fn record_queue_wait(&self, waited: Duration) {
        self.shard()
            .0
            .lock()
            .queue_wait
            .get_or_insert_with(new_histogram)
            .saturating_record(micros(waited));
    }

    /// The sum of every shard: counts, end-to-end and queue-wait histograms.
    /// Shards are read one after the other, each under its lock.
    pub(crate) fn merged(&self) -> (Counts, Histogram<u64>, Histogram<u64>) {
        let mut counts = [0u64; KINDS];
        let mut end_to_end = new_histogram();
        let mut queue_wait = new_histogram();
        for shard in self.shards.iter() {
            let data = shard.0.lock();
            for (sum, n) in counts.iter_mut().zip(data.counts.iter()) {
                *sum = sum.saturating_add(*n);
            }
            // Same bounds on both sides: adding cannot fail.
            if let Some(h) = &data.end_to_end {
                let _ = end_to_end.add(h);
            }
            if let Some(h) = &data.queue_wait {
                let _ = queue_wait.add(h);
            }
        }
        (counts, end_to_end, queue_wait)
    }

    /// Forgets every count and latency.
    pub(crate) fn reset(&self) {
        for shard in self.shards.iter() {
            shard.0.lock().reset();
        }
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_count_is_a_power_of_two() {
        for (asked, got) in [(0, 1), (1, 1), (2, 2), (3, 4), (12, 16), (64, 16)] {
            assert_eq!(Recorder::with_shards(asked).shard_count(), got, "{asked}");
        }
    }

    #[test]
    fn out_of_range_values_are_clamped_not_dropped() {
        let r = Recorder::with_shards(1);
        r.record_end(Kind::Success, Some(Duration::MAX));
        r.record_end(Kind::Success, Some(Duration::from_secs(100 * 3600)));
        r.record_end(Kind::Success, Some(Duration::ZERO));
        r.record_end(Kind::Success, Some(Duration::from_nanos(10)));
        r.record_queue_wait(Duration::MAX);
        let (counts, e2e, wait) = r.merged();
        assert_eq!(counts[Kind::Success as usize], 4);
        assert_eq!(e2e.len(), 4);
        assert_eq!(wait.len(), 1);
        assert!(e2e.max() >= HIGHEST_MICROS);
        assert!(e2e.max() <= HIGHEST_MICROS + HIGHEST_MICROS / 1000);
        assert_eq!(e2e.min(), 0);
    }

    #[test]
    fn shards_merge_and_reset() {
        let r = std::sync::Arc::new(Recorder::with_shards(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        r.record_end(Kind::Timeout, Some(Duration::from_millis(i + 1)));
                        r.record_queue_wait(Duration::ZERO);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (counts, e2e, wait) = r.merged();
        assert_eq!(counts[Kind::Timeout as usize], 400);
        assert_eq!(e2e.len(), 400);
        assert_eq!(wait.len(), 400);
        assert_eq!(e2e.max(), 4_000 + 1); // 4 ms, highest equivalent value
        r.reset();
        let (counts, e2e, wait) = r.merged();
        assert_eq!(counts.iter().sum::<u64>(), 0);
        assert_eq!((e2e.len(), wait.len()), (0, 0));
    }
}
