//! A 100 MB body passes through `UsageBody` in bounded memory.
//!
//! The body is generated as it is read, a fresh allocation per chunk, and a
//! counting allocator records the most memory the reading thread held at
//! once: a meter that kept the body (or any part that grows with it) would
//! show a peak near 100 MB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::executor::block_on;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use llm_sluice::meter::{BodyEnd, BodyKind, UsageBody, MAX_USAGE_BYTES};
use llm_sluice::Usage;

/// Counts the bytes each thread holds, so tests running in parallel do not
/// disturb each other's figures.
struct PerThread;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every call is passed on to `System` unchanged; the counting
// touches only const-initialised thread-locals without destructors, which
// never allocate.
unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: PerThread = PerThread;

/// Runs `f` and returns its result with the most bytes this thread held
/// at once above what it held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

const MB: usize = 1 << 20;
/// An odd chunk size, so chunk boundaries wander through the pattern.
const CHUNK: usize = 16 * 1024 - 3;

/// A body of `head`, `piece` repeated `repeats` times, and `tail`, made a
/// chunk at a time as it is polled.
struct Generated {
    head: Option<Bytes>,
    piece: &'static [u8],
    /// Bytes of the repeated middle still to make.
    left: usize,
    /// Where in `piece` the next chunk starts.
    offset: usize,
    tail: Option<Bytes>,
}

impl Generated {
    fn new(head: &'static str, piece: &'static str, repeats: usize, tail: &'static str) -> Self {
        Generated {
            head: Some(Bytes::from_static(head.as_bytes())),
            piece: piece.as_bytes(),
            left: piece.len() * repeats,
            offset: 0,
            tail: Some(Bytes::from_static(tail.as_bytes())),
        }
    }

    fn len(&self) -> usize {
        self.head.as_ref().map_or(0, Bytes::len)
            + self.left
            + self.tail.as_ref().map_or(0, Bytes::len)
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if self.left > 0 {
            let n = self.left.min(CHUNK);
            let mut chunk = Vec::with_capacity(n);
            while chunk.len() < n {
                let from = self.offset;
                let take = (self.piece.len() - from).min(n - chunk.len());
                chunk.extend_from_slice(&self.piece[from..from + take]);
                self.offset = (from + take) % self.piece.len();
            }
            self.left -= n;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))));
        }
        Poll::Ready(self.tail.take().map(|tail| Ok(Frame::data(tail))))
    }
}

/// Streams `body` through `UsageBody` as a caller would, dropping each
/// frame; returns what the callback got, the bytes read, and the peak.
fn stream_through(body: Generated, kind: BodyKind) -> (BodyEnd, usize, isize) {
    let total = body.len();
    let ((end, read), peak) = peak_during(|| {
        let mut end = None;
        let mut metered = UsageBody::new(body, kind, |e| end = Some(e));
        let mut read = 0;
        block_on(async {
            while let Some(frame) = metered.frame().await {
                let data = frame.unwrap().into_data().unwrap_or_default();
                read += data.len();
                assert!(metered.scanner().retained_capacity() <= MAX_USAGE_BYTES);
            }
        });
        drop(metered);
        (end.expect("the callback ran"), read)
    });
    assert_eq!(read, total);
    eprintln!("{kind:?}: {read} bytes read, peak {peak} bytes held");
    (end, read, peak)
}

const JSON_HEAD: &str = r#"{"id":"chatcmpl-big","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":""#;
/// Valid inside a JSON string; cut anywhere by chunk boundaries (inside
/// escapes, inside multi-byte characters).
const JSON_PIECE: &str =
    r#"Lorem ipsum \"usage\": {\"prompt_tokens\": 1}, caf\u00e9 \\ 😀 dolor sit amet; "#;
const JSON_TAIL: &str = r#""},"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":26214400,"total_tokens":26214412}}"#;

const SSE_HEAD: &str = "data: {\"id\":\"chatcmpl-big\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const SSE_PIECE: &str = "data: {\"id\":\"chatcmpl-big\",\"object\":\"chat.completion.chunk\",\"created\":1754400000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n: keep-alive\n\n";
const SSE_TAIL: &str = "data: {\"id\":\"chatcmpl-big\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":400000,\"total_tokens\":400012}}\n\ndata: [DONE]\n\n";

/// What reading needs, nothing that grows with the body: two chunks in
/// flight, the scanner's capture buffer, some slack (the executor, the
/// callback). Measured: one chunk plus a few bytes.
const PEAK_LIMIT: isize = (2 * CHUNK + MAX_USAGE_BYTES + 16 * 1024) as isize;

#[test]
fn json_body_of_100_mb_in_bounded_memory() {
    let repeats = 100 * MB / JSON_PIECE.len();
    let body = Generated::new(JSON_HEAD, JSON_PIECE, repeats, JSON_TAIL);
    let (end, read, peak) = stream_through(body, BodyKind::Json);
    assert!(read >= 100 * MB - JSON_PIECE.len());
    assert!(end.is_complete());
    assert_eq!(end.usage(), Some(Usage::new(12, 26_214_400)));
    assert_eq!(
        end.output().text_bytes,
        (JSON_PIECE.len() * repeats) as u64,
        "the whole content string is generated text"
    );
    assert!(peak < PEAK_LIMIT, "peak {peak} bytes while reading {read}");
}

#[test]
fn event_stream_of_100_mb_in_bounded_memory() {
    let repeats = 100 * MB / SSE_PIECE.len();
    let body = Generated::new(SSE_HEAD, SSE_PIECE, repeats, SSE_TAIL);
    let (end, read, peak) = stream_through(body, BodyKind::EventStream);
    assert!(read >= 100 * MB - SSE_PIECE.len());
    assert!(end.is_complete());
    assert_eq!(end.usage(), Some(Usage::new(12, 400_000)));
    assert_eq!(end.output().text_events, repeats as u64);
    assert_eq!(end.output().text_bytes, 6 * repeats as u64);
    assert!(peak < PEAK_LIMIT, "peak {peak} bytes while reading {read}");
}

#[test]
fn the_counting_allocator_sees_a_buffered_body() {
    // The check above would catch a meter that kept the body: collecting 8 MB
    // shows a peak of at least 8 MB.
    let repeats = 8 * MB / JSON_PIECE.len();
    let ((), peak) = peak_during(|| {
        let body = Generated::new(JSON_HEAD, JSON_PIECE, repeats, JSON_TAIL);
        let all = block_on(body.collect()).unwrap().to_bytes();
        assert!(all.len() >= 8 * MB - JSON_PIECE.len());
    });
    assert!(peak >= (8 * MB - JSON_PIECE.len()) as isize, "peak {peak}");
}
