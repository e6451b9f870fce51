//! A streaming JSON tokenizer that keeps only what the meter needs: where the
//! `usage` objects are, and how much generated text goes by.
//!
//! It never holds the document. Its state is a nesting depth, the kinds of
//! the innermost [`MAX_TRACKED_DEPTH`] containers (one bit each), the key
//! being read (at most [`MAX_KEY_BYTES`]) and the bytes of the one `usage`
//! object being captured (at most [`MAX_USAGE_BYTES`]). It validates only
//! what it takes: a key counts when a colon follows it, and a captured
//! object must parse with serde_json; the rest of the document is not
//! checked, so a body malformed elsewhere (or cut short after its usage)
//! still yields the usage in it.

use super::fields::RawUsage;
use super::{MAX_TRACKED_DEPTH, MAX_USAGE_BYTES};

/// The longest key the tokenizer compares; longer keys are none it looks for.
const MAX_KEY_BYTES: usize = 24;

/// Where the JSON being tokenized comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A whole response body: `usage` is read at the top level only, and
    /// generated text is any string under a text key.
    Document,
    /// The data of one server-sent event: `usage`, `message.usage` and
    /// `response.usage` are read, and generated text is what sits under a
    /// `delta`.
    Event,
}

/// The keys the tokenizer tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Other,
    Usage,
    Message,
    Response,
    Delta,
    /// A key whose string value is generated text (`content`, `text`, ...).
    Text,
}

fn classify_key(key: &[u8]) -> Key {
    match key {
        b"usage" => Key::Usage,
        b"message" => Key::Message,
        b"response" => Key::Response,
        b"delta" => Key::Delta,
        b"content" | b"text" | b"arguments" | b"partial_json" | b"thinking"
        | b"reasoning_content" | b"reasoning" | b"refusal" => Key::Text,
        _ => Key::Other,
    }
}

/// What the string being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    /// An object key: its bytes are collected and compared.
    Key,
    /// Generated text: its bytes are counted.
    Text,
    /// Anything else: skipped.
    Skip,
}

/// Lexical state between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens (whitespace, punctuation, scalars).
    Between,
    /// Inside a string; `escaped` right after a backslash.
    InString { what: Str, escaped: bool },
}

/// What the tokenizer has accumulated across documents or events.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    /// Every usage report merged, field by field, the latest winning.
    pub(super) usage: RawUsage,
    /// Bytes of generated text seen, in their JSON-escaped form.
    pub(super) text_bytes: u64,
}

#[derive(Debug)]
pub(super) struct JsonScan {
    mode: Mode,
    lex: Lex,
    /// Open containers.
    depth: u32,
    /// Bit `d - 1` is set when the container at depth `d` (for
    /// `d <= MAX_TRACKED_DEPTH`) is an object.
    objects: u64,
    /// The next string is an object key.
    expect_key: bool,
    /// The key just read, waiting for its colon.
    key_read: Key,
    /// The key whose value comes next (its colon seen).
    pending: Key,
    /// The key of the top-level member the tokenizer is inside.
    top_key: Key,
    /// Depth of the `delta` object the tokenizer is inside, or 0.
    delta_depth: u32,
    key: [u8; MAX_KEY_BYTES],
    /// Bytes of the key read so far; `None` once it cannot match.
    key_len: Option<usize>,
    /// Text bytes counted when the current text string began.
    text_at_start: u64,
    /// A non-empty text string was seen since the last reset.
    saw_text: bool,
    /// Depth of the `usage` object being captured, or 0.
    capture_depth: u32,
    /// The captured object outgrew [`MAX_USAGE_BYTES`]: it is given up.
    capture_overflow: bool,
    captured: Vec<u8>,
}

