//! The usage meter: every format from fixtures, SSE framing, hostile input,
//! the body wrapper, split invariance and bounded memory.
#![cfg(feature = "http")]

use llm_sluice::meter::{BodyKind, OutputSeen, UsageScanner, MAX_USAGE_BYTES};
use llm_sluice::Usage;

mod big;
mod body;
mod prop;
mod strip;

/// A fixture with what the scanner must read from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) kind: BodyKind,
    pub(crate) body: &'static [u8],
    pub(crate) usage: Option<Usage>,
    /// Bytes of generated text (JSON-escaped) and events carrying it.
    pub(crate) text: (u64, u64),
}

pub(crate) const CASES: &[Case] = &[
    Case {
        name: "openai_chat.json",
        kind: BodyKind::Json,
        body: include_bytes!("fixtures/openai_chat.json"),
        usage: Some(Usage::new(2006, 300).with_cached_input(1920)),
        text: (148, 0),
    },
    Case {
        name: "anthropic_message.json",
        kind: BodyKind::Json,
        body: include_bytes!("fixtures/anthropic_message.json"),
        // prompt = 12 input + 1800 cache read + 2048 cache creation.
        usage: Some(Usage::new(3860, 503).with_cached_input(1800)),
        text: (48, 0),
    },
    Case {
        name: "responses.json",
        kind: BodyKind::Json,
        body: include_bytes!("fixtures/responses.json"),
        usage: Some(Usage::new(328, 52).with_cached_input(256)),
        text: (97, 0),
    },
    Case {
        name: "openai_chat_stream.sse",
        kind: BodyKind::EventStream,
        body: include_bytes!("fixtures/openai_chat_stream.sse"),
        usage: Some(Usage::new(25, 7)),
        text: (61, 4),
    },
    Case {
        name: "openai_chat_stream_no_usage.sse",
        kind: BodyKind::EventStream,
        body: include_bytes!("fixtures/openai_chat_stream_no_usage.sse"),
        usage: None,
        text: (61, 4),
    },
    Case {
        name: "anthropic_stream.sse",
        kind: BodyKind::EventStream,
        body: include_bytes!("fixtures/anthropic_stream.sse"),
        // input from message_start (472 + 1024 cache read), output from the
        // last message_delta.
        usage: Some(Usage::new(1496, 89).with_cached_input(1024)),
        text: (125, 4),
    },
    Case {
        name: "responses_stream.sse",
        kind: BodyKind::EventStream,
        body: include_bytes!("fixtures/responses_stream.sse"),
        usage: Some(Usage::new(37, 11)),
        text: (25, 3),
    },
];

pub(crate) fn case(name: &str) -> Case {
    *CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

pub(crate) fn scan(kind: BodyKind, body: &[u8]) -> UsageScanner {
    let mut scanner = UsageScanner::new(kind);
    scanner.feed(body);
    scanner
}

/// Feeds `body` split at `cuts` (positions, in any order, clamped).
pub(crate) fn scan_split(kind: BodyKind, body: &[u8], cuts: &[usize]) -> UsageScanner {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
    cuts.sort_unstable();
    let mut scanner = UsageScanner::new(kind);
    let mut from = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        scanner.feed(&body[from..cut]);
        from = cut;
    }
    scanner
}

fn output(text_bytes: u64, text_events: u64) -> OutputSeen {
    let mut seen = OutputSeen::default();
    seen.text_bytes = text_bytes;
    seen.text_events = text_events;
    seen
}

fn check(name: &str) {
    let case = case(name);
    let scanner = scan(case.kind, case.body);
    assert_eq!(scanner.usage(), case.usage, "{name}");
    assert_eq!(
        scanner.output_seen(),
        output(case.text.0, case.text.1),
        "{name}"
    );
    assert!(scanner.retained_capacity() <= MAX_USAGE_BYTES);
}

fn with_line_endings(body: &[u8], eol: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 2);
    for &b in body {
        if b == b'\n' {
            out.extend_from_slice(eol);
        } else {
            out.push(b);
        }
    }
    out
}

fn sse(kind_body: &str) -> Option<Usage> {
    scan(BodyKind::EventStream, kind_body.as_bytes()).usage()
}

