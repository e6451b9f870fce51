//! Pure parsers for the headers LLM APIs use to say when to come back and how
//! much budget is left.
//!
//! Each parser takes the raw header value (`&[u8]`, as
//! `http::HeaderValue::as_bytes` gives it) and returns `None` for anything it
//! cannot use. They follow the wire facts of OpenAI-compatible and
//! Anthropic-style APIs:
//!
//! | parser | header | format |
//! |---|---|---|
//! | [`parse_retry_after_ms`] | `retry-after-ms` | float milliseconds: `250`, `1500.5` |
//! | [`parse_retry_after`] | `retry-after` | integer or float seconds, or an HTTP-date |
//! | [`parse_go_duration`] | `x-ratelimit-reset-{requests,tokens}` | Go duration (`6m0s`, `1h2m3.5s`, `12ms`) or seconds |
//! | [`parse_rfc3339_delay`] | `anthropic-ratelimit-*-reset` | RFC 3339 timestamp |
//! | [`parse_count`] | `*-limit-*`, `*-remaining-*` | non-negative integer |
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use llm_sluice::classify::headers::*;
//!
//! assert_eq!(parse_retry_after_ms(b"1500"), Some(Duration::from_millis(1500)));
//! assert_eq!(parse_retry_after(b" 2.5 ", SystemTime::now()), Some(Duration::from_millis(2500)));
//! assert_eq!(parse_go_duration(b"6m0s"), Some(Duration::from_secs(360)));
//! let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14T22:13:20Z
//! assert_eq!(
//!     parse_rfc3339_delay(b"2023-11-14T22:13:25Z", now),
//!     Some(Duration::from_secs(5)),
//! );
//! assert_eq!(parse_count(b"149984"), Some(149_984));
//! assert_eq!(parse_retry_after_ms(b"-1"), None);
//! ```
//!
//! # Rules common to all parsers
//!
//! - Surrounding whitespace (spaces, tabs, CR, LF) is ignored.
//! - Negative numbers, `NaN`, infinities, and anything unparseable are
//!   `None`: the server said nothing usable.
//! - A well-formed delay too large for a [`Duration`]
//!   (`retry-after: 18446744073709551616`, `retry-after-ms: 1e30`,
//!   `x-ratelimit-reset-requests: 99999999999999999h`) *saturates* to
//!   [`Duration::MAX`]: the server said "much longer than anything", and
//!   reading that as "no delay" would retry at once. A caller caps it (the
//!   retry layer's `max_server_delay`, the rate layer's cooldown at 31
//!   days); never add it to an instant unchecked. A count too large for a
//!   `u64` is still `None`: an unknown budget is safer than a huge one.
//! - They never panic, whatever the input.
//! - Decimal numbers are converted exactly (not through `f64`), and a
//!   fraction of a nanosecond is rounded *up*: a delay is never shorter than
//!   what the server said. Exponent notation (`1.5e3`, `25E-3`) is accepted
//!   for the float headers and converted exactly too (the exponent moves the
//!   decimal point), so `1e400` saturates like any other huge number.
//! - A timestamp in the past is a delay of zero (`Some(Duration::ZERO)`),
//!   not `None`: the server's answer was understood, it just says "now".
//!   Whether a zero delay is useful is the caller's decision (the HTTP
//!   classifier ignores it).

use std::time::{Duration, SystemTime};

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// The largest number of nanoseconds a `Duration` can hold: [`Duration::MAX`].
const MAX_NANOS: u128 = (u64::MAX as u128) * NANOS_PER_SEC + (NANOS_PER_SEC - 1);

/// `retry-after-ms`: float milliseconds, e.g. `250` or `1500.5`.
///
/// ```
/// # use std::time::Duration;
/// # use llm_sluice::classify::headers::parse_retry_after_ms;
/// assert_eq!(parse_retry_after_ms(b"1500.5"), Some(Duration::from_micros(1_500_500)));
/// assert_eq!(parse_retry_after_ms(b"NaN"), None);
/// assert_eq!(parse_retry_after_ms(b"1e30"), Some(Duration::MAX)); // saturated
/// ```
pub fn parse_retry_after_ms(value: &[u8]) -> Option<Duration> {
    parse_number(trim(value)?, 1_000_000)
}

