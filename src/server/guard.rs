//! The connection guard: what every accepted connection goes through before Pingora's HTTP code
//! sees it.
//!
//! Pingora reads a request head with a per-read timeout (a head dripped one byte a minute is
//! never cut), keeps an HTTP/1.1 connection alive forever by default, accepts heads up to 1 MiB
//! and takes every connection the kernel hands it. [`GuardedApp`] wraps the proxy's
//! `ServerApp` so that, without changing Pingora:
//! - a connection over `max_connections` is closed at once, before a byte is read (so a flood
//!   cannot take the file descriptors that engine connections and health probes need);
//! - with `proxy_protocol: true`, the PROXY v1/v2 header is read first and its source address
//!   becomes the connection's peer address (what `Session::client_addr` returns);
//! - the request head must arrive within `request_header_timeout` of the connection's start (or
//!   of its first byte on a kept-alive connection) and be at most `max_request_head_bytes`.
//!
//! [`GuardedStream`] enforces the last on the bytes Pingora reads; once a head is complete (a
//! blank line) it stands aside until a response was written and the client sends again (its next
//! request on a kept-alive connection). Pingora 0.9.1 keeps a connection's keepalive loop inside
//! its HTTP app, so the idle time between requests (`keepalive_timeout`) is Pingora's own
//! per-session keepalive, which the proxy sets on every request.

use super::proxy_protocol;
use crate::metrics::Metrics;
use crate::streams::sendfile::{self, Connection};
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Sleep};