fn json(body: &str) -> Option<Usage> {
    scan(BodyKind::Json, body.as_bytes()).usage()
}

// ---- formats ----

#[test]
fn openai_chat_json() {
    check("openai_chat.json");
}

#[test]
fn anthropic_message_json_adds_cache_to_prompt() {
    check("anthropic_message.json");
}

#[test]
fn responses_json() {
    check("responses.json");
}

#[test]
fn openai_chat_stream_final_usage_chunk() {
    check("openai_chat_stream.sse");
}

#[test]
fn openai_chat_stream_without_include_usage_has_output_only() {
    check("openai_chat_stream_no_usage.sse");
}

#[test]
fn anthropic_stream_message_start_and_last_message_delta() {
    check("anthropic_stream.sse");
}

#[test]
fn responses_stream_completed_event() {
    check("responses_stream.sse");
}

#[test]
fn anthropic_message_delta_repeating_input_wins() {
    let body = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
        "\n\nevent: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":12,"cache_read_input_tokens":5,"cache_creation_input_tokens":null,"output_tokens":40}}"#,
        "\n\n"
    );
    assert_eq!(sse(body), Some(Usage::new(17, 40).with_cached_input(5)));
}

#[test]
fn usage_in_every_chunk_the_last_wins() {
    // vLLM's continuous usage stats: cumulative usage on every chunk.
    let chunk = |c: u64| {
        format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"x\"}}}}],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{c},\"total_tokens\":{}}}}}\n\n",
            9 + c
        )
    };
    let body: String = (1..=5).map(chunk).collect::<String>() + "data: [DONE]\n\n";
    assert_eq!(sse(&body), Some(Usage::new(9, 5)));
}

#[test]
fn responses_incomplete_carries_usage() {
    let body = concat!(
        "event: response.incomplete\n",
        r#"data: {"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":20,"output_tokens":16,"total_tokens":36}}}"#,
        "\n\n"
    );
    assert_eq!(sse(body), Some(Usage::new(20, 16)));
}

#[test]
fn usage_in_content_or_nested_is_never_read() {
    assert_eq!(
        json(
            r#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":5}","usage":{"prompt_tokens":6}}}]}"#
        ),
        None
    );
    // In an event, `usage` counts at the top level and under the top-level
    // `message` or `response` only.
    assert_eq!(
        sse("data: {\"item\":{\"usage\":{\"prompt_tokens\":5}},\"choices\":[{\"message\":{\"usage\":{\"prompt_tokens\":6}}}]}\n\n"),
        None
    );
    // A non-streamed body is read at its top level only.
    assert_eq!(json(r#"{"message":{"usage":{"input_tokens":5}}}"#), None);
}

#[test]
fn json_body_split_at_every_byte_reads_the_same() {
    for case in CASES {
        for cut in 0..=case.body.len() {
            let scanner = scan_split(case.kind, case.body, &[cut]);
            assert_eq!(scanner.usage(), case.usage, "{} cut at {cut}", case.name);
            assert_eq!(
                scanner.output_seen(),
                output(case.text.0, case.text.1),
                "{} cut at {cut}",
                case.name
            );
        }
        // And one byte at a time.
        let mut scanner = UsageScanner::new(case.kind);
        for b in case.body.chunks(1) {
            scanner.feed(b);
        }
        assert_eq!(scanner.usage(), case.usage, "{} bytewise", case.name);
    }
}

// ---- SSE framing ----

#[test]
fn crlf_and_cr_line_endings() {
    for case in CASES.iter().filter(|c| c.kind == BodyKind::EventStream) {
        for eol in [&b"\r\n"[..], b"\r"] {
            let body = with_line_endings(case.body, eol);
            let scanner = scan(case.kind, &body);
            assert_eq!(scanner.usage(), case.usage, "{} {eol:?}", case.name);
            assert_eq!(
                scanner.output_seen(),
                output(case.text.0, case.text.1),
                "{} {eol:?}",
                case.name
            );
            // A split between CR and LF, and everywhere else.
            for cut in 0..=body.len() {
                let split = scan_split(case.kind, &body, &[cut]);
                assert_eq!(split.usage(), case.usage, "{} {eol:?} at {cut}", case.name);
            }
        }
    }
}

#[test]
fn multi_line_data_is_joined() {
    let body = "event: message_delta\ndata: {\"type\":\"message_delta\",\ndata:\"usage\":\ndata:  {\"output_tokens\":\r\ndata: 12, \"input_tokens\": 3}}\n\n";
    assert_eq!(sse(body), Some(Usage::new(3, 12)));
}

#[test]
fn comments_ids_and_other_fields_are_skipped() {
    let body = concat!(
        ": OPENROUTER PROCESSING\n\n",
        ":\n",
        "id: 7\nretry: 1000\nevent: completion\n",
        "dataX: {\"usage\":{\"prompt_tokens\":999}}\n",
        "datum: {\"usage\":{\"prompt_tokens\":998}}\n",
        ": data: {\"usage\":{\"prompt_tokens\":997}}\n",
        "data\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n",
        "\n",
    );
    assert_eq!(sse(body), Some(Usage::new(4, 2)));
}

#[test]
fn byte_order_mark_before_the_first_line() {
    let body = "\u{feff}data: {\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n";
    assert_eq!(sse(body), Some(Usage::new(4, 2)));
    // Split inside the mark.
    let split = scan_split(BodyKind::EventStream, body.as_bytes(), &[1, 2]);
    assert_eq!(split.usage(), Some(Usage::new(4, 2)));
}

#[test]
fn last_event_without_blank_line_still_counts() {
    assert_eq!(
        sse("data: {\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}"),
        Some(Usage::new(4, 2))
    );
}

#[test]
fn a_malformed_event_does_not_spoil_the_next() {
    let body = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"unterminated \\\"\n\n",
        "data: {{{{[[[[\n\n",
        "data: }}}}]]]]\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":3}}\n\n",
    );
    assert_eq!(sse(body), Some(Usage::new(8, 3)));
}

