//! A retry budget: retries may add at most a fraction of the recent request
//! rate, plus a small floor.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::ConfigError;

/// Milli-tokens in one retry: deposits are fractions of a retry.
const RETRY_COST: i64 = 1_000;
/// How many slots the window is divided into.
const SLOTS: u32 = 10;

/// A budget of retries shared by every clone (and every layer it is given to).
///
/// Each request deposits `ratio` of a retry; each retry withdraws one. What
/// was deposited or withdrawn counts for `ttl` and then expires, and a floor
/// of `min_per_sec * ttl` retries is always available on top. So over any
/// `ttl`, retries are at most
///
/// ```text
/// ratio * requests + min_per_sec * ttl
/// ```
///
/// (to the granularity of a tenth of `ttl`, the width of one slot). When an
/// upstream fails every call, the load it sees is the request rate times
/// `1 + ratio` instead of `1 + max_retries`: retries cannot turn an outage
/// into a storm. This is Finagle's `RetryBudget`, which tower's `TpsBudget`
/// also follows; the defaults are theirs: `ttl` 10 s, floor 10 retries a
/// second, ratio 0.2.
///
/// A request's deposit is lock-free (one atomic load and one atomic add,
/// plus a short lock once per slot period); retry decisions take a lock.
///
/// ```
/// use std::time::Duration;
/// use llm_sluice::retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // no floor, one retry for every two requests
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
/// assert!(!budget.withdraw());
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw());
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
}

struct Shared {
    ttl: Duration,
    min_per_sec: u32,
    ratio: f64,
    deposit: i64,
    reserve: i64,
    window: Window,
}

impl RetryBudget {
    /// A budget where each request allows `ratio` retries (0.2 is one retry
    /// per five requests), counted over `ttl`, plus `min_per_sec` retries a
    /// second whatever the request rate.
    ///
    /// `ttl` must be between 1 s and 1 h; `ratio` finite, between 0 and 1000.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self, ConfigError> {
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(3_600) {
            return Err(ConfigError::new(
                "budget_ttl",
                "must be between 1 second and 1 hour",
            ));
        }
        if !ratio.is_finite() || !(0.0..=1000.0).contains(&ratio) {
            return Err(ConfigError::new(
                "budget_ratio",
                "must be a finite number between 0 and 1000",
            ));
        }
        let deposit = (ratio * RETRY_COST as f64).round() as i64;
        let reserve = i64::from(min_per_sec)
            .saturating_mul(ttl.as_millis() as i64)
            .saturating_mul(RETRY_COST)
            / 1_000;
        Ok(RetryBudget {
            shared: Arc::new(Shared {
                ttl,
                min_per_sec,
                ratio,
                deposit,
                reserve,
                window: Window::new(ttl / SLOTS, Instant::now()),
            }),
        })
    }

    /// How long a deposit or a withdrawal counts.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The floor: retries per second allowed whatever the request rate.
    pub fn min_per_sec(&self) -> u32 {
        self.shared.min_per_sec
    }

    /// Retries allowed per request.
    pub fn ratio(&self) -> f64 {
        self.shared.ratio
    }

    /// Records a request (the retry layer calls it once per request, not per
    /// attempt).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    /// A deposit: lock-free, one atomic load and one atomic add unless a
    /// new slot starts (then a short lock, once per slot).
    pub(crate) fn deposit_at(&self, now: Instant) {
        self.shared.window.add(now, self.shared.deposit);
    }

    pub(crate) fn withdraw_at(&self, now: Instant) -> bool {
        let window = &self.shared.window;
        // Withdrawals are serialized so that check-then-take is exact;
        // deposits only raise the balance meanwhile.
        let _guard = window.withdrawals.lock();
        if self.shared.reserve.saturating_add(window.sum(now)) >= RETRY_COST {
            window.add(now, -RETRY_COST);
            true
        } else {
            false
        }
    }

    /// Whole retries available now.
    pub fn available(&self) -> u64 {
        let balance = self
            .shared
            .reserve
            .saturating_add(self.shared.window.sum(Instant::now()));
        u64::try_from(balance / RETRY_COST).unwrap_or(0)
    }

    /// Whether two handles share one budget.
    pub fn ptr_eq(&self, other: &RetryBudget) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Default for RetryBudget {
    /// `ttl` 10 s, 10 retries a second, ratio 0.2.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2).expect("valid default budget")
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.shared.ttl)
            .field("min_per_sec", &self.shared.min_per_sec)
            .field("ratio", &self.shared.ratio)
            .field("available", &self.available())
            .finish()
    }
}

/// A ring of slots over the ttl. Slot `i` holds the net milli-tokens added
/// during the slot period `generation`, where `generation` counts slot
/// periods since `epoch` and `i = generation % SLOTS`. A slot whose
/// generation is `SLOTS` or more behind the current one is expired and is
/// reset by the first writer of a newer generation.
struct Window {
    slots: [Slot; SLOTS as usize],
    slot_nanos: u64,
    epoch: Instant,
    /// The generation last computed: nearly every call falls in it, and
    /// checking that is a multiplication where computing it is a 64-bit
    /// division (a deposit is made on every request). Checked, never
    /// trusted: a stale value only costs the division.
    last_generation: AtomicU64,
    /// Taken to reset a slot for a new generation, and by withdrawals.
    withdrawals: Mutex<()>,
    resets: Mutex<()>,
}

