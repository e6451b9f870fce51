//! Property tests for the header parsers: no input panics, bad input is
//! `None`, a delay too large to represent saturates to `Duration::MAX`, and
//! generated valid values round-trip.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llm_sluice::classify::headers::{
    parse_count, parse_go_duration, parse_retry_after, parse_retry_after_ms, parse_rfc3339_delay,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

fn all_parsers(bytes: &[u8], now: SystemTime) {
    let _ = parse_retry_after_ms(bytes);
    let _ = parse_retry_after(bytes, now);
    let _ = parse_go_duration(bytes);
    let _ = parse_rfc3339_delay(bytes, now);
    let _ = parse_count(bytes);
}

/// Formats a duration the way Go's `time.Duration.String` does for values of
/// a second or more (`1h2m3.5s`), or with a sub-second unit below.
fn go_format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}us", trim_frac(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_frac(nanos, 1_000_000));
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let s_nanos = u128::from(s) * 1_000_000_000 + u128::from(d.subsec_nanos());
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", trim_frac(s_nanos, 1_000_000_000)));
    out
}

/// `value / unit` as a decimal without trailing zeros.
fn trim_frac(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..10_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..5_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..1_000_000).prop_map(Duration::from_nanos),
        (0u64..(u64::MAX / 4)).prop_map(Duration::from_secs),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), now in 0u64..u64::MAX) {
        let now = UNIX_EPOCH.checked_add(Duration::from_secs(now)).unwrap_or(UNIX_EPOCH);
        all_parsers(&bytes, now);
    }

    #[test]
    fn near_grammar_strings_never_panic(
        s in r"[ \t]?[+-]?[0-9]{0,25}(\.[0-9]{0,12})?([eE][+-]?[0-9]{0,4})?(h|m|s|ms|us|µs|μs|ns|x|)([0-9]{0,4}(\.[0-9]{0,3})?(h|m|s|ms|ns))?[ \t]?",
        t in r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2}|[+-][0-9]{0,4}|)",
        d in r"(Mon|Sun|Xyz), [0-9]{1,2} (Jan|Nov|Foo) [0-9]{2,5} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|UTC|)",
        now in 0u64..20_000_000_000,
    ) {
        let now = UNIX_EPOCH + Duration::from_secs(now);
        all_parsers(s.as_bytes(), now);
        all_parsers(t.as_bytes(), now);
        all_parsers(d.as_bytes(), now);
    }

    #[test]
    fn negative_values_are_none(
        n in r"[0-9]{1,20}(\.[0-9]{1,9})?",
        unit in r"(h|m|s|ms|us|ns|)",
    ) {
        let neg = format!("-{n}");
        prop_assert_eq!(parse_retry_after_ms(neg.as_bytes()), None);
        prop_assert_eq!(parse_retry_after(neg.as_bytes(), UNIX_EPOCH), None);
        prop_assert_eq!(parse_count(neg.as_bytes()), None);
        let neg_go = format!("-{n}{unit}");
        prop_assert_eq!(parse_go_duration(neg_go.as_bytes()), None);
        let spaced = format!("  -{n}\t");
        prop_assert_eq!(parse_go_duration(spaced.as_bytes()), None);
    }

    #[test]
    fn non_finite_values_are_none(
        word in "(?i)(nan|inf|infinity|-inf|\\+inf|-nan)",
        pad in "[ \t]{0,2}",
    ) {
        let s = format!("{pad}{word}{pad}");
        prop_assert_eq!(parse_retry_after_ms(s.as_bytes()), None);
        prop_assert_eq!(parse_retry_after(s.as_bytes(), UNIX_EPOCH), None);
        prop_assert_eq!(parse_go_duration(s.as_bytes()), None);
        prop_assert_eq!(parse_count(s.as_bytes()), None);
        prop_assert_eq!(parse_rfc3339_delay(s.as_bytes(), UNIX_EPOCH), None);
    }

    #[test]
    fn garbage_is_none(s in "[a-zA-Z_!?/#,;]{1,12}") {
        // Letters alone are never a number, a duration or a timestamp.
        prop_assert_eq!(parse_retry_after_ms(s.as_bytes()), None);
        prop_assert_eq!(parse_go_duration(s.as_bytes()), None);
        prop_assert_eq!(parse_count(s.as_bytes()), None);
        prop_assert_eq!(parse_rfc3339_delay(s.as_bytes(), UNIX_EPOCH), None);
    }

    #[test]
    fn go_durations_round_trip(d in any_duration()) {
        let text = go_format(d);
        prop_assert_eq!(parse_go_duration(text.as_bytes()), Some(d), "{}", text);
    }

    #[test]
    fn go_duration_sums_of_components(
        h in 0u64..1000, m in 0u64..1000, s in 0u64..1000, ms in 0u64..1000, ns in 0u64..1000,
    ) {
        let text = format!("{h}h{m}m{s}s{ms}ms{ns}ns");
        let expected = Duration::from_secs(h * 3600 + m * 60 + s)
            + Duration::from_millis(ms)
            + Duration::from_nanos(ns);
        prop_assert_eq!(parse_go_duration(text.as_bytes()), Some(expected), "{}", text);
    }

    #[test]
    fn plain_seconds_round_trip(secs in 0u64..u64::MAX, millis in 0u32..1000) {
        let int = secs.to_string();
        prop_assert_eq!(parse_go_duration(int.as_bytes()), Some(Duration::from_secs(secs)));
        prop_assert_eq!(parse_retry_after(int.as_bytes(), UNIX_EPOCH), Some(Duration::from_secs(secs)));
        let small = secs % 1_000_000;
        let frac = format!("{small}.{millis:03}");
        let expected = Duration::from_secs(small) + Duration::from_millis(u64::from(millis));
        prop_assert_eq!(parse_go_duration(frac.as_bytes()), Some(expected));
        prop_assert_eq!(parse_retry_after(frac.as_bytes(), UNIX_EPOCH), Some(expected));
    }

    #[test]
    fn retry_after_ms_round_trips(ms in 0u64..u64::MAX / 1_000_000, micros in 0u32..1000) {
        let text = format!("{ms}.{micros:03}");
        let expected = Duration::from_millis(ms) + Duration::from_micros(u64::from(micros));
        prop_assert_eq!(parse_retry_after_ms(text.as_bytes()), Some(expected));
        prop_assert_eq!(parse_retry_after_ms(ms.to_string().as_bytes()), Some(Duration::from_millis(ms)));
    }

    #[test]
    fn counts_round_trip(n in any::<u64>()) {
        prop_assert_eq!(parse_count(n.to_string().as_bytes()), Some(n));
        prop_assert_eq!(parse_count(format!(" {n} ").as_bytes()), Some(n));
    }

    #[test]
    fn http_dates_round_trip(now in 0u64..10_000_000_000, ahead in -1_000_000i64..1_000_000) {
        let now = UNIX_EPOCH + Duration::from_secs(now);
        let at = if ahead >= 0 {
            now + Duration::from_secs(ahead.unsigned_abs())
        } else {
            now.checked_sub(Duration::from_secs(ahead.unsigned_abs())).unwrap_or(UNIX_EPOCH)
        };
        let text = httpdate::fmt_http_date(at);
        let expected = at.duration_since(now).unwrap_or(Duration::ZERO);
        prop_assert_eq!(parse_retry_after(text.as_bytes(), now), Some(expected), "{}", text);
    }

    #[test]
    fn rfc3339_round_trips_with_offsets(
        now in 0u64..7_000_000_000,
        ahead_secs in -100_000i64..100_000,
        nanos in 0u32..1_000_000_000,
        offset_min in -1439i64..1440,
    ) {
        let now = UNIX_EPOCH + Duration::from_secs(now) + Duration::from_secs(200_000);
        let at = if ahead_secs >= 0 {
            now + Duration::new(ahead_secs.unsigned_abs(), nanos)
        } else {
            now - Duration::from_secs(ahead_secs.unsigned_abs()) + Duration::from_nanos(u64::from(nanos))
        };
        let expected = at.duration_since(now).unwrap_or(Duration::ZERO);
        // UTC.
        let utc = humantime::format_rfc3339_nanos(at).to_string();
        prop_assert_eq!(parse_rfc3339_delay(utc.as_bytes(), now), Some(expected), "{}", utc);
        // The same instant written in local time with a numeric offset.
        let local = if offset_min >= 0 {
            at + Duration::from_secs(offset_min.unsigned_abs() * 60)
        } else {
            at - Duration::from_secs(offset_min.unsigned_abs() * 60)
        };
        let sign = if offset_min >= 0 { '+' } else { '-' };
        let abs = offset_min.unsigned_abs();
        let local_text = humantime::format_rfc3339_nanos(local).to_string();
        let with_offset = format!(
            "{}{sign}{:02}:{:02}",
            local_text.trim_end_matches('Z'),
            abs / 60,
            abs % 60
        );
        prop_assert_eq!(
            parse_rfc3339_delay(with_offset.as_bytes(), now),
            Some(expected),
            "{}",
            with_offset
        );
    }
}

