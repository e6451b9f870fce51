//! `UsageBody`: frames pass through untouched, the callback fires once.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::executor::block_on;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use llm_sluice::meter::{BodyEnd, BodyKind, CutOffReason, UsageBody};
use llm_sluice::Usage;

use crate::case;

type Ends = Arc<Mutex<Vec<BodyEnd>>>;

fn recorder() -> (Ends, impl FnOnce(BodyEnd) + Send + 'static) {
    let ends = Ends::default();
    let sink = ends.clone();
    (ends, move |end| sink.lock().unwrap().push(end))
}

fn ends(ends: &Ends) -> Vec<BodyEnd> {
    ends.lock().unwrap().clone()
}

type Frames = Vec<Result<Frame<Bytes>, &'static str>>;
type Chunks =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, &'static str>>>>;

/// A body that yields `parts` then, if `fail`, an error.
fn chunks(parts: Vec<Bytes>, fail: bool) -> Chunks {
    let mut frames: Frames = parts.into_iter().map(|b| Ok(Frame::data(b))).collect();
    if fail {
        frames.push(Err("connection reset"));
    }
    StreamBody::new(futures::stream::iter(frames))
}

fn split(body: &'static [u8], size: usize) -> Vec<Bytes> {
    Bytes::from_static(body)
        .chunks(size)
        .map(Bytes::copy_from_slice)
        .collect()
}

#[test]
fn frames_pass_through_unchanged_without_copy() {
    let case = case("openai_chat_stream.sse");
    let parts = split(case.body, 97);
    let pointers: Vec<*const u8> = parts.iter().map(|b| b.as_ptr()).collect();
    let (ended, on_end) = recorder();
    let mut body = UsageBody::new(chunks(parts.clone(), false), case.kind, on_end);
    let mut seen = Vec::new();
    block_on(async {
        while let Some(frame) = body.frame().await {
            seen.push(frame.unwrap().into_data().unwrap());
        }
    });
    assert_eq!(seen, parts, "the same bytes, in the same frames");
    let seen_pointers: Vec<*const u8> = seen.iter().map(|b| b.as_ptr()).collect();
    assert_eq!(seen_pointers, pointers, "the same buffers: nothing copied");
    assert_eq!(
        ends(&ended),
        vec![BodyEnd::Complete {
            usage: case.usage,
            output: body.scanner().output_seen(),
        }]
    );
    assert_eq!(body.scanner().bytes_seen(), case.body.len() as u64);
}

#[test]
fn complete_fires_once_however_often_polled_or_dropped() {
    let case = case("anthropic_stream.sse");
    let (ended, on_end) = recorder();
    let mut body = UsageBody::new(chunks(split(case.body, 10), false), case.kind, on_end);
    block_on(async {
        while body.frame().await.is_some() {}
        assert!(body.frame().await.is_none());
        assert!(body.frame().await.is_none());
    });
    assert!(!body.is_metering());
    drop(body);
    let ends = ends(&ended);
    assert_eq!(ends.len(), 1);
    assert!(ends[0].is_complete());
    assert_eq!(ends[0].usage(), case.usage);
}

#[test]
fn end_of_stream_flag_completes_without_another_poll() {
    // `Full` says it is at its end right after its one frame: a reader that
    // stops there still sees the callback.
    let case = case("responses.json");
    let (ended, on_end) = recorder();
    let mut body = UsageBody::new(Full::new(Bytes::from_static(case.body)), case.kind, on_end);
    let frame = block_on(body.frame()).unwrap().unwrap();
    assert!(frame.is_data());
    assert!(body.is_end_stream());
    assert_eq!(ends(&ended).len(), 1);
    assert_eq!(ends(&ended)[0].usage(), case.usage);
    drop(body);
    assert_eq!(ends(&ended).len(), 1);
}

