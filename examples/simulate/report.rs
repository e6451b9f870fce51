//! The report: what each client achieved, as numbers a test can check and
//! a table a person can read.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::options::ProviderCharge;

/// Latency percentiles (p50, p95, p99) of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// How many durations.
    pub count: u64,
    /// The median.
    pub p50: Duration,
    /// The 95th percentile.
    pub p95: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

impl Percentiles {
    /// A histogram of milliseconds, 1 ms to 10 h, 3 significant digits.
    pub fn recorder() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 36_000_000, 3).expect("valid histogram bounds")
    }

    /// Records one duration (clamped to the histogram's bounds).
    pub fn record(h: &mut Histogram<u64>, d: Duration) {
        h.saturating_record(d.as_millis().clamp(1, 36_000_000) as u64);
    }

    /// The percentiles of what `h` recorded.
    pub fn from(h: &Histogram<u64>) -> Percentiles {
        let at = |q: f64| Duration::from_millis(h.value_at_quantile(q));
        Percentiles {
            count: h.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

/// One minute of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Calls that reached the provider.
    pub sent: u64,
    /// Calls the provider's limits admitted.
    pub admitted: u64,
    /// Tokens the provider charged for admitted calls.
    pub tokens: u64,
    /// The most requests waiting in the client at once (sampled each
    /// second).
    pub queue_depth: u64,
    /// The most tenants whose breaker was open or half-open (sampled each
    /// second).
    pub breakers_open: u64,
}

/// What one client achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The client's name.
    pub name: &'static str,
    /// Requests of the workload.
    pub requests: u64,
    /// Requests answered with a completion.
    pub successes: u64,
    /// Requests that ended without one, by reason (shed reasons start with
    /// `shed:`).
    pub failures: BTreeMap<&'static str, u64>,
    /// Requests the client refused itself, by priority: low, normal, high.
    pub shed_by_priority: [u64; 3],
    /// Calls that reached the provider, retries included.
    pub sent_to_provider: u64,
    /// Calls the provider's limits admitted.
    pub provider_admitted: u64,
    /// `429`s the provider answered.
    pub provider_429s: u64,
    /// The most calls in flight at the provider at once.
    pub max_in_flight: u64,
    /// Tokens the provider charged (prompt + `max_tokens` of admitted calls).
    pub tokens_charged: u64,
    /// Tokens (prompt + completion) of the completions delivered to callers.
    pub tokens_delivered: u64,
    /// Completion tokens delivered to callers.
    pub completion_delivered: u64,
    /// The most tokens the provider counted for one key in any 60-second
    /// window (each admitted call at its arrival, as finally charged).
    pub max_window_tokens: u64,
    /// The tokens the provider allows over the workload's duration, all
    /// keys together.
    pub token_budget: u64,
    /// Arrival to answer, of the successes.
    pub end_to_end: Percentiles,
    /// Arrival to the first call to the provider, of the requests that made
    /// one.
    pub queue_wait: Percentiles,
    /// Times a circuit breaker opened.
    pub breaker_openings: u64,
    /// From the start until the last request ended.
    pub finished_after: Duration,
    /// Minute by minute.
    pub series: Vec<Minute>,
}

impl RunReport {
    /// An empty report.
    pub fn new(name: &'static str) -> RunReport {
        RunReport {
            name,
            requests: 0,
            successes: 0,
            failures: BTreeMap::new(),
            shed_by_priority: [0; 3],
            sent_to_provider: 0,
            provider_admitted: 0,
            provider_429s: 0,
            max_in_flight: 0,
            tokens_charged: 0,
            tokens_delivered: 0,
            completion_delivered: 0,
            max_window_tokens: 0,
            token_budget: 0,
            end_to_end: Percentiles::default(),
            queue_wait: Percentiles::default(),
            breaker_openings: 0,
            finished_after: Duration::ZERO,
            series: Vec::new(),
        }
    }

    /// Requests the client refused itself.
    pub fn shed(&self) -> u64 {
        self.shed_by_priority.iter().sum()
    }

