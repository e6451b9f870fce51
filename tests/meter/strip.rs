//! `StripUsageChunk`: the usage-only chat chunk goes, every other byte stays,
//! however the stream is split.

use std::convert::Infallible;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::executor::block_on;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use llm_sluice::meter::{BodyEnd, StripUsageChunk, UsageBody, MAX_HELD_EVENT_BYTES};
use llm_sluice::Usage;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::case;

const WITH_USAGE: &[u8] = include_bytes!("fixtures/strip_chat_include_usage.sse");
const EXPECTED: &[u8] = include_bytes!("fixtures/strip_chat_expected.sse");
const USAGE_ON_LAST: &[u8] = include_bytes!("fixtures/strip_usage_on_last_chunk.sse");

type Frames = Vec<Result<Frame<Bytes>, &'static str>>;
type Chunks =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, &'static str>>>>;

fn body_of(frames: Frames) -> Chunks {
    StreamBody::new(futures::stream::iter(frames))
}

/// `body` cut at `cuts` (positions, in any order, clamped), as data frames.
fn pieces(body: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
    cuts.sort_unstable();
    let body = Bytes::copy_from_slice(body);
    let mut from = 0;
    let mut out = Vec::new();
    for cut in cuts.into_iter().chain([body.len()]) {
        out.push(body.slice(from..cut));
        from = cut;
    }
    out
}

/// The data frames `StripUsageChunk` hands on for `body` cut at `cuts`.
fn strip_frames(body: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let frames = pieces(body, cuts)
        .into_iter()
        .map(|b| Ok(Frame::data(b)))
        .collect();
    let mut stripped = StripUsageChunk::new(body_of(frames));
    let mut out = Vec::new();
    block_on(async {
        while let Some(frame) = stripped.frame().await {
            out.push(frame.unwrap().into_data().unwrap());
        }
    });
    assert!(stripped.is_end_stream());
    out
}

/// What `StripUsageChunk` hands on for `body` cut at `cuts`, concatenated.
fn strip(body: &[u8], cuts: &[usize]) -> Vec<u8> {
    strip_frames(body, cuts).concat()
}

fn crlf(body: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(body)
        .replace('\n', "\r\n")
        .into_bytes()
}

fn cr(body: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(body)
        .replace('\n', "\r")
        .into_bytes()
}

/// Every single cut, and one byte at a time.
fn assert_strips_to(body: &[u8], expected: &[u8], what: &str) {
    assert_eq!(strip(body, &[]), expected, "{what}, whole");
    for cut in 0..=body.len() {
        assert_eq!(strip(body, &[cut]), expected, "{what}, cut at {cut}");
    }
    let bytewise: Vec<usize> = (0..body.len()).collect();
    assert_eq!(strip(body, &bytewise), expected, "{what}, byte by byte");
}

fn usage_chunk(usage: &str) -> String {
    format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{usage}}}\n\n")
}

// ---- fixtures ----

#[test]
fn the_usage_chunk_is_removed() {
    assert_strips_to(WITH_USAGE, EXPECTED, "strip_chat_include_usage.sse");
}

#[test]
fn streams_without_it_are_unchanged() {
    assert_strips_to(EXPECTED, EXPECTED, "strip_chat_expected.sse");
    for name in [
        "openai_chat_stream_no_usage.sse",
        "anthropic_stream.sse",
        "responses_stream.sse",
    ] {
        let case = case(name);
        assert_strips_to(case.body, case.body, name);
    }
}

#[test]
fn the_meter_fixture_loses_only_its_usage_chunk() {
    let case = case("openai_chat_stream.sse");
    let text = std::str::from_utf8(case.body).unwrap();
    let at = text.find("data: {\"id\":\"chatcmpl-C1Qb8hZjv2\",\"object\":\"chat.completion.chunk\",\"created\":1754400000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[]").unwrap();
    let end = at + text[at..].find("\n\n").unwrap() + 2;
    let expected = format!("{}{}", &text[..at], &text[end..]);
    assert!(expected.ends_with("data: [DONE]\n\n"));
    assert_strips_to(case.body, expected.as_bytes(), "openai_chat_stream.sse");
}

