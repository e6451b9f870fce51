//! The response future of [`ErrorBodyService`](super::ErrorBodyService).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::response::Parts;
use http::HeaderMap;
use http_body::Body;
use pin_project_lite::pin_project;

use super::metrics::Metrics;
use super::ErrorBody;
use crate::classify::ErrorCode;

pin_project! {
    /// Waits for the inner service's response and, for a non-2xx one, reads
    /// its body (up to the limit) before handing the response on.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the inner future or the partly read body;
    /// nothing else is held.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Calling {
            #[pin]
            future: F,
            max: usize,
            metrics: Arc<Metrics>,
        },
        Reading {
            // `None` once the response has been handed on.
            buffer: Option<ReadAhead<B>>,
        },
    }
}

/// A non-2xx response whose body is being read.
struct ReadAhead<B> {
    parts: Parts,
    // Boxed so it can move into the finished `ErrorBody` without `B: Unpin`.
    body: Pin<Box<B>>,
    chunks: VecDeque<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// How reading ahead stopped.
enum End<E> {
    Complete,
    OverLimit,
    Failed(E),
}

impl<F, B> ResponseFuture<F, B> {
    pub(super) fn new(future: F, max: usize, metrics: Arc<Metrics>) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                max,
                metrics,
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<ErrorBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling {
                    future,
                    max,
                    metrics,
                } => {
                    let response = ready!(future.poll(cx))?;
                    let max = *max;
                    let body = response.body();
                    if response.status().is_success() || body.is_end_stream() {
                        return Poll::Ready(Ok(response.map(ErrorBody::new)));
                    }
                    if body.size_hint().lower() > max as u64 {
                        metrics.too_large.increment(1);
                        return Poll::Ready(Ok(response.map(ErrorBody::new)));
                    }
                    let metrics = metrics.clone();
                    let (parts, body) = response.into_parts();
                    this.state.set(State::Reading {
                        buffer: Some(ReadAhead {
                            parts,
                            body: Box::pin(body),
                            chunks: VecDeque::new(),
                            len: 0,
                            trailers: None,
                            max,
                            metrics,
                        }),
                    });
                }
                StateProj::Reading { buffer } => {
                    let reading = buffer.as_mut().expect("polled after completion");
                    let end = ready!(reading.poll_read(cx));
                    let reading = buffer.take().expect("checked above");
                    return Poll::Ready(Ok(reading.finish(end)));
                }
            }
        }
    }
}

impl<B: Body> ReadAhead<B> {
    /// Reads frames until the body ends, fails or passes the limit.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<End<B::Error>> {
        loop {
            match ready!(self.body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(End::Complete),
                Some(Err(error)) => return Poll::Ready(End::Failed(error)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let bytes = data.copy_to_bytes(data.remaining());
                        if !bytes.is_empty() {
                            self.len = self.len.saturating_add(bytes.len());
                            self.chunks.push_back(bytes);
                        }
                        if self.len > self.max {
                            return Poll::Ready(End::OverLimit);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut self.trailers {
                                Some(existing) => existing.extend(trailers),
                                None => self.trailers = Some(trailers),
                            }
                        }
                    }
                },
            }
            if self.body.is_end_stream() {
                return Poll::Ready(End::Complete);
            }
        }
    }

    fn finish(self, end: End<B::Error>) -> http::Response<ErrorBody<B>> {
        let ReadAhead {
            mut parts,
            body,
            mut chunks,
            len,
            trailers,
            metrics,
            ..
        } = self;
        let status = parts.status.as_u16();
        let body = match end {
            End::Complete => {
                if chunks.len() > 1 {
                    let mut whole = BytesMut::with_capacity(len);
                    for chunk in chunks.drain(..) {
                        whole.extend_from_slice(&chunk);
                    }
                    chunks.push_back(whole.freeze());
                }
                let whole = chunks.front().map(|c| &c[..]).unwrap_or_default();
                if let Some(code) = ErrorCode::from_json(whole) {
                    tracing::debug!(
                        status,
                        code = code.code(),
                        error_type = code.error_type(),
                        quota_exhausted = code.is_quota_exhausted(),
                        "error body read"
                    );
                    parts.extensions.insert(code);
                    metrics.parsed.increment(1);
                } else {
                    metrics.unparsed.increment(1);
                }
                ErrorBody::read_ahead(chunks, None, None, trailers)
            }
            End::OverLimit => {
                tracing::debug!(status, len, "error body over the limit; not parsed");
                metrics.too_large.increment(1);
                ErrorBody::read_ahead(chunks, Some(body), None, trailers)
            }
            End::Failed(error) => {
                tracing::debug!(status, len, "error body failed while read ahead");
                metrics.failed.increment(1);
                ErrorBody::read_ahead(chunks, None, Some(error), trailers)
            }
        };
        http::Response::from_parts(parts, body)
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Calling { .. } => "calling",
            State::Reading { buffer: Some(_) } => "reading body",
            State::Reading { buffer: None } => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
