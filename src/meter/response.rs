//! Responses that say, once they are done, what they used.

use super::end::{BodyEnd, OnBodyEnd, OutputSeen};
use crate::hold::Complete;

/// A response that tells an [`OnBodyEnd`] how it ended, once it has: a
/// layer that reserved an estimate hands one to the response and corrects
/// the reservation when it hears (the rate window does).
///
/// - `http::Response<B>` (feature `http`) moves it into its body
///   ([`UsageBody`](super::UsageBody)), which reads the provider's usage as
///   the body streams and reports when the body ends, fails or is dropped;
/// - a response that is complete when it arrives ([`Complete`]) reports at
///   once, with no usage of its own: a typed response reports its usage
///   through its classification ([`LlmResponse`](crate::classify::LlmResponse)), which
///   the layer already has;
/// - a typed stream implements it as it sees fit (calling `on_end` when the
///   stream ends, or at once).
///
/// ```
/// use llm_sluice::hold::Complete;
/// use llm_sluice::meter::{BodyEnd, MeterResponse};
///
/// struct Answer(String);
/// impl Complete for Answer {}
///
/// let mut heard = None;
/// let answer = Answer("hi".into()).meter(|end: BodyEnd| heard = Some(end.is_complete()));
/// assert_eq!(heard, Some(true), "told at once");
/// # let _ = answer;
/// ```
pub trait MeterResponse<F: OnBodyEnd>: Sized {
    /// The response as the caller receives it.
    type Output;

    /// Hands `on_end` to the response: it is called once, when the response
    /// is done.
    fn meter(self, on_end: F) -> Self::Output;

    /// The response as [`meter`](Self::meter) would return it, with nothing
    /// to tell (where a layer has nothing to correct).
    fn unmetered(self) -> Self::Output;
}

impl<T: Complete, F: OnBodyEnd> MeterResponse<F> for T {
    type Output = T;

    fn meter(self, on_end: F) -> T {
        on_end.on_end(BodyEnd::Complete {
            usage: None,
            output: OutputSeen::default(),
        });
        self
    }

    fn unmetered(self) -> T {
        self
    }
}

#[cfg(feature = "http")]
impl<B, F: OnBodyEnd> MeterResponse<F> for http::Response<B> {
    type Output = http::Response<super::UsageBody<B, F>>;

    fn meter(self, on_end: F) -> Self::Output {
        super::UsageBody::wrap_response(self, on_end)
    }

    fn unmetered(self) -> Self::Output {
        self.map(super::UsageBody::unmetered)
    }
}
