//! CPU per MB of reading the provider's usage from response bodies.
//!
//! One group per body, so the ratios hold on a noisy machine:
//! - `untouched`: the body's frames drained as a caller would, no meter;
//! - `metered`: the same frames through `UsageBody`;
//! - `scanner`: `UsageScanner::feed` alone on the same chunks;
//! - for the stream, `stripped`: the frames through `StripUsageChunk`
//!   (its usage chunk removed), and `metered_stripped`: through both, the
//!   meter inside (the intended order).
//!
//! Bodies of 1 MiB in 16 KiB `Bytes` chunks: a non-streamed chat completion
//! (one long content string with escapes and multi-byte characters), and an
//! OpenAI chat stream of typical chunks (about 300 bytes each, one token of
//! content) ending in its usage chunk.

use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http_body::{Body, Frame};
use llm_sluice::meter::{BodyEnd, BodyKind, StripUsageChunk, UsageBody, UsageScanner};

const SIZE: usize = 1 << 20;
const CHUNK: usize = 16 * 1024;

/// A body that hands out prepared chunks (cloning a `Bytes` is a reference
/// count, the same for both sides).
struct Chunks(std::vec::IntoIter<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.len() == 0
    }
}

/// Polls `body` to its end, as a caller reading it would.
fn drain<B: Body>(body: B) -> usize {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = 0;
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.ok());
        frames += 1;
    }
    frames
}

/// The bytes `body` hands on.
fn read<B: Body<Data = Bytes>>(body: B) -> usize {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut len = 0;
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        if let Some(data) = frame.ok().and_then(|f| f.into_data().ok()) {
            len += data.len();
        }
    }
    len
}

fn chunked(body: Vec<u8>) -> Vec<Bytes> {
    let body = Bytes::from(body);
    (0..body.len())
        .step_by(CHUNK)
        .map(|at| body.slice(at..(at + CHUNK).min(body.len())))
        .collect()
}

fn json_body() -> Vec<u8> {
    let head = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1754400000,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":""#;
    let piece = r#"The quick brown fox \"jumps\" over the lazy dog; caf\u00e9 \\ 😀 ünïcödé, and then some more ordinary words.\n"#.as_bytes();
    let tail = br#""},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0}}}"#;
    let mut body = head.to_vec();
    while body.len() + piece.len() + tail.len() <= SIZE {
        body.extend_from_slice(piece);
    }
    body.extend_from_slice(tail);
    body
}

/// The stream's usage chunk and `[DONE]`.
const SSE_TAIL: &[u8] = b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1754400000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[],\"usage\":{\"prompt_tokens\":25,\"completion_tokens\":3500,\"total_tokens\":3525,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}},\"obfuscation\":\"v8\"}\n\ndata: [DONE]\n\n";

fn sse_body() -> Vec<u8> {
    let words = [
        "Hello", " there", ",", " how", " can", " I", " help", " you", " today", "?",
    ];
    let tail = SSE_TAIL;
    let mut body = Vec::with_capacity(SIZE);
    let mut i = 0;
    loop {
        let chunk = format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1754400000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null,\"obfuscation\":\"Qz0\"}}\n\n",
            words[i % words.len()]
        );
        if body.len() + chunk.len() + tail.len() > SIZE {
            break;
        }
        body.extend_from_slice(chunk.as_bytes());
        i += 1;
    }
    body.extend_from_slice(tail);
    body
}

fn bench(c: &mut Criterion) {
    for (name, kind, body) in [
        ("json_1MiB", BodyKind::Json, json_body()),
        ("sse_openai_1MiB", BodyKind::EventStream, sse_body()),
    ] {
        let len = body.len() as u64;
        let parts = chunked(body);
        // The meter reads what it should, or the figures mean nothing.
        let mut check = UsageScanner::new(kind);
        for part in &parts {
            check.feed(part);
        }
        assert!(check.usage().is_some(), "{name}: usage read");

        let mut group = c.benchmark_group(format!("meter/{name}"));
        group.throughput(Throughput::Bytes(len));
        group.bench_function(BenchmarkId::from_parameter("untouched"), |b| {
            b.iter(|| drain(Chunks(parts.clone().into_iter())))
        });
        group.bench_function(BenchmarkId::from_parameter("metered"), |b| {
            b.iter(|| {
                let mut usage = None;
                let frames = drain(UsageBody::new(
                    Chunks(parts.clone().into_iter()),
                    kind,
                    |end: BodyEnd| usage = end.usage(),
                ));
                black_box((frames, usage))
            })
        });
        group.bench_function(BenchmarkId::from_parameter("scanner"), |b| {
            b.iter(|| {
                let mut scanner = UsageScanner::new(kind);
                for part in &parts {
                    scanner.feed(black_box(part));
                }
                black_box(scanner.usage())
            })
        });
        if kind == BodyKind::EventStream {
            // The strip removes the usage chunk, and only it.
            let usage_chunk = SSE_TAIL.len() - b"data: [DONE]\n\n".len();
            assert_eq!(
                read(StripUsageChunk::new(Chunks(parts.clone().into_iter()))),
                len as usize - usage_chunk,
                "{name}: usage chunk removed"
            );
            group.bench_function(BenchmarkId::from_parameter("stripped"), |b| {
                b.iter(|| drain(StripUsageChunk::new(Chunks(parts.clone().into_iter()))))
            });
            group.bench_function(BenchmarkId::from_parameter("metered_stripped"), |b| {
                b.iter(|| {
                    let mut usage = None;
                    let frames = drain(StripUsageChunk::new(UsageBody::new(
                        Chunks(parts.clone().into_iter()),
                        kind,
                        |end: BodyEnd| usage = end.usage(),
                    )));
                    black_box((frames, usage))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
