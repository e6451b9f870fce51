//! The upstream behind a real HTTP/1.1 server on loopback.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_service::Service;

use super::Upstream;

/// A running server: its address, and the way to stop it.
///
/// Dropping the handle without [`shutdown`](Self::shutdown) stops accepting
/// new connections too, but does not wait for open ones.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets open connections finish their
    /// current requests, and waits for them.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `upstream` over HTTP/1.1 on `addr` (use `127.0.0.1:0` for a free
/// port): `POST /v1/chat/completions` (JSON, or `text/event-stream` when the
/// request sets `stream`) and `GET /v1/models`.
///
/// A connection reset fault closes the connection without an answer. Must be
/// called within a tokio runtime with I/O enabled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// use llm_sluice::sim::{serve, Upstream};
///
/// let upstream = Upstream::builder().build().unwrap();
/// let (addr, handle) = serve(upstream, "127.0.0.1:0".parse().unwrap()).await?;
/// assert!(addr.ip().is_loopback() && addr.port() != 0);
/// handle.shutdown().await;
/// # Ok(()) }
/// ```
pub async fn serve(
    upstream: Upstream,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let http = hyper::server::conn::http1::Builder::new();
        loop {
            let event = std::future::poll_fn(|cx| {
                if Pin::new(&mut stop_rx).poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                listener.poll_accept(cx).map(Some)
            })
            .await;
            let stream = match event {
                None => break,
                Some(Ok((stream, _peer))) => stream,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "simulated upstream failed to accept");
                    continue;
                }
            };
            let up = upstream.clone();
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let mut up = up.clone();
                async move { up.call(req).await }
            });
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "simulated upstream connection ended with an error");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
    });
    Ok((
        local,
        ServerHandle {
            addr: local,
            stop: Some(stop_tx),
            task: Some(task),
        },
    ))
}
