//! Keeping a guard alive until a response is *done*, not merely returned.
//!
//! A streamed completion occupies the upstream until its last chunk, which can
//! be minutes after the headers arrive. A limiter that released its permit
//! when the response future resolved would let far more streams run than its
//! limit says. So layers that hold something for the length of a call (a
//! concurrency permit, a simulated upstream's in-flight slot) hand it to the
//! response through [`HoldGuard`], and the response drops it when it is done:
//!
//! - `http::Response<B>` moves the guard into its body ([`GuardedBody`]), which
//!   drops it when the body ends, fails, or is dropped;
//! - a response that is complete when it arrives implements the marker
//!   [`Complete`], and the guard is dropped at once;
//! - a typed stream of chunks implements [`HoldGuard`] by keeping the guard in
//!   the stream, like [`GuardedBody`] does.
//!
//! ```
//! use llm_sluice::hold::{Complete, HoldGuard};
//!
//! struct Answer(String);
//! impl Complete for Answer {}
//!
//! let guard = std::sync::Arc::new(());
//! let answer = Answer("hi".into()).hold_guard(guard.clone());
//! assert_eq!(std::sync::Arc::strong_count(&guard), 1, "dropped at once");
//! # let _ = answer;
//! ```

#[cfg(feature = "http")]
mod body;

#[cfg(feature = "http")]
pub use body::GuardedBody;

/// A response that can keep `guard` alive until the response is done.
pub trait HoldGuard<G>: Sized {
    /// The response type that carries the guard.
    type Output;

    /// Moves `guard` into the response; it is dropped when the response is
    /// done (fully read, failed, or dropped).
    fn hold_guard(self, guard: G) -> Self::Output;
}

/// A response that is complete when it arrives: nothing to hold a guard for.
pub trait Complete {}

impl<T: Complete, G> HoldGuard<G> for T {
    type Output = T;

    fn hold_guard(self, guard: G) -> T {
        drop(guard);
        self
    }
}

macro_rules! complete {
    ($($t:ty),*) => { $(impl Complete for $t {})* };
}
complete!((), String, &'static str, bool, u32, u64, i32, i64);
impl<T> Complete for Vec<T> {}
#[cfg(feature = "http")]
impl Complete for bytes::Bytes {}

#[cfg(feature = "http")]
impl<B, G> HoldGuard<G> for http::Response<B> {
    type Output = http::Response<GuardedBody<B, G>>;

    fn hold_guard(self, guard: G) -> Self::Output {
        self.map(|body| GuardedBody::new(body, guard))
    }
}