#[test]
fn usage_on_the_last_content_chunk_is_kept() {
    // Some servers send the usage on the last chunk that has choices; it is
    // content, and stays as it is (usage included).
    assert_strips_to(
        USAGE_ON_LAST,
        USAGE_ON_LAST,
        "strip_usage_on_last_chunk.sse",
    );
}

#[test]
fn crlf_and_cr_line_endings() {
    assert_strips_to(&crlf(WITH_USAGE), &crlf(EXPECTED), "CRLF");
    assert_strips_to(&cr(WITH_USAGE), &cr(EXPECTED), "CR");
    assert_strips_to(&crlf(USAGE_ON_LAST), &crlf(USAGE_ON_LAST), "CRLF kept");
}

#[test]
fn the_lf_of_a_crlf_blank_line_goes_with_its_event() {
    let usage = usage_chunk(r#"{"prompt_tokens":1}"#).replace('\n', "\r\n");
    // Removed as the last event, and before a LF-only event.
    for tail in ["", "data: [DONE]\r\n\r\n", "\ndata: [DONE]\n\n", "\r\n"] {
        let body = format!("data: {{\"choices\":[{{}}]}}\r\n\r\n{usage}{tail}");
        let expected = format!("data: {{\"choices\":[{{}}]}}\r\n\r\n{tail}");
        assert_strips_to(body.as_bytes(), expected.as_bytes(), tail);
    }
}

#[test]
fn comments_keepalives_and_other_fields_pass() {
    let body = concat!(
        ": OPENROUTER PROCESSING\n\n",
        ":\n\n",
        "\n\n",
        "retry: 3000\n\n",
        "id: 1\nevent: message\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        ": ping\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n: pong\n\n",
        "datum: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
        ": data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
    );
    assert_strips_to(body.as_bytes(), body.as_bytes(), "comments");
}

#[test]
fn the_whole_event_goes_with_its_other_lines() {
    // Fields and comments of the usage chunk's own event are part of it.
    let body = concat!(
        "data: {\"choices\":[{\"delta\":{}}]}\n\n",
        "id: 7\n: usage\nevent: message\ndata: {\"choices\":[],\n",
        "data: \"usage\":{\"prompt_tokens\":1}}\n\n",
        "data: [DONE]\n\n",
    );
    let expected = "data: {\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n";
    assert_strips_to(body.as_bytes(), expected.as_bytes(), "fields");
}

#[test]
fn events_that_merely_mention_usage_pass() {
    let body = concat!(
        // The pattern inside a string, at the top level and nested.
        "data: {\"note\":\"\\\"choices\\\":[],\\\"usage\\\":{}\",\"choices\":[{\"delta\":{}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"{\\\"choices\\\":[],\\\"usage\\\":{\\\"prompt_tokens\\\":1}}\"}}]}\n\n",
        // Nested, not at the top level.
        "data: {\"x\":{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}}\n\n",
        // Usage null, absent, or not an object; choices absent or not empty.
        "data: {\"choices\":[],\"usage\":null}\n\n",
        "data: {\"choices\":[]}\n\n",
        "data: {\"choices\":[],\"usage\":7}\n\n",
        "data: {\"usage\":{\"prompt_tokens\":1}}\n\n",
        "data: {\"choices\":{},\"usage\":{\"prompt_tokens\":1}}\n\n",
        "data: {\"choices\":[null],\"usage\":{\"prompt_tokens\":1}}\n\n",
        // Anthropic- and Responses-style usage.
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n",
        "data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3}}}\n\n",
        // Malformed, repeated or escaped keys, trailing bytes.
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}} x\n\n",
        "data: {\"choices\":[],\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
        "data: {\"ch\\u006fices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
        "data: [{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}]\n\n",
        // A usage chunk whose event never ends (the stream stops first).
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n",
    );
    assert_strips_to(body.as_bytes(), body.as_bytes(), "mentions");
}

