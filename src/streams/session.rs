//! One upstream engine session per content id, shared by every client watching it: its phase, its
//! ring, its bookkeeping and its clients.
//!
//! The session, not any client, owns the upstream task ([`super::upstream`]), which alone writes
//! the ring and alone talks to the engine. Clients only read the ring and update their own
//! [`ClientStats`]. The state here is what both sides and the status pages share.
//!
//! Three things are called a session; the names keep them apart: Pingora's HTTP session (one
//! request, `HttpSession` where it appears), ours ([`StreamSession`]: one per content id, many
//! clients) and the engine's ([`crate::engines::EngineSession`]: its playback and command URLs).

mod phase;

pub(crate) use phase::{Linger, Source};
pub use phase::{Phase, StopReason, UpstreamFailure};

use super::ring::edge::EdgeSettings;
use super::ring::{Retention, Ring};
use super::ClientStats;
use crate::config::Config;
use crate::engines::ContentKey;
use crate::error::EdgeError;
use crate::sync::Lock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};
use tokio::sync::{watch, Notify};

/// Who reads a session's ring: who paces a stream without a clock, and what the ring must keep
/// (see [`StreamSession::readers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readers {
    /// No client attached.
    None,
    /// Clients attached, none reading yet.
    Starting,
    /// The reading client furthest ahead, and the slowest one's cursor.
    Leader {
        /// Its ring cursor.
        cursor: u64,
        /// Its stream offset.
        offset: u64,
        /// The cursor of the reading client furthest behind.
        slowest: u64,
    },
}

impl Readers {
    /// The cursor of the reading client furthest behind: what the ring must still keep.
    pub(crate) fn slowest(self) -> Option<u64> {
        match self {
            Readers::Leader { slowest, .. } => Some(slowest),
            Readers::None | Readers::Starting => None,
        }
    }
}

/// The dashboard's bitrate history: a sample every 2 s ...
pub const HISTORY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// ... for the last 5 minutes.
pub const HISTORY_SAMPLES: usize = 150;

/// Mutable bookkeeping, guarded by one short-lived lock.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// When the last client left (None while clients are attached).
    pub idle_since: Option<Instant>,
    /// Where its stream comes from now: nothing, an engine session, or a relay.
    pub source: Source,
    /// The engine's last stat sample for this session, and when it was taken.
    pub engine_stats: Option<(crate::engines::stat::EngineStat, SystemTime)>,
    /// Milliseconds from session start to the first upstream byte.
    pub first_byte_ms: Option<u64>,
    /// Wall-clock time of the first upstream byte.
    pub started_at: Option<SystemTime>,
    /// Wall-clock time the session ended.
    pub ended_at: Option<SystemTime>,
}

/// One content id's shared stream.
#[derive(Debug)]
pub struct StreamSession {
    /// The content id (lower-case 40 hex), as the clients asked for it.
    pub content_id: String,
    /// What the clients asked to play (a content id or an infohash), as the engine is asked.
    pub content: ContentKey,
    /// The chunks every client reads.
    pub ring: Ring,
    /// Its `sendfile` viewers parked at the live edge, sent to by its edge writer.
    pub parked: super::parked::ParkedViewers,
    /// HLS for this session, from its first HLS request on.
    hls: std::sync::OnceLock<Arc<super::hls::Hls>>,
    /// The session's DVR spill, once it streams (none with DVR off).
    spill: std::sync::OnceLock<Arc<super::dvr::Spill>>,
    /// How its HLS is cut, fixed when the session starts.
    hls_settings: super::hls::HlsSettings,
    hls_seeded: AtomicBool,
    /// Monotonic creation time.
    pub created: Instant,
    /// Wall-clock creation time.
    pub created_at: SystemTime,
    /// Bytes read from the engine.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients, all together.
    pub bytes_out: AtomicU64,
    /// Clients that joined, over the session's life.
    pub joins: AtomicU64,
    /// Clients that left, over the session's life.
    pub leaves: AtomicU64,
    /// The most clients attached at once.
    pub peak_clients: AtomicU64,
    /// Failovers so far.
    pub failovers: AtomicU64,
    /// Bitrate samples for the dashboard: (unix ms, ingest bit/s, egress bit/s), oldest first,
    /// the last [`HISTORY_SAMPLES`].
    pub history: Mutex<std::collections::VecDeque<(u64, u64, u64)>>,
    /// Byte counters at the last sample.
    history_last: Mutex<Option<(Instant, u64, u64)>>,
    /// How far the ring's edge runs ahead of real time, seconds (f64 bits; NaN without a clock).
    ingest_lead: AtomicU64,
    /// Bytes read from the engine and not yet in the ring (HLS's read-ahead).
    read_ahead: AtomicUsize,
    /// Set while the upstream task waits for the leading client (reader-paced ingest).
    ingest_waiting: AtomicBool,
    /// Signalled by clients that advanced while the upstream task waits for them.
    client_progress: Notify,
    /// Set once the stream showed no clock.
    clockless: AtomicBool,
    /// Created while this process hands over to its successor (a graceful upgrade): its stream
    /// is read from the successor, never started on an engine here, and never relayed back.
    pub(crate) fed_by_successor: bool,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) cancel: watch::Sender<Option<StopReason>>,
    /// Clients attached now; the session's linger watches it.
    attached: watch::Sender<usize>,
    state: Mutex<SessionState>,
    clients: Mutex<Vec<Arc<ClientStats>>>,
}

