//! An HTTP body that reads its own usage as it streams.

use std::fmt;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::end::{BodyEnd, CutOffReason, OnBodyEnd};
use super::scanner::{BodyKind, UsageScanner};

/// The scanner and the callback, with the drop that makes the callback fire
/// exactly once.
struct Meter<F: OnBodyEnd> {
    scanner: UsageScanner,
    on_end: Option<F>,
}

impl<F: OnBodyEnd> Meter<F> {
    fn end(&mut self, cut_off: Option<CutOffReason>) {
        if let Some(on_end) = self.on_end.take() {
            let usage = self.scanner.usage();
            let output = self.scanner.output_seen();
            on_end.on_end(match cut_off {
                None => BodyEnd::Complete { usage, output },
                Some(reason) => BodyEnd::CutOff {
                    usage,
                    output,
                    reason,
                },
            });
        }
    }

    /// Feeds the bytes of `data` without copying them.
    fn feed<D: Buf>(&mut self, data: &D) {
        let first = data.chunk();
        if first.len() == data.remaining() {
            self.scanner.feed(first);
            return;
        }
        // A buffer in several pieces: read as many as it will show.
        let mut slices = [IoSlice::new(&[]); 64];
        let shown = data.chunks_vectored(&mut slices);
        let mut fed = 0usize;
        for slice in &slices[..shown] {
            self.scanner.feed(slice);
            fed = fed.saturating_add(slice.len());
        }
        self.scanner.skip(data.remaining().saturating_sub(fed));
    }
}

impl<F: OnBodyEnd> Drop for Meter<F> {
    fn drop(&mut self) {
        self.end(Some(CutOffReason::Dropped));
    }
}

pin_project! {
    /// A body that passes every frame through unchanged and reads the
    /// provider's usage from its data as it goes; when the body ends it calls
    /// `on_end` once with a [`BodyEnd`].
    ///
    /// The body has ended when a poll returns its end or an error, or when
    /// after a frame the inner body says it is at its end (so a reader that
    /// stops at `is_end_stream` sees the callback run too); it is cut off
    /// when it errors or is dropped before that.
    ///
    /// Frames are handed on as they came, the same `Data` value with no
    /// copy; trailers are not read. `size_hint` and `is_end_stream` are the
    /// inner body's.
    ///
    /// # Cancel safety
    ///
    /// `on_end` runs exactly once on every path: at the end, at an error, or
    /// when the body is dropped, whichever comes first, including a drop
    /// before the first poll. It runs inside `poll_frame` or `drop`, on the
    /// task that polls or drops the body, so it should be quick (update a
    /// counter, send on a channel). If the body is leaked
    /// (`std::mem::forget`) it never runs.
    pub struct UsageBody<B, F>
    where
        F: OnBodyEnd,
    {
        #[pin]
        inner: B,
        meter: Meter<F>,
    }
}

impl<B, F: OnBodyEnd> UsageBody<B, F> {
    /// Wraps `inner`, a body of the given kind; `on_end` runs once when it
    /// ends.
    pub fn new(inner: B, kind: BodyKind, on_end: F) -> Self {
        UsageBody {
            inner,
            meter: Meter {
                scanner: UsageScanner::new(kind),
                on_end: Some(on_end),
            },
        }
    }

    /// Wraps `inner` without reading it: frames pass through and nothing is
    /// called (what a layer with nothing to meter hands on, where the type
    /// must be the same as a metered body's).
    pub fn unmetered(inner: B) -> Self {
        UsageBody {
            inner,
            meter: Meter {
                scanner: UsageScanner::new(BodyKind::Encoded),
                on_end: None,
            },
        }
    }

    /// Wraps the body of `response`, its kind read from its headers (see
    /// [`BodyKind::from_headers`]: `content-type`, and `content-encoding`
    /// for a compressed body, which is not read).
    pub fn wrap_response(response: http::Response<B>, on_end: F) -> http::Response<Self> {
        let kind = BodyKind::from_headers(response.headers());
        response.map(|body| UsageBody::new(body, kind, on_end))
    }

    /// The scanner, to look at the usage read so far.
    pub fn scanner(&self) -> &UsageScanner {
        &self.meter.scanner
    }

    /// Whether `on_end` has yet to run.
    pub fn is_metering(&self) -> bool {
        self.meter.on_end.is_some()
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body, F: OnBodyEnd> Body for UsageBody<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(polled) => polled,
        };
        match &polled {
            None => this.meter.end(None),
            Some(Err(_)) => this.meter.end(Some(CutOffReason::Error)),
            Some(Ok(frame)) => {
                if this.meter.on_end.is_some() {
                    if let Some(data) = frame.data_ref() {
                        this.meter.feed(data);
                    }
                    if this.inner.is_end_stream() {
                        this.meter.end(None);
                    }
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug, F: OnBodyEnd> fmt::Debug for UsageBody<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageBody")
            .field("inner", &self.inner)
            .field("scanner", &self.meter.scanner)
            .field("metering", &self.meter.on_end.is_some())
            .finish()
    }
}
