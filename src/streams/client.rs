//! One viewer of a session: its membership ([`ClientHandle`]) and its position in the ring.

use super::ring::Read;
use super::{Sessions, StreamSession};
use crate::access::ClientAddr;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Most chunks taken from the ring per read.
const READ_BATCH: usize = 16;

/// Longest stretch of stream a client that waited for the session's start holds back for its
/// first keyframe. Fixed: longer than any broadcast GOP (typically 0.5–5 s), short enough that a
/// stream whose keyframes cannot be found still starts.
const FIRST_KEYFRAME_WAIT_SECONDS: f64 = 10.0;

/// How a client watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// One long MPEG-TS response (`/ace/getstream`).
    Ts,
    /// Playlist and segment requests (`/ace/manifest.m3u8`); present while it keeps asking.
    Hls,
}

impl Protocol {
    /// The status field and metric label.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Ts => "ts",
            Protocol::Hls => "hls",
        }
    }
}

/// What status pages show of one client; shared between the client's task and the session.
#[derive(Debug)]
pub struct ClientStats {
    /// The client's address.
    pub addr: Option<ClientAddr>,
    /// How it watches.
    pub protocol: Protocol,
    /// When it joined.
    pub joined: Instant,
    /// Bytes written to it.
    pub bytes_sent: AtomicU64,
    /// Stream offset of the next byte it gets; the live edge minus this is its lag.
    pub offset: AtomicU64,
    /// Ring sequence number of the next chunk it reads.
    pub cursor: AtomicU64,
    /// False while it waits for the stream's first keyframe: such a client does not pace a
    /// stream without a clock (it would wait for the ring while the ring waits for it).
    pub reading: AtomicBool,
    /// Cut to keep `max_buffer_bytes` (see [`crate::streams::budget`]): it no longer holds its
    /// ring back and leaves at its next step.
    cut: AtomicBool,
    /// It reads the session's DVR spill, not the ring (a rewound viewer): its `offset` is in the
    /// spill, and it never holds the ring back.
    pub dvr: AtomicBool,
}

impl ClientStats {
    /// A client that just joined, at the ring's start.
    pub(crate) fn new(addr: Option<ClientAddr>, protocol: Protocol) -> Self {
        ClientStats {
            addr,
            protocol,
            joined: Instant::now(),
            bytes_sent: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            // An HLS viewer reads segments, not the ring: it never paces or holds the ring.
            reading: AtomicBool::new(protocol == Protocol::Ts),
            cut: AtomicBool::new(false),
            dvr: AtomicBool::new(false),
        }
    }

    /// Cuts the client (see [`ClientStats::is_cut`]).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Whether the buffer budget cut it.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

/// A client counted into a session. Dropping it counts the client out.
#[derive(Debug)]
pub struct ClientHandle {
    sessions: Arc<Sessions>,
    session: Arc<StreamSession>,
    stats: Arc<ClientStats>,
    cursor: u64,
    /// Stream offset of the next byte this client gets (to measure lag).
    offset: u64,
    /// Join pieces (PAT + PMT, the keyframe's chunk from the keyframe on) not yet written; they
    /// come before the chunk at `cursor`.
    lead_in: Vec<Bytes>,
    /// A client that waited for the session's start holds back until the first keyframe.
    awaiting_keyframe: bool,
}

/// What the client should do next.
#[derive(Debug)]
pub enum Next {
    /// Write these chunks, then ask again.
    Write(Vec<Bytes>),
    /// Nothing new: wait for the ring to change.
    Wait,
    /// The client fell off the ring's tail by this many bytes, or the buffer budget cut it
    /// ([`ClientHandle::is_cut`]): disconnect it.
    Lagged(u64),
    /// The stream ended: finish the response.
    End,
}

impl ClientHandle {
    pub(crate) fn new(
        sessions: Arc<Sessions>,
        session: Arc<StreamSession>,
        addr: Option<ClientAddr>,
        protocol: Protocol,
    ) -> Self {
        let stats = Arc::new(ClientStats::new(addr, protocol));
        session.add_client_stats(stats.clone());
        ClientHandle {
            sessions,
            session,
            stats,
            cursor: 0,
            offset: 0,
            lead_in: Vec::new(),
            awaiting_keyframe: false,
        }
    }

    /// The session this client watches.
    pub fn session(&self) -> &Arc<StreamSession> {
        &self.session
    }

    /// The client's address.
    pub fn addr(&self) -> Option<ClientAddr> {
        self.stats.addr
    }

    /// The client's address for log lines (`-` when unknown).
    pub fn addr_text(&self) -> String {
        self.stats
            .addr
            .map_or_else(|| "-".into(), |a| a.to_string())
    }

    /// Positions the client for its first read: a client that waited for the session's start gets
    /// the stream from its first keyframe (keepalives until then; if none can come, it starts as a
    /// joiner does); a joiner starts on a keyframe with the PAT and PMT in
    /// front (see [`super::ring::Ring::join_point`]), its burst bounded by `join_burst_bytes` or
    /// one second of stream, whichever is smaller.
    pub fn position(&mut self, waited_for_start: bool) {
        if waited_for_start {
            self.set_cursor(0);
            self.offset = 0;
            self.set_awaiting_keyframe(true);
            return;
        }
        self.join_now();
    }

    fn join_now(&mut self) {
        let config = self.sessions.config();
        let one_second = self
            .session
            .byte_rate()
            .map(|r| r as usize)
            .unwrap_or(usize::MAX);
        let join = self
            .session
            .ring
            .join_point(config.buffers.join_burst_bytes.min(one_second));
        self.set_cursor(join.cursor);
        self.offset = join.offset;
        self.lead_in = join.lead_in;
        self.stats.offset.store(self.offset, Ordering::Relaxed);
    }

