//! The per-session ring: recent stream chunks shared by every client of a content id.
//!
//! **What it is.** A bounded queue of chunks, each a whole number of 188-byte TS packets starting on
//! a packet boundary, numbered by a sequence that only grows. Each chunk carries the span of
//! *stream time* it covers (seconds on the session's continuous media clock, see
//! [`super::pacer`]), so lag and retention are measured in time, not only bytes. The upstream task
//! publishes; every client reads from its own cursor (a sequence number) at its own pace.
//!
//! **Who owns the bytes.** Each chunk is stored once as [`Bytes`] and handed to clients by
//! reference count; no client copy exists. A chunk is freed when it leaves the ring and the last
//! client that took it has written it.
//!
//! **Retention.** The ring always keeps at least [`Retention::min_bytes`] (enough for joins), and
//! never more than [`Retention::max_bytes`] (always the newest chunk). Past the byte minimum it
//! keeps only what a reading client still needs ([`Ring::needed_from`]): for [`Retention::min_seconds`]
//! of stream time behind the edge on a clocked stream, up to the byte cap on one without a clock.
//! So a client may fall that far behind before it is dropped, and the memory for it is spent only
//! while someone is that far behind: with every client at the edge the ring holds the byte
//! minimum. The publisher never waits for a client here; the upstream task decides beforehand
//! whether a publish may evict ([`Ring::evicts_through`]). A client whose cursor points at an
//! evicted chunk has fallen off the tail: [`Ring::read`] answers [`Read::Lagged`] and the caller
//! disconnects it. Nothing is skipped silently: a player would rather reconnect than decode a
//! stream with holes.
//!
//! **Joins.** The ring also keeps the keyframe marks that lie inside it, each with the PAT and PMT
//! current there, so [`Ring::join_point`] can start a joiner on a picture it can decode.
//!
//! **Closing.** [`Ring::close`] marks the end of the stream. Clients drain what is left after their
//! cursor and then see [`Read::Closed`]. Waiters are woken through a `watch` channel carrying the
//! next sequence number.
//!
//! (Over 400 lines with its tests: retention, joins and the eviction forecast the upstream task
//! needs all read one lock-guarded state, and belong together.)

mod measure;

mod join;

pub mod edge;

use super::pages::PageFile;
use crate::sync::Lock;
use crate::ts::KeyframeMark;
use bytes::Bytes;
use edge::{EdgeSettings, EdgeTell, EdgeWakes};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::watch;

/// What [`Ring::read`] found at a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Chunks starting at the cursor; the new cursor is the old one plus their count.
    Chunks(Vec<Bytes>),
    /// Nothing new yet; wait on [`Ring::subscribe`].
    Pending,
    /// The cursor's chunk was evicted: the client fell off the tail.
    Lagged,
    /// The stream ended and everything after the cursor was read.
    Closed,
}

/// What [`Ring::snapshot`] returns.
#[derive(Debug, Clone, Default)]
pub struct RingSnapshot {
    /// Chunks held, oldest first: stream offset, bytes, media span.
    pub chunks: Vec<(u64, Bytes, MediaSpan)>,
    /// Keyframe marks inside them.
    pub keyframes: Vec<KeyframeMark>,
    /// The newest PAT + PMT.
    pub psi: Option<Bytes>,
    /// Whether the PMT names a video stream with findable keyframes.
    pub has_video: bool,
}

/// How much stream the ring keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Bytes kept at least (`stream_buffer_size`).
    pub min_bytes: usize,
    /// Stream seconds kept at least (`stream_buffer_seconds`).
    pub min_seconds: f64,
    /// Bytes never exceeded (`stream_buffer_max_bytes`), except by the newest chunk alone.
    pub max_bytes: usize,
}

impl Retention {
    /// A byte-bounded ring (no time rule): exactly `bytes`.
    pub fn bytes(bytes: usize) -> Self {
        Retention {
            min_bytes: bytes,
            min_seconds: 0.0,
            max_bytes: bytes,
        }
    }
}

/// The stream-time span of a chunk, in seconds on the session's media clock.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MediaSpan {
    /// Media time at the chunk's first byte.
    pub start: f64,
    /// Media time at its end.
    pub end: f64,
    /// True if the times come from the stream's own clock (PCR). Without a clock they follow
    /// the wall clock, which says nothing about how much stream a chunk holds, so such chunks are
    /// retained by bytes only.
    pub clocked: bool,
}

#[derive(Debug)]
struct Entry {
    data: Bytes,
    media: MediaSpan,
}

/// Where a joining client starts.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinPoint {
    /// Bytes to send first: the PAT and PMT, then the rest of the keyframe's chunk from the
    /// keyframe on (empty when the join starts on a chunk boundary without PSI).
    pub lead_in: Vec<Bytes>,
    /// The cursor after the lead-in.
    pub cursor: u64,
    /// Stream offset of the first byte at `cursor`.
    pub offset: u64,
    /// True if the join starts on a keyframe.
    pub keyframe: bool,
}

