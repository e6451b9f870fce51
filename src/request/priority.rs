//! Request priority.

use std::fmt;

/// How urgent a request is: higher runs first.
///
/// Four named levels are spaced evenly over a `u8`; any value in between is a
/// finer level (`Priority::new(100)` sits between NORMAL and HIGH).
///
/// ```
/// use llm_sluice::Priority;
/// assert!(Priority::CRITICAL > Priority::HIGH);
/// assert!(Priority::HIGH > Priority::new(100));
/// assert!(Priority::new(100) > Priority::NORMAL);
/// assert_eq!(Priority::default(), Priority::NORMAL);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// Background work that can wait: batch jobs, evaluations.
    pub const LOW: Priority = Priority(0);
    /// The default.
    pub const NORMAL: Priority = Priority(85);
    /// Interactive traffic a person is waiting for.
    pub const HIGH: Priority = Priority(170);
    /// Must go first: health probes, paid tiers, retries of user-visible work.
    pub const CRITICAL: Priority = Priority(255);
    /// The distance between two named levels.
    pub const LEVEL: u8 = 85;

    /// A priority with an explicit value.
    pub const fn new(value: u8) -> Self {
        Priority(value)
    }

    /// The numeric value.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The name of the nearest named level at or below this one; used as a
    /// bounded metric label.
    pub const fn level_name(self) -> &'static str {
        match self.0 {
            0..=84 => "low",
            85..=169 => "normal",
            170..=254 => "high",
            255 => "critical",
        }
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

impl fmt::Debug for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Priority::LOW => f.write_str("Priority::LOW"),
            Priority::NORMAL => f.write_str("Priority::NORMAL"),
            Priority::HIGH => f.write_str("Priority::HIGH"),
            Priority::CRITICAL => f.write_str("Priority::CRITICAL"),
            Priority(v) => write!(f, "Priority({v})"),
        }
    }
}
