//! The simulation's settings, as command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use llm_sluice::sim::TokenCharge;

/// Which story the simulation tells.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The default: faults, an outage and uneven tenants; naive client vs
    /// llm-sluice.
    Default,
    /// Pessimistic estimates: every request asks for `max_tokens` of
    /// `--estimate-factor` times the completion it really generates, the
    /// provider charges by `--provider-charge`, and three clients are
    /// compared: naive, llm-sluice with reconciliation, and llm-sluice
    /// without (charging at admission). Its own defaults: short prompts
    /// (median 200 tokens), completions of median 300 tokens,
    /// `--rate 18`, `--tpm 40000`, `--provider-charge reconcile`, no faults
    /// and no outage (each can be set).
    Pessimistic,
}

/// How the simulated provider counts tokens against its TPM limit.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderCharge {
    /// Prompt plus the completion's real length, charged at admission (a
    /// provider that knows each length in advance; the default scenario's).
    Used,
    /// Prompt plus `max_tokens` at admission, never corrected (OpenAI's TPM).
    Admission,
    /// Prompt plus `max_tokens` at admission, corrected to the actual usage
    /// when the response ends (the pessimistic scenario's default).
    Reconcile,
    /// Actual usage only, counted when the response ends.
    Actual,
}

impl ProviderCharge {
    /// The simulated provider's rule.
    pub fn token_charge(self) -> TokenCharge {
        match self {
            ProviderCharge::Used => TokenCharge::Used,
            ProviderCharge::Admission => TokenCharge::Admission,
            ProviderCharge::Reconcile => TokenCharge::Reconcile,
            ProviderCharge::Actual => TokenCharge::Actual,
        }
    }
}

/// One workload, run twice in virtual time against the same simulated
/// provider: a hand-written client and the llm-sluice stack, side by side.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "simulate",
    version,
    about = "One workload, run twice in virtual time against the same simulated provider: \
             a hand-written client and the llm-sluice stack, side by side. \
             `--scenario pessimistic`: max_tokens 4x the real completion, \
             naive vs llm-sluice with and without reconciliation."
)]
pub struct Options {
    /// The scenario: `default`, or `pessimistic` (max_tokens a multiple of
    /// the real completion; naive vs llm-sluice with and without
    /// reconciliation, in tokens delivered per minute).
    #[arg(long, value_enum, default_value_t = Scenario::Default)]
    pub scenario: Scenario,

    /// How the provider charges tokens against its TPM limit (default `used`;
    /// `reconcile` in the pessimistic scenario).
    #[arg(
        long,
        value_enum,
        default_value_t = ProviderCharge::Used,
        default_value_if("scenario", "pessimistic", Some("reconcile"))
    )]
    pub provider_charge: ProviderCharge,

    /// The pessimistic scenario's `max_tokens` over the completion each
    /// request really generates (at least 1).
    #[arg(long, default_value_t = 4.0)]
    pub estimate_factor: f64,

    /// Virtual time the workload spans (e.g. `60m`, `90s`, `2h`).
    #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Arrivals per second over all tenants (Poisson; default 4.5, 18 in the
    /// pessimistic scenario).
    #[arg(
        long,
        default_value_t = 4.5,
        default_value_if("scenario", "pessimistic", Some("18"))
    )]
    pub rate: f64,

    /// Tenants, each with its own API key; demand is uneven (the first
    /// tenant sends the most: shares go as 1, 1/2, 1/3, ...).
    #[arg(long, default_value_t = 4)]
    pub tenants: usize,

    /// The provider's requests per minute, per API key.
    #[arg(long, default_value_t = 120)]
    pub rpm: u64,

    /// The provider's tokens per minute (prompt + completion), per API key
    /// (default 180000; 40000 in the pessimistic scenario).
    #[arg(
        long,
        default_value_t = 180_000,
        default_value_if("scenario", "pessimistic", Some("40000"))
    )]
    pub tpm: u64,

    /// Share of admitted calls answered with a 500 (0 in the pessimistic
    /// scenario).
    #[arg(
        long,
        default_value_t = 0.02,
        default_value_if("scenario", "pessimistic", Some("0"))
    )]
    pub error_500: f64,

    /// Share of admitted calls answered with a 503 (0 in the pessimistic
    /// scenario).
    #[arg(
        long,
        default_value_t = 0.01,
        default_value_if("scenario", "pessimistic", Some("0"))
    )]
    pub error_503: f64,

    /// Share of admitted calls answered with a 529 (provider overloaded) (0 in the pessimistic
    /// scenario).
    #[arg(
        long,
        default_value_t = 0.01,
        default_value_if("scenario", "pessimistic", Some("0"))
    )]
    pub overloaded_529: f64,

    /// Share of admitted calls whose connection is reset (0 in the pessimistic
    /// scenario).
    #[arg(
        long,
        default_value_t = 0.005,
        default_value_if("scenario", "pessimistic", Some("0"))
    )]
    pub reset: f64,

    /// Share of admitted calls that hang until the client gives up (0 in the pessimistic
    /// scenario).
    #[arg(
        long,
        default_value_t = 0.002,
        default_value_if("scenario", "pessimistic", Some("0"))
    )]
    pub hang: f64,

    /// Share of admitted calls slowed by a latency spike (10 s median extra
    /// time to first token).
    #[arg(long, default_value_t = 0.03)]
    pub spikes: f64,

    /// When the provider's outage begins (it answers 503 to everything).
    #[arg(long, default_value = "25m", value_parser = humantime::parse_duration)]
    pub outage_start: Duration,

    /// How long the outage lasts; `0s` for none (default 4m; 0s in the
    /// pessimistic scenario).
    #[arg(
        long,
        default_value = "4m",
        default_value_if("scenario", "pessimistic", Some("0s")),
        value_parser = humantime::parse_duration
    )]
    pub outage_length: Duration,

    /// Requests in flight at the provider each client allows.
    #[arg(long, default_value_t = 64)]
    pub max_in_flight: usize,

    /// Seed of every random draw: the same seed gives the same report.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,

    /// Write a chart over time (per minute) to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options::parse_from(["simulate"])
    }
}
