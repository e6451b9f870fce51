//! A retry budget: retries may add at most a fraction of the recent request
//! rate, plus a small floor.

use std::fmt;
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
/// The state is one small mutex-protected window, touched once per request
/// and once per retry decision.
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
    window: Mutex<Window>,
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
                window: Mutex::new(Window::new(ttl / SLOTS, Instant::now())),
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

    pub(crate) fn deposit_at(&self, now: Instant) {
        self.shared.window.lock().add(now, self.shared.deposit);
    }

    pub(crate) fn withdraw_at(&self, now: Instant) -> bool {
        let mut window = self.shared.window.lock();
        window.advance(now);
        if self.shared.reserve.saturating_add(window.sum()) >= RETRY_COST {
            window.add(now, -RETRY_COST);
            true
        } else {
            false
        }
    }

    /// Whole retries available now.
    pub fn available(&self) -> u64 {
        let now = Instant::now();
        let mut window = self.shared.window.lock();
        window.advance(now);
        let balance = self.shared.reserve.saturating_add(window.sum());
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

/// A ring of slots over the ttl, each holding the net milli-tokens added
/// while it was current. Pure: `now` is an argument.
struct Window {
    slots: [i64; SLOTS as usize],
    slot_len: Duration,
    head: usize,
    head_start: Instant,
}

impl Window {
    fn new(slot_len: Duration, now: Instant) -> Self {
        Window {
            slots: [0; SLOTS as usize],
            slot_len,
            head: 0,
            head_start: now,
        }
    }

    /// Moves the head to the slot that contains `now`, clearing the slots it
    /// passes (they held what is now older than the ttl).
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.head_start);
        if elapsed < self.slot_len {
            return;
        }
        let steps = elapsed.as_nanos() / self.slot_len.as_nanos();
        let clear = steps.min(u128::from(SLOTS)) as usize;
        for _ in 0..clear {
            self.head = (self.head + 1) % self.slots.len();
            self.slots[self.head] = 0;
        }
        // Keep the head aligned to whole slots; saturate rather than overflow.
        let advanced = self
            .slot_len
            .checked_mul(u32::try_from(steps).unwrap_or(u32::MAX))
            .unwrap_or(elapsed);
        self.head_start += advanced.min(elapsed);
    }

    fn add(&mut self, now: Instant, amount: i64) {
        self.advance(now);
        self.slots[self.head] = self.slots[self.head].saturating_add(amount);
    }

    fn sum(&self) -> i64 {
        self.slots.iter().fold(0, |acc, s| acc.saturating_add(*s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
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
