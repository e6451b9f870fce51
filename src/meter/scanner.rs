//! The pure scanner: bytes in, usage out.

use std::fmt;

use super::end::OutputSeen;
use super::json::{JsonScan, Mode, Totals};
use super::sse::{EventSink, SseFramer};
use crate::classify::Usage;

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BodyKind {
    /// One JSON document (a response that was not streamed).
    Json,
    /// Server-sent events (`text/event-stream`), each event's data a JSON
    /// document.
    EventStream,
    /// A body the scanner does not read: one whose `content-encoding`
    /// (gzip, br, zstd, ...) makes its bytes unreadable as they pass. Its
    /// usage is always `None`.
    Encoded,
}

impl BodyKind {
    /// The kind a `content-type` value names: `text/event-stream` (any case,
    /// any parameters) is [`EventStream`](BodyKind::EventStream); anything
    /// else, or no header, is [`Json`](BodyKind::Json).
    ///
    /// Takes a `&HeaderValue`, a `&str` or bytes.
    ///
    /// ```
    /// use llm_sluice::meter::BodyKind;
    ///
    /// assert_eq!(BodyKind::from_content_type(Some("text/event-stream; charset=utf-8")), BodyKind::EventStream);
    /// assert_eq!(BodyKind::from_content_type(Some("application/json")), BodyKind::Json);
    /// assert_eq!(BodyKind::from_content_type(None::<&str>), BodyKind::Json);
    /// ```
    pub fn from_content_type<T: AsRef<[u8]>>(content_type: Option<T>) -> Self {
        let Some(value) = content_type else {
            return BodyKind::Json;
        };
        let value = value.as_ref();
        let media = value.split(|&b| b == b';').next().unwrap_or(value);
        if media
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
        {
            BodyKind::EventStream
        } else {
            BodyKind::Json
        }
    }

    /// The kind of a body with these headers: [`Encoded`](BodyKind::Encoded)
    /// if it has a `content-encoding` other than `identity`, else the kind its
    /// `content-type` names (see [`from_content_type`](Self::from_content_type)).
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let encoded = headers
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .any(|coding| {
                let coding = coding.trim_ascii();
                !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity")
            });
        if encoded {
            return BodyKind::Encoded;
        }
        Self::from_content_type(headers.get(http::header::CONTENT_TYPE))
    }
}

/// Reads the provider's usage from a response body fed to it in pieces.
///
/// Pure: no I/O, no clock, no runtime. Feed it every byte of the body in
/// order, split anywhere; it never fails and never panics, and the result
/// does not depend on where the pieces were split. It holds at most
/// [`MAX_USAGE_BYTES`](super::MAX_USAGE_BYTES) of heap (see
/// [`retained_capacity`](Self::retained_capacity)) whatever the body's size.
/// See the [module docs](super) for what is read from where.
///
/// ```
/// use llm_sluice::meter::{BodyKind, UsageScanner};
/// use llm_sluice::Usage;
///
/// let mut scanner = UsageScanner::new(BodyKind::EventStream);
/// for piece in [
///     &b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\nda"[..],
///     b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_",
///     b"tokens\":9,\"total_tokens\":28}}\r\n\r\ndata: [DONE]\n\n",
/// ] {
///     scanner.feed(piece);
/// }
/// assert_eq!(scanner.usage(), Some(Usage::new(19, 9)));
/// assert_eq!(scanner.output_seen().text_bytes, 2);
/// ```
pub struct UsageScanner {
    kind: BodyKind,
    framing: Framing,
    totals: Totals,
    bytes_seen: u64,
    /// Bytes went missing: nothing more can be read reliably.
    lost: bool,
}

#[derive(Debug)]
enum Framing {
    Json(JsonScan),
    EventStream(Sse),
    Encoded,
}

impl UsageScanner {
    /// A scanner for a body of the given kind.
    pub fn new(kind: BodyKind) -> Self {
        let framing = match kind {
            BodyKind::Json => Framing::Json(JsonScan::new(Mode::Document)),
            BodyKind::EventStream => Framing::EventStream(Sse::new()),
            BodyKind::Encoded => Framing::Encoded,
        };
        UsageScanner {
            kind,
            framing,
            totals: Totals::default(),
            bytes_seen: 0,
            lost: false,
        }
    }