// ---------------------------------------------------- delays out of range

/// Every spelling of "longer than a `Duration` can hold" in the issue's
/// list, header by header: each saturates rather than reading as no delay.
#[test]
fn a_delay_too_large_to_represent_saturates() {
    let max = Some(Duration::MAX);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for text in [
        "18446744073709551616",
        "1e20",
        "1E20",
        "1.5e300",
        "1e400",
        "99999999999999999999999999999999999999999999",
        " 18446744073709551616.5 ",
    ] {
        assert_eq!(
            parse_retry_after(text.as_bytes(), now),
            max,
            "retry-after: {text}"
        );
    }
    for text in ["1e30", "18446744073709551616000", "1e400", "+1e23"] {
        assert_eq!(
            parse_retry_after_ms(text.as_bytes()),
            max,
            "retry-after-ms: {text}"
        );
    }
    for text in [
        "99999999999999999h",
        "5124095576030432h",
        "99999999999999999999m",
        "18446744073709551616s",
        "18446744073709551616",
        "1e20",
        "5124095576030431h5124095576030431h",
        "1h99999999999999999999999999999999999999999999ns",
    ] {
        assert_eq!(
            parse_go_duration(text.as_bytes()),
            max,
            "x-ratelimit-reset-*: {text}"
        );
    }
}