#[test]
fn dropped_midway_is_cut_off_with_the_output_seen() {
    let case = case("openai_chat_stream.sse");
    let parts = split(case.body, 64);
    let (ended, on_end) = recorder();
    let mut body = UsageBody::new(chunks(parts, false), case.kind, on_end);
    block_on(async {
        // About half the stream: past some deltas, before the usage chunk.
        for _ in 0..20 {
            body.frame().await.unwrap().unwrap();
        }
    });
    assert!(ends(&ended).is_empty(), "nothing reported while streaming");
    drop(body);
    let ends = ends(&ended);
    assert_eq!(ends.len(), 1);
    match ends[0] {
        BodyEnd::CutOff {
            usage,
            output,
            reason,
        } => {
            assert_eq!(usage, None);
            assert_eq!(reason, CutOffReason::Dropped);
            assert!(output.text_bytes > 0 && output.text_bytes < case.text.0);
            assert!(output.text_events >= 1);
        }
        other => panic!("expected a cut-off, got {other:?}"),
    }
}

#[test]
fn dropped_before_the_first_poll_is_cut_off() {
    let (ended, on_end) = recorder();
    let body = UsageBody::new(chunks(vec![], false), BodyKind::Json, on_end);
    assert!(body.is_metering());
    drop(body);
    assert_eq!(
        ends(&ended),
        vec![BodyEnd::CutOff {
            usage: None,
            output: Default::default(),
            reason: CutOffReason::Dropped,
        }]
    );
}

#[test]
fn an_error_is_cut_off_once() {
    let case = case("anthropic_stream.sse");
    // Everything up to the last message_delta, then a reset.
    let at = last(case.body, b"event: message_delta") + 100;
    let parts = split(&case.body[..at], 50);
    let (ended, on_end) = recorder();
    let mut body = UsageBody::new(chunks(parts, true), case.kind, on_end);
    let error = block_on(async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the body should fail"),
            }
        }
    });
    assert_eq!(error, "connection reset");
    drop(body);
    let ends = ends(&ended);
    assert_eq!(ends.len(), 1);
    match ends[0] {
        BodyEnd::CutOff { usage, reason, .. } => {
            assert_eq!(reason, CutOffReason::Error);
            // message_start gave the input, the first message_delta 60 out.
            assert_eq!(usage, Some(Usage::new(1496, 60).with_cached_input(1024)));
        }
        other => panic!("expected a cut-off, got {other:?}"),
    }
}

#[test]
fn anthropic_cut_after_message_start_keeps_the_partial_usage() {
    let case = case("anthropic_stream.sse");
    let at = first(case.body, b"event: content_block_stop");
    let (ended, on_end) = recorder();
    let mut body = UsageBody::new(
        chunks(vec![Bytes::from_static(&case.body[..at])], false),
        case.kind,
        on_end,
    );
    block_on(body.frame()).unwrap().unwrap();
    drop(body);
    let end = ends(&ended)[0];
    assert!(!end.is_complete());
    // The input is known; the output is what message_start said (2), well
    // below the text seen: the caller takes the larger.
    assert_eq!(
        end.usage(),
        Some(Usage::new(1496, 2).with_cached_input(1024))
    );
    assert_eq!(end.output().text_bytes, 53);
    assert_eq!(end.output().estimated_tokens(), 14);
}

#[test]
fn size_hint_and_end_of_stream_are_the_inner_bodys() {
    let (_ended, on_end) = recorder();
    let body = UsageBody::new(Full::new(Bytes::from_static(b"{}")), BodyKind::Json, on_end);
    assert_eq!(body.size_hint().exact(), Some(2));
    assert!(!body.is_end_stream());
    let (_ended, on_end) = recorder();
    let empty = UsageBody::new(
        http_body_util::Empty::<Bytes>::new(),
        BodyKind::Json,
        on_end,
    );
    assert!(empty.is_end_stream());
    assert_eq!(empty.size_hint().exact(), Some(0));
}

#[test]
fn trailers_pass_through() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(
            br#"{"usage":{"prompt_tokens":1}}"#,
        ))),
        Ok(Frame::trailers(trailers.clone())),
    ];
    let (ended, on_end) = recorder();
    let body = UsageBody::new(
        StreamBody::new(futures::stream::iter(frames)),
        BodyKind::Json,
        on_end,
    );
    let collected = block_on(body.collect()).unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(ends(&ended)[0].usage(), Some(Usage::new(1, 0)));
}