#[test]
fn output_counts_deltas_not_repeats() {
    // The Responses stream repeats its text in `.done` events and in
    // `response.completed`: only the deltas count.
    let case = case("responses_stream.sse");
    let scanner = scan(case.kind, case.body);
    assert_eq!(
        scanner.output_seen().text_bytes,
        "Hi there! How can I help?".len() as u64
    );
    assert_eq!(scanner.output_seen().estimated_tokens(), 7);
}

// ---- content type ----

#[test]
fn kind_from_content_type() {
    use http::HeaderValue;
    let event_stream = [
        "text/event-stream",
        "text/event-stream; charset=utf-8",
        "Text/Event-Stream;charset=UTF-8",
        " text/event-stream ",
    ];
    for value in event_stream {
        assert_eq!(
            BodyKind::from_content_type(Some(&HeaderValue::from_static(value))),
            BodyKind::EventStream,
            "{value}"
        );
    }
    for value in ["application/json", "text/plain", "", "text/event-streamx"] {
        assert_eq!(
            BodyKind::from_content_type(Some(value)),
            BodyKind::Json,
            "{value}"
        );
    }
    assert_eq!(BodyKind::from_content_type(None::<&str>), BodyKind::Json);
    let mut headers = http::HeaderMap::new();
    assert_eq!(BodyKind::from_headers(&headers), BodyKind::Json);
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    assert_eq!(BodyKind::from_headers(&headers), BodyKind::EventStream);
}

// ---- hostile input ----

