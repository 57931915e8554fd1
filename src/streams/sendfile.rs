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
//! Only an HTTP/1 connection on a plain stream socket qualifies ([`ViewerSocket::of`]); anything
//! else (HTTP/2, a subrequest, TLS if ever added) keeps the copying path.

use pingora::protocols::Stream;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::io;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Why a connection is served by copying instead of `sendfile`: the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// `zero_copy: false` in the configuration.
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
    fd: AsyncFd<OwnedFd>,
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
        let fd = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }
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
        if len == 0 {
            return Ok(0);
        }
        loop {
            let mut ready = self.fd.writable().await?;
            let sent = ready.try_io(|fd| {
                let mut at = offset;
                match rustix::fs::sendfile(fd.get_ref(), file, Some(&mut at), len) {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the page file ended before the ring's edge",
                    )),
                    Ok(n) => Ok(n),
                    Err(rustix::io::Errno::INTR) => Err(io::ErrorKind::WouldBlock.into()),
                    Err(e) => Err(e.into()),
                }
            });
            match sent {
                Ok(result) => return result,
                Err(_would_block) => continue,
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

    /// The duplicated fd (for tests).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}
