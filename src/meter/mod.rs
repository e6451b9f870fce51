//! What the provider counted, read from response bodies.
//!
//! Providers report the tokens they counted in the response body: in a JSON
//! body's `usage`, or in one or two events of a stream. [`UsageScanner`]
//! reads those reports from a body fed to it in pieces, in bounded memory;
//! [`UsageBody`] wraps an [`http_body::Body`], hands every frame on
//! unchanged, feeds the scanner, and says once, when the body ends, fails or
//! is dropped, what it read ([`BodyEnd`]). [`StripUsageChunk`] removes
//! from a chat stream the usage chunk a proxy asked for on the caller's
//! behalf (see [below](#removing-a-usage-chunk-the-caller-did-not-ask-for)).
//! Available with the `http` feature.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use llm_sluice::meter::{BodyEnd, UsageBody};
//! use llm_sluice::Usage;
//!
//! let json = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,
//!     "message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],
//!     "usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}"#;
//! let response = http::Response::builder()
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(json)))
//!     .unwrap();
//!
//! let (tx, rx) = std::sync::mpsc::channel();
//! let response = UsageBody::wrap_response(response, move |end: BodyEnd| {
//!     let _ = tx.send(end);
//! });
//! // The caller reads the body as it would have; the bytes are unchanged.
//! let read = futures::executor::block_on(response.into_body().collect())
//!     .unwrap()
//!     .to_bytes();
//! assert_eq!(read, json.as_bytes());
//!
//! let end = rx.recv().unwrap();
//! assert!(end.is_complete());
//! assert_eq!(end.usage(), Some(Usage::new(19, 9)));
//! ```
//!
//! # What is read from where
//!
//! The body's kind comes from its headers ([`BodyKind::from_headers`]):
//! `content-type: text/event-stream` is a stream of server-sent events,
//! anything else one JSON document. A body with a `content-encoding` (gzip,
//! br, ...) is not read, its bytes being compressed: it reports no usage.
//! Wrap the body after it is decoded to read it.
//!
//! | format | where the usage is |
//! |---|---|
//! | OpenAI chat, JSON | `usage`: `prompt_tokens`, `completion_tokens`, `total_tokens`, `prompt_tokens_details.cached_tokens` |
//! | Anthropic messages, JSON | `usage`: `input_tokens`, `output_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens` |
//! | Responses API, JSON | `usage`: `input_tokens`, `output_tokens`, `total_tokens`, `input_tokens_details.cached_tokens` |
//! | OpenAI chat, stream | the `usage` of the last chunk (`"choices": []`), sent only when the request set `stream_options.include_usage` |
//! | Anthropic messages, stream | `message.usage` of `message_start` (input and cache counts), then `usage` of each `message_delta` (cumulative output; some servers repeat the input counts) |
//! | Responses API, stream | `response.usage` of `response.completed` (or `response.incomplete` / `response.failed`) |
//!
//! Only those places are read: `usage` must be a member of the top-level
//! object (or, in an event, of its top-level `message` or `response`
//! object). A `"usage"` inside generated text, or nested deeper (a tool's
//! arguments, metadata), is never taken. Event names (`event:`) are not
//! needed, since each format's JSON says where its usage is; keys are
//! compared as written, so a key spelled with escapes (`"us\u0061ge"`) is not
//! recognised.
//!
//! When several reports arrive (an Anthropic stream; servers that send
//! cumulative usage in every chunk) they are merged field by field, the
//! latest value of each field winning.
//!
//! # How the fields become a [`Usage`](crate::Usage)
//!
//! - `prompt_tokens` is `prompt_tokens`; failing that, `input_tokens +
//!   cache_read_input_tokens + cache_creation_input_tokens`. Anthropic's
//!   `input_tokens` leaves out both cache counts, which the provider still
//!   counted, so they are added back; the Responses API's `input_tokens`
//!   already includes its cached tokens and it sends no `cache_*` fields.
//! - `completion_tokens` is `completion_tokens`, failing that
//!   `output_tokens` (reasoning tokens are part of both).
//! - `cached_input_tokens` is `prompt_tokens_details.cached_tokens`, failing
//!   that `cache_read_input_tokens`, failing that
//!   `input_tokens_details.cached_tokens`, and never more than the prompt.
//!   Tokens written to Anthropic's cache (`cache_creation_input_tokens`) are
//!   not cached input: they are counted like the rest of the prompt.
//! - `total_tokens` is the reported `total_tokens`, or `prompt + completion`
//!   if that is larger (Anthropic reports no total).
//!
//! A report with none of the token counts, `"usage": null`, and no report at
//! all, are all `None`.
//!
//! # Bounds
//!
//! Memory does not grow with the body. A JSON body is tokenized as it
//! streams, never buffered: the tokenizer tracks the nesting depth, strings
//! and escapes, the kinds of the outermost [`MAX_TRACKED_DEPTH`] containers
//! (one bit each) and the key being read, and copies out only the bytes of a
//! `usage` object, at most [`MAX_USAGE_BYTES`]; a larger one is given up
//! (its bytes are dropped as they come) and the body reads as if it had none.
//! Stream events are not buffered either: each `data` line streams into the
//! same tokenizer, reset when its event ends, so an event of any length is
//! read. Per body, the scanner holds a few hundred bytes inline and at most
//! [`MAX_USAGE_BYTES`] of heap ([`UsageScanner::retained_capacity`]).
//!
//! Chunk boundaries may fall anywhere, inside a UTF-8 character, an escape, a
//! key or a `\r\n`: the result does not depend on them.
//!
//! # Hostile and malformed bodies
//!
//! Nothing here fails or panics. A body that is not what its kind says, or a
//! `usage` that is not a JSON object, reads as no usage (`None`). Only what
//! is taken is validated (a key counts when its colon follows, a `usage`
//! object must parse with serde_json); the rest of the body is tokenized,
//! not checked, so a body malformed elsewhere, or cut short after its usage,
//! still yields the usage in it. A count
//! that is not a JSON integer in `0..=u64::MAX` (negative, fractional, a
//! string, `null`, larger than `u64::MAX`) is ignored as if absent, and sums
//! of counts saturate at `u64::MAX`. Nesting deeper than
//! [`MAX_TRACKED_DEPTH`] is tokenized but its keys are not read (usage is
//! never that deep). If a body's `Data` is a buffer in more pieces than
//! [`UsageBody`] can see at once (not `Bytes`, which is one piece), the
//! scanner stops reading at that frame and keeps what it had.
//!
//! # A body cut off before its usage
//!
//! A stream that ends early (the caller went away, a timeout, a reset) was
//! billed for what the provider generated before it noticed, and its usage
//! report, which comes last, is lost. [`BodyEnd::CutOff`] says so and carries
//! what was read before the cut: the usage reported so far (usually `None`)
//! and the generated text seen ([`OutputSeen`]: bytes of text and events
//! carrying text, with [`OutputSeen::estimated_tokens`]). A caller that
//! reserved an estimate should never refund on a cut-off body: it keeps the
//! estimate, or the input estimate plus the output seen so far if that is
//! larger. The same information comes with [`BodyEnd::Complete`] for a
//! stream that carried no usage (requested without `include_usage`).
//!
//! # Removing a usage chunk the caller did not ask for
//!
//! An OpenAI-compatible chat stream carries usage only if the request set
//! `stream_options.include_usage: true`. A proxy that adds it to a caller's
//! streamed request (to read the usage) must still hand the caller what it
//! would have received without the proxy: [`StripUsageChunk`] removes the
//! extra chunk, `data: {...,"choices":[],"usage":{...}}`, sent just before
//! `data: [DONE]`. Wrap only responses to requests whose `include_usage`
//! the proxy added: a caller that asked for the usage keeps it.
//!
//! Put [`UsageBody`] inside, so the meter reads the unchanged stream, and
//! the strip outside:
//!
//! ```
//! # use bytes::Bytes;
//! # use http_body_util::{BodyExt, Full};
//! use llm_sluice::meter::{BodyEnd, StripUsageChunk, UsageBody};
//! use llm_sluice::Usage;
//!
//! let content = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
//! let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}\n\n";
//! let done = "data: [DONE]\n\n";
//! let upstream = http::Response::builder()
//!     .header("content-type", "text/event-stream")
//!     .body(Full::new(Bytes::from(format!("{content}{usage}{done}"))))
//!     .unwrap();
//!
//! let (tx, rx) = std::sync::mpsc::channel();
//! let metered = UsageBody::wrap_response(upstream, move |end: BodyEnd| {
//!     let _ = tx.send(end.usage());
//! });
//! let response = StripUsageChunk::wrap_response(metered);
//!
//! let read = futures::executor::block_on(response.into_body().collect())
//!     .unwrap()
//!     .to_bytes();
//! assert_eq!(read, format!("{content}{done}"), "what the caller would have had");
//! assert_eq!(rx.recv().unwrap(), Some(Usage::new(9, 1)), "what the provider counted");
//! ```
//!
//! The rules:
//!
//! - **What goes.** An event whose data is one JSON object (serde_json must
//!   accept it) whose top-level keys are written without escapes, with
//!   `choices` exactly once, an empty array, and `usage` exactly once, a JSON
//!   object (`{}` included; its fields are not read). Other members (`id`,
//!   `model`, ...) and the event's name are not looked at: chat chunks have
//!   none. The whole event goes, from its first line through the blank line
//!   that ends it (the LF of a CRLF included), with any `id:` line or
//!   comment of its own.
//! - **Everything else passes byte for byte**: comments and keep-alives,
//!   `event:`, `id:` and `retry:` lines, line endings (LF, CRLF, CR), blank
//!   lines, `data: [DONE]`, events whose text merely contains
//!   `"choices":[]` or `usage` (in a string, or nested below the top
//!   level), `"usage": null`, Anthropic and Responses usage events, and
//!   anything malformed. A chunk with both choices and a usage is content:
//!   some servers put the usage on the last content chunk rather than a
//!   chunk of its own, and that chunk is kept, **its `usage` left in
//!   place**. Nulling the field would mean rewriting the caller's content
//!   bytes (and re-serialising JSON whose exact form the caller may rely
//!   on), while a chunk type with an optional `usage` (the official SDKs'
//!   have one) reads it without harm; so the bytes are left alone.
//! - **Unfinished events are not removed.** An event still open when the
//!   stream ends, fails or reaches its trailers is handed on as it is, before
//!   the error or trailers.
//! - **Only readable event streams.** [`StripUsageChunk::wrap_response`]
//!   strips a body whose `content-type` is `text/event-stream` and that has
//!   no `content-encoding` (compressed bytes cannot be read as they pass:
//!   they are handed on unchanged, chunk and all); it removes the
//!   `content-length` of a stripped body, which may shrink. Any other body
//!   passes through untouched. [`StripUsageChunk::new`] strips a body you
//!   know is an event stream.
//! - **Held back only while undecided.** An event's bytes are held only while
//!   it could still be the usage chunk, and never past its blank line. A
//!   frame is read whole in one poll, and what it decides is handed on at
//!   once; an event still open at the frame's end is held only if its data
//!   so far could be the chunk. A content chunk is ruled out as soon as its
//!   `"choices":[` is followed by anything but `]` (a couple of hundred
//!   bytes into a typical chunk), any other event as soon as its data cannot
//!   match (`[DONE]` at its first byte, `"usage":null`, an object that
//!   closes without both keys); in a later frame, an event still held is
//!   handed on the moment its data rules it out. An SSE client acts on an
//!   event only at its blank line, so holding part of an event until then
//!   delays no event the caller sees.
//! - **Bounded.** An event longer than [`MAX_HELD_EVENT_BYTES`] (16 KiB,
//!   counted from its first byte through its blank line's CR or LF) is never
//!   removed: once it is known to be longer it is handed on as it comes. A
//!   body holds at most that much of the stream (a usage chunk is a few
//!   hundred bytes).
//! - **Split anywhere.** Which events go depends only on the bytes, not on
//!   how they were cut into frames (inside a UTF-8 character, a `\r\n`, a
//!   key). The output frames may be cut differently from the input's;
//!   concatenated, they are the input minus the removed events.
//! - **No copy where none is needed.** `Bytes` frames are handed on as
//!   slices of themselves; only an undecided event that spans frames is
//!   copied aside until it is decided.
//!
//! # Cancel safety
//!
//! [`UsageBody`] runs its callback exactly once: when the body ends, errors,
//! or is dropped, whichever comes first (a drop before the first poll
//! included). Dropping it at any point is safe and reports
//! [`CutOffReason::Dropped`] unless the end was already reported.
//! [`UsageScanner`] is plain data with no waiting. [`StripUsageChunk`]
//! does not wait either: dropping it drops what it holds (at most one
//! event's start) with the inner body.