/// The same values through the HTTP classifier: a 429 that asks for
/// "forever" in any of these headers has a delay (`Duration::MAX`, or the
/// far-future date's exact distance), never none.
#[test]
fn a_429_asking_for_forever_has_a_delay_in_every_header() {
    use llm_sluice::classify::http::classify_response;

    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let classify = |name: &str, value: &str| {
        let response = http::Response::builder()
            .status(429)
            .header(name, value)
            .body(())
            .unwrap();
        classify_response(&response, now).retry_after
    };
    for (name, value) in [
        ("retry-after", "18446744073709551616"),
        ("retry-after", "1e20"),
        ("retry-after-ms", "1e30"),
        ("x-ratelimit-reset-requests", "99999999999999999h"),
        ("x-ratelimit-reset-tokens", "99999999999999999h"),
        ("x-ratelimit-reset-tokens", "1e20"),
    ] {
        assert_eq!(
            classify(name, value),
            Some(Duration::MAX),
            "{name}: {value}"
        );
    }
    // An RFC 3339 reset in year 9999 fits a Duration: kept exactly.
    let far = humantime::parse_rfc3339("9999-12-31T23:59:59Z").unwrap();
    let exact = far.duration_since(now).unwrap();
    for limit in ["requests", "tokens", "input-tokens", "output-tokens"] {
        let name = format!("anthropic-ratelimit-{limit}-reset");
        assert_eq!(
            classify(&name, "9999-12-31T23:59:59Z"),
            Some(exact),
            "{name}"
        );
    }
}

/// `grpc-retry-pushback-ms` more than a `u64` of milliseconds is a very long
/// delay (still retryable by the table, above any cap), not the malformed
/// value that means "do not retry".
#[test]
fn a_grpc_pushback_too_large_to_represent_saturates() {
    use llm_sluice::classify::{Classify, GrpcClassifier};

    let classify = |pushback: &str| {
        let response = http::Response::builder()
            .header("grpc-status", "8")
            .header("grpc-retry-pushback-ms", pushback)
            .body(())
            .unwrap();
        GrpcClassifier.classify(Ok(&response))
    };
    for huge in [
        "18446744073709551616",
        "99999999999999999999999999999999999999999",
    ] {
        let class = classify(huge);
        assert_eq!(class.retry_after, Some(Duration::MAX), "{huge}");
        assert!(class.is_retryable(), "{huge}");
    }
    let class = classify("18446744073709551615");
    assert_eq!(class.retry_after, Some(Duration::from_millis(u64::MAX)));
    for bad in ["-1", "1e20", "NaN", "soon"] {
        assert!(!classify(bad).is_retryable(), "{bad}");
    }
}