impl JsonScan {
    pub(super) fn new(mode: Mode) -> Self {
        JsonScan {
            mode,
            lex: Lex::Between,
            depth: 0,
            objects: 0,
            expect_key: false,
            key_read: Key::Other,
            pending: Key::Other,
            top_key: Key::Other,
            delta_depth: 0,
            key: [0; MAX_KEY_BYTES],
            key_len: Some(0),
            text_at_start: 0,
            saw_text: false,
            capture_depth: 0,
            capture_overflow: false,
            captured: Vec::new(),
        }
    }

    /// Forgets the document (the end of an event); keeps the capture
    /// buffer's allocation.
    pub(super) fn reset(&mut self) {
        self.lex = Lex::Between;
        self.depth = 0;
        self.objects = 0;
        self.expect_key = false;
        self.key_read = Key::Other;
        self.pending = Key::Other;
        self.top_key = Key::Other;
        self.delta_depth = 0;
        self.key_len = Some(0);
        self.saw_text = false;
        self.capture_depth = 0;
        self.capture_overflow = false;
        self.captured.clear();
    }

    /// Whether a non-empty text string was seen since the last reset.
    pub(super) fn saw_text(&self) -> bool {
        self.saw_text
    }

    /// Heap bytes held: the capture buffer.
    pub(super) fn retained_capacity(&self) -> usize {
        self.captured.capacity()
    }

    fn is_object(&self, depth: u32) -> bool {
        (1..=MAX_TRACKED_DEPTH).contains(&depth) && self.objects & (1 << (depth - 1)) != 0
    }

    /// Whether a string value under `key` is generated text.
    fn is_text(&self, key: Key) -> bool {
        match self.mode {
            Mode::Document => key == Key::Text,
            Mode::Event => key == Key::Delta || (key == Key::Text && self.delta_depth != 0),
        }
    }

    /// Whether an object opened under `key` at depth `parent + 1` is a usage
    /// report.
    fn is_usage(&self, parent: u32, key: Key) -> bool {
        key == Key::Usage
            && (parent == 1
                || (self.mode == Mode::Event
                    && parent == 2
                    && matches!(self.top_key, Key::Message | Key::Response)))
    }

    fn append_captured(&mut self, bytes: &[u8]) {
        if self.capture_overflow {
            return;
        }
        let needed = self.captured.len().saturating_add(bytes.len());
        if needed > MAX_USAGE_BYTES {
            self.capture_overflow = true;
            self.captured.clear();
            return;
        }
        if needed > self.captured.capacity() {
            // Grow by doubling, but never past the bound.
            let target = needed
                .max(self.captured.capacity().saturating_mul(2))
                .clamp(256, MAX_USAGE_BYTES);
            self.captured.reserve_exact(target - self.captured.len());
        }
        self.captured.extend_from_slice(bytes);
    }

    fn append_key(&mut self, bytes: &[u8]) {
        if let Some(len) = self.key_len {
            let end = len + bytes.len();
            if end <= MAX_KEY_BYTES {
                self.key[len..end].copy_from_slice(bytes);
                self.key_len = Some(end);
            } else {
                self.key_len = None;
            }
        }
    }

    /// Reads the string the tokenizer is in from `s[i..]`; returns where
    /// the tokenizer is after it (past its closing quote, or `s.len()`).
    #[inline(always)]
    fn string(&mut self, s: &[u8], mut i: usize, totals: &mut Totals) -> usize {
        let Lex::InString { what, mut escaped } = self.lex else {
            return i;
        };
        let start = i;
        let end = loop {
            if escaped {
                if i == s.len() {
                    break None;
                }
                // The escaped byte belongs to the string whatever it is.
                i += 1;
                escaped = false;
            }
            match find2(&s[i..], b'"', b'\\') {
                None => break None,
                Some(off) if s[i + off] == b'\\' => {
                    // A key with an escape is none we look for.
                    if what == Str::Key {
                        self.key_len = None;
                    }
                    escaped = true;
                    i += off + 1;
                }
                Some(off) => break Some(i + off),
            }
        };
        let run = &s[start..end.unwrap_or(s.len())];
        // A key read whole from one piece is compared where it lies.
        let whole_key = what == Str::Key && end.is_some() && self.key_len == Some(0);
        match what {
            Str::Key if whole_key => {}
            Str::Key => self.append_key(run),
            Str::Text => totals.text_bytes = totals.text_bytes.saturating_add(run.len() as u64),
            Str::Skip => {}
        }
        let Some(end) = end else {
            self.lex = Lex::InString { what, escaped };
            return s.len();
        };
        self.lex = Lex::Between;
        match what {
            Str::Key => {
                self.key_read = match self.key_len {
                    _ if whole_key => classify_key(run),
                    Some(len) => classify_key(&self.key[..len]),
                    None => Key::Other,
                };
                self.expect_key = false;
            }
            Str::Text => {
                if totals.text_bytes > self.text_at_start {
                    self.saw_text = true;
                }
            }
            Str::Skip => {}
        }
        end + 1
    }