#[cfg(feature = "http")]
mod body;
mod end;
#[cfg(feature = "http")]
mod fields;
#[cfg(feature = "http")]
mod json;
mod response;
#[cfg(feature = "http")]
mod scanner;
#[cfg(feature = "http")]
mod sse;
#[cfg(feature = "http")]
mod strip;

#[cfg(feature = "http")]
pub use body::UsageBody;
pub use end::{BodyEnd, CutOffReason, OnBodyEnd, OutputSeen};
pub use response::MeterResponse;
#[cfg(feature = "http")]
pub use scanner::{BodyKind, UsageScanner};
#[cfg(feature = "http")]
pub use strip::StripUsageChunk;

/// The largest `usage` object read, in bytes of JSON: real ones are a few
/// hundred bytes. A larger one is given up.
pub const MAX_USAGE_BYTES: usize = 8 * 1024;

/// The deepest nesting whose keys are read. Deeper containers are tokenized
/// (their depth counted, their strings skipped) but their keys are not
/// compared.
pub const MAX_TRACKED_DEPTH: u32 = 64;

/// The longest event [`StripUsageChunk`] holds back, in bytes from its first
/// line through its blank line: a usage chunk is a few hundred bytes. A
/// longer event is never removed; it is handed on as it comes.
pub const MAX_HELD_EVENT_BYTES: usize = 16 * 1024;