#[derive(Debug, Default)]
struct State {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    first_seq: u64,
    /// Stream offset (bytes since the start) of `entries[0]`.
    first_offset: u64,
    /// Bytes held in `entries`.
    held: usize,
    closed: bool,
    /// Keyframe marks at or after `first_offset`, oldest first.
    keyframes: VecDeque<KeyframeMark>,
    /// The newest PAT + PMT seen, for joins that cannot start on a keyframe.
    psi: Option<Bytes>,
    /// Whether that PMT names a video stream with findable keyframes (`None` before any PMT).
    video: Option<bool>,
    /// The slowest reading client's cursor: chunks from here on are still needed by someone and
    /// are kept past the byte minimum (see the module docs). `None`: nobody reads.
    needed_from: Option<u64>,
}

/// The oldest chunk as the retention rule sees it: one rule for [`Ring::publish`] and for the
/// forecast in [`Ring::evicts_through`].
struct Evictable {
    /// Its sequence number.
    seq: u64,
    /// Bytes held with it.
    held: usize,
    /// Its length.
    front: usize,
    /// The span of the chunk after it (the new tail if it goes).
    next: MediaSpan,
    /// Media time at the live edge.
    edge: f64,
}

impl Evictable {
    fn evictable(&self, r: &Retention, needed_from: Option<u64>) -> bool {
        if self.held > r.max_bytes {
            return true;
        }
        if self.held - self.front < r.min_bytes {
            return false;
        }
        let needed = needed_from.is_some_and(|k| self.seq >= k);
        // A needed chunk stays while the stream time behind the edge is under the minimum; on a
        // stream without a clock, time says nothing, so it stays up to the byte cap.
        !needed || (self.next.clocked && self.edge - self.next.start >= r.min_seconds)
    }
}

impl State {
    fn edge_media(&self) -> f64 {
        self.entries.back().map(|e| e.media.end).unwrap_or(0.0)
    }

    /// True if the oldest entry should go, given the retention (the newest always stays).
    fn should_evict(&self, r: &Retention) -> bool {
        if self.entries.len() < 2 {
            return false;
        }
        let after = Evictable {
            seq: self.first_seq,
            held: self.held,
            front: self.entries[0].data.len(),
            next: self.entries[1].media,
            edge: self.edge_media(),
        };
        after.evictable(r, self.needed_from)
    }

    fn evict_front(&mut self) {
        if let Some(old) = self.entries.pop_front() {
            self.held -= old.data.len();
            self.first_seq += 1;
            self.first_offset += old.data.len() as u64;
        }
        while self
            .keyframes
            .front()
            .is_some_and(|k| k.offset < self.first_offset)
        {
            self.keyframes.pop_front();
        }
    }

    /// Index of the entry holding stream offset `offset`, and the offset's position in it.
    fn locate(&self, offset: u64) -> Option<(usize, usize)> {
        let mut start = self.first_offset;
        for (i, e) in self.entries.iter().enumerate() {
            let end = start + e.data.len() as u64;
            if offset >= start && offset < end {
                return Some((i, (offset - start) as usize));
            }
            start = end;
        }
        None
    }
}

/// A bounded, shared ring of TS chunks. Safe to use from many tasks.
#[derive(Debug)]
pub struct Ring {
    retention: Retention,
    state: Mutex<State>,
    head: watch::Sender<u64>,
    /// The same bytes as page-cache pages for zero-copy viewers (see [`super::pages`]); `None`
    /// when zero copy is off or the kernel refused.
    pages: Option<PageFile>,
    /// When viewers at the live edge are woken (see [`edge`]).
    edge: Arc<EdgeWakes>,
}

impl Ring {
    /// A ring with the given retention.
    pub fn new(retention: Retention) -> Self {
        Ring {
            retention,
            state: Mutex::new(State::default()),
            head: watch::channel(0).0,
            pages: None,
            edge: Arc::new(EdgeWakes::new(
                EdgeSettings::default(),
                tokio::time::Instant::now(),
            )),
        }
    }

    /// This ring with its live-edge viewers woken as `settings` say (default: at every publish,
    /// no keepalive ticks). The session runs [`Ring::edge_task`].
    pub fn with_edge(mut self, settings: EdgeSettings) -> Self {
        self.edge = Arc::new(EdgeWakes::new(settings, tokio::time::Instant::now()));
        self
    }

    /// The session's edge task: tells batched bytes and ticks keepalives (see [`edge`]); ends
    /// when the ring closes or is dropped.
    pub fn edge_task(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.edge.clone().run(self.head.subscribe())
    }

    /// A receiver that changes when viewers at the live edge should look at the ring: new bytes
    /// in batches, keepalive ticks, a close or a cut (see [`edge`]).
    pub fn subscribe_edge(&self) -> watch::Receiver<EdgeTell> {
        self.edge.subscribe()
    }

    /// A ring whose bytes are also kept in a [`PageFile`] for zero-copy viewers; without one if
    /// the kernel refuses (logged; viewers then copy).
    pub fn with_pages(retention: Retention) -> Self {
        let pages = PageFile::new()
            .map_err(|e| log::warn!("no page file for zero-copy viewers ({e}); they copy instead"))
            .ok();
        Ring {
            pages,
            ..Ring::new(retention)
        }
    }