/// The guard's settings (from the config).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// Time to receive a whole request head.
    pub request_header_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keepalive_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_request_head_bytes: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Wraps the proxy's `ServerApp` with the connection guard.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    limits: ConnectionLimits,
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl<A> GuardedApp<A> {
    /// Guards `inner`.
    pub fn new(inner: A, limits: ConnectionLimits, metrics: Arc<Metrics>) -> Self {
        GuardedApp {
            inner: Arc::new(inner),
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }
}

/// One open connection, counted while it lives.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if stream.as_any().is::<GuardedStream>() {
            // A kept-alive connection back for its next request.
            let mut guarded = stream.into_any().downcast::<GuardedStream>().ok()?;
            guarded.next_request();
            guarded
        } else {
            let slot = Slot(self.open.clone());
            let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
            if open > self.limits.max_connections {
                self.metrics.connections_refused.inc();
                log::debug!(
                    "connection refused: {open} open, max_connections {}",
                    self.limits.max_connections
                );
                return None; // dropping the stream closes it
            }
            let mut stream = stream;
            let peer = if self.limits.proxy_protocol {
                let read = tokio::time::timeout(
                    self.limits.request_header_timeout,
                    proxy_protocol::read_header(&mut stream),
                )
                .await;
                match read {
                    Ok(Ok(addr)) => addr,
                    Ok(Err(e)) => {
                        self.metrics.connections_refused.inc();
                        log::debug!("connection closed: {e}");
                        return None;
                    }
                    Err(_) => {
                        log::debug!("connection closed: no PROXY header in time");
                        return None;
                    }
                }
            } else {
                None
            };
            Box::new(GuardedStream::new(stream, slot, &self.limits, peer))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Where a connection is in its request cycle.
#[derive(Debug)]
enum Phase {
    /// Between requests on a kept-alive connection: waiting for a head's first byte.
    Idle,
    /// Receiving a head: bytes so far, and the last two bytes (to find the blank line).
    Head { bytes: usize, last: [u8; 2] },
    /// The head is complete: reads are the request's body, or the idle read of a stream.
    /// Once a response was written, the client's next bytes start its next request's head.
    Body { responded: bool },
}

/// An accepted connection under the guard (see the module docs).
pub struct GuardedStream {
    inner: Stream,
    /// Holds the connection's slot; shared with a viewer that takes the socket over.
    connection: Arc<Connection>,
    phase: Phase,
    deadline: Option<Pin<Box<Sleep>>>,
    request_header_timeout: Duration,
    keepalive_timeout: Duration,
    max_head: usize,
    /// The socket digest with the PROXY header's source as peer (`None`: the socket's own).
    proxied: Option<Arc<SocketDigest>>,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl GuardedStream {
    fn new(inner: Stream, slot: Slot, l: &ConnectionLimits, peer: Option<SocketAddr>) -> Self {
        let proxied = peer.map(|addr| {
            let d = SocketDigest::from_raw_fd(inner.id());
            let _ = d.peer_addr.set(Some(addr.into()));
            Arc::new(d)
        });
        let connection = sendfile::register(inner.id(), Box::new(slot));
        GuardedStream {
            inner,
            connection,
            phase: Phase::Head {
                bytes: 0,
                last: [0; 2],
            },
            // The first head is timed from the connection's start: a connection that sends
            // nothing is cut too.
            deadline: Some(Box::pin(sleep(l.request_header_timeout))),
            request_header_timeout: l.request_header_timeout,
            keepalive_timeout: l.keepalive_timeout,
            max_head: l.max_request_head_bytes,
            proxied,
        }
    }

    /// The connection was kept alive: wait for the next head at most `keepalive_timeout`.
    fn next_request(&mut self) {
        self.phase = Phase::Idle;
        self.deadline = Some(Box::pin(sleep(self.keepalive_timeout)));
    }

    /// A response is being written: the client's next bytes are its next request.
    fn responded(&mut self) {
        if let Phase::Body { responded } = &mut self.phase {
            *responded = true;
        }
    }

    /// Accounts bytes read in the current phase.
    fn saw(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if matches!(self.phase, Phase::Idle | Phase::Body { responded: true }) {
            self.phase = Phase::Head {
                bytes: 0,
                last: [0; 2],
            };
            self.deadline = Some(Box::pin(sleep(self.request_header_timeout)));
        }
        let Phase::Head { bytes, last } = &mut self.phase else {
            return Ok(());
        };
        let too_large = |max: usize| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request head larger than {max} bytes"),
            )
        };
        for (i, &b) in data.iter().enumerate() {
            // A head ends at an empty line: CRLF CRLF, or LF LF as lenient parsers accept.
            let end = b == b'\n' && (last[1] == b'\n' || (last[1] == b'\r' && last[0] == b'\n'));
            last[0] = last[1];
            last[1] = b;
            if end {
                // A whole head in one read is measured like one that came in pieces.
                if *bytes + i + 1 > self.max_head {
                    return Err(too_large(self.max_head));
                }
                self.phase = Phase::Body { responded: false };
                self.deadline = None;
                return Ok(());
            }
        }
        *bytes += data.len();
        if *bytes > self.max_head {
            return Err(too_large(self.max_head));
        }
        Ok(())
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // A request's body (or a stream's idle read) passes untouched.
            Poll::Ready(Ok(())) if matches!(this.phase, Phase::Body { responded: false }) => {
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => {
                let got = buf.filled()[before..].to_vec();
                Poll::Ready(this.saw(&got))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                let what = match this.phase {
                    Phase::Idle => "idle kept-alive connection closed",
                    _ => "request head not received in time",
                };
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.responded();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A viewer that took the socket over still streams on it (see `streams::sendfile`):
        // Pingora letting the request go must not send a FIN.
        if self.connection.taken_over() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.responded();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        // A viewer that took the socket over still streams on it (see `streams::sendfile`).
        if !self.connection.taken_over() {
            self.inner.shutdown().await
        }
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        sendfile::unregister(self.inner.id(), &self.connection);
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

/// TLS facts come from the wrapped stream (a zero-copy writer must know whether bytes on the
/// socket would bypass a TLS layer).
impl Ssl for GuardedStream {
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.proxied
            .clone()
            .or_else(|| self.inner.get_socket_digest())
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