#[test]
fn whitespace_key_order_and_line_splits_are_the_chunk_still() {
    let body = concat!(
        "data:{ \"usage\" : { \"prompt_tokens\" : 1 } ,\t\"choices\" : [ ] }\n\n",
        "data: {\"usage\":{}, \"choices\":[],\n",
        "data:\n",
        "data: \"id\":\"x\"}\n\n",
        "data: [DONE]\n\n",
    );
    assert_strips_to(body.as_bytes(), b"data: [DONE]\n\n", "shapes");
}

#[test]
fn a_byte_order_mark_before_the_first_event() {
    let body = format!(
        "\u{feff}{}data: [DONE]\n\n",
        usage_chunk(r#"{"prompt_tokens":1}"#)
    );
    assert_strips_to(body.as_bytes(), b"data: [DONE]\n\n", "BOM");
}

// ---- bounds ----

/// A usage-only chunk exactly `len` bytes long (through its blank line).
fn usage_chunk_of_len(len: usize) -> String {
    let bare = usage_chunk(r#"{"prompt_tokens":1,"pad":""}"#).len();
    let chunk = usage_chunk(&format!(
        r#"{{"prompt_tokens":1,"pad":"{}"}}"#,
        "x".repeat(len - bare)
    ));
    assert_eq!(chunk.len(), len);
    chunk
}

#[test]
fn an_event_longer_than_the_bound_is_never_removed() {
    let fits = usage_chunk_of_len(MAX_HELD_EVENT_BYTES);
    let long = usage_chunk_of_len(MAX_HELD_EVENT_BYTES + 1);
    let body = format!("{fits}{long}data: [DONE]\n\n");
    let expected = format!("{long}data: [DONE]\n\n");
    for cuts in [
        vec![],
        vec![10],
        vec![fits.len() - 1],
        vec![fits.len() + 10, fits.len() + MAX_HELD_EVENT_BYTES],
        (0..body.len()).step_by(1000).collect(),
        (0..body.len()).step_by(7).collect(),
    ] {
        assert_eq!(
            strip(body.as_bytes(), &cuts),
            expected.as_bytes(),
            "{cuts:?}"
        );
    }
}

#[test]
fn a_long_event_streams_out_with_bounded_holding() {
    // A 1 MiB event that stays undecided (a long string before `choices`):
    // it is held only up to the bound, then handed on as it comes.
    let body = format!(
        "data: {{\"id\":\"{}\",\"choices\":[],\"usage\":{{}}}}\n\ndata: [DONE]\n\n",
        "y".repeat(1 << 20)
    );
    let (tx, mut stripped) = channel();
    let mut sent = 0;
    let mut out = 0;
    for piece in body.as_bytes().chunks(1024) {
        tx.unbounded_send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
            .unwrap();
        sent += piece.len();
        out += drain_ready(&mut stripped).concat().len();
        assert!(
            sent - out <= MAX_HELD_EVENT_BYTES,
            "held {} bytes",
            sent - out
        );
    }
    drop(tx);
    out += drain_ready(&mut stripped).concat().len();
    assert_eq!(out, body.len());
}

// ---- latency: nothing held that is known not to be the chunk ----

type Sent = Result<Frame<Bytes>, Infallible>;
type Channel = StripUsageChunk<StreamBody<mpsc::UnboundedReceiver<Sent>>>;

/// A strip over a body fed by hand.
fn channel() -> (mpsc::UnboundedSender<Sent>, Pin<Box<Channel>>) {
    let (tx, rx) = mpsc::unbounded();
    (tx, Box::pin(StripUsageChunk::new(StreamBody::new(rx))))
}

/// Polls until the body waits for input; the data it handed on.
fn drain_ready<B: Body<Data = Bytes>>(body: &mut Pin<Box<B>>) -> Vec<Bytes>
where
    B::Error: std::fmt::Debug,
{
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        out.push(frame.unwrap().into_data().unwrap());
    }
    out
}

#[test]
fn content_is_handed_on_as_soon_as_it_is_known() {
    let (tx, mut stripped) = channel();
    let send = |s: &'static str| {
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(s.as_bytes()))))
            .unwrap();
    };
    // A content chunk is known once its choices open with an element.
    send("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[");
    assert_eq!(drain_ready(&mut stripped).concat(), b"", "undecided");
    send(" {");
    assert_eq!(
        drain_ready(&mut stripped).concat(),
        b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[ {"
    );
    send("\"delta\":{\"content\":\"x\"}}]}\n\n: keep-al");
    assert_eq!(
        drain_ready(&mut stripped).concat(),
        b"\"delta\":{\"content\":\"x\"}}]}\n\n"
    );
    // A comment is held until its event ends (a data line could follow).
    send("ive\n\ndata: [DO");
    assert_eq!(
        drain_ready(&mut stripped).concat(),
        b": keep-alive\n\ndata: [DO"
    );
    send("NE]\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}");
    assert_eq!(drain_ready(&mut stripped).concat(), b"NE]\n\n");
    // The usage chunk: decided at its blank line, and removed.
    send("\n");
    assert_eq!(drain_ready(&mut stripped).concat(), b"");
    send("\n");
    assert_eq!(drain_ready(&mut stripped).concat(), b"");
    assert_eq!(stripped.removed(), 1);
    // `"usage":null` settles it at once.
    send("data: {\"choices\":[],\"usage\":n");
    assert_eq!(
        drain_ready(&mut stripped).concat(),
        b"data: {\"choices\":[],\"usage\":n"
    );
}

#[test]
fn whole_events_in_one_frame_pass_without_copy() {
    let input = Bytes::from_static(EXPECTED);
    let range = input.as_ptr_range();
    let frames = strip_frames(&input, &[]);
    // `strip_frames` copies the input once into its own buffer: compare
    // with a body fed the static bytes directly.
    assert_eq!(frames.concat(), EXPECTED);
    let mut stripped = StripUsageChunk::new(Full::new(input.clone()));
    let frame = block_on(stripped.frame())
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(frame, input);
    assert!(range.contains(&frame.as_ptr()), "a slice of the input");
    // Around a removed chunk: two slices of the input.
    let input = Bytes::from_static(WITH_USAGE);
    let range = input.as_ptr_range();
    let stripped = StripUsageChunk::new(Full::new(input));
    let mut stripped = Box::pin(stripped);
    let frames = drain_ready(&mut stripped);
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| range.contains(&f.as_ptr())));
    assert_eq!(frames.concat(), EXPECTED);
}

