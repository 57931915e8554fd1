//! The ring's bytes once more, as page-cache pages a socket can send from without a copy.
//!
//! **What it is.** A [`PageFile`] is an anonymous in-memory file (`memfd`) whose byte at file
//! offset `o` is the stream's byte at stream offset `o`. The ring's single publisher appends every
//! chunk to it once ([`PageFile::append`], one `pwrite`), before the chunk becomes visible to
//! readers; TS viewers then hand ranges of it to their sockets with `sendfile`, so the kernel
//! passes the same pages to every socket and no viewer costs a copy of the stream (see
//! `routes/zero_copy.rs`).
//!
//! **Retention.** The file grows only by appending and is never rewritten: what leaves the ring
//! is released by punching a hole ([`PageFile::release_before`], `fallocate(PUNCH_HOLE)`), which
//! frees the pages from the file while a socket that still holds them keeps them alive (the
//! kernel counts its references). A page is therefore never changed under a socket that is
//! sending it, whatever the receiver's pace. The file is sparse: its size grows with the stream,
//! its memory is what the ring holds (rounded to pages).
//!
//! **The one race, and how it is closed.** A viewer checks that its range is still held and then
//! calls `sendfile`; the ring may evict (and punch) in between, and a punched range reads as
//! zeros. [`PageFile::released`] is raised *before* each punch, so a viewer that reads it after
//! its `sendfile` and finds its range's start below it knows the bytes it sent may be zeros: it
//! had fallen off the ring's tail anyway and is dropped as a lagging viewer.
//!
//! **Who owns it.** The session's [`super::ring::Ring`] owns the file (writes and punches); every
//! viewer reads it through a borrowed fd. If the kernel refuses (no `memfd`, a failed write) the
//! ring goes on without it and every viewer uses the copying path (`PageFile::failed`).

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Page size for hole punching. Fixed: a punch that is not page-aligned only zeroes (does not
/// free) the partial pages; 4 KiB is the smallest page size of every Linux target, so aligning to
/// it never frees a page that still holds a byte the ring keeps.
const PAGE: u64 = 4096;

/// Released ranges are punched once at least this much lies behind the ring's tail. Fixed: one
/// `fallocate` per ~256 KiB (a few chunks) instead of per chunk; the memory this leaves held is
/// negligible next to the ring.
const PUNCH_BATCH: u64 = 256 * 1024;

/// A session's stream as sparse, append-only page-cache memory (see the module docs).
#[derive(Debug)]
pub struct PageFile {
    fd: OwnedFd,
    /// Stream offset below which the file may hold holes (raised before each punch).
    released: AtomicU64,
    /// Set when a write failed: the file no longer mirrors the ring and must not be read.
    failed: AtomicBool,
}

impl PageFile {
    /// A new, empty page file; an error when the kernel offers no `memfd`.
    pub fn new() -> io::Result<Self> {
        let fd = rustix::fs::memfd_create(
            "acestream-edge-ring",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )?;
        Ok(PageFile {
            fd,
            released: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        })
    }

    /// The file, for `sendfile`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Writes `data` at stream offset `offset` (the ring's live edge). Called by the ring's one
    /// publisher before the chunk is visible to readers. A failure marks the file failed and is
    /// returned once for the log.
    pub fn append(&self, offset: u64, mut data: &[u8]) -> io::Result<()> {
        if self.is_failed() {
            return Ok(());
        }
        let mut at = offset;
        while !data.is_empty() {
            match rustix::io::pwrite(&self.fd, data, at) {
                Ok(0) => {
                    self.failed.store(true, Ordering::Release);
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "page file full"));
                }
                Ok(n) => {
                    data = &data[n..];
                    at += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    self.failed.store(true, Ordering::Release);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Frees the pages wholly before stream offset `offset` (the ring's tail), in batches.
    pub fn release_before(&self, offset: u64) {
        let from = self.released.load(Ordering::Acquire);
        let to = offset / PAGE * PAGE;
        if to < from + PUNCH_BATCH {
            return;
        }
        // Raised first: a reader that sent from below `to` sees it after its `sendfile`.
        self.released.store(to, Ordering::Release);
        let mode = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        if let Err(e) = rustix::fs::fallocate(&self.fd, mode, from, to - from) {
            // Memory is not freed, but what readers see is still right; say it once.
            if !self.failed.swap(true, Ordering::AcqRel) {
                log::warn!("page file: releasing pages failed ({e}); zero-copy viewers fall back to copying");
            }
        }
    }

    /// Stream offset below which the file may hold holes.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// Whether the file stopped mirroring the ring (viewers must copy instead).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Bytes of memory the file holds (its allocated blocks).
    #[cfg(test)]
    fn resident_bytes(&self) -> u64 {
        rustix::fs::fstat(&self.fd)
            .map(|st| st.st_blocks as u64 * 512)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_at(f: &PageFile, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let n = rustix::io::pread(&f.fd, &mut buf, offset).unwrap();
        buf.truncate(n);
        buf
    }

    /// Appends land at their stream offsets and read back byte for byte.
    #[test]
    fn appends_read_back_at_their_offsets() {
        let f = PageFile::new().unwrap();
        f.append(0, b"hello ").unwrap();
        f.append(6, b"world").unwrap();
        assert_eq!(read_at(&f, 0, 11), b"hello world");
        assert_eq!(read_at(&f, 6, 5), b"world");
    }

    /// Releasing frees whole pages behind the tail in batches, keeps the partial page and every
    /// byte after it, and raises `released` to the punched boundary.
    #[test]
    fn release_frees_whole_pages_behind_the_tail() {
        let f = PageFile::new().unwrap();
        let mb = vec![7u8; 1 << 20];
        for i in 0..4u64 {
            f.append(i << 20, &mb).unwrap();
        }
        let before = f.resident_bytes();
        assert!(before >= 4 << 20, "{before}");
        f.release_before(100); // under a page: nothing
        assert_eq!(f.released(), 0);
        let tail = (3 << 20) + 100;
        f.release_before(tail);
        assert_eq!(f.released(), 3 << 20);
        assert!(f.resident_bytes() <= before - (3 << 20), "pages were freed");
        assert_eq!(read_at(&f, 3 << 20, 4), vec![7u8; 4], "bytes after stay");
        assert_eq!(read_at(&f, 0, 4), vec![0u8; 4], "a hole reads as zeros");
        // A small step behind the last punch waits for a batch.
        f.release_before(tail + PAGE * 2);
        assert_eq!(f.released(), 3 << 20);
        assert!(!f.is_failed());
    }
}
