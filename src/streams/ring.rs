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

use super::pages::PageFile;
use crate::sync::Lock;
use crate::ts::KeyframeMark;
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
}

impl Ring {
    /// A ring with the given retention.
    pub fn new(retention: Retention) -> Self {
        Ring {
            retention,
            state: Mutex::new(State::default()),
            head: watch::channel(0).0,
            pages: None,
        }
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
        let (next, tail) = {
            let mut s = self.lock();
            s.held += chunk.len();
            s.entries.push_back(Entry { data: chunk, media });
            while s.should_evict(&self.retention) {
                s.evict_front();
            }
            (s.first_seq + s.entries.len() as u64, s.first_offset)
        };
        if let Some(pages) = &self.pages {
            pages.release_before(tail);
        }
        self.head.send_replace(next);
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

    /// The cursor of the newest chunks whose total is at most `burst_bytes`, but at least the
    /// newest chunk. An empty ring gives the next sequence.
    pub fn join_cursor(&self, burst_bytes: usize) -> u64 {
        let s = self.lock();
        Self::burst_cursor(&s, burst_bytes)
    }

    fn burst_cursor(s: &State, burst_bytes: usize) -> u64 {
        let mut taken = 0usize;
        let mut back = 0u64;
        for e in s.entries.iter().rev() {
            if back > 0 && taken + e.data.len() > burst_bytes {
                break;
            }
            taken += e.data.len();
            back += 1;
        }
        s.first_seq + s.entries.len() as u64 - back
    }

    /// Where a client joining now starts. On a keyframe when the ring has one: the earliest
    /// keyframe within `burst_bytes` of the live edge (the biggest burst that still starts
    /// clean), else the newest keyframe (at most one GOP back); the PAT and PMT current there come
    /// first. Without a keyframe (audio only, a GOP longer than the ring): the newest chunks
    /// within `burst_bytes`, with the newest PAT and PMT in front if known.
    pub fn join_point(&self, burst_bytes: usize) -> JoinPoint {
        let s = self.lock();
        let edge = s.first_offset + s.held as u64;
        // Marks may arrive just before their chunk: only published ones count.
        let published = || s.keyframes.iter().filter(|k| k.offset < edge);
        let pick = published()
            .find(|k| edge - k.offset <= burst_bytes as u64)
            .or_else(|| published().last());
        if let Some(join) = pick.and_then(|k| Self::keyframe_join(&s, k)) {
            return join;
        }
        let cursor = Self::burst_cursor(&s, burst_bytes);
        let offset = s.first_offset
            + s.entries
                .iter()
                .take((cursor - s.first_seq) as usize)
                .map(|e| e.data.len() as u64)
                .sum::<u64>();
        JoinPoint {
            lead_in: s.psi.iter().cloned().collect(),
            cursor,
            offset,
            keyframe: false,
        }
    }

    /// A join at the oldest keyframe the ring holds (for a client that waited for the session's
    /// start: its first picture must be decodable too). `None` until the ring has one.
    pub fn first_keyframe_join(&self) -> Option<JoinPoint> {
        let s = self.lock();
        let k = s.keyframes.front()?;
        Self::keyframe_join(&s, k)
    }

    fn keyframe_join(s: &State, k: &KeyframeMark) -> Option<JoinPoint> {
        let (i, skip) = s.locate(k.offset)?;
        let e = &s.entries[i];
        Some(JoinPoint {
            lead_in: vec![k.psi.clone(), e.data.slice(skip..)],
            cursor: s.first_seq + i as u64 + 1,
            offset: k.offset - skip as u64 + e.data.len() as u64,
            keyframe: true,
        })
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

    /// Everything the ring holds, for a segmenter starting late: each chunk with its stream
    /// offset and media span, the keyframe marks inside, the newest PAT + PMT, and whether the
    /// stream has video keyframes.
    pub fn snapshot(&self) -> RingSnapshot {
        let s = self.lock();
        let mut offset = s.first_offset;
        let chunks = s
            .entries
            .iter()
            .map(|e| {
                let c = (offset, e.data.clone(), e.media);
                offset += e.data.len() as u64;
                c
            })
            .collect();
        RingSnapshot {
            chunks,
            keyframes: s.keyframes.iter().cloned().collect(),
            psi: s.psi.clone(),
            has_video: s.video.unwrap_or(false),
        }
    }

    /// Whether the stream's PMT names a video stream with findable keyframes.
    pub fn has_video(&self) -> bool {
        self.lock().video.unwrap_or(false)
    }

    /// Whether the chunk at `cursor` has been evicted (a reader there fell off the tail).
    pub fn is_evicted(&self, cursor: u64) -> bool {
        cursor < self.lock().first_seq
    }

    /// Sequence number of the oldest chunk held.
    pub fn first_seq(&self) -> u64 {
        self.lock().first_seq
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

    /// Media time of the live edge.
    pub fn edge_media(&self) -> f64 {
        self.lock().edge_media()
    }

    /// Stream seconds between the live edge and a reader at `cursor` (for an evicted cursor: at
    /// least the whole ring's span).
    pub fn lag_seconds(&self, cursor: u64) -> f64 {
        let s = self.lock();
        let edge = s.edge_media();
        let i = cursor.saturating_sub(s.first_seq) as usize;
        match s.entries.get(i) {
            Some(e) => (edge - e.media.start).max(0.0),
            None => 0.0,
        }
    }

    /// The stream's bitrate measured over the ring: bits held per second of stream time held.
    /// `None` while the ring spans less than half a second of stream time.
    pub fn bitrate_bps(&self) -> Option<f64> {
        let s = self.lock();
        let span = s.edge_media() - s.entries.front()?.media.start;
        (span >= 0.5).then(|| s.held as f64 * 8.0 / span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    fn span(start: f64, end: f64) -> MediaSpan {
        MediaSpan {
            start,
            end,
            clocked: true,
        }
    }

    /// A reader within capacity gets every chunk in order, shared not copied.
    #[test]
    fn reader_within_capacity_gets_every_chunk() {
        let ring = Ring::new(Retention::bytes(1000));
        let a = chunk(100, 1);
        ring.publish_bytes(a.clone());
        ring.publish_bytes(chunk(100, 2));
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
        let ring = Ring::new(Retention::bytes(250)); // holds 2 chunks of 100
        for i in 0..5 {
            ring.publish_bytes(chunk(100, i));
        }
        assert_eq!(ring.held_bytes(), 200);
        assert_eq!(ring.read(0, 10), Read::Lagged);
        assert_eq!(ring.published_bytes(), 500);
        match ring.read(3, 10) {
            Read::Chunks(v) => assert_eq!(v.iter().map(|c| c[0]).collect::<Vec<_>>(), vec![3, 4]),
            other => panic!("{other:?}"),
        }
    }

    /// The time rule keeps more than the byte minimum when the stream time asks for it (for a
    /// reader that needs it), the byte cap wins over both, and `evicts_through` predicts exactly
    /// what a publish evicts.
    #[test]
    fn retention_in_time_and_bytes() {
        let ring = Ring::new(Retention {
            min_bytes: 200,
            min_seconds: 5.0,
            max_bytes: 1000,
        });
        ring.needed_from(Some(0));
        // 100-byte chunks of 1 s each: 5 s of stream needs 500 bytes, more than the 200 minimum.
        for i in 0..8 {
            let t = i as f64;
            let predicted = ring.evicts_through(100, span(t, t + 1.0));
            ring.publish(chunk(100, i as u8), span(t, t + 1.0));
            assert_eq!(ring.first_seq(), predicted, "prediction at chunk {i}");
        }
        assert_eq!(ring.held_bytes(), 500, "5 s of stream kept");
        assert!((ring.lag_seconds(ring.first_seq()) - 5.0).abs() < 1e-9);
        assert_eq!(ring.bitrate_bps(), Some(800.0), "500 bytes over 5 s");
        // 0.1 s chunks: the byte minimum (200) decides.
        let ring = Ring::new(Retention {
            min_bytes: 200,
            min_seconds: 0.15,
            max_bytes: 1000,
        });
        ring.needed_from(Some(0));
        for i in 0..10 {
            let t = i as f64 / 10.0;
            ring.publish(chunk(100, i as u8), span(t, t + 0.1));
        }
        assert_eq!(ring.held_bytes(), 200);
        // The cap: 10 s per chunk would keep everything, but 300 bytes is the most.
        let ring = Ring::new(Retention {
            min_bytes: 100,
            min_seconds: 100.0,
            max_bytes: 300,
        });
        ring.needed_from(Some(0));
        for i in 0..10 {
            let t = i as f64 * 10.0;
            let predicted = ring.evicts_through(100, span(t, t + 10.0));
            ring.publish(chunk(100, i as u8), span(t, t + 10.0));
            assert_eq!(ring.first_seq(), predicted);
        }
        assert_eq!(ring.held_bytes(), 300);
    }

    /// The time floor holds only what a reader still needs: with every reader at the edge (or
    /// none) the ring shrinks to the byte minimum, and a reader behind keeps its chunks until it
    /// is `min_seconds` behind.
    #[test]
    fn time_floor_holds_only_needed_chunks() {
        let ring = Ring::new(Retention {
            min_bytes: 200,
            min_seconds: 5.0,
            max_bytes: 1000,
        });
        let publish = |i: u64| {
            let t = i as f64;
            let predicted = ring.evicts_through(100, span(t, t + 1.0));
            ring.publish(chunk(100, i as u8), span(t, t + 1.0));
            assert_eq!(ring.first_seq(), predicted, "prediction at chunk {i}");
        };
        for i in 0..8 {
            publish(i);
        }
        assert_eq!(ring.held_bytes(), 200, "nobody reads: the byte minimum");
        // A reader at chunk 7 stops reading; the ring keeps its chunks until it is 5 s behind.
        ring.needed_from(Some(7));
        for i in 8..11 {
            publish(i);
        }
        assert_eq!((ring.first_seq(), ring.held_bytes()), (7, 400));
        for i in 11..15 {
            publish(i);
        }
        assert_eq!(
            ring.held_bytes(),
            500,
            "5 s of stream for the reader behind"
        );
        assert_eq!(ring.read(7, 1), Read::Lagged, "it fell off after 5 s");
        // It caught up: what it read goes.
        ring.needed_from(Some(14));
        publish(15);
        assert_eq!(ring.held_bytes(), 200);
    }

    /// A joiner gets the newest chunks up to the burst, and always at least one.
    #[test]
    fn join_cursor_takes_a_bounded_burst() {
        let ring = Ring::new(Retention::bytes(10_000));
        assert_eq!(
            ring.join_cursor(1000),
            0,
            "empty ring: start at the next chunk"
        );
        for i in 0..10 {
            ring.publish_bytes(chunk(100, i));
        }
        assert_eq!(ring.join_cursor(250), 8, "two chunks fit in 250 bytes");
        assert_eq!(ring.join_cursor(0), 9, "at least the newest chunk");
        assert_eq!(ring.join_cursor(100_000), 0, "never before the oldest");
    }

    /// A join starts at the earliest keyframe within the burst, else the newest one, with its
    /// PSI first and the keyframe's chunk cut at the keyframe; without keyframes, on a chunk
    /// boundary with the newest PSI in front.
    #[test]
    fn join_point_prefers_keyframes() {
        let ring = Ring::new(Retention::bytes(10_000));
        let plain = ring.join_point(250);
        assert!(plain.lead_in.is_empty() && !plain.keyframe);
        for i in 0..10 {
            ring.publish_bytes(chunk(100, i));
        }
        let psi = |n: u8| Bytes::from(vec![n; 4]);
        ring.add_keyframes(vec![
            KeyframeMark {
                offset: 250,
                psi: psi(1),
                pts: None,
            },
            KeyframeMark {
                offset: 650,
                psi: psi(2),
                pts: None,
            },
            KeyframeMark {
                offset: 820,
                psi: psi(3),
                pts: None,
            },
        ]);
        // Within 400 bytes of the edge (1000): 650 and 820; the earliest wins.
        let j = ring.join_point(400);
        assert!(j.keyframe);
        assert_eq!(j.lead_in[0], psi(2));
        assert_eq!(j.lead_in[1], chunk(50, 6), "chunk 6 from byte 50 on");
        assert_eq!((j.cursor, j.offset), (7, 700));
        // Nothing within 100 bytes: the newest keyframe.
        let j = ring.join_point(100);
        assert_eq!(j.lead_in[0], psi(3));
        assert_eq!((j.cursor, j.offset), (9, 900));
        // Evicted keyframes are forgotten; without any, a chunk boundary with the newest PSI.
        let small = Ring::new(Retention::bytes(200));
        small.publish_bytes(chunk(100, 0));
        small.add_keyframes(vec![KeyframeMark {
            offset: 0,
            psi: psi(7),
            pts: None,
        }]);
        for i in 1..5 {
            small.publish_bytes(chunk(100, i));
        }
        let j = small.join_point(100);
        assert!(!j.keyframe);
        assert_eq!(j.lead_in, vec![psi(7)]);
        assert_eq!((j.cursor, j.offset), (4, 400));
        // A client that waited for the start begins at the oldest keyframe held.
        let j = ring.first_keyframe_join().expect("a keyframe");
        assert_eq!(j.lead_in[0], psi(1));
        assert_eq!((j.cursor, j.offset), (3, 300));
        assert_eq!(small.first_keyframe_join(), None);
    }

    /// On a stream without a clock, a needed chunk is kept past the byte minimum, but never past
    /// the byte cap.
    #[test]
    fn clockless_needed_chunks_are_held_up_to_the_cap() {
        let ring = Ring::new(Retention {
            min_bytes: 200,
            min_seconds: 0.0,
            max_bytes: 500,
        });
        ring.needed_from(Some(1));
        for i in 0..4 {
            ring.publish_bytes(chunk(100, i));
        }
        assert_eq!(
            (ring.first_seq(), ring.held_bytes()),
            (1, 300),
            "chunk 1 on is kept"
        );
        assert_eq!(ring.evicts_through(100, MediaSpan::default()), 1);
        for i in 4..8 {
            ring.publish_bytes(chunk(100, i));
        }
        assert_eq!(ring.held_bytes(), 500, "the cap wins");
        ring.needed_from(None);
        ring.publish_bytes(chunk(100, 8));
        assert_eq!(ring.held_bytes(), 200);
    }

    /// After close, readers drain what is left and then see Closed.
    #[test]
    fn close_drains_then_ends() {
        let ring = Ring::new(Retention::bytes(1000));
        ring.publish_bytes(chunk(10, 7));
        ring.close();
        assert!(matches!(ring.read(0, 10), Read::Chunks(v) if v.len() == 1));
        assert_eq!(ring.read(1, 10), Read::Closed);
    }

    /// Publishing wakes subscribers.
    #[tokio::test]
    async fn publish_wakes_waiters() {
        let ring = std::sync::Arc::new(Ring::new(Retention::bytes(1000)));
        let mut rx = ring.subscribe();
        let r2 = ring.clone();
        let waiter = tokio::spawn(async move {
            rx.changed().await.unwrap();
            *rx.borrow()
        });
        r2.publish_bytes(chunk(10, 1));
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