struct Slot {
    generation: AtomicU64,
    amount: AtomicI64,
}

impl Window {
    fn new(slot_len: Duration, now: Instant) -> Self {
        Window {
            slots: std::array::from_fn(|_| Slot {
                generation: AtomicU64::new(0),
                amount: AtomicI64::new(0),
            }),
            slot_nanos: u64::try_from(slot_len.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            epoch: now,
            last_generation: AtomicU64::new(0),
            withdrawals: Mutex::new(()),
            resets: Mutex::new(()),
        }
    }

    fn generation(&self, now: Instant) -> u64 {
        // In u64 nanoseconds (584 years) so the division is a 64-bit one.
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        let last = self.last_generation.load(Ordering::Relaxed);
        match last.checked_mul(self.slot_nanos) {
            Some(start) if elapsed >= start && elapsed - start < self.slot_nanos => last,
            _ => {
                let generation = elapsed / self.slot_nanos;
                self.last_generation.store(generation, Ordering::Relaxed);
                generation
            }
        }
    }

    fn add(&self, now: Instant, amount: i64) {
        let generation = self.generation(now);
        let slot = &self.slots[(generation % u64::from(SLOTS)) as usize];
        if slot.generation.load(Ordering::Acquire) != generation {
            let _reset = self.resets.lock();
            let seen = slot.generation.load(Ordering::Acquire);
            if seen < generation {
                slot.amount.store(0, Ordering::Relaxed);
                slot.generation.store(generation, Ordering::Release);
            } else if seen > generation {
                // A caller that read the clock long ago: its slot is gone,
                // and what it adds is older than the ttl.
                return;
            }
        }
        slot.amount.fetch_add(amount, Ordering::Relaxed);
    }

    fn sum(&self, now: Instant) -> i64 {
        let current = self.generation(now);
        self.slots
            .iter()
            .filter(|slot| {
                let g = slot.generation.load(Ordering::Acquire);
                g <= current && current - g < u64::from(SLOTS)
            })
            .fold(0, |acc, slot| {
                acc.saturating_add(slot.amount.load(Ordering::Relaxed))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_cached_generation_always_equals_the_division() {
        let epoch = Instant::now();
        let window = Window::new(Duration::from_millis(7), epoch);
        // Forwards, backwards, across and on slot boundaries, before the
        // epoch.
        let offsets_us = [
            0u64,
            1,
            6_999,
            7_000,
            7_001,
            13_999,
            3,
            70_000,
            69_999,
            140_001,
            0,
            7_000,
            1 << 40,
            5,
        ];
        for us in offsets_us {
            let now = epoch + Duration::from_micros(us);
            assert_eq!(window.generation(now), us * 1_000 / 7_000_000, "at {us} us");
        }
        let before = epoch.checked_sub(Duration::from_secs(1)).unwrap_or(epoch);
        assert_eq!(window.generation(before), 0);
    }

    #[test]
    fn invalid_settings_fail() {
        let field = |r: Result<RetryBudget, ConfigError>| r.unwrap_err().field();
        assert_eq!(
            field(RetryBudget::new(Duration::ZERO, 1, 0.1)),
            "budget_ttl"
        );
        assert_eq!(field(RetryBudget::new(secs(7_200), 1, 0.1)), "budget_ttl");
        assert_eq!(field(RetryBudget::new(secs(10), 1, -0.1)), "budget_ratio");
        assert_eq!(
            field(RetryBudget::new(secs(10), 1, f64::NAN)),
            "budget_ratio"
        );
        assert!(RetryBudget::new(secs(1), u32::MAX, 1000.0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn floor_is_min_per_sec_times_ttl() {
        let budget = RetryBudget::new(secs(2), 3, 0.0).unwrap();
        assert_eq!(budget.available(), 6);
        for _ in 0..6 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw());
        // withdrawals expire after the ttl, and the floor is whole again
        tokio::time::advance(secs(2)).await;
        assert_eq!(budget.available(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl() {
        let budget = RetryBudget::new(secs(1), 0, 1.0).unwrap();
        budget.deposit();
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(budget.available(), 1, "still inside the ttl");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(budget.available(), 0, "expired");
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_bounds_retries_per_request() {
        let budget = RetryBudget::new(secs(10), 0, 0.2).unwrap();
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..1_000).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget() {
        let a = RetryBudget::new(secs(10), 0, 1.0).unwrap();
        let b = a.clone();
        assert!(a.ptr_eq(&b));
        a.deposit();
        assert!(b.withdraw());
        assert!(!a.withdraw());
    }

    #[test]
    fn concurrent_deposits_and_withdrawals_are_all_counted() {
        let budget = RetryBudget::new(secs(3_600), 0, 1.0).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        budget.deposit();
                    }
                    (0..1_500).filter(|_| budget.withdraw()).count()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // Withdrawals can run ahead of deposits, never beyond them.
        assert!(granted <= 4_000);
        assert_eq!(granted as u64 + budget.available(), 4_000);
    }

    #[tokio::test(start_paused = true)]
    async fn long_idle_clears_everything() {
        let budget = RetryBudget::new(secs(10), 0, 1.0).unwrap();
        budget.deposit();
        tokio::time::advance(secs(3_600 * 24 * 365)).await;
        assert_eq!(budget.available(), 0);
        budget.deposit();
        assert_eq!(budget.available(), 1);
    }
}
