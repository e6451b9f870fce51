use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that passed an
    /// [`ErrorBodyLayer`](super::ErrorBodyLayer): the original body, or the
    /// bytes read ahead from it followed by whatever was not read.
    ///
    /// Its content is exactly the original body's: the same bytes in the same
    /// order, then the same trailers, or the same error at the same point.
    /// Only chunk boundaries of a buffered body may differ. Data is handed
    /// out as [`Bytes`]; for bodies whose data already is `Bytes` this is
    /// free.
    pub struct ErrorBody<B>
    where
        B: Body,
    {
        // A body that was not read ahead (2xx, or too large to try).
        #[pin]
        inner: Option<B>,
        // Bytes read ahead, handed out first.
        chunks: VecDeque<Bytes>,
        // The unread rest of a body that was longer than the limit.
        rest: Option<Pin<Box<B>>>,
        // The error the body failed with while it was read ahead.
        error: Option<B::Error>,
        // Trailers read ahead.
        trailers: Option<HeaderMap>,
    }
}

impl<B: Body> ErrorBody<B> {
    /// Wraps a body that is passed on as it is.
    pub fn new(body: B) -> Self {
        ErrorBody {
            inner: Some(body),
            chunks: VecDeque::new(),
            rest: None,
            error: None,
            trailers: None,
        }
    }

    /// A body read ahead: `chunks`, then `rest` (unread), `error` (where
    /// reading stopped) or `trailers`.
    pub(super) fn read_ahead(
        chunks: VecDeque<Bytes>,
        rest: Option<Pin<Box<B>>>,
        error: Option<B::Error>,
        trailers: Option<HeaderMap>,
    ) -> Self {
        ErrorBody {
            inner: None,
            chunks,
            rest,
            error,
            trailers,
        }
    }

    /// Whether the body was read ahead by the layer (a non-2xx response).
    pub fn is_buffered(&self) -> bool {
        self.inner.is_none()
    }

    fn buffered_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}

impl<B: Body> Body for ErrorBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(inner) = this.inner.as_pin_mut() {
            return inner
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map(to_bytes)));
        }
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(rest) = this.rest.as_mut() {
            match rest.as_mut().poll_frame(cx) {
                Poll::Ready(None) => *this.rest = None,
                other => return other.map(|frame| frame.map(|result| result.map(to_bytes))),
            }
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        if let Some(inner) = &self.inner {
            return inner.is_end_stream();
        }
        self.chunks.is_empty()
            && self.error.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(inner) = &self.inner {
            return inner.size_hint();
        }
        let buffered = self.buffered_len();
        match &self.rest {
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(buffered));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(buffered));
                }
                hint
            }
            None => SizeHint::with_exact(buffered),
        }
    }
}

impl<B: Body> fmt::Debug for ErrorBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorBody")
            .field("buffered", &self.is_buffered())
            .field("buffered_bytes", &self.buffered_len())
            .field("has_rest", &self.rest.is_some())
            .field("has_error", &self.error.is_some())
            .field("has_trailers", &self.trailers.is_some())
            .finish()
    }
}