// ---- the body ----

#[test]
fn read_with_usage_body_inside_and_strip_outside() {
    let response = http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(body_of(
            pieces(WITH_USAGE, &[100, 700, 1500, 1700, 2000])
                .into_iter()
                .map(|b| Ok(Frame::data(b)))
                .collect(),
        ))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // The meter reads the unchanged stream; the strip hands on the caller's.
    let metered = UsageBody::wrap_response(response, move |end: BodyEnd| {
        let _ = tx.send(end);
    });
    let response = StripUsageChunk::wrap_response(metered);
    assert!(response.body().is_stripping());
    let read = block_on(response.into_body().collect()).unwrap().to_bytes();
    assert_eq!(read, EXPECTED, "the chunk is removed");
    let end = rx.recv().unwrap();
    assert!(end.is_complete());
    assert_eq!(
        end.usage(),
        Some(Usage::new(31, 12)),
        "the usage is read from it"
    );
}

#[test]
fn wrap_response_strips_event_streams_only() {
    let response = |headers: &[(&str, &str)], body: &'static [u8]| {
        let mut builder = http::Response::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Full::new(Bytes::from_static(body))).unwrap()
    };
    let len = WITH_USAGE.len().to_string();

    let stripped = StripUsageChunk::wrap_response(response(
        &[
            ("content-type", "text/event-stream; charset=utf-8"),
            ("content-length", &len),
        ],
        WITH_USAGE,
    ));
    assert!(stripped.body().is_stripping());
    assert!(
        stripped.headers().get("content-length").is_none(),
        "the body may shrink"
    );
    let read = block_on(stripped.into_body().collect()).unwrap().to_bytes();
    assert_eq!(read, EXPECTED);

    for headers in [
        &[
            ("content-type", "text/event-stream"),
            ("content-encoding", "gzip"),
        ][..],
        &[("content-type", "application/json")][..],
        &[][..],
    ] {
        let mut headers = headers.to_vec();
        headers.push(("content-length", &len));
        let passed = StripUsageChunk::wrap_response(response(&headers, WITH_USAGE));
        assert!(!passed.body().is_stripping(), "{headers:?}");
        assert!(passed.headers().get("content-length").is_some());
        assert_eq!(
            passed.body().size_hint().exact(),
            Some(WITH_USAGE.len() as u64)
        );
        let read = block_on(passed.into_body().collect()).unwrap().to_bytes();
        assert_eq!(read, WITH_USAGE, "{headers:?}");
    }
}

