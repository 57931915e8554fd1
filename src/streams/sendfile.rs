//! A TS viewer's socket, written directly: `sendfile` from the session's page file, `send` for
//! the few bytes that are not in it (join lead-ins, keepalive nulls).
//!
//! **Who owns what.** Pingora owns the connection: it parsed the request, wrote the response head
//! and one body piece through its own (flushed) writer, and closes the socket when the request
//! ends. A [`ViewerSocket`] holds a `dup` of the socket's fd registered with tokio's reactor on
//! its own (epoll registers each fd number separately), waits for it to be writable and writes
//! with non-blocking calls. Pingora writes nothing more on the connection meanwhile, so the two
//! never interleave. Dropping the `ViewerSocket` deregisters and closes only the dup.
//!
//! **Taking the connection over.** Once the head and a first piece have gone out through Pingora,
//! the viewer can take the connection over ([`take_over`]): its task goes on alone with the dup
//! and a small state, Pingora finishes the request (writing nothing: the body is close-delimited)
//! and frees its session, buffers and request future, which are most of a viewer's memory. The
//! server's connection guard registers each connection here ([`register`]) and, for a connection
//! taken over, skips the shutdown Pingora sends when it lets a connection go, so the socket
//! stays open under the dup; the guard's count of open connections is held by the
//! [`Connection`] until the viewer's task ends too.
//!
//! Only an HTTP/1 connection on a plain stream socket qualifies ([`ViewerSocket::of`]); anything
//! else (HTTP/2, a subrequest, TLS if ever added) keeps the copying path.

use crate::sync::Lock;
use pingora::protocols::Stream;
use rustix::fd::{BorrowedFd, OwnedFd, RawFd};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Most chunks in one vectored `send`. Fixed: a read batch of the ring is 16 chunks, well under
/// the kernel's `UIO_MAXIOV` (1024).
const MAX_IOVECS: usize = 16;

/// Why a connection is served by copying instead of `sendfile`: the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// `zero_copy: false` (or, on Pingora's path, `viewer_takeover: false`) in the configuration.
    Disabled,
    /// Not a plain HTTP/1 TCP connection (HTTP/2, a subrequest, TLS).
    Transport,
    /// The session has no page file (the kernel refused one, or its write failed).
    NoPages,
    /// The socket could not be duplicated or registered.
    Socket,
}

impl CopyReason {
    /// The `reason` label of `ts_viewers_total{path="copy"}`.
    pub fn label(self) -> &'static str {
        match self {
            CopyReason::Disabled => "disabled",
            CopyReason::Transport => "transport",
            CopyReason::NoPages => "no_pages",
            CopyReason::Socket => "socket",
        }
    }
}

/// A viewer's socket for direct writes (see the module docs).
#[derive(Debug)]
pub struct ViewerSocket {
    /// Shared with the session's edge writer while the viewer is parked there
    /// (`streams::parked`): the fd stays open until both let it go.
    fd: AsyncFd<Arc<OwnedFd>>,
}

impl ViewerSocket {
    /// The plain TCP socket under a Pingora HTTP/1 stream, duplicated and registered for
    /// writability; `Transport` when the stream is anything else.
    pub fn of(stream: Option<&Stream>) -> Result<Self, CopyReason> {
        let stream = stream.ok_or(CopyReason::Transport)?;
        if stream.get_ssl_digest().is_some() {
            return Err(CopyReason::Transport);
        }
        // Pingora's `UniqueID` of a connection is its socket's fd (through the guard's wrapper too).
        let raw = stream.id();
        // SAFETY: `raw` is the open socket of `stream`, which the `&Stream` borrow keeps alive for
        // this whole statement; the borrowed fd is used only to `dup` it and does not escape.
        #[allow(unsafe_code)]
        let dup = rustix::io::fcntl_dupfd_cloexec(unsafe { BorrowedFd::borrow_raw(raw) }, 0)
            .map_err(|_| CopyReason::Socket)?;
        match rustix::net::sockopt::socket_type(&dup) {
            Ok(rustix::net::SocketType::STREAM) => {}
            _ => return Err(CopyReason::Transport),
        }
        // The dup shares the open file's O_NONBLOCK with Pingora's socket (set by tokio).
        // SAFETY: `dup` is an `OwnedFd` the `AsyncFd` owns from here on: it stays open and is the
        // same fd until the `AsyncFd` is dropped.
        #[allow(unsafe_code)]
        let fd = unsafe {
            AsyncFd::register_with_interest(
                Arc::new(dup),
                Interest::WRITABLE.add(Interest::READABLE),
            )
        }
        .map_err(|_| CopyReason::Socket)?;
        Ok(ViewerSocket { fd })
    }

    /// Waits until the socket takes bytes, then hands it `len` bytes of `file` from `offset`
    /// with `sendfile`; the count sent (at least 1 unless `len` is 0). The kernel passes the
    /// file's pages to the socket by reference: nothing is copied in user space or into the
    /// socket's buffer.
    pub async fn send_file(
        &self,
        file: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        let sent = self.send_file_while(file, offset, len, || true).await?;
        Ok(sent.unwrap_or(0))
    }