    /// The page file zero-copy viewers send from, while it mirrors the ring.
    pub fn pages(&self) -> Option<&PageFile> {
        self.pages.as_ref().filter(|p| !p.is_failed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Appends a chunk covering `media` and evicts the oldest ones the retention lets go.
    ///
    /// With a page file, the chunk is written to it first (at its stream offset, before any
    /// reader can see it) and what the ring evicts is released from it afterwards. There is one
    /// publisher per ring (the session's upstream task), so the edge read before the write is
    /// still the edge when the chunk goes in.
    pub fn publish(&self, chunk: Bytes, media: MediaSpan) {
        if let Some(pages) = self.pages() {
            if let Err(e) = pages.append(self.published_bytes(), &chunk) {
                log::warn!("page file write failed ({e}); zero-copy viewers fall back to copying");
            }
        }
        let (next, tail, edge) = {
            let mut s = self.lock();
            s.held += chunk.len();
            s.entries.push_back(Entry { data: chunk, media });
            while s.should_evict(&self.retention) {
                s.evict_front();
            }
            let edge = s.first_offset + s.held as u64;
            (s.first_seq + s.entries.len() as u64, s.first_offset, edge)
        };
        if let Some(pages) = &self.pages {
            pages.release_before(tail);
        }
        self.head.send_replace(next);
        self.edge
            .published(edge, next, media.clocked, tokio::time::Instant::now());
    }

    /// Appends a chunk with no stream-time span (byte retention only); for tests and benches.
    pub fn publish_bytes(&self, chunk: Bytes) {
        let at = self.edge_media();
        self.publish(
            chunk,
            MediaSpan {
                start: at,
                end: at,
                clocked: false,
            },
        );
    }

    /// The sequence number up to which (exclusive) publishing a chunk of `len` bytes covering
    /// `media` would evict. Equal to [`Ring::first_seq`] if it would evict nothing.
    pub fn evicts_through(&self, len: usize, media: MediaSpan) -> u64 {
        let s = self.lock();
        let r = &self.retention;
        let mut held = s.held + len;
        let mut i = 0;
        while i < s.entries.len() {
            let front = s.entries[i].data.len();
            let oldest = Evictable {
                seq: s.first_seq + i as u64,
                held,
                front,
                next: s.entries.get(i + 1).map(|e| e.media).unwrap_or(media),
                edge: media.end,
            };
            if !oldest.evictable(r, s.needed_from) {
                break;
            }
            held -= front;
            i += 1;
        }
        s.first_seq + i as u64
    }

    /// Tells the ring the slowest reading client's cursor (`None`: nobody reads): chunks from
    /// there on are kept past the byte minimum (see the module docs). Set before each publish.
    pub fn needed_from(&self, seq: Option<u64>) {
        self.lock().needed_from = seq;
    }

    /// Records keyframe marks found upstream (offsets before the ring's tail are ignored). The
    /// upstream task records them just before publishing their chunk, so the chunk's publish
    /// wakes clients waiting for a keyframe; a mark whose chunk is not published yet is skipped.
    pub fn add_keyframes(&self, marks: Vec<KeyframeMark>) {
        if marks.is_empty() {
            return;
        }
        let mut s = self.lock();
        for m in marks {
            if m.offset >= s.first_offset {
                s.psi = Some(m.psi.clone());
                s.keyframes.push_back(m);
            }
        }
    }

    /// Records the newest PAT + PMT (for joins without a keyframe) and whether its program has
    /// video whose keyframes can be found.
    pub fn set_psi(&self, psi: Bytes, has_video: bool) {
        let mut s = self.lock();
        s.psi = Some(psi);
        s.video = Some(has_video);
    }

    /// Whether waiting for a first keyframe makes no sense: the PMT says there is no video whose
    /// keyframes can be found.
    pub fn no_keyframe_to_wait_for(&self) -> bool {
        self.lock().video == Some(false)
    }

    /// Wakes every waiter without publishing (something they wait on changed elsewhere).
    pub fn wake(&self) {
        self.head.send_modify(|_| {});
        self.edge.wake();
    }

    /// Marks the end of the stream and wakes every waiter.
    pub fn close(&self) {
        self.lock().closed = true;
        self.head.send_modify(|_| {});
        self.edge.close();
    }

    /// Whether [`Ring::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// A receiver that changes whenever a chunk is published or the ring closes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Up to `max` chunks from `cursor` on.
    pub fn read(&self, cursor: u64, max: usize) -> Read {
        let s = self.lock();
        if cursor < s.first_seq {
            return Read::Lagged;
        }
        let start = (cursor - s.first_seq) as usize;
        if start >= s.entries.len() {
            return if s.closed {
                Read::Closed
            } else {
                Read::Pending
            };
        }
        Read::Chunks(
            s.entries
                .iter()
                .skip(start)
                .take(max)
                .map(|e| e.data.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests;