/// `retry-after`: integer or float seconds, or an HTTP-date relative to `now`.
///
/// Dates are parsed as RFC 9110 requires of a recipient: the IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) and the two obsolete formats. A date in
/// the past is `Some(Duration::ZERO)`.
///
/// ```
/// # use std::time::{Duration, SystemTime};
/// # use llm_sluice::classify::headers::parse_retry_after;
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
/// assert_eq!(parse_retry_after(b"Sun, 06 Nov 1994 08:49:47 GMT", now), Some(Duration::from_secs(10)));
/// assert_eq!(parse_retry_after(b"Sun, 06 Nov 1994 08:49:27 GMT", now), Some(Duration::ZERO));
/// assert_eq!(parse_retry_after(b"30", now), Some(Duration::from_secs(30)));
/// assert_eq!(parse_retry_after(b"18446744073709551616", now), Some(Duration::MAX));
/// ```
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = trim(value)?;
    if value[0].is_ascii_digit() || value[0] == b'.' || value[0] == b'+' {
        return parse_number(value, 1_000_000_000);
    }
    let text = std::str::from_utf8(value).ok()?;
    let at = httpdate::parse_http_date(text).ok()?;
    Some(delay_until(at, now))
}

/// A Go-style duration (`6m0s`, `1h2m3.5s`, `12ms`, `0.5s`) or plain
/// (integer or float) seconds.
///
/// The Go grammar: an optional `+`, then one or more decimal numbers each
/// followed by a unit, `h`, `m`, `s`, `ms`, `us` (or `µs`, `μs`) or `ns`; a
/// lone `0` is zero. A number without a unit is read as seconds, as some
/// OpenAI-compatible servers send.
///
/// ```
/// # use std::time::Duration;
/// # use llm_sluice::classify::headers::parse_go_duration;
/// assert_eq!(parse_go_duration(b"1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
/// assert_eq!(parse_go_duration(b"12ms"), Some(Duration::from_millis(12)));
/// assert_eq!(parse_go_duration(b"7"), Some(Duration::from_secs(7)));
/// assert_eq!(parse_go_duration(b"-1s"), None);
/// assert_eq!(parse_go_duration(b"99999999999999999h"), Some(Duration::MAX));
/// ```
pub fn parse_go_duration(value: &[u8]) -> Option<Duration> {
    let value = trim(value)?;
    // Plain seconds (integer, float, or exponent notation).
    if value
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'e' | b'E' | b'-'))
    {
        return parse_number(value, 1_000_000_000);
    }
    let mut rest = value.strip_prefix(b"+").unwrap_or(value);
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = split_decimal(rest)?;
        let (unit, after) = split_unit(after)?;
        // Saturating: the whole string is still checked for its grammar, and
        // a sum past `Duration::MAX` is `Duration::MAX`.
        total = total.saturating_add(number.to_nanos(unit));
        rest = after;
    }
    Some(nanos_to_duration(total))
}

/// An RFC 3339 timestamp, as a delay from `now`; a time in the past is
/// `Some(Duration::ZERO)`.
///
/// Accepts `Z` (or `z`) and numeric offsets (`+02:00`, `-05:30`), a `T`, `t`
/// or space between date and time, and any number of fractional digits.
/// Times before 1970 are not accepted (`None`).
///
/// ```
/// # use std::time::{Duration, UNIX_EPOCH};
/// # use llm_sluice::classify::headers::parse_rfc3339_delay;
/// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14T22:13:20Z
/// assert_eq!(parse_rfc3339_delay(b"2023-11-15T00:13:30+02:00", now), Some(Duration::from_secs(10)));
/// assert_eq!(parse_rfc3339_delay(b"2023-11-14T22:13:20.5Z", now), Some(Duration::from_millis(500)));
/// assert_eq!(parse_rfc3339_delay(b"2020-01-01T00:00:00Z", now), Some(Duration::ZERO));
/// ```
pub fn parse_rfc3339_delay(value: &[u8], now: SystemTime) -> Option<Duration> {
    let at = parse_rfc3339(trim(value)?)?;
    Some(delay_until(at, now))
}