    /// Tokenizes `s`, the next bytes of the document.
    pub(super) fn feed(&mut self, s: &[u8], totals: &mut Totals) {
        // Where the capture of a usage object resumes in `s`.
        let mut capture_from = (self.capture_depth != 0).then_some(0);
        // Finish a string begun in an earlier piece.
        let mut i = self.string(s, 0, totals);
        while i < s.len() {
            let b = s[i];
            i += 1;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b':' => {
                    self.expect_key = false;
                    self.pending = std::mem::replace(&mut self.key_read, Key::Other);
                }
                b'"' => {
                    // A key counts only when its colon comes next.
                    self.key_read = Key::Other;
                    let what = if self.expect_key {
                        self.key_len = Some(0);
                        Str::Key
                    } else {
                        let key = std::mem::replace(&mut self.pending, Key::Other);
                        if self.is_text(key) {
                            self.text_at_start = totals.text_bytes;
                            Str::Text
                        } else {
                            Str::Skip
                        }
                    };
                    self.lex = Lex::InString {
                        what,
                        escaped: false,
                    };
                    i = self.string(s, i, totals);
                }
                b'{' | b'[' => {
                    self.key_read = Key::Other;
                    let key = std::mem::replace(&mut self.pending, Key::Other);
                    let parent = self.depth;
                    let depth = parent.saturating_add(1);
                    self.depth = depth;
                    let object = b == b'{';
                    if depth <= MAX_TRACKED_DEPTH {
                        let bit = 1u64 << (depth - 1);
                        if object {
                            self.objects |= bit;
                        } else {
                            self.objects &= !bit;
                        }
                    }
                    // Beyond the tracked depth, keys are not read.
                    self.expect_key = object && depth <= MAX_TRACKED_DEPTH;
                    if parent == 1 {
                        self.top_key = key;
                    }
                    if object && key == Key::Delta && self.delta_depth == 0 {
                        self.delta_depth = depth;
                    }
                    if object && self.capture_depth == 0 && self.is_usage(parent, key) {
                        self.capture_depth = depth;
                        self.capture_overflow = false;
                        self.captured.clear();
                        capture_from = Some(i - 1);
                    }
                }
                b'}' | b']' => {
                    self.key_read = Key::Other;
                    self.pending = Key::Other;
                    self.expect_key = false;
                    if self.depth != 0 {
                        if self.capture_depth == self.depth {
                            if let Some(from) = capture_from.take() {
                                self.append_captured(&s[from..i]);
                            }
                            if !self.capture_overflow {
                                totals.usage.merge_json(&self.captured);
                            }
                            self.captured.clear();
                            self.capture_depth = 0;
                        }
                        if self.delta_depth == self.depth {
                            self.delta_depth = 0;
                        }
                        self.depth -= 1;
                    }
                }
                b',' => {
                    self.key_read = Key::Other;
                    self.pending = Key::Other;
                    self.expect_key = self.is_object(self.depth);
                }
                // A scalar (number, true, false, null) or garbage: it uses up
                // the pending key. Its other bytes are skipped in one go.
                _ => {
                    self.key_read = Key::Other;
                    self.pending = Key::Other;
                    while i < s.len() && !is_delimiter(s[i]) {
                        i += 1;
                    }
                }
            }
        }
        if let Some(from) = capture_from {
            self.append_captured(&s[from..]);
        }
    }
}

