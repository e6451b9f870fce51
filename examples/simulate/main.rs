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
//! ```

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
    let report = run::run(&opts)?;
    let wall = began.elapsed();
    print!("{report}");
    if let Some(path) = &opts.plot {
        plot::write(path, &report)?;
        println!("\nchart written to {}", path.display());
    }
    // The only wall-clock value: kept apart from the report.
    println!("\nwall time: {:.2}s", wall.as_secs_f64());
    Ok(())
}