#[test]
fn size_hint_has_an_upper_bound_only() {
    let mut stripped = Box::pin(StripUsageChunk::new(Full::new(Bytes::from_static(
        WITH_USAGE,
    ))));
    let hint = stripped.size_hint();
    assert_eq!(hint.exact(), None);
    assert_eq!(hint.lower(), 0);
    assert_eq!(hint.upper(), Some(WITH_USAGE.len() as u64));
    assert!(!stripped.is_end_stream());
    let frames = drain_ready(&mut stripped);
    assert_eq!(frames.concat(), EXPECTED);
    assert!(stripped.is_end_stream());
    assert_eq!(stripped.size_hint().upper(), Some(0));

    let empty = StripUsageChunk::new(Empty::<Bytes>::new());
    assert!(empty.is_end_stream());
    assert_eq!(empty.size_hint().upper(), Some(0));
}

#[test]
fn end_of_stream_waits_for_what_is_held() {
    // The inner body says it is done after its frame, but the strip still
    // holds the start of an event that never ended.
    let mut stripped = Box::pin(StripUsageChunk::new(Full::new(Bytes::from_static(
        b"data: {\"choices\":[],",
    ))));
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let first = stripped.as_mut().poll_frame(&mut cx);
    let Poll::Ready(Some(Ok(frame))) = first else {
        panic!("{first:?}")
    };
    assert_eq!(frame.into_data().unwrap(), &b"data: {\"choices\":[],"[..]);
    assert!(stripped.is_end_stream());
    assert!(matches!(
        stripped.as_mut().poll_frame(&mut cx),
        Poll::Ready(None)
    ));
}

#[test]
fn trailers_and_errors_come_after_what_was_held() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-done", http::HeaderValue::from_static("1"));
    let held = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}";
    let frames: Frames = vec![
        Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
        Ok(Frame::data(Bytes::from_static(held.as_bytes()))),
        Ok(Frame::trailers(trailers.clone())),
    ];
    let collected = block_on(StripUsageChunk::new(body_of(frames)).collect()).unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(
        collected.to_bytes(),
        format!("data: [DONE]\n\n{held}").as_bytes()
    );

    let frames: Frames = vec![
        Ok(Frame::data(Bytes::from_static(held.as_bytes()))),
        Err("connection reset"),
        Ok(Frame::data(Bytes::from_static(b"\n\ndata: [DONE]\n\n"))),
    ];
    let mut stripped = StripUsageChunk::new(body_of(frames));
    let mut seen = Vec::new();
    block_on(async {
        while let Some(frame) = stripped.frame().await {
            seen.push(frame.map(|f| f.into_data().unwrap()));
        }
    });
    assert_eq!(
        seen,
        vec![
            Ok(Bytes::from_static(held.as_bytes())),
            Err("connection reset"),
            Ok(Bytes::from_static(b"\n\ndata: [DONE]\n\n")),
        ],
        "the held event is handed on before the error, and not removed"
    );
    assert_eq!(stripped.removed(), 0);
}

