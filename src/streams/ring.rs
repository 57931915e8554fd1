//! The per-session ring: recent stream chunks shared by every client of a content id.
//!
//! **What it is.** A bounded queue of chunks, each a whole number of 188-byte TS packets starting on
//! a packet boundary, numbered by a sequence that only grows. The upstream reader publishes; every
//! client reads from its own cursor (a sequence number) at its own pace.
//!
//! **Who owns the bytes.** Each chunk is stored once as [`Bytes`] and handed to clients by
//! reference count; no client copy exists. A chunk is freed when it leaves the ring and the last
//! client that took it has written it.
//!
//! **Lag policy.** The ring holds at most `capacity` bytes (at least two chunks); publishing evicts
//! the oldest chunks. The publisher never waits for a client. A client whose cursor points at an
//! evicted chunk has fallen off the tail: [`Ring::read`] answers [`Read::Lagged`] with how far
//! behind it was, and the caller disconnects it. Nothing is skipped silently: a player would
//! rather reconnect than decode a stream with holes.
//!
//! **Closing.** [`Ring::close`] marks the end of the stream. Clients drain what is left after their
//! cursor and then see [`Read::Closed`]. Waiters are woken through a `watch` channel carrying the
//! next sequence number.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::watch;

/// What [`Ring::read`] found at a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Chunks starting at the cursor; the new cursor is the old one plus their count.
    Chunks(Vec<Bytes>),
    /// Nothing new yet; wait on [`Ring::subscribe`].
    Pending,
    /// The cursor's chunk was evicted: the client fell off the tail. Compare its stream offset
    /// with [`Ring::published_bytes`] to know by how much.
    Lagged,
    /// The stream ended and everything after the cursor was read.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    chunks: VecDeque<Bytes>,
    /// Sequence number of `chunks[0]`.
    first_seq: u64,
    /// Stream offset (bytes since the start) of `chunks[0]`.
    first_offset: u64,
    /// Bytes held in `chunks`.
    held: usize,
    closed: bool,
}

/// A bounded, shared ring of TS chunks. Safe to use from many tasks.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    state: Mutex<State>,
    head: watch::Sender<u64>,
}

impl Ring {
    /// A ring holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Ring {
            capacity,
            state: Mutex::new(State::default()),
            head: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a chunk and evicts the oldest ones beyond capacity (always keeping the newest).
    pub fn publish(&self, chunk: Bytes) {
        let next = {
            let mut s = self.lock();
            s.held += chunk.len();
            s.chunks.push_back(chunk);
            while s.held > self.capacity && s.chunks.len() > 1 {
                if let Some(old) = s.chunks.pop_front() {
                    s.held -= old.len();
                    s.first_seq += 1;
                    s.first_offset += old.len() as u64;
                }
            }
            s.first_seq + s.chunks.len() as u64
        };
        self.head.send_replace(next);
    }

    /// Marks the end of the stream and wakes every waiter.
    pub fn close(&self) {
        self.lock().closed = true;
        self.head.send_modify(|_| {});
    }

    /// Whether [`Ring::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// A receiver that changes whenever a chunk is published or the ring closes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// The cursor for a client joining now: the newest chunks whose total is at most
    /// `burst_bytes`, but at least the newest chunk, so a joiner gets bytes at once and starts on a
    /// chunk (hence packet) boundary. An empty ring gives the next sequence.
    pub fn join_cursor(&self, burst_bytes: usize) -> u64 {
        let s = self.lock();
        let mut taken = 0usize;
        let mut back = 0u64;
        for c in s.chunks.iter().rev() {
            if back > 0 && taken + c.len() > burst_bytes {
                break;
            }
            taken += c.len();
            back += 1;
        }
        s.first_seq + s.chunks.len() as u64 - back
    }

    /// Up to `max` chunks from `cursor` on.
    pub fn read(&self, cursor: u64, max: usize) -> Read {
        let s = self.lock();
        if cursor < s.first_seq {
            return Read::Lagged;
        }
        let start = (cursor - s.first_seq) as usize;
        if start >= s.chunks.len() {
            return if s.closed {
                Read::Closed
            } else {
                Read::Pending
            };
        }
        Read::Chunks(s.chunks.iter().skip(start).take(max).cloned().collect())
    }

    /// Whether the chunk at `cursor` has been evicted (a reader there fell off the tail).
    pub fn is_evicted(&self, cursor: u64) -> bool {
        cursor < self.lock().first_seq
    }

    /// Bytes published since the ring was created (the stream offset of the live edge).
    pub fn published_bytes(&self) -> u64 {
        let s = self.lock();
        s.first_offset + s.held as u64
    }

    /// Bytes currently held.
    pub fn held_bytes(&self) -> usize {
        self.lock().held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    /// A reader within capacity gets every chunk in order, shared not copied.
    #[test]
    fn reader_within_capacity_gets_every_chunk() {
        let ring = Ring::new(1000);
        let a = chunk(100, 1);
        ring.publish(a.clone());
        ring.publish(chunk(100, 2));
        match ring.read(0, 10) {
            Read::Chunks(v) => {
                assert_eq!(v.len(), 2);
                assert_eq!(v[0].as_ptr(), a.as_ptr(), "chunk is shared, not copied");
                assert_eq!(v[1][0], 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ring.read(2, 10), Read::Pending);
    }

    /// Overflow evicts the oldest chunks; a reader behind them is told it lagged.
    #[test]
    fn overflow_evicts_oldest_and_reports_lag() {
        let ring = Ring::new(250); // holds 2 chunks of 100
        for i in 0..5 {
            ring.publish(chunk(100, i));
        }
        assert_eq!(ring.held_bytes(), 200);
        assert_eq!(ring.read(0, 10), Read::Lagged);
        assert_eq!(ring.published_bytes(), 500);
        match ring.read(3, 10) {
            Read::Chunks(v) => assert_eq!(v.iter().map(|c| c[0]).collect::<Vec<_>>(), vec![3, 4]),
            other => panic!("{other:?}"),
        }
    }

    /// A joiner gets the newest chunks up to the burst, and always at least one.
    #[test]
    fn join_cursor_takes_a_bounded_burst() {
        let ring = Ring::new(10_000);
        assert_eq!(
            ring.join_cursor(1000),
            0,
            "empty ring: start at the next chunk"
        );
        for i in 0..10 {
            ring.publish(chunk(100, i));
        }
        assert_eq!(ring.join_cursor(250), 8, "two chunks fit in 250 bytes");
        assert_eq!(ring.join_cursor(0), 9, "at least the newest chunk");
        assert_eq!(ring.join_cursor(100_000), 0, "never before the oldest");
    }

    /// After close, readers drain what is left and then see Closed.
    #[test]
    fn close_drains_then_ends() {
        let ring = Ring::new(1000);
        ring.publish(chunk(10, 7));
        ring.close();
        assert!(matches!(ring.read(0, 10), Read::Chunks(v) if v.len() == 1));
        assert_eq!(ring.read(1, 10), Read::Closed);
    }

    /// Publishing wakes subscribers.
    #[tokio::test]
    async fn publish_wakes_waiters() {
        let ring = std::sync::Arc::new(Ring::new(1000));
        let mut rx = ring.subscribe();
        let r2 = ring.clone();
        let waiter = tokio::spawn(async move {
            rx.changed().await.unwrap();
            *rx.borrow()
        });
        r2.publish(chunk(10, 1));
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