impl StreamSession {
    pub(crate) fn new(content: ContentKey, config: &Config) -> Self {
        StreamSession {
            content_id: content.to_string(),
            content,
            hls: std::sync::OnceLock::new(),
            spill: std::sync::OnceLock::new(),
            parked: Default::default(),
            hls_seeded: AtomicBool::new(false),
            hls_settings: super::hls::HlsSettings::of(&config.hls),
            ring: {
                let retention = Retention {
                    min_bytes: config.buffers.stream_buffer_size,
                    min_seconds: config.buffers.stream_buffer_seconds.as_secs_f64(),
                    max_bytes: config.buffers.stream_buffer_max_bytes,
                };
                let ring = if config.viewers.zero_copy {
                    Ring::with_pages(retention)
                } else {
                    Ring::new(retention)
                };
                ring.with_edge(EdgeSettings {
                    batch_bytes: config.viewers.send_batch_bytes as u64,
                    batch_delay: config.viewers.send_batch_delay,
                    keepalive: config.viewers.keepalive_interval,
                })
            },
            created: Instant::now(),
            created_at: SystemTime::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            leaves: AtomicU64::new(0),
            peak_clients: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            history: Mutex::new(std::collections::VecDeque::new()),
            history_last: Mutex::new(None),
            ingest_lead: AtomicU64::new(f64::NAN.to_bits()),
            read_ahead: AtomicUsize::new(0),
            ingest_waiting: AtomicBool::new(false),
            client_progress: Notify::new(),
            clockless: AtomicBool::new(false),
            fed_by_successor: false,
            phase: watch::channel(Phase::Starting).0,
            cancel: watch::channel(None).0,
            attached: watch::channel(0).0,
            state: Mutex::new(SessionState::default()),
            clients: Mutex::new(Vec::new()),
        }
    }