#[test]
fn pending_holds_nothing_back_that_is_decided() {
    struct PendingOnce(bool);
    impl Body for PendingOnce {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(None)
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    let mut stripped = Box::pin(StripUsageChunk::new(PendingOnce(false)));
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(stripped.as_mut().poll_frame(&mut cx).is_pending());
    assert!(matches!(
        stripped.as_mut().poll_frame(&mut cx),
        Poll::Ready(None)
    ));
}

#[test]
fn debug_send_sync_unpin() {
    fn check<T: Send + Sync + Unpin>(_: &T) {}
    let body = StripUsageChunk::new(Full::new(Bytes::new()));
    check(&body);
    let text = format!("{body:?}");
    assert!(
        text.contains("StripUsageChunk") && text.contains("removed: 0"),
        "{text}"
    );
}

// ---- properties ----

/// The events of an SSE body, split the plain way (whole body, line by
/// line): each event's bytes, and its data if it had a `data` line. The last
/// range is what follows the last blank line (an event that never ended).
fn reference_events(body: &[u8]) -> Vec<(Range<usize>, Option<Vec<u8>>)> {
    let mut events = Vec::new();
    let (mut start, mut i) = (0, 0);
    let mut data: Option<Vec<u8>> = None;
    let mut first_line = true;
    while let Some(off) = body[i..].iter().position(|&b| b == b'\r' || b == b'\n') {
        let eol = i + off;
        let mut next = eol + 1;
        if body[eol] == b'\r' && body.get(next) == Some(&b'\n') {
            next += 1;
        }
        let line = &body[i..eol];
        if line.is_empty() {
            events.push((start..next, data.take()));
            start = next;
        } else {
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            if name == b"data" || (first_line && name == b"\xEF\xBB\xBFdata") {
                match &mut data {
                    Some(data) => {
                        data.push(b'\n');
                        data.extend_from_slice(value);
                    }
                    None => data = Some(value.to_vec()),
                }
            }
        }
        first_line = false;
        i = next;
    }
    events.push((start..body.len(), None));
    events
}

/// Whether `data` is a usage-only chunk as serde_json reads it (escapes
/// decoded, a repeated key's last value winning): looser than the strip,
/// which also refuses escaped and repeated top-level keys.
fn loosely_usage_only(data: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(chunk)) => {
            chunk
                .get("choices")
                .and_then(|c| c.as_array())
                .is_some_and(Vec::is_empty)
                && chunk.get("usage").is_some_and(serde_json::Value::is_object)
        }
        _ => false,
    }
}

/// `out` is `body` with some of its (loosely) usage-only events removed,
/// whole, and nothing else changed.
fn only_usage_events_removed(body: &[u8], out: &[u8]) -> Result<(), TestCaseError> {
    let mut at = 0;
    for (range, data) in reference_events(body) {
        let event = &body[range.clone()];
        if out[at..].starts_with(event) {
            at += event.len();
        } else {
            prop_assert!(
                data.as_deref().is_some_and(loosely_usage_only),
                "event {range:?} {:?} changed",
                String::from_utf8_lossy(event)
            );
        }
    }
    prop_assert_eq!(at, out.len(), "bytes added");
    Ok(())
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..24)
}

fn positions(cuts: &[Index], len: usize) -> Vec<usize> {
    cuts.iter().map(|i| i.index(len + 1)).collect()
}

/// Bytes that often make SSE events and JSON that is nearly, or exactly, a
/// usage chunk.
fn tokens() -> impl Strategy<Value = Vec<u8>> {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        "\\",
        ":",
        ",",
        " ",
        "\n",
        "\r",
        "\r\n",
        "\n\n",
        "\r\n\r\n",
        "data:",
        "data: ",
        "event: x\n",
        ": ping\n",
        "id: 1\n",
        "\"choices\"",
        "\"usage\"",
        "\"choices\":[]",
        "\"usage\":{}",
        "\"usage\":null",
        "\"choices\":[{}]",
        "null",
        "1",
        "é",
        "😀",
        "\u{feff}",
        "[DONE]",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n",
        "data: {\"choices\":[],",
        "\"usage\":{\"prompt_tokens\":1}}",
    ];
    prop::collection::vec(
        prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            prop::sample::select(PIECES).prop_map(|p| p.as_bytes().to_vec()),
        ],
        0..200,
    )
    .prop_map(|parts| parts.concat())
}

/// What the strip must do with a generated event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Remove,
    /// A usage chunk near the bound: removed if it is no longer than
    /// [`MAX_HELD_EVENT_BYTES`] (counted through its blank line's CR or LF,
    /// so with the stream's line ends).
    RemoveIfShort,
}

