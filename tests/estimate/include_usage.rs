//! `stream_options.include_usage`: each case, byte for byte, and a
//! property against parsing, editing and comparing values.

use proptest::prelude::*;

use super::hostile::json_value;
use super::*;

fn rewrite(body: &str) -> Option<String> {
    ensure_include_usage(body.as_bytes())
        .expect("a JSON object")
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

#[test]
fn streamed_without_options_gets_them_after_the_last_member() {
    let body =
        r#"{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "}"}]}"#;
    assert_eq!(
        rewrite(body).unwrap(),
        r#"{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "}"}],"stream_options":{"include_usage":true}}"#
    );
    // Whitespace and the order of fields are kept.
    let body = "{\n  \"stream\" : true ,\n  \"z\": 1.50,\n  \"a\": \"\\u00e9\"\n}\n";
    assert_eq!(
        rewrite(body).unwrap(),
        "{\n  \"stream\" : true ,\n  \"z\": 1.50,\n  \"a\": \"\\u00e9\",\"stream_options\":{\"include_usage\":true}\n}\n"
    );
}

#[test]
fn options_without_include_usage_gain_it_and_keep_the_others() {
    let body = r#"{"stream": true, "stream_options": {"include_obfuscation": false}, "n": 1}"#;
    assert_eq!(
        rewrite(body).unwrap(),
        r#"{"stream": true, "stream_options": {"include_obfuscation": false,"include_usage":true}, "n": 1}"#
    );
    let body = r#"{"stream": true, "stream_options": { }}"#;
    assert_eq!(
        rewrite(body).unwrap(),
        r#"{"stream": true, "stream_options": {"include_usage":true}}"#
    );
}

#[test]
fn null_is_not_given() {
    let body = r#"{"stream": true, "stream_options": null}"#;
    assert_eq!(
        rewrite(body).unwrap(),
        r#"{"stream": true, "stream_options": {"include_usage":true}}"#
    );
    let body = r#"{"stream": true, "stream_options": {"include_usage": null, "x": 1}}"#;
    assert_eq!(
        rewrite(body).unwrap(),
        r#"{"stream": true, "stream_options": {"include_usage": true, "x": 1}}"#
    );
}

#[test]
fn the_callers_answer_stands() {
    for body in [
        r#"{"stream": true, "stream_options": {"include_usage": false}}"#,
        r#"{"stream": true, "stream_options": {"include_usage": true}}"#,
    ] {
        assert_eq!(rewrite(body), None, "{body}");
    }
}

#[test]
fn not_streamed_or_not_valid_is_left_alone() {
    for body in [
        r#"{"model": "gpt-4o", "messages": []}"#,
        r#"{"stream": false}"#,
        r#"{"stream": "true"}"#,
        r#"{"stream": 1}"#,
        r#"{"stream": null}"#,
        r#"{"stream": true, "stream_options": "include_usage"}"#,
        r#"{"stream": true, "stream_options": [true]}"#,
        r#"{"stream": true, "stream_options": {"include_usage": "yes"}}"#,
    ] {
        assert_eq!(rewrite(body), None, "{body}");
    }
    for body in ["", "not json", "[]", "true", r#""{\"stream\": true}""#] {
        assert_eq!(
            ensure_include_usage(body.as_bytes()),
            Err(NotJsonObject),
            "{body}"
        );
    }
}

#[test]
fn escaped_and_repeated_keys_are_read_as_serde_json_reads_them() {
    // "stre\u0061m" is "stream"; the escaped option key is found too.
    let body = r#"{"stre\u0061m": true, "stream_\u006fptions": {"a": 1}}"#;
    assert_eq!(
        rewrite(body).unwrap(),
        r#"{"stre\u0061m": true, "stream_\u006fptions": {"a": 1,"include_usage":true}}"#
    );
    // The last of a repeated key is the one that counts, and is edited.
    let body =
        r#"{"stream": true, "stream_options": {"include_usage": false}, "stream_options": null}"#;
    assert_eq!(
        rewrite(body).unwrap(),
        r#"{"stream": true, "stream_options": {"include_usage": false}, "stream_options": {"include_usage":true}}"#
    );
}

/// What the rewrite must mean: the body parsed and edited as a value.
fn edited(mut value: Value) -> Option<Value> {
    let map = value.as_object_mut()?;
    if map.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    match map.get_mut("stream_options") {
        None | Some(Value::Null) => {
            map.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => {
                options.insert("include_usage".into(), Value::Bool(true));
            }
            Some(_) => return None,
        },
        Some(_) => return None,
    }
    Some(value)
}

fn stream_options() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!({}))),
        Just(Some(json!({"include_usage": false}))),
        Just(Some(json!({"include_usage": true}))),
        Just(Some(json!({"include_usage": null}))),
        json_value().prop_map(|v| Some(json!({"other": v}))),
        json_value().prop_map(Some),
    ]
}

proptest! {
    /// Whatever the other fields and however the body is laid out, the
    /// rewrite parses to the edited value, and every byte of the original
    /// is still there, in order, around one insertion or replacement.
    #[test]
    fn the_rewrite_means_the_edit(
        others in prop::collection::vec((any::<String>(), json_value()), 0..6),
        stream in prop_oneof![3 => Just(json!(true)), 1 => json_value()],
        options in stream_options(),
        pretty in any::<bool>(),
    ) {
        let mut map = serde_json::Map::new();
        for (k, v) in others {
            map.insert(k, v);
        }
        map.insert("stream".into(), stream);
        if let Some(options) = options {
            map.insert("stream_options".into(), options);
        }
        let value = Value::Object(map);
        let body = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            value.to_string()
        };
        let changed = ensure_include_usage(body.as_bytes()).unwrap();
        // Compared with the body as parsed, not with `value`: serde_json
        // reads some floats back one bit off what it wrote.
        let parsed_body: Value = serde_json::from_str(&body).unwrap();
        match (changed, edited(parsed_body)) {
            (None, None) => {}
            (Some(changed), Some(expected)) => {
                let parsed: Value = serde_json::from_slice(&changed).unwrap();
                prop_assert_eq!(parsed, expected);
                // Every other byte is kept: the two differ in one place,
                // where the original had nothing, whitespace or a `null`.
                let (body, changed) = (body.as_bytes(), &changed[..]);
                let p = body.iter().zip(changed).take_while(|(a, b)| a == b).count();
                let s = body[p..]
                    .iter()
                    .rev()
                    .zip(changed[p..].iter().rev())
                    .take_while(|(a, b)| a == b)
                    .count();
                let removed = std::str::from_utf8(&body[p..body.len() - s]).unwrap();
                let added = std::str::from_utf8(&changed[p..changed.len() - s]).unwrap();
                prop_assert!(["", "null"].contains(&removed.trim()), "removed {:?}", removed);
                prop_assert!(added.contains("true"), "added {:?}", added);
            }
            (changed, expected) => {
                prop_assert!(false, "rewrite {:?}, expected {:?}", changed, expected);
            }
        }
    }
}
