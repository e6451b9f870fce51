//! What [`Stats::snapshot`](super::Stats::snapshot) returns.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::recorder::{Counts, Kind};
use crate::breaker::CircuitState;

/// Requests by how they ended, as the classifier saw them (see
/// [`Outcome`](crate::classify::Outcome)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutcomeCounts {
    /// The upstream answered successfully.
    pub success: u64,
    /// The upstream refused for rate (429) and a retry may succeed.
    pub rate_limited: u64,
    /// The upstream refused for a spent quota (429 that no retry fixes).
    pub quota_exhausted: u64,
    /// The upstream was overloaded (529).
    pub overloaded: u64,
    /// The upstream failed (5xx).
    pub server_error: u64,
    /// A timeout fired (408, or one of this crate's timeouts).
    pub timeout: u64,
    /// No response: connect, reset, TLS, EOF.
    pub transport: u64,
    /// The caller's fault (other 4xx).
    pub client_error: u64,
    /// The caller dropped the response future before it finished.
    pub cancelled: u64,
}

impl OutcomeCounts {
    /// Every request counted here.
    pub fn total(&self) -> u64 {
        [
            self.success,
            self.rate_limited,
            self.quota_exhausted,
            self.overloaded,
            self.server_error,
            self.timeout,
            self.transport,
            self.client_error,
            self.cancelled,
        ]
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n))
    }
}

/// Requests this crate's own layers refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RejectionCounts {
    /// The concurrency queue was full
    /// ([`Error::Overloaded`](crate::Error::Overloaded)).
    pub queue_full: u64,
    /// The request waited in the queue for its whole allowed time
    /// ([`Error::QueueTimeout`](crate::Error::QueueTimeout)).
    pub queue_timeout: u64,
    /// A rate limit had no room within its allowed wait
    /// ([`Error::RateLimited`](crate::Error::RateLimited)).
    pub rate_limited: u64,
    /// The circuit breaker was open
    /// ([`Error::CircuitOpen`](crate::Error::CircuitOpen)).
    pub circuit_open: u64,
    /// The request's deadline passed before it could be served
    /// ([`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded)).
    pub deadline: u64,
    /// The request could never fit a token limit
    /// ([`Error::RequestTooLarge`](crate::Error::RequestTooLarge)).
    pub too_large: u64,
    /// A custom classifier called the result a rejection, and it was none of
    /// the above.
    pub other: u64,
}

impl RejectionCounts {
    /// Every rejection.
    pub fn total(&self) -> u64 {
        [
            self.queue_full,
            self.queue_timeout,
            self.rate_limited,
            self.circuit_open,
            self.deadline,
            self.too_large,
            self.other,
        ]
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n))
    }
}

/// Latency percentiles of one histogram.
///
/// Values are kept in microseconds with three significant digits: each is
/// within 0.1 % of a value that was recorded (exact below 2.048 ms), rounded
/// up to the top of its bucket. Values over one hour count as one hour. All
/// zero when `count` is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Percentiles {
    /// How many values were recorded.
    pub count: u64,
    /// The median.
    pub p50: Duration,
    /// The 95th percentile.
    pub p95: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The largest value recorded.
    pub max: Duration,
}

impl Percentiles {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let at = |q: f64| Duration::from_micros(h.value_at_quantile(q));
        Percentiles {
            count: h.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: Duration::from_micros(h.max()),
        }
    }
}

/// The live state of one attached circuit breaker layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// The state of the layer's unkeyed breaker: the only one of a layer
    /// without partitions.
    pub state: CircuitState,
    /// Keys with their own breaker (0 without partitions).
    pub partitions: usize,
    /// Breakers closed or forced closed. Every breaker of the layer counts:
    /// the unkeyed one, and with partitions the overflow one and each key's.
    pub closed: usize,
    /// Breakers half-open.
    pub half_open: usize,
    /// Breakers open or forced open.
    pub open: usize,
}

/// What [`Stats`](super::Stats) knows now: totals, live counts and
/// latency percentiles.
///
/// A request is counted once, when it ends: when its response is done (for
/// a streamed `http::Response`, when the body ends, fails or is dropped), its
/// error arrives, or its future is dropped. The live counts (`in_flight`,
/// `queued`, `rate_waiting`, `breakers`) are read from the attached layers
/// when the snapshot is taken; they are `None` (or empty) when nothing of
/// that kind is attached.
///
/// `Display` prints a small table:
///
/// ```
/// # use llm_sluice::stats::Stats;
/// let stats = Stats::new();
/// let text = stats.snapshot().to_string();
/// assert!(text.contains("requests"));
/// assert!(text.contains("p99"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Every request that ended: all outcomes, rejections and cancellations.
    pub total: u64,
    /// Requests by outcome.
    pub outcomes: OutcomeCounts,
    /// Requests this crate's layers refused, by reason.
    pub rejected: RejectionCounts,
    /// Requests holding a concurrency permit now, summed over the attached
    /// concurrency limiters.
    pub in_flight: Option<usize>,
    /// Requests waiting in a concurrency queue now.
    pub queued: Option<usize>,
    /// Requests waiting for room in an attached rate limiter now.
    pub rate_waiting: Option<usize>,
    /// Each attached circuit breaker layer, in the order attached.
    pub breakers: Vec<BreakerStats>,
    /// Time from `call` to the end of the response (for a streamed body, its
    /// end) for every request that ended with a response or an error,
    /// rejections included, cancellations not.
    pub end_to_end: Percentiles,
    /// Time from joining the concurrency queue to getting a permit (zero for
    /// immediate admission), and for requests that gave up waiting, the
    /// time they waited.
    pub queue_wait: Percentiles,
}

