//! Making a copy of a request for another attempt.

/// How the retry layer makes a copy of a request for the next attempt.
///
/// The copy is made before each attempt is sent, because the attempt
/// consumes the request. `None` means the request cannot be sent again: it
/// is sent once and its first result is returned as it is, whatever it was.
///
/// [`CloneRequest`] (the default) clones; [`ReplayBodies`] (feature `http`)
/// copies `http::Request<ReplayBody<B>>` whose body was buffered.
pub trait Replay<Req> {
    /// A copy of `request` for another attempt, or `None` when it cannot be
    /// replayed.
    fn replay(&self, request: &Req) -> Option<Req>;
}

/// Replays a request by cloning it: the default.
///
/// Typed requests that are `Clone` work as they are, and so does
/// `http::Request<B>` with a `Clone` body (`String`, `Bytes`,
/// `http_body_util::Full<Bytes>`, `Empty`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequest;

impl<Req: Clone> Replay<Req> for CloneRequest {
    #[inline]
    fn replay(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

impl<Req, F> Replay<Req> for F
where
    F: Fn(&Req) -> Option<Req>,
{
    fn replay(&self, request: &Req) -> Option<Req> {
        self(request)
    }
}

#[cfg(feature = "http")]
pub use self::body::{ReplayBodies, ReplayBody};

#[cfg(feature = "http")]
mod body {
    use std::collections::VecDeque;
    use std::fmt;
    use std::future::poll_fn;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::{Buf, Bytes, BytesMut};
    use http::HeaderMap;
    use http_body::{Body, Frame, SizeHint};

    use super::Replay;

    /// A request body that was buffered so it can be sent more than once, or
    /// that was too large to buffer and can be sent only once.
    ///
    /// Make one with [`ReplayBody::buffer`] (reads a body up to a size limit)
    /// or [`ReplayBody::full`], and give the retry layer [`ReplayBodies`] as
    /// its replay strategy. A body larger than the limit is not held in
    /// memory: the part already read is sent first, then the rest streams
    /// from the original body, and the request is not retried.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, StreamBody};
    /// use llm_sluice::retry::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let chunks = futures::stream::iter(["{\"model\":", "\"m\"}"].map(|c| {
    ///     Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c)))
    /// }));
    /// let body = ReplayBody::buffer(StreamBody::new(chunks), 1024).await.unwrap();
    /// assert!(body.is_replayable());
    /// let copy = body.try_clone().unwrap();
    /// assert_eq!(copy.collect().await.unwrap().to_bytes(), "{\"model\":\"m\"}");
    /// # }
    /// ```
    pub struct ReplayBody<B> {
        kind: Kind<B>,
    }

    enum Kind<B> {
        Buffered {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        Once {
            prefix: VecDeque<Bytes>,
            rest: Pin<Box<B>>,
        },
    }

    impl<B> ReplayBody<B> {
        /// A replayable body of `data`.
        pub fn full(data: impl Into<Bytes>) -> Self {
            let data: Bytes = data.into();
            ReplayBody {
                kind: Kind::Buffered {
                    data: (!data.is_empty()).then_some(data),
                    trailers: None,
                },
            }
        }

        /// A body that is sent once and never replayed.
        pub fn once(body: B) -> Self {
            ReplayBody {
                kind: Kind::Once {
                    prefix: VecDeque::new(),
                    rest: Box::pin(body),
                },
            }
        }

        /// Whether the body was buffered whole and can be sent again.
        pub fn is_replayable(&self) -> bool {
            matches!(self.kind, Kind::Buffered { .. })
        }

        /// A copy of a buffered body; `None` for a body sent once.
        pub fn try_clone(&self) -> Option<Self> {
            match &self.kind {
                Kind::Buffered { data, trailers } => Some(ReplayBody {
                    kind: Kind::Buffered {
                        data: data.clone(),
                        trailers: trailers.clone(),
                    },
                }),
                Kind::Once { .. } => None,
            }
        }
    }

    impl<B> ReplayBody<B>
    where
        B: Body,
        B::Data: Buf,
    {
        /// Reads `body` into memory if it is at most `limit` bytes.
        ///
        /// A body whose size hint already says it is larger is not read at
        /// all. A larger body stops being read as soon as it passes the
        /// limit, and the result is a body sent once (the chunks read so far,
        /// then the rest). An error while reading is returned, and the body is
        /// lost with it.
        ///
        /// # Cancel safety
        ///
        /// Dropping the future drops the body and whatever was read.
        pub async fn buffer(body: B, limit: usize) -> Result<Self, B::Error> {
            let mut body = Box::pin(body);
            let too_large = body.size_hint().lower() > limit as u64;
            if too_large {
                return Ok(ReplayBody {
                    kind: Kind::Once {
                        prefix: VecDeque::new(),
                        rest: body,
                    },
                });
            }
            let mut chunks = VecDeque::new();
            let mut total = 0usize;
            let mut trailers = None;
            while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                match frame?.into_data() {
                    Ok(mut data) => {
                        let chunk = data.copy_to_bytes(data.remaining());
                        total = total.saturating_add(chunk.len());
                        if !chunk.is_empty() {
                            chunks.push_back(chunk);
                        }
                        if total > limit {
                            return Ok(ReplayBody {
                                kind: Kind::Once {
                                    prefix: chunks,
                                    rest: body,
                                },
                            });
                        }
                    }
                    Err(frame) => {
                        if let Ok(map) = frame.into_trailers() {
                            trailers = Some(map);
                        }
                    }
                }
            }
            let data = match chunks.len() {
                0 => None,
                1 => chunks.pop_front(),
                _ => {
                    let mut all = BytesMut::with_capacity(total);
                    for chunk in chunks {
                        all.extend_from_slice(&chunk);
                    }
                    Some(all.freeze())
                }
            };
            Ok(ReplayBody {
                kind: Kind::Buffered { data, trailers },
            })
        }
    }

    impl<B> Body for ReplayBody<B>
    where
        B: Body,
        B::Data: Buf,
    {
        type Data = Bytes;
        type Error = B::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
            // Every field is Unpin (the inner body is boxed).
            match &mut self.get_mut().kind {
                Kind::Buffered { data, trailers } => {
                    if let Some(data) = data.take() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
                }
                Kind::Once { prefix, rest } => {
                    if let Some(chunk) = prefix.pop_front() {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    rest.as_mut().poll_frame(cx).map(|frame| {
                        frame.map(|f| f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining()))))
                    })
                }
            }
        }