    /// [`Self::send_file`] of a file whose start is released as a stream moves on (the page
    /// file): `held()` is asked right before each `sendfile`, once the socket takes bytes, and
    /// `None` comes back when the bytes are gone (a paused player whose socket took nothing for
    /// longer than the file keeps them): nothing was sent, so no released (zero) byte went out.
    pub async fn send_file_while(
        &self,
        file: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        held: impl Fn() -> bool,
    ) -> io::Result<Option<usize>> {
        if len == 0 {
            return Ok(Some(0));
        }
        let send = |fd: &Arc<OwnedFd>| {
            let mut at = offset;
            match rustix::fs::sendfile(fd, file, Some(&mut at), len) {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the page file ended before the ring's edge",
                )),
                Ok(n) => Ok(n),
                Err(rustix::io::Errno::INTR) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e.into()),
            }
        };
        // A viewer at the live edge nearly always finds room in its socket: it tries at once,
        // without asking the reactor (a readiness poll per send); only a full socket waits for
        // it, and the reactor's readiness is then cleared by the `try_io` below. The task's
        // budget is still spent per send, so a viewer catching up at line speed yields to the
        // others as it did when every send awaited readiness.
        tokio::task::coop::consume_budget().await;
        if !held() {
            return Ok(None);
        }
        match send(self.fd.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            result => return result.map(Some),
        }
        loop {
            let mut ready = self.fd.writable().await?;
            if !held() {
                return Ok(None);
            }
            match ready.try_io(|fd| send(fd.get_ref())) {
                Ok(result) => return result.map(Some),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until the socket takes bytes, then writes `chunks` from byte `skip` of the first on,
    /// with one vectored `send` (up to [`MAX_IOVECS`] chunks); the count sent (at least 1 unless
    /// there is nothing to send).
    pub async fn send_chunks(&self, chunks: &[bytes::Bytes], skip: usize) -> io::Result<usize> {
        let mut slices = Vec::with_capacity(chunks.len().min(MAX_IOVECS));
        let mut skip = skip;
        for c in chunks.iter().take(MAX_IOVECS) {
            let part = &c[skip.min(c.len())..];
            skip = skip.saturating_sub(c.len());
            if !part.is_empty() {
                slices.push(io::IoSlice::new(part));
            }
        }
        if slices.is_empty() {
            return Ok(0);
        }
        loop {
            let mut ready = self.fd.writable().await?;
            let sent = ready.try_io(|fd| {
                let mut ancillary = rustix::net::SendAncillaryBuffer::default();
                rustix::net::sendmsg(
                    fd.get_ref(),
                    &slices,
                    &mut ancillary,
                    rustix::net::SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `data` (a join lead-in, a null packet), waiting for the socket as needed.
    pub async fn send_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.fd.writable().await?;
            let sent = ready.try_io(|fd| {
                rustix::net::send(fd.get_ref(), data, rustix::net::SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Resolves when the client closed its side (or the connection broke). Bytes it sends after
    /// its request are read and ignored: a stream's connection carries one request.
    pub async fn closed(&self) {
        // Small: it lives as long as the viewer, and a viewer sends nothing after its request.
        let mut sink = [0u8; 64];
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return;
            };
            match ready.try_io(|fd| {
                rustix::net::recv(fd.get_ref(), &mut sink, rustix::net::RecvFlags::empty())
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            }) {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) | Err(_) => {}
            }
        }
    }

    /// The socket's fd, for the session's edge writer to send on while the viewer is parked.
    pub fn shared_fd(&self) -> Arc<OwnedFd> {
        self.fd.get_ref().clone()
    }

    /// Ends the response: `FIN` after every byte sent (the socket itself closes when the last
    /// fd is dropped).
    pub fn finish(&self) {
        let _ = rustix::net::shutdown(self.fd.get_ref(), rustix::net::Shutdown::Write);
    }
}

/// One accepted connection as the server's guard holds it, shared with a viewer that takes it
/// over (see the module docs).
pub struct Connection {
    taken: AtomicBool,
    /// What counts the connection as open where the server counts them; released when the last
    /// holder (the guard's stream or the viewer) drops it.
    _held: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("taken", &self.taken_over())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Whether a viewer took the connection over: Pingora must not shut it down.
    pub fn taken_over(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }
}

/// Open connections by socket fd. An fd names one connection while it is registered: the guard
/// registers when it accepts and unregisters before the socket closes.
static CONNECTIONS: Mutex<Option<HashMap<RawFd, Weak<Connection>>>> = Mutex::new(None);

fn connections() -> std::sync::MutexGuard<'static, Option<HashMap<RawFd, Weak<Connection>>>> {
    CONNECTIONS.locked()
}

/// Registers the connection on socket `fd`, holding `held` (the guard's connection count) for as
/// long as the connection or a viewer that takes it over lives.
pub fn register(fd: RawFd, held: Box<dyn Send + Sync>) -> Arc<Connection> {
    let c = Arc::new(Connection {
        taken: AtomicBool::new(false),
        _held: held,
    });
    connections()
        .get_or_insert_with(HashMap::new)
        .insert(fd, Arc::downgrade(&c));
    c
}

/// Forgets `connection` (its guard lets it go; the socket closes after this).
pub fn unregister(fd: RawFd, connection: &Arc<Connection>) {
    let mut map = connections();
    if let Some(map) = map.as_mut() {
        if map
            .get(&fd)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(connection)))
        {
            map.remove(&fd);
        }
    }
}

/// Takes over the registered connection on socket `fd`: from now on its guard will not shut it
/// down. `None` if the connection is not registered (no guard: the viewer stays in Pingora's
/// task).
pub fn take_over(fd: RawFd) -> Option<Arc<Connection>> {
    let c = connections().as_ref()?.get(&fd)?.upgrade()?;
    c.taken.store(true, Ordering::Release);
    Some(c)
}