    /// The kind of body this scanner reads.
    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    /// Reads the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes_seen = self.bytes_seen.saturating_add(chunk.len() as u64);
        if self.lost {
            return;
        }
        match &mut self.framing {
            Framing::Json(json) => json.feed(chunk, &mut self.totals),
            Framing::EventStream(sse) => sse.feed(chunk, &mut self.totals),
            Framing::Encoded => {}
        }
    }

    /// Records that `len` bytes of the body could not be read: the scanner
    /// stops reading and keeps what it had.
    pub(crate) fn skip(&mut self, len: usize) {
        self.bytes_seen = self.bytes_seen.saturating_add(len as u64);
        if len > 0 {
            self.lost = true;
            match &mut self.framing {
                Framing::Json(json) => json.reset(),
                Framing::EventStream(sse) => sse.json.reset(),
                Framing::Encoded => {}
            }
        }
    }

    /// The usage the provider reported so far, or `None` if it reported
    /// none (yet).
    ///
    /// Reports are merged field by field, each field's latest value winning,
    /// so in an Anthropic stream the input counts come from `message_start`
    /// and the output count from the last `message_delta`. Before the body
    /// ends this may be partial (after `message_start`, the output count is
    /// the one or two tokens that event reports).
    pub fn usage(&self) -> Option<Usage> {
        self.totals.usage.to_usage()
    }

    /// The generated text seen so far (see [`OutputSeen`]).
    pub fn output_seen(&self) -> OutputSeen {
        let (events, current) = match &self.framing {
            Framing::Json(_) | Framing::Encoded => (0, false),
            Framing::EventStream(sse) => (sse.text_events, sse.json.saw_text()),
        };
        OutputSeen {
            text_bytes: self.totals.text_bytes,
            text_events: events.saturating_add(u64::from(current)),
        }
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.bytes_seen
    }

    /// Heap bytes the scanner holds now; never more than
    /// [`MAX_USAGE_BYTES`](super::MAX_USAGE_BYTES).
    pub fn retained_capacity(&self) -> usize {
        match &self.framing {
            Framing::Json(json) => json.retained_capacity(),
            Framing::EventStream(sse) => sse.json.retained_capacity(),
            Framing::Encoded => 0,
        }
    }
}

impl fmt::Debug for UsageScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageScanner")
            .field("kind", &self.kind)
            .field("usage", &self.usage())
            .field("output_seen", &self.output_seen())
            .field("bytes_seen", &self.bytes_seen)
            .finish_non_exhaustive()
    }
}

/// A stream of server-sent events read for usage: each event's data
/// streams into a JSON tokenizer that is reset when the event ends. Event
/// names (`event:`) are not needed: each format's JSON says where its usage
/// is.
#[derive(Debug)]
struct Sse {
    framer: SseFramer,
    /// Events, ended, that carried generated text.
    text_events: u64,
    json: JsonScan,
}

/// What the framer's events do to the tokenizer.
struct Scan<'a> {
    json: &'a mut JsonScan,
    totals: &'a mut Totals,
    text_events: &'a mut u64,
}

impl EventSink for Scan<'_> {
    #[inline]
    fn data(&mut self, bytes: &[u8]) {
        self.json.feed(bytes, self.totals);
    }

    fn dispatch(&mut self, _end: usize) {
        if self.json.saw_text() {
            *self.text_events = self.text_events.saturating_add(1);
        }
        self.json.reset();
    }
}

impl Sse {
    fn new() -> Self {
        Sse {
            framer: SseFramer::new(),
            text_events: 0,
            json: JsonScan::new(Mode::Event),
        }
    }

    fn feed(&mut self, s: &[u8], totals: &mut Totals) {
        let mut scan = Scan {
            json: &mut self.json,
            totals,
            text_events: &mut self.text_events,
        };
        self.framer.feed(s, &mut scan);
    }
}
