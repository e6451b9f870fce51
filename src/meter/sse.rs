//! Server-sent events framing, shared by the usage scanner and the
//! usage-chunk strip: it finds each event's data and end, and hands them to
//! an [`EventSink`].

use super::json::find2;

/// What the framer tells as it reads.
pub(super) trait EventSink {
    /// The next bytes of the current event's data: a piece of a `data`
    /// line's value, or the LF that joins two `data` lines.
    fn data(&mut self, bytes: &[u8]);

    /// A blank line ended the current event; `end` is the index, in the
    /// slice being fed, just past the blank line's line end (its CR or LF).
    fn dispatch(&mut self, end: usize);

    /// The byte at `at` in the slice being fed is a LF that only completes
    /// the CRLF whose CR ended the previous line (in this slice or an
    /// earlier one).
    fn lf_after_cr(&mut self, _at: usize) {}
}

/// Where the framer is within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// Reading a field name.
    Name,
    /// Right after `data:`: one space may follow.
    DataSpace,
    /// In a `data` value: its bytes go to the sink.
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
/// Nothing is buffered but a field name's first bytes: data streams to the
/// sink as it comes. Fields other than `data` (`event`, `id`, `retry`) are
/// skipped.
#[derive(Debug, Clone)]
pub(super) struct SseFramer {
    line: Line,
    name: [u8; MAX_FIELD_NAME],
    /// Bytes of the field name read; `None` once it is too long to be `data`.
    name_len: Option<usize>,
    /// The last line ended in CR: a LF right after it belongs to that end.
    after_cr: bool,
    first_line: bool,
    /// The event has had a `data` line (the next one is joined by LF).
    event_has_data: bool,
}

impl SseFramer {
    /// A framer at the start of a stream.
    pub(super) fn new() -> Self {
        SseFramer {
            line: Line::Start,
            name: [0; MAX_FIELD_NAME],
            name_len: Some(0),
            after_cr: false,
            first_line: true,
            event_has_data: false,
        }
    }

    /// A framer at the start of an event that is not the stream's first
    /// (no byte-order mark can come).
    pub(super) fn after_first_line() -> Self {
        SseFramer {
            first_line: false,
            ..Self::new()
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

    fn begin_data<S: EventSink>(&mut self, sink: &mut S) {
        if self.event_has_data {
            sink.data(b"\n");
        }
        self.event_has_data = true;
    }

    /// Reads `s`, the next bytes of the stream.
    #[inline]
    pub(super) fn feed<S: EventSink>(&mut self, s: &[u8], sink: &mut S) {
        let mut i = 0;
        while i < s.len() {
            if self.after_cr {
                self.after_cr = false;
                if s[i] == b'\n' {
                    sink.lf_after_cr(i);
                    i += 1;
                    continue;
                }
            }
            match self.line {
                Line::Start => match s[i] {
                    eol @ (b'\r' | b'\n') => {
                        self.event_has_data = false;
                        self.end_line(eol);
                        i += 1;
                        sink.dispatch(i);
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
                                    self.begin_data(sink);
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
                    self.begin_data(sink);
                    self.line = Line::Data;
                }
                Line::Data => match find2(&s[i..], b'\r', b'\n') {
                    None => {
                        sink.data(&s[i..]);
                        i = s.len();
                    }
                    Some(off) => {
                        let at = i + off;
                        sink.data(&s[i..at]);
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