#[test]
fn absurd_counts_are_ignored() {
    assert_eq!(
        json(r#"{"usage":{"prompt_tokens":-5,"completion_tokens":1.5,"total_tokens":"7"}}"#),
        None
    );
    assert_eq!(
        json(r#"{"usage":{"prompt_tokens":184467440737095516160,"completion_tokens":3}}"#),
        Some(Usage::new(0, 3))
    );
    assert_eq!(
        json(r#"{"usage":{"prompt_tokens":1e400,"completion_tokens":3}}"#),
        None
    );
    assert_eq!(json(r#"{"usage":null}"#), None);
    assert_eq!(json(r#"{"usage":[1,2,3]}"#), None);
    assert_eq!(json(r#"{"usage":"prompt_tokens"}"#), None);
    // The largest count is kept, and sums saturate.
    assert_eq!(
        json(r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":3}}"#),
        Some(Usage::new(u64::MAX, 3))
    );
}

#[test]
fn malformed_bodies_read_as_none() {
    for body in [
        "",
        "not json at all",
        "{",
        "}}}}]]]]",
        r#"{"usage":{"prompt_tokens":1"#,
        r#"{"usage":{"prompt_tokens":1,}}"#,
        r#"{"usage" {"prompt_tokens":1}}"#,
        "\u{0}\u{1}\u{ff}",
    ] {
        assert_eq!(json(body), None, "{body:?}");
        assert_eq!(sse(body), None, "{body:?}");
    }
}

#[test]
fn deep_nesting_does_not_overflow() {
    let depth = 1_000_000;
    let mut body = Vec::with_capacity(depth * 2 + 100);
    body.extend_from_slice(br#"{"x":"#);
    body.extend(std::iter::repeat_n(b'[', depth));
    body.extend(std::iter::repeat_n(b']', depth));
    body.extend_from_slice(br#","usage":{"prompt_tokens":2,"completion_tokens":1}}"#);
    assert_eq!(scan(BodyKind::Json, &body).usage(), Some(Usage::new(2, 1)));
    // Nesting inside the usage object itself: serde_json refuses it.
    let mut inside = br#"{"usage":{"prompt_tokens":2,"x":"#.to_vec();
    inside.extend(std::iter::repeat_n(b'[', 500));
    inside.extend(std::iter::repeat_n(b']', 500));
    inside.extend_from_slice(b"}}");
    assert_eq!(scan(BodyKind::Json, &inside).usage(), None);
}

#[test]
fn oversized_usage_is_given_up_in_bounded_memory() {
    let padding = "x".repeat(MAX_USAGE_BYTES);
    let body =
        format!(r#"{{"usage":{{"prompt_tokens":2,"completion_tokens":1,"note":"{padding}"}}}}"#);
    for cut in [0, 1, 13, 100, 4096, body.len() / 2] {
        let scanner = scan_split(BodyKind::Json, body.as_bytes(), &[cut]);
        assert_eq!(scanner.usage(), None);
        assert!(scanner.retained_capacity() <= MAX_USAGE_BYTES);
    }
    // Just under the bound is read.
    let fits = "x".repeat(MAX_USAGE_BYTES - 100);
    let body =
        format!(r#"{{"usage":{{"prompt_tokens":2,"completion_tokens":1,"note":"{fits}"}}}}"#);
    let scanner = scan_split(BodyKind::Json, body.as_bytes(), &[5000]);
    assert_eq!(scanner.usage(), Some(Usage::new(2, 1)));
    assert!(scanner.retained_capacity() <= MAX_USAGE_BYTES);
}

#[test]
fn a_later_usage_after_an_oversized_one_is_read() {
    let padding = "x".repeat(MAX_USAGE_BYTES);
    let body = format!(
        "data: {{\"usage\":{{\"prompt_tokens\":1,\"pad\":\"{padding}\"}}}}\n\ndata: {{\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":4}}}}\n\n"
    );
    assert_eq!(sse(&body), Some(Usage::new(3, 4)));
}

#[test]
fn long_keys_and_escaped_keys_are_not_usage() {
    assert_eq!(
        json(
            r#"{"usage_but_much_longer_than_any_key_we_read":{"prompt_tokens":1},"\u0075sage":{"prompt_tokens":2}}"#
        ),
        None
    );
}

#[test]
fn an_encoded_body_is_not_read() {
    use http::HeaderValue;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("content-encoding", HeaderValue::from_static("identity"));
    assert_eq!(BodyKind::from_headers(&headers), BodyKind::EventStream);
    headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    assert_eq!(BodyKind::from_headers(&headers), BodyKind::Encoded);
    headers.insert("content-encoding", HeaderValue::from_static("identity, br"));
    assert_eq!(BodyKind::from_headers(&headers), BodyKind::Encoded);

    let case = case("openai_chat.json");
    let scanner = scan(BodyKind::Encoded, case.body);
    assert_eq!(scanner.usage(), None);
    assert_eq!(scanner.output_seen(), OutputSeen::default());
    assert_eq!(scanner.bytes_seen(), case.body.len() as u64);
    assert_eq!(scanner.retained_capacity(), 0);
}