/// One event of a generated chat stream, with `\n` line ends, and what the
/// strip must do with it.
fn event() -> impl Strategy<Value = (String, Fate)> {
    let text = prop::sample::select(
        &[
            "Hi",
            "",
            " \\\"choices\\\":[],\\\"usage\\\":{}",
            "caf\\u00e9 😀",
            "ünï\\n",
            "{\\\"usage\\\":1}",
        ][..],
    );
    let ws = prop::sample::select(&["", " ", "\t", "  "][..]);
    prop_oneof![
        4 => text.prop_map(|t| (format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}}}}],\"usage\":null}}\n\n"
        ), Fate::Keep)),
        1 => (any::<u16>(), ws.clone(), any::<bool>()).prop_map(|(n, ws, usage_first)| {
            let choices = format!("\"choices\"{ws}:{ws}[{ws}]");
            let usage = format!("\"usage\":{ws}{{\"prompt_tokens\":{n},\"completion_tokens\":2}}");
            let (a, b) = if usage_first { (usage, choices) } else { (choices, usage) };
            (format!("data: {{{ws}\"id\":\"c\",{a},{ws}{b}}}{ws}\n\n"), Fate::Remove)
        }),
        1 => Just(("data: {\"choices\":[],\n: comment\ndata: \"usage\":{}}\n\n".to_string(), Fate::Remove)),
        1 => any::<u8>().prop_map(|n| (format!(
            "data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{n}}}}}\n\n"
        ), Fate::Keep)),
        1 => Just((": keep-alive\n\n".to_string(), Fate::Keep)),
        1 => Just(("\n".to_string(), Fate::Keep)),
        1 => Just(("id: 3\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n".to_string(), Fate::Keep)),
        1 => Just(("data: [DONE]\n\n".to_string(), Fate::Keep)),
        1 => (0..3usize).prop_map(|extra| {
            (usage_chunk_of_len(MAX_HELD_EVENT_BYTES - 3 + extra), Fate::RemoveIfShort)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Generated chat streams, any line ends, cut anywhere: the output is
    /// the stream without its usage chunks.
    #[test]
    fn generated_streams_split_anywhere_lose_exactly_their_usage_chunks(
        events in prop::collection::vec(event(), 0..12),
        eol in prop::sample::select(&["\n", "\r\n", "\r"][..]),
        cuts in cuts(),
    ) {
        let with_eol = |s: &str| s.replace('\n', eol);
        let body: String = events.iter().map(|(e, _)| with_eol(e)).collect();
        let kept = |(event, fate): &&(String, Fate)| match fate {
            Fate::Keep => true,
            Fate::Remove => false,
            // The LF of a CRLF blank line is not counted.
            Fate::RemoveIfShort => {
                with_eol(event).len() - usize::from(eol == "\r\n") > MAX_HELD_EVENT_BYTES
            }
        };
        let expected: String = events.iter().filter(kept).map(|(e, _)| with_eol(e)).collect();
        let out = strip(body.as_bytes(), &positions(&cuts, body.len()));
        // Compared as lengths first: a failure does not print 16 KiB events.
        prop_assert_eq!(out.len(), expected.len());
        prop_assert!(out == expected.as_bytes());
    }

    /// Arbitrary bytes, cut anywhere: no panic, the same output as uncut,
    /// only whole usage-only events removed, and nothing changed when there
    /// are none.
    #[test]
    fn arbitrary_bytes_split_anywhere(body in tokens(), cuts in cuts()) {
        let whole = strip(&body, &[]);
        let split = strip(&body, &positions(&cuts, body.len()));
        prop_assert_eq!(&whole, &split);
        only_usage_events_removed(&body, &whole)?;
        let any_usage_only = reference_events(&body)
            .iter()
            .any(|(_, data)| data.as_deref().is_some_and(loosely_usage_only));
        if !any_usage_only {
            prop_assert_eq!(whole, body);
        }
    }

    /// Uniformly random bytes too.
    #[test]
    fn random_bytes_pass_unchanged(
        body in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in cuts(),
    ) {
        let split = strip(&body, &positions(&cuts, body.len()));
        prop_assert_eq!(split, body);
    }
}
