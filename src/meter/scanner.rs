//! The pure scanner: bytes in, usage out.

use std::fmt;

use super::end::OutputSeen;
use super::json::{find2, JsonScan, Mode, Totals};
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

/// Where the SSE parser is within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// Reading a field name.
    Name,
    /// Right after `data:`: one space may follow.
    DataSpace,
    /// In a `data` value: its bytes go to the JSON tokenizer.
    Data,
    /// In a comment or a field other than `data`.
    Skip,
}

/// The longest field name compared (`data` after a byte-order mark is 7).
const MAX_FIELD_NAME: usize = 8;

/// Server-sent events framing, as the HTML standard parses it: lines end in
/// CRLF, LF or CR; a blank line ends an event; `data` lines of one event are
/// joined by LF; a line starting with `:` is a comment; a single space after
/// the colon is dropped; a byte-order mark before the first line is ignored.
///
/// Event data is not buffered: it streams into a JSON tokenizer that is
/// reset at each event's end. Event names (`event:`) are not needed: each
/// format's JSON says where its usage is.
#[derive(Debug)]
struct Sse {
    line: Line,
    name: [u8; MAX_FIELD_NAME],
    /// Bytes of the field name read; `None` once it is too long to be `data`.
    name_len: Option<usize>,
    /// The last line ended in CR: a LF right after it belongs to that end.
    after_cr: bool,
    first_line: bool,
    /// The event has had a `data` line (the next one is joined by LF).
    event_has_data: bool,
    /// Events, ended, that carried generated text.
    text_events: u64,
    json: JsonScan,
}

impl Sse {
    fn new() -> Self {
        Sse {
            line: Line::Start,
            name: [0; MAX_FIELD_NAME],
            name_len: Some(0),
            after_cr: false,
            first_line: true,
            event_has_data: false,
            text_events: 0,
            json: JsonScan::new(Mode::Event),
        }
    }

    fn name_is_data(&self) -> bool {
        match self.name_len {
            Some(len) => {
                let name = &self.name[..len];
                name == b"data" || (self.first_line && name == b"\xEF\xBB\xBFdata")
            }
            None => false,
        }
    }

    fn push_name(&mut self, bytes: &[u8]) {
        if let Some(len) = self.name_len {
            let end = len + bytes.len();
            if end <= MAX_FIELD_NAME {
                self.name[len..end].copy_from_slice(bytes);
                self.name_len = Some(end);
            } else {
                self.name_len = None;
            }
        }
    }

    fn end_line(&mut self, eol: u8) {
        self.after_cr = eol == b'\r';
        self.first_line = false;
        self.line = Line::Start;
    }

    fn begin_data(&mut self, totals: &mut Totals) {
        if self.event_has_data {
            self.json.feed(b"\n", totals);
        }
        self.event_has_data = true;
    }

    fn dispatch(&mut self) {
        if self.json.saw_text() {
            self.text_events = self.text_events.saturating_add(1);
        }
        self.json.reset();
        self.event_has_data = false;
    }

    fn feed(&mut self, s: &[u8], totals: &mut Totals) {
        let mut i = 0;
        while i < s.len() {
            if self.after_cr {
                self.after_cr = false;
                if s[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match self.line {
                Line::Start => match s[i] {
                    eol @ (b'\r' | b'\n') => {
                        self.dispatch();
                        self.end_line(eol);
                        i += 1;
                    }
                    b':' => {
                        self.line = Line::Skip;
                        i += 1;
                    }
                    _ => {
                        self.line = Line::Name;
                        self.name_len = Some(0);
                    }
                },
                Line::Name => {
                    let rest = &s[i..];
                    match rest
                        .iter()
                        .position(|&b| b == b':' || b == b'\r' || b == b'\n')
                    {
                        None => {
                            self.push_name(rest);
                            i = s.len();
                        }
                        Some(off) => {
                            self.push_name(&rest[..off]);
                            let is_data = self.name_is_data();
                            let at = i + off;
                            if s[at] == b':' {
                                self.line = if is_data { Line::DataSpace } else { Line::Skip };
                            } else {
                                // A field name alone: `data` with an empty value.
                                if is_data {
                                    self.begin_data(totals);
                                }
                                self.end_line(s[at]);
                            }
                            i = at + 1;
                        }
                    }
                }
                Line::DataSpace => {
                    if s[i] == b' ' {
                        i += 1;
                    }
                    self.begin_data(totals);
                    self.line = Line::Data;
                }
                Line::Data => match find2(&s[i..], b'\r', b'\n') {
                    None => {
                        self.json.feed(&s[i..], totals);
                        i = s.len();
                    }
                    Some(off) => {
                        let at = i + off;
                        self.json.feed(&s[i..at], totals);
                        self.end_line(s[at]);
                        i = at + 1;
                    }
                },
                Line::Skip => match find2(&s[i..], b'\r', b'\n') {
                    None => i = s.len(),
                    Some(off) => {
                        let at = i + off;
                        self.end_line(s[at]);
                        i = at + 1;
                    }
                },
            }
        }
    }
}
