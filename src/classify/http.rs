//! The default classifier for `http::Response`. (Being written: see the
//! classifier task.)

use std::time::SystemTime;

use super::{Classification, LlmResponse};

/// Classifies a response by status and headers, with `now` as the wall clock
/// for HTTP-date and RFC 3339 headers.
pub fn classify_response<B>(response: &http::Response<B>, now: SystemTime) -> Classification {
    let _ = (response, now);
    Classification::success(None)
}

impl<B> LlmResponse for http::Response<B> {
    fn classification(&self) -> Classification {
        classify_response(self, SystemTime::now())
    }
}