#[test]
fn wrap_response_reads_the_content_type() {
    let case = case("responses_stream.sse");
    let response = http::Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .body(chunks(split(case.body, 1000), false))
        .unwrap();
    let (ended, on_end) = recorder();
    let response = UsageBody::wrap_response(response, on_end);
    assert_eq!(response.body().scanner().kind(), BodyKind::EventStream);
    block_on(response.into_body().collect()).unwrap();
    assert_eq!(ends(&ended)[0].usage(), case.usage);
}

#[test]
fn a_buffer_in_pieces_is_read() {
    // `Chain` shows both its pieces at once.
    let case = case("openai_chat.json");
    let (head, tail) = case.body.split_at(700);
    let frames: Vec<Result<Frame<_>, Infallible>> = vec![Ok(Frame::data(
        Bytes::from_static(head).chain(Bytes::from_static(tail)),
    ))];
    let (ended, on_end) = recorder();
    let body = UsageBody::new(
        StreamBody::new(futures::stream::iter(frames)),
        case.kind,
        on_end,
    );
    block_on(body.collect()).unwrap();
    assert_eq!(ends(&ended)[0].usage(), case.usage);
}

/// A buffer in two pieces that shows one at a time (the default
/// `chunks_vectored`).
struct Pieces(Bytes, Bytes);

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.0.len() + self.1.len()
    }
    fn chunk(&self) -> &[u8] {
        if self.0.is_empty() {
            &self.1
        } else {
            &self.0
        }
    }
    fn advance(&mut self, mut cnt: usize) {
        let first = cnt.min(self.0.len());
        self.0.advance(first);
        cnt -= first;
        self.1.advance(cnt);
    }
}

#[test]
fn a_buffer_that_hides_pieces_stops_the_reading_without_failing() {
    let case = case("openai_chat.json");
    let (head, tail) = case.body.split_at(700);
    let frames: Vec<Result<Frame<Pieces>, Infallible>> = vec![Ok(Frame::data(Pieces(
        Bytes::from_static(head),
        Bytes::from_static(tail),
    )))];
    let (ended, on_end) = recorder();
    let mut body = UsageBody::new(
        StreamBody::new(futures::stream::iter(frames)),
        case.kind,
        on_end,
    );
    let frame = block_on(body.frame()).unwrap().unwrap();
    assert_eq!(
        frame.into_data().ok().map(|d| d.remaining()),
        Some(case.body.len())
    );
    block_on(body.frame());
    assert_eq!(body.scanner().bytes_seen(), case.body.len() as u64);
    assert_eq!(
        ends(&ended)[0].usage(),
        None,
        "the usage was in the hidden piece"
    );
}

/// A body that is pending until woken, to check a poll that returns
/// `Pending` reports nothing.
struct PendingOnce(bool);

impl Body for PendingOnce {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 {
            Poll::Ready(None)
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[test]
fn pending_reports_nothing() {
    let (ended, on_end) = recorder();
    let mut body = Box::pin(UsageBody::new(PendingOnce(false), BodyKind::Json, on_end));
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(body.as_mut().poll_frame(&mut cx).is_pending());
    assert!(ends(&ended).is_empty());
    assert!(matches!(
        body.as_mut().poll_frame(&mut cx),
        Poll::Ready(None)
    ));
    assert_eq!(
        ends(&ended),
        vec![BodyEnd::Complete {
            usage: None,
            output: Default::default()
        }]
    );
}

#[test]
fn debug_shows_the_state() {
    let (_ended, on_end) = recorder();
    let body = UsageBody::new(Full::new(Bytes::new()), BodyKind::Json, on_end);
    let text = format!("{body:?}");
    assert!(
        text.contains("UsageBody") && text.contains("metering: true"),
        "{text}"
    );
}

fn first(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in fixture")
}

fn last(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .rposition(|w| w == needle)
        .expect("needle in fixture")
}

#[test]
fn usage_body_is_send_sync_and_unpin_when_its_parts_are() {
    fn check<T: Send + Sync + Unpin>(_: &T) {}
    let (_ended, on_end) = recorder();
    let body = UsageBody::new(Full::new(Bytes::new()), BodyKind::Json, on_end);
    check(&body);
}
