//! Computed backoff: exponential growth with jitter.

use std::time::Duration;

/// How the random part of a computed delay is drawn.
///
/// Every variant starts from the exponential ceiling
/// `min(cap, base * 2^n)`, where `n` is the number of retries already made
/// for the request (0 before the first retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Jitter {
    /// `random(0, ceiling)`, uniformly (the default).
    ///
    /// Clients that failed together (one upstream hiccup fails every
    /// in-flight call at once) are spread over the whole interval, so they
    /// do not come back as a synchronized wave. Of the schemes compared in
    /// the AWS Architecture Blog's "Exponential Backoff And Jitter", full
    /// jitter did the least total work and finished soonest under
    /// contention; its cost, an occasional very short delay, matters little
    /// because the retry budget bounds the extra load.
    #[default]
    Full,
    /// `ceiling / 2 + random(0, ceiling / 2)`: never shorter than half the
    /// ceiling, still spread.
    Equal,
    /// `ceiling * random(0.75, 1]`: the official OpenAI-compatible SDKs'
    /// scheme (with base 0.5 s and cap 8 s). Little spread: clients that
    /// failed together retry within a quarter of the ceiling of each other.
    Scaled,
    /// Exactly the ceiling: deterministic, for tests and fixed schedules.
    None,
}

/// An exponential backoff with jitter: `base * 2^n`, capped, then jittered.
///
/// ```
/// use std::time::Duration;
/// use llm_sluice::retry::{Backoff, Jitter};
///
/// let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8), Jitter::None).unwrap();
/// let mut rng = fastrand::Rng::with_seed(7);
/// let delays: Vec<_> = (0..6).map(|n| backoff.delay(n, &mut rng).as_millis()).collect();
/// assert_eq!(delays, [500, 1_000, 2_000, 4_000, 8_000, 8_000]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// Base 0.5 s, cap 8 s (the official SDKs' values), full jitter.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// A backoff from `base` doubling up to `cap`, jittered by `jitter`.
    ///
    /// Fails when `base` is zero or `cap` is below `base`.
    pub fn new(base: Duration, cap: Duration, jitter: Jitter) -> Result<Self, crate::ConfigError> {
        if base.is_zero() {
            return Err(crate::ConfigError::new(
                "backoff_base",
                "must be greater than zero",
            ));
        }
        if cap < base {
            return Err(crate::ConfigError::new(
                "backoff_cap",
                "must not be less than backoff_base",
            ));
        }
        Ok(Backoff { base, cap, jitter })
    }

    /// The delay before the first retry, before jitter.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest computed delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter scheme.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The ceiling before jitter after `retries` retries: `min(cap, base * 2^retries)`.
    pub fn ceiling(&self, retries: u32) -> Duration {
        let factor = 1u32.checked_shl(retries.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The delay after `retries` retries, drawing its jitter from `rng`.
    pub fn delay(&self, retries: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(retries);
        // Whole nanoseconds: u64 nanoseconds cover 584 years.
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        match self.jitter {
            Jitter::Full => Duration::from_nanos(rng.u64(0..=nanos)),
            Jitter::Equal => {
                let half = nanos / 2;
                Duration::from_nanos(half + rng.u64(0..=nanos - half))
            }
            Jitter::Scaled => {
                // f64() is in [0, 1), so the factor is in (0.75, 1].
                let factor = 1.0 - 0.25 * rng.f64();
                // `as` saturates, so a huge cap cannot overflow.
                Duration::from_nanos((nanos as f64 * factor) as u64).min(ceiling)
            }
            Jitter::None => ceiling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn invalid_settings_fail() {
        assert_eq!(
            Backoff::new(Duration::ZERO, ms(1), Jitter::Full)
                .unwrap_err()
                .field(),
            "backoff_base"
        );
        assert_eq!(
            Backoff::new(ms(10), ms(5), Jitter::Full)
                .unwrap_err()
                .field(),
            "backoff_cap"
        );
    }

    #[test]
    fn ceiling_saturates_without_overflow() {
        let b = Backoff::new(ms(500), Duration::from_secs(8), Jitter::None).unwrap();
        assert_eq!(b.ceiling(0), ms(500));
        assert_eq!(b.ceiling(4), ms(8_000));
        assert_eq!(b.ceiling(u32::MAX), ms(8_000));
        let huge = Backoff::new(
            Duration::from_secs(u64::MAX / 4),
            Duration::MAX,
            Jitter::None,
        )
        .unwrap();
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn same_seed_same_sequence() {
        let b = Backoff::default();
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..8).map(|n| b.delay(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn delays_stay_within_their_jitter_range(
            seed: u64,
            retries in 0u32..40,
            base_ms in 1u64..5_000,
            extra_ms in 0u64..120_000,
            jitter in prop_oneof![Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::Scaled), Just(Jitter::None)],
        ) {
            let b = Backoff::new(ms(base_ms), ms(base_ms + extra_ms), jitter).unwrap();
            let mut rng = fastrand::Rng::with_seed(seed);
            let ceiling = b.ceiling(retries);
            prop_assert!(ceiling <= b.cap());
            let d = b.delay(retries, &mut rng);
            prop_assert!(d <= ceiling);
            match jitter {
                Jitter::Full => {}
                Jitter::Equal => prop_assert!(d >= ceiling / 2),
                Jitter::Scaled => prop_assert!(d >= ceiling.mul_f64(0.75)),
                Jitter::None => prop_assert_eq!(d, ceiling),
            }
        }
    }
}
