//! Pure parsers for the headers LLM APIs use to say when to come back and how
//! much budget is left. (Being written: see the classifier task.)

use std::time::{Duration, SystemTime};

/// `retry-after-ms`: float milliseconds.
pub fn parse_retry_after_ms(value: &[u8]) -> Option<Duration> {
    let _ = value;
    None
}

/// `retry-after`: integer or float seconds, or an HTTP-date relative to `now`.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let _ = (value, now);
    None
}

/// A Go-style duration (`6m0s`, `1h2m3.5s`, `12ms`) or integer seconds.
pub fn parse_go_duration(value: &[u8]) -> Option<Duration> {
    let _ = value;
    None
}

/// An RFC 3339 timestamp, as a delay from `now`.
pub fn parse_rfc3339_delay(value: &[u8], now: SystemTime) -> Option<Duration> {
    let _ = (value, now);
    None
}

/// A non-negative integer count.
pub fn parse_count(value: &[u8]) -> Option<u64> {
    let _ = value;
    None
}