impl StatsSnapshot {
    pub(crate) fn from_counts(
        counts: &Counts,
        end_to_end: &Histogram<u64>,
        queue_wait: &Histogram<u64>,
    ) -> Self {
        let n = |kind: Kind| counts[kind as usize];
        let outcomes = OutcomeCounts {
            success: n(Kind::Success),
            rate_limited: n(Kind::RateLimited),
            quota_exhausted: n(Kind::QuotaExhausted),
            overloaded: n(Kind::Overloaded),
            server_error: n(Kind::ServerError),
            timeout: n(Kind::Timeout),
            transport: n(Kind::Transport),
            client_error: n(Kind::ClientError),
            cancelled: n(Kind::Cancelled),
        };
        let rejected = RejectionCounts {
            queue_full: n(Kind::QueueFull),
            queue_timeout: n(Kind::QueueTimeout),
            rate_limited: n(Kind::LocalRateLimited),
            circuit_open: n(Kind::CircuitOpen),
            deadline: n(Kind::Deadline),
            too_large: n(Kind::TooLarge),
            other: n(Kind::OtherRejected),
        };
        StatsSnapshot {
            total: outcomes.total().saturating_add(rejected.total()),
            outcomes,
            rejected,
            in_flight: None,
            queued: None,
            rate_waiting: None,
            breakers: Vec::new(),
            end_to_end: Percentiles::from_histogram(end_to_end),
            queue_wait: Percentiles::from_histogram(queue_wait),
        }
    }
}

/// A duration in a short human form: `850µs`, `12.3ms`, `4.56s`.
struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let text = if d < Duration::from_millis(1) {
            format!("{}µs", d.as_micros())
        } else if d < Duration::from_secs(1) {
            format!("{:.1}ms", d.as_secs_f64() * 1e3)
        } else {
            format!("{:.2}s", d.as_secs_f64())
        };
        f.pad(&text)
    }
}

fn share(n: u64, total: u64) -> String {
    if total == 0 {
        String::new()
    } else {
        format!("{:5.1}%", n as f64 * 100.0 / total as f64)
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total;
        writeln!(f, "{:<18}{:>10}", "requests", total)?;
        let o = &self.outcomes;
        let outcomes = [
            ("success", o.success),
            ("rate_limited", o.rate_limited),
            ("quota_exhausted", o.quota_exhausted),
            ("overloaded", o.overloaded),
            ("server_error", o.server_error),
            ("timeout", o.timeout),
            ("transport", o.transport),
            ("client_error", o.client_error),
            ("cancelled", o.cancelled),
        ];
        for (name, n) in outcomes {
            if n > 0 || name == "success" {
                writeln!(f, "  {:<16}{:>10} {}", name, n, share(n, total))?;
            }
        }
        let r = &self.rejected;
        let rejected = r.total();
        writeln!(
            f,
            "  {:<16}{:>10} {}",
            "rejected",
            rejected,
            share(rejected, total)
        )?;
        let reasons = [
            ("queue_full", r.queue_full),
            ("queue_timeout", r.queue_timeout),
            ("rate_limited", r.rate_limited),
            ("circuit_open", r.circuit_open),
            ("deadline", r.deadline),
            ("too_large", r.too_large),
            ("other", r.other),
        ];
        for (name, n) in reasons {
            if n > 0 {
                writeln!(f, "    {:<14}{:>10}", name, n)?;
            }
        }
        let live = |v: Option<usize>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        writeln!(
            f,
            "in flight {}, queued {}, rate waiting {}",
            live(self.in_flight),
            live(self.queued),
            live(self.rate_waiting)
        )?;
        for (i, b) in self.breakers.iter().enumerate() {
            write!(f, "breaker {}: {}", i, b.state)?;
            if b.partitions > 0 {
                write!(
                    f,
                    " ({} partitions; {} closed, {} half-open, {} open)",
                    b.partitions, b.closed, b.half_open, b.open
                )?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "{:<12}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency", "count", "p50", "p95", "p99", "max"
        )?;
        for (name, p) in [
            ("end_to_end", &self.end_to_end),
            ("queue_wait", &self.queue_wait),
        ] {
            writeln!(
                f,
                "{:<12}{:>10}{:>10}{:>10}{:>10}{:>10}",
                name,
                p.count,
                Short(p.p50),
                Short(p.p95),
                Short(p.p99),
                Short(p.max)
            )?;
        }
        Ok(())
    }
}