/// A non-negative integer count, e.g. `149984`.
///
/// ```
/// # use llm_sluice::classify::headers::parse_count;
/// assert_eq!(parse_count(b" 60 "), Some(60));
/// assert_eq!(parse_count(b"-1"), None);
/// assert_eq!(parse_count(b"1.5"), None);
/// ```
pub fn parse_count(value: &[u8]) -> Option<u64> {
    let value = trim(value)?;
    let digits = value.strip_prefix(b"+").unwrap_or(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Strips surrounding whitespace; `None` when nothing is left.
fn trim(value: &[u8]) -> Option<&[u8]> {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = value.iter().position(|b| !is_ws(b))?;
    let end = value.iter().rposition(|b| !is_ws(b))?;
    Some(&value[start..=end])
}

fn delay_until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// Nanoseconds as a `Duration`, saturating at [`Duration::MAX`].
fn nanos_to_duration(nanos: u128) -> Duration {
    // Nearly every header value fits 584 years of nanoseconds: u64
    // arithmetic, where u128 division is a library call.
    if let Ok(nanos) = u64::try_from(nanos) {
        return Duration::from_nanos(nanos);
    }
    if nanos >= MAX_NANOS {
        return Duration::MAX;
    }
    // Below MAX_NANOS the quotient fits a u64 and the remainder (below 1e9)
    // a u32; the fallbacks are unreachable and still not a panic.
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

/// A decimal number as written: integer digits and fraction digits.
struct Decimal<'a> {
    int: &'a [u8],
    frac: &'a [u8],
}

impl Decimal<'_> {
    /// The number times `unit` nanoseconds, rounded up to a whole
    /// nanosecond, saturating at `u128::MAX` (far above [`MAX_NANOS`]: a
    /// saturated value stays saturated through [`nanos_to_duration`]).
    fn to_nanos(&self, unit: u128) -> u128 {
        let int = self.int.iter().fold(0u128, |acc, &d| {
            acc.saturating_mul(10).saturating_add(u128::from(d - b'0'))
        });
        let nanos = int.saturating_mul(unit);
        if self.frac.is_empty() {
            return nanos;
        }
        // unit <= 3.6e12, so 19 fraction digits keep every nanosecond the
        // unit can express; later digits only decide the rounding.
        let (kept, dropped) = self.frac.split_at(self.frac.len().min(19));
        let mut scale: u128 = 1;
        let mut frac: u128 = 0;
        for &d in kept {
            frac = frac * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        // frac < 1e19 and unit <= 3.6e12: the product fits a u128.
        let scaled = frac * unit;
        let mut frac_nanos = scaled / scale;
        if !scaled.is_multiple_of(scale) || dropped.iter().any(|&d| d != b'0') {
            frac_nanos += 1;
        }
        nanos.saturating_add(frac_nanos)
    }
}

/// Splits a leading decimal number (`12`, `3.5`, `.5`, `5.`) off `input`.
fn split_decimal(input: &[u8]) -> Option<(Decimal<'_>, &[u8])> {
    let int_len = input.iter().take_while(|b| b.is_ascii_digit()).count();
    let (int, rest) = input.split_at(int_len);
    let (frac, rest) = match rest.strip_prefix(b".") {
        Some(after_dot) => {
            let frac_len = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
            after_dot.split_at(frac_len)
        }
        None => (&rest[..0], rest),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    Some((Decimal { int, frac }, rest))
}

/// Splits a Go duration unit off `input`, as nanoseconds per unit.
fn split_unit(input: &[u8]) -> Option<(u128, &[u8])> {
    const UNITS: &[(&[u8], u128)] = &[
        (b"ns", 1),
        (b"us", 1_000),
        ("\u{b5}s".as_bytes(), 1_000),  // micro sign
        ("\u{3bc}s".as_bytes(), 1_000), // Greek small letter mu
        (b"ms", 1_000_000),
        (b"s", 1_000_000_000),
        (b"m", 60_000_000_000),
        (b"h", 3_600_000_000_000),
    ];
    // `ms` is tried before `m`: the table is ordered so the first match is
    // the longest.
    UNITS
        .iter()
        .find_map(|(name, nanos)| input.strip_prefix(*name).map(|rest| (*nanos, rest)))
}

/// A non-negative number of `unit`-nanosecond units: `[+]digits[.digits]`,
/// optionally followed by an exponent `(e|E)[+|-]digits`.
fn parse_number(value: &[u8], unit: u128) -> Option<Duration> {
    let unsigned = value.strip_prefix(b"+").unwrap_or(value);
    let (decimal, rest) = split_decimal(unsigned)?;
    let nanos = match rest {
        [] => decimal.to_nanos(unit),
        [b'e' | b'E', exponent @ ..] => with_exponent(&decimal, exponent)?.to_nanos(unit),
        _ => return None,
    };
    Some(nanos_to_duration(nanos))
}

/// `decimal` times ten to the `exponent` (`[+|-]digits`), as a decimal with
/// its point moved: exact, where going through `f64` could round a delay
/// down.
fn with_exponent(decimal: &Decimal<'_>, exponent: &[u8]) -> Option<OwnedDecimal> {
    let (negative, digits) = match exponent {
        [b'-', digits @ ..] => (true, digits),
        [b'+', digits @ ..] => (false, digits),
        digits => (false, digits),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let all: Vec<u8> = decimal.int.iter().chain(decimal.frac).copied().collect();
    // Moving the point more than 64 places past every digit saturates any
    // non-zero value (or leaves it below a nanosecond, which rounds up to
    // one) just as a larger move would: the bound keeps the buffers small
    // whatever exponent is written.
    let bound = all.len() + 64;
    let shift = digits
        .iter()
        .try_fold(0usize, |acc, &d| {
            acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .unwrap_or(bound)
        .min(bound);
    let int_len = decimal.int.len();
    let mut int = Vec::new();
    let mut frac = Vec::new();
    if negative && shift > int_len {
        // 0.000ddd: the integer part is empty.
        frac.resize(shift - int_len, b'0');
        frac.extend_from_slice(&all);
    } else {
        let point = if negative {
            int_len - shift
        } else {
            int_len + shift
        };
        if point >= all.len() {
            int.extend_from_slice(&all);
            int.resize(point, b'0');
        } else {
            int.extend_from_slice(&all[..point]);
            frac.extend_from_slice(&all[point..]);
        }
    }
    Some(OwnedDecimal { int, frac })
}

/// A [`Decimal`] built rather than borrowed (an exponent moved its point).
struct OwnedDecimal {
    int: Vec<u8>,
    frac: Vec<u8>,
}

impl OwnedDecimal {
    fn to_nanos(&self, unit: u128) -> u128 {
        Decimal {
            int: &self.int,
            frac: &self.frac,
        }
        .to_nanos(unit)
    }
}

/// RFC 3339 `date-time`: `YYYY-MM-DD(T|t| )HH:MM:SS[.frac](Z|z|(+|-)HH:MM)`.
fn parse_rfc3339(value: &[u8]) -> Option<SystemTime> {
    // Separate the offset from the local date-time.
    let (local, offset_secs): (&[u8], i64) = match value.last()? {
        b'Z' | b'z' => (&value[..value.len() - 1], 0),
        _ => {
            if value.len() < 6 {
                return None;
            }
            let (local, offset) = value.split_at(value.len() - 6);
            let sign = match offset[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if offset[3] != b':' {
                return None;
            }
            let hours = two_digits(offset[1], offset[2])?;
            let minutes = two_digits(offset[4], offset[5])?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            (local, sign * i64::from(hours * 3600 + minutes * 60))
        }
    };
    // `YYYY-MM-DDTHH:MM:SS` is 19 bytes; then an optional `.digits`.
    if local.len() < 19 || !local.is_ascii() {
        return None;
    }
    if !matches!(local[10], b'T' | b't' | b' ') {
        return None;
    }
    match &local[19..] {
        [] => {}
        [b'.', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    // humantime checks the calendar (month lengths, leap years) for a UTC
    // time; the offset is applied afterwards.
    let mut utc = Vec::with_capacity(local.len() + 1);
    utc.extend_from_slice(local);
    utc[10] = b'T';
    utc.push(b'Z');
    let text = std::str::from_utf8(&utc).ok()?;
    let at = humantime::parse_rfc3339(text).ok()?;
    // Local time = UTC + offset, so UTC = local - offset.
    let magnitude = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        at.checked_sub(magnitude)
    } else {
        at.checked_add(magnitude)
    }
}

fn two_digits(a: u8, b: u8) -> Option<u32> {
    if a.is_ascii_digit() && b.is_ascii_digit() {
        Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }
    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn retry_after_ms_examples() {
        assert_eq!(parse_retry_after_ms(b"250"), ms(250));
        assert_eq!(
            parse_retry_after_ms(b"1500.5"),
            Some(Duration::from_micros(1_500_500))
        );
        assert_eq!(parse_retry_after_ms(b" 20 "), ms(20));
        assert_eq!(parse_retry_after_ms(b"0"), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after_ms(b".5"),
            Some(Duration::from_micros(500))
        );
        assert_eq!(parse_retry_after_ms(b"5."), ms(5));
        assert_eq!(parse_retry_after_ms(b"1e3"), secs(1));
        // A fraction of a nanosecond rounds up: never shorter than asked.
        assert_eq!(
            parse_retry_after_ms(b"0.0000001"),
            Some(Duration::from_nanos(1))
        );
        for bad in [
            &b"-1"[..],
            b"-0.5",
            b"NaN",
            b"nan",
            b"inf",
            b"-inf",
            b"infinity",
            b"",
            b"   ",
            b"abc",
            b"1.2.3",
            b"1 2",
            b"1e-",
            b".",
        ] {
            assert_eq!(
                parse_retry_after_ms(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn retry_after_examples() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after(b"30", now), secs(30));
        assert_eq!(parse_retry_after(b"1.5", now), ms(1500));
        assert_eq!(parse_retry_after(b"\t7\t", now), secs(7));
        assert_eq!(parse_retry_after(b"0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:50:37 GMT", now),
            secs(60)
        );
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        // A date in the past is zero.
        assert_eq!(
            parse_retry_after(b"Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        // Obsolete formats RFC 9110 asks recipients to accept.
        assert_eq!(
            parse_retry_after(b"Sunday, 06-Nov-94 08:49:47 GMT", now),
            secs(10)
        );
        assert_eq!(
            parse_retry_after(b"Sun Nov  6 08:49:47 1994", now),
            secs(10)
        );
        for bad in [
            &b"-5"[..],
            b"NaN",
            b"inf",
            b"soon",
            b"Sun, 06 Nov 1994 25:00:00 GMT",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"",
        ] {
            assert_eq!(
                parse_retry_after(bad, now),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn go_duration_examples() {
        assert_eq!(parse_go_duration(b"1s"), secs(1));
        assert_eq!(parse_go_duration(b"6m0s"), secs(360));
        assert_eq!(parse_go_duration(b"12ms"), ms(12));
        assert_eq!(parse_go_duration(b"1h2m3.5s"), ms(3_723_500));
        assert_eq!(parse_go_duration(b"0.5s"), ms(500));
        assert_eq!(parse_go_duration(b"0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration(b"20"), secs(20));
        assert_eq!(parse_go_duration(b"2.5"), ms(2500));
        assert_eq!(parse_go_duration(b"+1s"), secs(1));
        assert_eq!(parse_go_duration(b"1.5h"), secs(5400));
        assert_eq!(
            parse_go_duration(b"300us"),
            Some(Duration::from_micros(300))
        );
        assert_eq!(
            parse_go_duration("300\u{b5}s".as_bytes()),
            Some(Duration::from_micros(300))
        );
        assert_eq!(
            parse_go_duration("300\u{3bc}s".as_bytes()),
            Some(Duration::from_micros(300))
        );
        assert_eq!(parse_go_duration(b"15ns"), Some(Duration::from_nanos(15)));
        assert_eq!(
            parse_go_duration(b"1m1ms"),
            Some(Duration::from_millis(60_001))
        );
        assert_eq!(parse_go_duration(b" 1s "), secs(1));
        assert_eq!(parse_go_duration(b".5s"), ms(500));
        assert_eq!(parse_go_duration(b"0.1ns"), Some(Duration::from_nanos(1)));
        for bad in [
            &b"-1s"[..],
            b"-1",
            b"s",
            b"1x",
            b"1 s",
            b"1s 2m",
            b"1d",
            b"h",
            b".s",
            b"1..5s",
            b"NaN",
            b"inf",
            b"",
            b"+",
        ] {
            assert_eq!(
                parse_go_duration(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // The largest hour count that still fits a Duration, and the next.
        assert!(parse_go_duration(b"5124095576030431h").is_some_and(|d| d < Duration::MAX));
        assert_eq!(parse_go_duration(b"5124095576030432h"), Some(Duration::MAX));
    }

    #[test]
    fn rfc3339_examples() {
        // 2023-11-14T22:13:20Z
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_rfc3339_delay(b"2023-11-14T22:13:25Z", now), secs(5));
        assert_eq!(parse_rfc3339_delay(b"2023-11-14t22:13:25z", now), secs(5));
        assert_eq!(parse_rfc3339_delay(b"2023-11-14 22:13:25Z", now), secs(5));
        assert_eq!(
            parse_rfc3339_delay(b"2023-11-14T22:13:25+00:00", now),
            secs(5)
        );
        assert_eq!(
            parse_rfc3339_delay(b"2023-11-15T00:13:25+02:00", now),
            secs(5)
        );
        assert_eq!(
            parse_rfc3339_delay(b"2023-11-14T16:43:25-05:30", now),
            secs(5)
        );
        assert_eq!(
            parse_rfc3339_delay(b"2023-11-14T22:13:20.25Z", now),
            ms(250)
        );
        assert_eq!(
            parse_rfc3339_delay(b"2023-11-14T22:14:20.000000000Z", now),
            secs(60)
        );
        // Past: zero.
        assert_eq!(
            parse_rfc3339_delay(b"2023-11-14T22:13:19Z", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_rfc3339_delay(b"2023-11-14T23:13:25+02:00", now),
            Some(Duration::ZERO)
        );
        for bad in [
            &b"2023-11-14T22:13:25"[..],
            b"2023-11-14T22:13:25+0200",
            b"2023-11-14T22:13:25+24:00",
            b"2023-11-14T22:13:25+02:60",
            b"2023-11-14T22:13:25.Z",
            b"2023-11-14T22:13:25.5x5Z",
            b"2023-13-14T22:13:25Z",
            b"2023-02-30T22:13:25Z",
            b"2023-11-14X22:13:25Z",
            b"14 Nov 2023 22:13:25 GMT",
            b"1s",
            b"",
            b"Z",
            b"+00:00",
        ] {
            assert_eq!(
                parse_rfc3339_delay(bad, now),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn count_examples() {
        assert_eq!(parse_count(b"60"), Some(60));
        assert_eq!(parse_count(b"59"), Some(59));
        assert_eq!(parse_count(b"150000"), Some(150_000));
        assert_eq!(parse_count(b"149984"), Some(149_984));
        assert_eq!(parse_count(b"0"), Some(0));
        assert_eq!(parse_count(b" 7\t"), Some(7));
        assert_eq!(parse_count(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_count(b"000000000000000000000000000001"), Some(1));
        for bad in [
            &b"-1"[..],
            b"18446744073709551616",
            b"1.5",
            b"1e3",
            b"",
            b"+",
            b"abc",
            b"NaN",
        ] {
            assert_eq!(parse_count(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn huge_values_saturate_without_panicking() {
        let max = Some(Duration::MAX);
        assert_eq!(parse_retry_after_ms(b"1e308"), max);
        assert_eq!(parse_retry_after_ms(b"1e400"), max);
        assert_eq!(
            parse_retry_after_ms(b"99999999999999999999999999999999999"),
            max
        );
        assert_eq!(parse_retry_after(b"1e999", UNIX_EPOCH), max);
        assert_eq!(parse_retry_after(b"18446744073709551616", UNIX_EPOCH), max);
        assert_eq!(
            parse_retry_after(b"18446744073709551615", UNIX_EPOCH),
            Some(Duration::from_secs(u64::MAX))
        );
        // Past the last representable nanosecond.
        assert_eq!(
            parse_retry_after(b"18446744073709551615.9999999999", UNIX_EPOCH),
            max
        );
        assert_eq!(
            parse_retry_after(b"18446744073709551615.999999999", UNIX_EPOCH),
            max
        );
        assert_eq!(parse_go_duration(&[b'9'; 200]), max);
        assert_eq!(parse_go_duration(b"99999999999999999999h"), max);
        assert_eq!(
            parse_go_duration(b"5124095576030431h5124095576030431h"),
            max
        );
        assert_eq!(
            parse_go_duration(b"0000000000000000000000000000000000000001s"),
            secs(1)
        );
    }
}