    fn set_awaiting_keyframe(&mut self, awaiting: bool) {
        self.awaiting_keyframe = awaiting;
        self.stats.reading.store(!awaiting, Ordering::Relaxed);
        if !awaiting {
            self.session.client_advanced();
        }
    }

    fn set_cursor(&mut self, cursor: u64) {
        self.cursor = cursor;
        self.stats.cursor.store(cursor, Ordering::Relaxed);
    }

    /// Whether the buffer budget cut this client (it must leave; see [`Next::Lagged`]).
    pub fn is_cut(&self) -> bool {
        self.stats.is_cut()
    }

    /// The next step for this client.
    pub fn next_step(&mut self) -> Next {
        if self.stats.is_cut() {
            return Next::Lagged(
                self.session
                    .ring
                    .published_bytes()
                    .saturating_sub(self.offset),
            );
        }
        if self.awaiting_keyframe {
            let ring = &self.session.ring;
            if let Some(join) = ring.first_keyframe_join() {
                self.set_cursor(join.cursor);
                self.offset = join.offset;
                self.lead_in = join.lead_in;
                self.stats.offset.store(self.offset, Ordering::Relaxed);
                self.set_awaiting_keyframe(false);
            } else if ring.is_closed()
                || ring.is_evicted(self.cursor)
                || ring.no_keyframe_to_wait_for()
                || self.session.is_clockless()
                || ring.edge_media() >= FIRST_KEYFRAME_WAIT_SECONDS
                || ring.published_bytes()
                    >= self.sessions.config().buffers.stream_buffer_size as u64
            {
                // No keyframe to wait for (audio only, no clock, a GOP longer than the wait):
                // start like a joiner, near the live edge, rather than behind everyone.
                self.join_now();
                self.set_awaiting_keyframe(false);
            } else {
                return Next::Wait;
            }
        }
        if !self.lead_in.is_empty() {
            return Next::Write(self.lead_in.clone());
        }
        match self.session.ring.read(self.cursor, READ_BATCH) {
            Read::Chunks(v) => Next::Write(v),
            Read::Pending => Next::Wait,
            Read::Closed => Next::End,
            Read::Lagged => Next::Lagged(
                self.session
                    .ring
                    .published_bytes()
                    .saturating_sub(self.offset),
            ),
        }
    }

    /// Resolves when the ring evicts the chunk this client is writing or about to write, with how
    /// many bytes behind the live edge it is. Lets a client stuck in a blocked write be dropped as
    /// soon as it falls off the ring, not only when its write times out.
    pub async fn fell_off(&self, ring_changed: &mut tokio::sync::watch::Receiver<u64>) -> u64 {
        loop {
            if self.session.ring.is_evicted(self.cursor) {
                return self
                    .session
                    .ring
                    .published_bytes()
                    .saturating_sub(self.offset);
            }
            if ring_changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The stream offset of the next ring byte this client gets, when what [`ClientHandle::next_step`]
    /// returns next are ring chunks (contiguous from here, as in the session's page file);
    /// `None` while join pieces (PAT + PMT, a partial chunk) or the first keyframe come first.
    pub fn ring_offset(&self) -> Option<u64> {
        (self.lead_in.is_empty() && !self.awaiting_keyframe).then_some(self.offset)
    }

    /// Records that one piece returned by [`ClientHandle::next_step`] was written.
    /// Makes this a rewound viewer starting at stream offset `offset` of the DVR spill: it stops
    /// reading (and holding) the ring.
    pub fn become_dvr(&mut self, offset: u64) {
        self.stats.reading.store(false, Ordering::Relaxed);
        self.stats.dvr.store(true, Ordering::Relaxed);
        self.offset = offset;
        self.stats.offset.store(offset, Ordering::Relaxed);
        self.lead_in.clear();
    }

    /// What status pages show of this client, shared: the session's edge writer advances it
    /// while the client is parked (see [`super::parked`]).
    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    /// Takes the position back from the shared stats after the client was parked (the edge
    /// writer advanced them, chunk by chunk, as [`ClientHandle::wrote`] would have). Only for a
    /// client reading ring chunks ([`ClientHandle::ring_offset`] is `Some`).
    pub fn resume(&mut self) {
        self.cursor = self.stats.cursor.load(Ordering::Relaxed);
        self.offset = self.stats.offset.load(Ordering::Relaxed);
    }

    /// Stream offset of the next byte this client gets.
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    /// A rewound viewer wrote `n` bytes: its position is now stream offset `offset`.
    pub fn wrote_from_spill(&mut self, n: usize, offset: u64) {
        self.offset = offset;
        self.stats.offset.store(offset, Ordering::Relaxed);
        self.count_sent(n as u64);
    }

    /// Counts `n` bytes sent to this client.
    fn count_sent(&self, n: u64) {
        self.stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
        self.session.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.sessions.metrics().downstream_bytes.inc_by(n);
    }

    /// The client wrote `chunk` (the one it was given).
    pub fn wrote(&mut self, chunk: &Bytes) {
        let n = chunk.len() as u64;
        if self.lead_in.is_empty() {
            self.set_cursor(self.cursor + 1);
            self.offset += n;
            self.stats.offset.store(self.offset, Ordering::Relaxed);
            self.session.client_advanced();
        } else {
            // Join pieces: the offset already points past them.
            self.lead_in.remove(0);
        }
        self.count_sent(n);
    }

    /// How far behind the live edge this client is, in stream seconds.
    pub fn lag_seconds(&self) -> f64 {
        self.session.ring.lag_seconds(self.cursor)
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.session.remove_client_stats(&self.stats);
        self.sessions.detach(&self.session, self.stats.addr);
    }
}