/// Whether `b` ends a scalar: punctuation, a quote or whitespace.
#[inline]
fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b',' | b'}' | b']' | b'{' | b'[' | b':' | b'"' | b' ' | b'\t' | b'\n' | b'\r'
    )
}

/// The index of the first byte in `s` equal to `a` or `b`.
///
/// Eight bytes at a time: a byte of `w ^ splat(a)` is zero where `w` holds
/// `a`, and `(x - 0x01..) & !x & 0x80..` flags zero bytes. Flags above the
/// first zero byte may be false (borrows run upwards), the lowest one never
/// is, so the lowest flag of either mask is the first match.
#[inline]
pub(super) fn find2(s: &[u8], a: u8, b: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let splat_a = LO * u64::from(a);
    let splat_b = LO * u64::from(b);
    let mut words = s.chunks_exact(8);
    let mut base = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let x = w ^ splat_a;
        let y = w ^ splat_b;
        let found = ((x.wrapping_sub(LO) & !x) | (y.wrapping_sub(LO) & !y)) & HI;
        if found != 0 {
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == a || c == b)
        .map(|off| base + off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find2_matches_the_naive_search() {
        let text = b"abcdefgh\"ijklmnop\\qrstuvwxyz0123456789\"";
        for start in 0..text.len() {
            for end in start..=text.len() {
                let s = &text[start..end];
                let naive = s.iter().position(|&c| c == b'"' || c == b'\\');
                assert_eq!(find2(s, b'"', b'\\'), naive, "{start}..{end}");
            }
        }
        // Bytes just above and below the needles, and a needle after a 0x01
        // (the borrow case).
        let tricky = [0x21, 0x23, 0x5b, 0x5d, 0x01, 0x22, 0x01, 0x5c, 0x00];
        assert_eq!(find2(&tricky, b'"', b'\\'), Some(5));
        assert_eq!(find2(&tricky[6..], b'"', b'\\'), Some(1));
    }

    fn scan(mode: Mode, text: &str) -> (Option<crate::classify::Usage>, u64) {
        let mut scan = JsonScan::new(mode);
        let mut totals = Totals::default();
        scan.feed(text.as_bytes(), &mut totals);
        (totals.usage.to_usage(), totals.text_bytes)
    }

    #[test]
    fn usage_only_at_the_top_level() {
        let (usage, text) = scan(
            Mode::Document,
            r#"{"choices":[{"message":{"content":"ab","usage":{"prompt_tokens":9}}}],
                "meta":{"usage":{"prompt_tokens":8}},"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        );
        assert_eq!(usage, Some(crate::classify::Usage::new(1, 2)));
        assert_eq!(text, 2);
    }

    #[test]
    fn nested_usage_paths_only_in_events() {
        let body =
            r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}"#;
        assert_eq!(scan(Mode::Document, body).0, None);
        assert_eq!(
            scan(Mode::Event, body).0,
            Some(crate::classify::Usage::new(5, 1))
        );
    }

    #[test]
    fn escaped_keys_are_not_matched() {
        let (usage, _) = scan(Mode::Document, r#"{"us\u0061ge":{"prompt_tokens":1}}"#);
        assert_eq!(usage, None);
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = format!("{}{}{}", "[{\"a\":".repeat(200), "1", "}]".repeat(200));
        let body = format!(r#"{{"x":{deep},"usage":{{"prompt_tokens":3}}}}"#);
        assert_eq!(
            scan(Mode::Document, &body).0,
            Some(crate::classify::Usage::new(3, 0))
        );
    }
}