    fn client_list(&self) -> MutexGuard<'_, Vec<Arc<ClientStats>>> {
        self.clients.locked()
    }

    pub(crate) fn add_client_stats(&self, stats: Arc<ClientStats>) {
        self.client_list().push(stats);
    }

    pub(crate) fn remove_client_stats(&self, stats: &Arc<ClientStats>) {
        self.client_list().retain(|c| !Arc::ptr_eq(c, stats));
        self.client_advanced();
    }

    /// The clients attached now.
    pub fn clients(&self) -> Vec<Arc<ClientStats>> {
        self.client_list().clone()
    }

    /// Who paces a stream without a clock: nobody (no client: evict freely), the clients still
    /// waiting for their start (wait for them), or the reading client furthest ahead (its cursor
    /// and stream offset).
    pub(crate) fn readers(&self) -> Readers {
        let clients = self.client_list();
        let reading = clients
            .iter()
            .filter(|c| c.reading.load(Ordering::Relaxed) && !c.is_cut())
            .map(|c| {
                (
                    c.cursor.load(Ordering::Relaxed),
                    c.offset.load(Ordering::Relaxed),
                )
            });
        let mut leader: Option<(u64, u64)> = None;
        let mut slowest = u64::MAX;
        for (cursor, offset) in reading {
            slowest = slowest.min(cursor);
            leader = leader.max(Some((cursor, offset)));
        }
        match leader {
            Some((cursor, offset)) => Readers::Leader {
                cursor,
                offset,
                slowest,
            },
            // Rewound viewers read the DVR spill: they neither pace nor hold the ring.
            None if clients.iter().all(|c| c.dvr.load(Ordering::Relaxed)) => Readers::None,
            None => Readers::Starting,
        }
    }

    /// Marks the stream as having no clock (from then on its readers pace it) and wakes the
    /// clients waiting for a keyframe: none will be found to wait for on a clock's schedule.
    pub(crate) fn set_clockless(&self) {
        if !self.clockless.swap(true, Ordering::Relaxed) {
            self.ring.wake();
        }
    }

    /// True once the stream showed no clock.
    pub fn is_clockless(&self) -> bool {
        self.clockless.load(Ordering::Relaxed)
    }

    /// Called by a client after it advanced (or left): wakes the upstream task if it waits for
    /// the leading client. One relaxed load when nobody waits.
    pub(crate) fn client_advanced(&self) {
        if self.ingest_waiting.load(Ordering::Relaxed) {
            self.client_progress.notify_one();
        }
    }

    /// Waits until a client advances or `limit` passes (the upstream task, reader-paced).
    pub(crate) async fn wait_for_client_progress(&self, limit: std::time::Duration) {
        self.ingest_waiting.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(limit, self.client_progress.notified()).await;
        self.ingest_waiting.store(false, Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.locked()
    }

    /// Why the session ended or failed, in words (from its phase: one record of it).
    pub fn error_text(&self) -> Option<String> {
        match self.phase() {
            Phase::Failed(e) => Some(e.to_string()),
            Phase::Ended(reason) => Some(reason.to_string()),
            _ => None,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// A receiver of phase changes.
    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Clients attached now.
    pub fn client_count(&self) -> usize {
        *self.attached.borrow()
    }

    /// Counts a client in; returns the count. (The registry calls it under its map lock, so an
    /// idle expiry either sees the client or has already removed the session.)
    pub(crate) fn count_in(&self) -> usize {
        self.state().idle_since = None;
        self.attached.send_modify(|n| *n += 1);
        self.client_count()
    }

    /// Counts a client out; returns the count. The last one starts the linger.
    pub(crate) fn count_out(&self) -> usize {
        let mut left = 0;
        self.attached.send_modify(|n| {
            *n = n.saturating_sub(1);
            left = *n;
        });
        if left == 0 {
            self.state().idle_since = Some(Instant::now());
        }
        left
    }

    /// How long this session lingers without clients under `linger`: `watched` once a stream
    /// byte reached a client, else `unwatched`. The one place that choice is made (the session's
    /// linger and the status page's `linger_seconds` both ask here).
    pub(crate) fn linger_for(&self, linger: Linger) -> std::time::Duration {
        if self.bytes_out.load(Ordering::Relaxed) > 0 {
            linger.watched
        } else {
            linger.unwatched
        }
    }

    /// Resolves once the session has had no client for its linger and `expire` agreed to end it
    /// (the registry's last check under its lock: a client attaching at that moment keeps the
    /// session). The linger is `linger()`'s, read each time the last client leaves, `watched` if a
    /// stream byte ever reached a client, else `unwatched`. A client arriving during the linger
    /// restarts it from zero.
    pub(crate) async fn linger(&self, linger: impl Fn() -> Linger, expire: impl Fn() -> bool) {
        let mut attached = self.attached.subscribe();
        loop {
            if attached.wait_for(|n| *n == 0).await.is_err() {
                return std::future::pending().await;
            }
            let idle = self.linger_for(linger());
            tokio::select! {
                _ = tokio::time::sleep(idle) => {
                    if expire() {
                        return;
                    }
                }
                _ = attached.wait_for(|n| *n > 0) => {}
            }
        }
    }

    /// Takes one bitrate sample from the byte counters (called every [`HISTORY_EVERY`]).
    pub fn sample_history(&self, now: Instant, unix_ms: u64) {
        let (bin, bout) = (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        );
        let mut last = self.history_last.locked();
        // The first sample measures from the session's creation, so a chart (and the dashboard's
        // egress figure) is right from the first sample, not from the second.
        let (t, i, o) = last.unwrap_or((self.created, 0, 0));
        let secs = now.duration_since(t).as_secs_f64().max(0.001);
        let rate = |d: u64| (d as f64 * 8.0 / secs) as u64;
        let mut h = self.history.locked();
        h.push_back((
            unix_ms,
            rate(bin.saturating_sub(i)),
            rate(bout.saturating_sub(o)),
        ));
        while h.len() > HISTORY_SAMPLES {
            h.pop_front();
        }
        drop(h);
        *last = Some((now, bin, bout));
    }

    /// True once the session has ended (stopped or failed).
    pub fn is_ended(&self) -> bool {
        matches!(self.phase(), Phase::Ended(_) | Phase::Failed(_))
    }

    /// The session's DVR spill (none with DVR off, before the first byte, or after a fault).
    pub fn spill(&self) -> Option<&Arc<super::dvr::Spill>> {
        self.spill.get()
    }

    /// Gives the session its DVR spill (once; the upstream task does at the first byte).
    pub(crate) fn set_spill(&self, spill: super::dvr::Spill) {
        let _ = self.spill.set(Arc::new(spill));
    }

    /// The session's HLS, if an HLS request asked for it.
    pub fn hls(&self) -> Option<&Arc<super::hls::Hls>> {
        self.hls.get()
    }

    /// The session's HLS, started now (and fed what the ring holds) if it was not yet.
    pub fn start_hls(&self) -> (&Arc<super::hls::Hls>, super::hls::Cuts) {
        let mut seeded = super::hls::Cuts::default();
        let hls = self
            .hls
            .get_or_init(|| Arc::new(super::hls::Hls::new(self.hls_settings)));
        if !self.hls_seeded.swap(true, Ordering::AcqRel) {
            seeded = hls.seed(self.ring.snapshot());
        }
        (hls, seeded)
    }

    /// Asks the upstream task to end the session (it stops the engine session and closes the ring).
    pub fn end(&self, reason: StopReason) {
        self.cancel.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Records how far the ring's edge runs ahead of real time (`None`: the stream has no clock).
    pub(crate) fn set_ingest_lead(&self, lead: Option<f64>) {
        self.ingest_lead
            .store(lead.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
    }

    /// Records the bytes read ahead of the ring's edge (see [`super::ingest`]).
    pub(crate) fn set_read_ahead(&self, bytes: usize) {
        self.read_ahead.store(bytes, Ordering::Relaxed);
    }

    /// Bytes read from the engine that wait for their time in the ring (HLS has them already).
    pub fn read_ahead_bytes(&self) -> usize {
        self.read_ahead.load(Ordering::Relaxed)
    }

    /// How far the ring's edge runs ahead of real time, in seconds; `None` while the stream has
    /// no clock (or before its first chunk).
    pub fn ingest_lead_seconds(&self) -> Option<f64> {
        Some(f64::from_bits(self.ingest_lead.load(Ordering::Relaxed))).filter(|v| !v.is_nan())
    }

    /// The stream's bytes per second: measured on the stream clock over the ring, else upstream
    /// bytes per wall second since the first byte.
    pub fn byte_rate(&self) -> Option<f64> {
        if let Some(bps) = self.ring.bitrate_bps() {
            return Some(bps / 8.0);
        }
        let first_byte_ms = self.state().first_byte_ms?;
        let streaming_for = self.created.elapsed().as_secs_f64() - first_byte_ms as f64 / 1000.0;
        (streaming_for > 0.2).then(|| self.bytes_in.load(Ordering::Relaxed) as f64 / streaming_for)
    }
}

#[cfg(test)]
mod tests;
