//! The main job: one workload, run twice in virtual time against the same
//! simulated provider — once through a hand-written client (a semaphore, a
//! timeout, retries with plain backoff), once through the llm-sluice stack —
//! and a side-by-side report of what each achieved.
//!
//! Tokio's clock is paused, so an hour of traffic takes seconds of wall
//! time, and the same seed gives the same report on every run.
//!
//! ```text
//! cargo run --release --example simulate
//! cargo run --release --example simulate -- --help
//! cargo run --release --example simulate -- --plot simulate.svg
//! cargo run --release --example simulate -- --scenario pessimistic
//! cargo run --release --example simulate -- --scenario pessimistic --provider-charge admission
//! ```
//!
//! `--scenario pessimistic` asks, for every request, `max_tokens` of
//! `--estimate-factor` (4) times the completion the provider really
//! generates, has the provider charge by `--provider-charge` (`reconcile` by
//! default: the estimate at admission, corrected to the actual usage when
//! the response ends), and compares three clients: naive, llm-sluice with
//! reconciliation (`Charging::Reconcile`, the default) and llm-sluice without
//! (`Charging::Admission`), in completion tokens delivered per minute, share
//! of the provider's token budget used, the fullest 60 s window and 429s.

mod naive;
mod options;
mod plot;
mod report;
mod run;
mod sluice;
mod workload;

use clap::Parser;

fn main() -> Result<(), tower::BoxError> {
    let opts = options::Options::parse();
    let began = std::time::Instant::now();
    let report = match opts.scenario {
        options::Scenario::Default => {
            let report = run::run(&opts)?;
            print!("{report}");
            report
        }
        options::Scenario::Pessimistic => {
            let charge = run::run_pessimistic(&opts)?;
            print!("{charge}");
            // The chart draws the naive client and llm-sluice with
            // reconciliation.
            charge.base
        }
    };
    let wall = began.elapsed();
    if let Some(path) = &opts.plot {
        plot::write(path, &report)?;
        println!("\nchart written to {}", path.display());
    }
    // The only wall-clock value: kept apart from the report.
    println!("\nwall time: {:.2}s", wall.as_secs_f64());
    Ok(())
}
