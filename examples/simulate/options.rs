//! The simulation's settings, as command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// One workload, run twice in virtual time against the same simulated
/// provider: a hand-written client and the llm-sluice stack, side by side.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "simulate",
    version,
    about = "One workload, run twice in virtual time against the same simulated provider: \
             a hand-written client and the llm-sluice stack, side by side."
)]
pub struct Options {
    /// Virtual time the workload spans (e.g. `60m`, `90s`, `2h`).
    #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Arrivals per second over all tenants (Poisson).
    #[arg(long, default_value_t = 4.5)]
    pub rate: f64,

    /// Tenants, each with its own API key; demand is uneven (the first
    /// tenant sends the most: shares go as 1, 1/2, 1/3, ...).
    #[arg(long, default_value_t = 4)]
    pub tenants: usize,

    /// The provider's requests per minute, per API key.
    #[arg(long, default_value_t = 120)]
    pub rpm: u64,

    /// The provider's tokens per minute (prompt + completion), per API key.
    #[arg(long, default_value_t = 180_000)]
    pub tpm: u64,

    /// Share of admitted calls answered with a 500.
    #[arg(long, default_value_t = 0.02)]
    pub error_500: f64,

    /// Share of admitted calls answered with a 503.
    #[arg(long, default_value_t = 0.01)]
    pub error_503: f64,

    /// Share of admitted calls answered with a 529 (provider overloaded).
    #[arg(long, default_value_t = 0.01)]
    pub overloaded_529: f64,

    /// Share of admitted calls whose connection is reset.
    #[arg(long, default_value_t = 0.005)]
    pub reset: f64,

    /// Share of admitted calls that hang until the client gives up.
    #[arg(long, default_value_t = 0.002)]
    pub hang: f64,

    /// Share of admitted calls slowed by a latency spike (10 s median extra
    /// time to first token).
    #[arg(long, default_value_t = 0.03)]
    pub spikes: f64,

    /// When the provider's outage begins (it answers 503 to everything).
    #[arg(long, default_value = "25m", value_parser = humantime::parse_duration)]
    pub outage_start: Duration,

    /// How long the outage lasts; `0s` for none.
    #[arg(long, default_value = "4m", value_parser = humantime::parse_duration)]
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