        fn is_end_stream(&self) -> bool {
            match &self.kind {
                Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
                Kind::Once { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
            }
        }

        fn size_hint(&self) -> SizeHint {
            match &self.kind {
                Kind::Buffered { data, .. } => {
                    SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
                }
                Kind::Once { prefix, rest } => {
                    let read: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                    let inner = rest.size_hint();
                    let mut hint = SizeHint::new();
                    hint.set_lower(inner.lower().saturating_add(read));
                    if let Some(upper) = inner.upper() {
                        hint.set_upper(upper.saturating_add(read));
                    }
                    hint
                }
            }
        }
    }

    impl<B> Default for ReplayBody<B> {
        /// An empty, replayable body.
        fn default() -> Self {
            ReplayBody::full(Bytes::new())
        }
    }

    impl<B> fmt::Debug for ReplayBody<B> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.kind {
                Kind::Buffered { data, .. } => f
                    .debug_struct("ReplayBody::Buffered")
                    .field("len", &data.as_ref().map_or(0, Bytes::len))
                    .finish(),
                Kind::Once { prefix, .. } => f
                    .debug_struct("ReplayBody::Once")
                    .field("prefix_chunks", &prefix.len())
                    .finish_non_exhaustive(),
            }
        }
    }

    /// Replays `http::Request<ReplayBody<B>>` whose body was buffered: the
    /// head (method, URI, version, headers, extensions) is cloned and the
    /// buffered body shared. A request whose body is sent once is not
    /// replayed.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ReplayBodies;

    impl<B> Replay<http::Request<ReplayBody<B>>> for ReplayBodies {
        fn replay(
            &self,
            request: &http::Request<ReplayBody<B>>,
        ) -> Option<http::Request<ReplayBody<B>>> {
            let body = request.body().try_clone()?;
            let mut copy = http::Request::new(body);
            *copy.method_mut() = request.method().clone();
            *copy.uri_mut() = request.uri().clone();
            *copy.version_mut() = request.version();
            *copy.headers_mut() = request.headers().clone();
            *copy.extensions_mut() = request.extensions().clone();
            Some(copy)
        }
    }
}