    /// Completion tokens delivered per minute of the run (from the start
    /// until its last request ended).
    pub fn completion_per_minute(&self) -> f64 {
        self.completion_delivered as f64 * 60.0 / self.finished_after.as_secs_f64().max(1e-9)
    }

    /// The share of the tokens a provider allowing `limit_tpm` (all keys
    /// together) allows over the run (from the start until its last request
    /// ended) that it counted: at most 1 when no window went over.
    pub fn budget_used(&self, limit_tpm: u64) -> f64 {
        let budget = limit_tpm as f64 * self.finished_after.as_secs_f64() / 60.0;
        if budget <= 0.0 {
            0.0
        } else {
            self.tokens_charged as f64 / budget
        }
    }

    /// Failures with this reason.
    pub fn failed(&self, reason: &str) -> u64 {
        self.failures.get(reason).copied().unwrap_or(0)
    }
}

/// Both runs over the same workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Requests in the workload.
    pub requests: u64,
    /// Tenants (API keys).
    pub tenants: u64,
    /// The workload's span.
    pub duration: Duration,
    /// The seed.
    pub seed: u64,
    /// Requests asked for per minute, all tenants.
    pub demand_rpm: f64,
    /// Tokens (prompt + `max_tokens`) asked for per minute, all tenants.
    pub demand_tpm: f64,
    /// The provider's requests per minute, all keys together.
    pub limit_rpm: u64,
    /// The provider's tokens per minute, all keys together.
    pub limit_tpm: u64,
    /// The hand-written client.
    pub naive: RunReport,
    /// The llm-sluice stack.
    pub sluice: RunReport,
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2}s")
    } else {
        format!("{s:.1}s")
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (&self.naive, &self.sluice);
        writeln!(
            f,
            "workload: {} requests over {} from {} tenants (seed {}): {:.0} RPM and {:.0} TPM asked,",
            self.requests,
            humantime::format_duration(self.duration),
            self.tenants,
            self.seed,
            self.demand_rpm,
            self.demand_tpm,
        )?;
        writeln!(
            f,
            "against a provider allowing {} RPM and {} TPM (all keys together), with faults and an outage\n",
            self.limit_rpm, self.limit_tpm,
        )?;
        let mut row = |label: &str, x: String, y: String| writeln!(f, "{label:<40}{x:>14}{y:>14}");
        row("", a.name.into(), b.name.into())?;
        row("requests", a.requests.to_string(), b.requests.to_string())?;
        row(
            "successes",
            a.successes.to_string(),
            b.successes.to_string(),
        )?;
        let mut reasons: Vec<&str> = a
            .failures
            .keys()
            .chain(b.failures.keys())
            .copied()
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        for reason in reasons {
            row(
                &format!("  failed: {reason}"),
                a.failed(reason).to_string(),
                b.failed(reason).to_string(),
            )?;
        }
        row(
            "shed by the client",
            a.shed().to_string(),
            b.shed().to_string(),
        )?;
        for (i, level) in ["low", "normal", "high"].iter().enumerate() {
            row(
                &format!("  {level} priority"),
                a.shed_by_priority[i].to_string(),
                b.shed_by_priority[i].to_string(),
            )?;
        }
        row(
            "calls sent to the provider",
            a.sent_to_provider.to_string(),
            b.sent_to_provider.to_string(),
        )?;
        row(
            "429s received",
            a.provider_429s.to_string(),
            b.provider_429s.to_string(),
        )?;
        row(
            "most calls in flight at the provider",
            a.max_in_flight.to_string(),
            b.max_in_flight.to_string(),
        )?;
        row(
            "token budget charged by the provider",
            percent(a.tokens_charged, a.token_budget),
            percent(b.tokens_charged, b.token_budget),
        )?;
        row(
            "tokens delivered in completions",
            a.tokens_delivered.to_string(),
            b.tokens_delivered.to_string(),
        )?;
        type Pick = fn(&Percentiles) -> Duration;
        let percentiles: [(&str, Pick); 3] =
            [("p50", |p| p.p50), ("p95", |p| p.p95), ("p99", |p| p.p99)];
        for (what, of) in [
            (
                "latency of successes",
                (|r: &RunReport| &r.end_to_end) as fn(&RunReport) -> &Percentiles,
            ),
            ("queue wait before first call", |r| &r.queue_wait),
        ] {
            for (label, pick) in percentiles {
                row(
                    &format!("{what}, {label}"),
                    secs(pick(of(a))),
                    secs(pick(of(b))),
                )?;
            }
        }
        row(
            "breaker openings",
            a.breaker_openings.to_string(),
            b.breaker_openings.to_string(),
        )?;
        row(
            "last request ended after",
            secs(a.finished_after),
            secs(b.finished_after),
        )
    }
}