proptest! {
    #![proptest_config(config())]

    /// An integer of 30 digits or more is beyond `u64::MAX` seconds in any
    /// unit down to the nanosecond (`u64::MAX` seconds is about 1.8e28 ns):
    /// saturated, whatever its digits, padding or `+` sign.
    #[test]
    fn huge_integers_saturate(
        lead in 1u8..=9,
        rest in "[0-9]{29,80}",
        frac in "(\\.[0-9]{0,12})?",
        plus in "\\+?",
        pad in "[ \t]{0,2}",
    ) {
        let text = format!("{pad}{plus}{lead}{rest}{frac}{pad}");
        let max = Some(Duration::MAX);
        prop_assert_eq!(parse_retry_after(text.as_bytes(), UNIX_EPOCH), max, "{}", text);
        prop_assert_eq!(parse_retry_after_ms(text.as_bytes()), max, "{}", text);
        prop_assert_eq!(parse_go_duration(text.as_bytes()), max, "{}", text);
        for unit in ["h", "m", "s", "ms", "us", "ns"] {
            let go = format!("{plus}{lead}{rest}{unit}");
            prop_assert_eq!(parse_go_duration(go.as_bytes()), max, "{}", go);
        }
    }

    /// Exponent notation: saturated when the value is beyond a `Duration`
    /// (`u64::MAX` seconds is about 1.8e19), a shorter delay below it, never
    /// `None`.
    #[test]
    fn exponents_saturate_above_the_range(
        mantissa in 1u32..10,
        exponent in 0u32..400,
    ) {
        let text = format!("{mantissa}e{exponent}");
        let parsed = parse_retry_after(text.as_bytes(), UNIX_EPOCH);
        let exact = 10u128
            .checked_pow(exponent)
            .and_then(|p| p.checked_mul(u128::from(mantissa)))
            .filter(|&secs| secs <= u128::from(u64::MAX));
        match exact {
            None => prop_assert_eq!(parsed, Some(Duration::MAX), "{}", text),
            Some(_) => prop_assert!(parsed.is_some_and(|d| d < Duration::MAX), "{} -> {:?}", text, parsed),
        }
    }

    /// Exponent notation is converted exactly, like plain decimals: a
    /// fraction of a nanosecond rounds up, so the delay is never shorter
    /// than the server wrote (`2e14` through an `f64` came out 31 ns short).
    #[test]
    fn exponent_notation_is_exact_and_never_shorter(
        int in 0u64..10_000_000,
        frac in "[0-9]{0,6}",
        exponent in -30i32..16,
        upper in any::<bool>(),
    ) {
        let e = if upper { 'E' } else { 'e' };
        let dot = if frac.is_empty() { String::new() } else { format!(".{frac}") };
        let text = format!("{int}{dot}{e}{exponent}");
        // The value as an integer numerator over 10^scale, in nanoseconds
        // (seconds) and microseconds (milliseconds), rounded up.
        let digits: u128 = format!("{int}{frac}").parse().unwrap();
        let scale = frac.len() as i32 - exponent;
        let exact = |unit_nanos: u128| -> u128 {
            let n = digits * unit_nanos;
            let nanos = if scale <= 0 {
                n * 10u128.pow(scale.unsigned_abs())
            } else {
                n.div_ceil(10u128.pow(scale.unsigned_abs()))
            };
            nanos.min(Duration::MAX.as_nanos())
        };
        let nanos = |d: Option<Duration>| d.map(|d| d.as_nanos());
        prop_assert_eq!(nanos(parse_retry_after(text.as_bytes(), UNIX_EPOCH)), Some(exact(1_000_000_000)), "{}", text);
        prop_assert_eq!(nanos(parse_go_duration(text.as_bytes())), Some(exact(1_000_000_000)), "{}", text);
        prop_assert_eq!(nanos(parse_retry_after_ms(text.as_bytes())), Some(exact(1_000_000)), "{}", text);
    }

    /// Saturation is monotone: appending digits to a number never makes its
    /// delay shorter, so "more" can never read as "less" or as nothing.
    #[test]
    fn a_longer_number_is_never_a_shorter_delay(
        digits in "[1-9][0-9]{0,30}",
        more in "[0-9]{1,30}",
    ) {
        let longer = format!("{digits}{more}");
        for parse in [
            |b: &[u8]| parse_retry_after(b, UNIX_EPOCH),
            parse_retry_after_ms,
            parse_go_duration,
        ] {
            let (short, long) = (parse(digits.as_bytes()), parse(longer.as_bytes()));
            prop_assert!(short.is_some() && long.is_some());
            prop_assert!(long >= short, "{} -> {:?}, {} -> {:?}", digits, short, longer, long);
        }
    }
}
