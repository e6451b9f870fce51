//! Bodies meant to break the estimator: it never panics, and every
//! estimate stays inside its bounds.

use proptest::prelude::*;

use super::*;

/// Every estimate keeps its invariants.
fn check(e: Estimate) -> Result<(), TestCaseError> {
    prop_assert!(e.input <= MAX_ESTIMATE_TOKENS);
    prop_assert!(e.output <= MAX_ESTIMATE_TOKENS);
    prop_assert_eq!(e.total, e.input + e.output);
    Ok(())
}

#[test]
fn malformed_json_is_estimated_from_its_length() {
    for (body, input) in [
        ("{", 1),
        ("hello", 2),
        (r#"{"messages": [{"content": "unterminated"#, 10),
        ("[1, 2, 3]", 3), // JSON, not an object
        ("\"a string body\"", 4),
    ] {
        assert_eq!(estimate(body), Estimate::new(input, 256), "{body}");
    }
    // No body: no tokens.
    assert_eq!(estimate(""), Estimate::default());
    assert_eq!(estimate(" \r\n"), Estimate::default());
    let bytes = [0xff, 0xfe, 0x00, b'{', b'}'];
    assert_eq!(ChatEstimator::new().estimate(&bytes), Estimate::new(2, 256));
}

#[test]
fn absurd_numbers_are_bounded() {
    let user = r#""messages": [{"role": "user", "content": "abcd"}]"#;
    let input = 1 + 4 + 3;
    for (fields, output) in [
        // -1 is "no limit" on some servers: never 0, fall through.
        (r#""max_tokens": -1"#, 256),
        (r#""max_tokens": -1, "max_output_tokens": "12""#, 12),
        (r#""max_tokens": 10.5"#, 11),
        (r#""max_tokens": "250""#, 250),
        (r#""max_tokens": "lots""#, 256),
        (r#""max_tokens": true"#, 256),
        (r#""max_tokens": [5]"#, 256),
        (r#""max_tokens": 1e300"#, MAX_ESTIMATE_TOKENS),
        (r#""max_tokens": 18446744073709551615"#, MAX_ESTIMATE_TOKENS),
        (
            r#""max_tokens": 184467440737095516150"#,
            MAX_ESTIMATE_TOKENS,
        ),
        // n: at least 1, at most 128.
        (r#""max_tokens": 5, "n": 0"#, 5),
        (r#""max_tokens": 5, "n": -4"#, 5),
        (r#""max_tokens": 5, "n": 1000000000"#, 5 * 128),
        (r#""max_tokens": 5, "n": "3""#, 15),
        (r#""max_tokens": 5, "n": 2.5"#, 15),
        (r#""n": 1e300"#, 256 * 128),
        // The product is capped too.
        (r#""max_tokens": 1e300, "n": 128"#, MAX_ESTIMATE_TOKENS),
    ] {
        let body = format!("{{{user}, {fields}}}");
        assert_eq!(estimate(&body), Estimate::new(input, output), "{fields}");
    }
}

#[test]
fn odd_shapes_count_what_they_can() {
    // messages not an array, content of every type, unknown parts.
    for (body, input) in [
        (r#"{"messages": "abcd"}"#, 1 + 4 + 3),
        (r#"{"messages": [42, null, true]}"#, 12 + 3),
        (r#"{"messages": [{"role": "user", "content": 42}]}"#, 4 + 3),
        (
            r#"{"messages": [{"role": "user", "content": [null, 1, "abcd"]}]}"#,
            1 + 4 + 3,
        ),
        // An unknown part counts its keys and strings: "data" + "abcd".
        (
            r#"{"messages": [{"content": [{"type": "weird", "data": "abcd"}]}]}"#,
            2 + 4 + 3,
        ),
        (r#"{"system": null, "input": null, "messages": []}"#, 3),
    ] {
        assert_eq!(estimate(body).input, input, "{body}");
    }
}

/// Any JSON value, with keys the estimator and the rewrite look for mixed
/// in among arbitrary ones.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        "[0-9 .e-]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&[
            "messages", "content", "text", "type", "role", "system", "input", "instructions",
            "prompt", "tools", "max_tokens", "max_completion_tokens", "max_output_tokens", "n",
            "model", "stream", "stream_options", "include_usage",
        ][..])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(ChatEstimator::new().estimate(&bytes))?;
        let history = CompletionHistory::new();
        check(ChatEstimator::new().history(history).estimate(&bytes))?;
        if let Ok(Some(changed)) = ensure_include_usage(&bytes) {
            prop_assert!(serde_json::from_slice::<Value>(&changed).is_ok());
        }
    }

    /// A real body with a stretch of arbitrary bytes written over it.
    #[test]
    fn corrupted_bodies_never_panic(
        at in 0usize..200,
        junk in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut body = br#"{"model": "gpt-4o", "stream": true, "stream_options": {"x": 1}, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 5, "n": 2}"#.to_vec();
        let at = at.min(body.len());
        let end = (at + junk.len()).min(body.len());
        body.splice(at..end, junk);
        check(ChatEstimator::new().estimate(&body))?;
        if let Ok(Some(changed)) = ensure_include_usage(&body) {
            prop_assert!(serde_json::from_slice::<Value>(&changed).is_ok());
        }
    }

    /// Any JSON value: no panic, bounded, and the bytes and the parsed
    /// value estimate alike.
    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        let estimator = ChatEstimator::new().history(CompletionHistory::new());
        let text = value.to_string();
        let from_bytes = estimator.estimate(text.as_bytes());
        check(from_bytes)?;
        check(estimator.estimate_json(&value))?;
        if value.is_object() {
            prop_assert_eq!(estimator.estimate_json(&value), from_bytes);
        }
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        for body in [&text, &pretty] {
            match ensure_include_usage(body.as_bytes()) {
                Err(NotJsonObject) => prop_assert!(!value.is_object()),
                Ok(None) => {}
                Ok(Some(changed)) => {
                    prop_assert!(serde_json::from_slice::<Value>(&changed).is_ok());
                }
            }
        }
    }
}