/// The pessimistic scenario: three runs over the same workload.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeReport {
    /// The workload, the naive client and llm-sluice with reconciliation
    /// (`Charging::Reconcile`, the default).
    pub base: Report,
    /// llm-sluice without reconciliation (`Charging::Admission`).
    pub admission: RunReport,
    /// How the provider charges tokens.
    pub provider_charge: ProviderCharge,
    /// `max_tokens` over the real completion.
    pub estimate_factor: f64,
    /// The provider's tokens per minute, per key.
    pub tpm_per_key: u64,
}

impl ChargeReport {
    /// The three runs: naive, llm-sluice with reconciliation, without.
    pub fn runs(&self) -> [&RunReport; 3] {
        [&self.base.naive, &self.base.sluice, &self.admission]
    }
}

impl fmt::Display for ChargeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.base;
        let charge = match self.provider_charge {
            ProviderCharge::Used => "prompt + real completion at admission",
            ProviderCharge::Admission => "prompt + max_tokens at admission, never corrected",
            ProviderCharge::Reconcile => {
                "prompt + max_tokens at admission, corrected to actual usage at the end"
            }
            ProviderCharge::Actual => "actual usage only, counted at the end",
        };
        writeln!(
            f,
            "pessimistic estimates: max_tokens {}x the real completion; {} requests over {} from {} tenants (seed {}),",
            self.estimate_factor,
            r.requests,
            humantime::format_duration(r.duration),
            r.tenants,
            r.seed,
        )?;
        writeln!(
            f,
            "{:.0} RPM and {:.0} TPM asked (prompt + max_tokens), against a provider allowing {} RPM and {} TPM",
            r.demand_rpm, r.demand_tpm, r.limit_rpm, r.limit_tpm,
        )?;
        writeln!(f, "(all keys together) that charges {charge}\n")?;
        let runs = self.runs();
        let mut row = |label: &str, cells: [String; 3]| {
            writeln!(
                f,
                "{label:<40}{:>24}{:>24}{:>24}",
                cells[0], cells[1], cells[2]
            )
        };
        row("", runs.map(|x| x.name.to_string()))?;
        row(
            "completion tokens delivered per minute",
            runs.map(|x| format!("{:.0}", x.completion_per_minute())),
        )?;
        row(
            "token budget used (provider count)",
            runs.map(|x| format!("{:.1}%", 100.0 * x.budget_used(r.limit_tpm))),
        )?;
        row(
            "most tokens in a key's 60 s window",
            runs.map(|x| percent(x.max_window_tokens, self.tpm_per_key)),
        )?;
        row("429s received", runs.map(|x| x.provider_429s.to_string()))?;
        row("successes", runs.map(|x| x.successes.to_string()))?;
        let mut reasons: Vec<&str> = runs
            .iter()
            .flat_map(|x| x.failures.keys())
            .copied()
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        for reason in reasons {
            row(
                &format!("  failed: {reason}"),
                runs.map(|x| x.failed(reason).to_string()),
            )?;
        }
        row("shed by the client", runs.map(|x| x.shed().to_string()))?;
        row(
            "calls sent to the provider",
            runs.map(|x| x.sent_to_provider.to_string()),
        )?;
        row(
            "latency of successes, p50",
            runs.map(|x| secs(x.end_to_end.p50)),
        )?;
        row(
            "latency of successes, p99",
            runs.map(|x| secs(x.end_to_end.p99)),
        )
    }
}
