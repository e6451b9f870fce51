//! [`Checks`]: what an example expects, checked as it runs. Shared by the
//! examples through a module path (`#[path]`); not an example itself.

use tower::BoxError;

/// Expectations checked as the example runs; any failure makes it exit 1.
#[derive(Default)]
pub struct Checks {
    failed: Vec<&'static str>,
}

impl Checks {
    /// Records `what` as failed unless `ok`.
    pub fn expect(&mut self, ok: bool, what: &'static str) {
        if !ok {
            eprintln!("FAILED: {what}");
            self.failed.push(what);
        }
    }

    /// Prints the verdict; exits with status 1 if anything failed.
    pub fn finish(self, name: &str) -> Result<(), BoxError> {
        if self.failed.is_empty() {
            println!("{name}: all checks passed");
            Ok(())
        } else {
            eprintln!("{name}: {} checks failed", self.failed.len());
            std::process::exit(1)
        }
    }
}
