//! One upstream engine session per content id, shared by every client watching it.
//!
//! The session, not any client, owns the upstream task ([`run_upstream`]): it picks an engine,
//! starts the engine session, reads the MPEG-TS, re-chunks it on 188-byte packet boundaries and
//! publishes the chunks into the [`Ring`]. Clients come and go; the task only ends when the session
//! is ended (idle timer, shutdown) or the upstream fails or ends. The task is the only owner of the
//! engine session, so it alone sends `method=stop`, exactly once, on every way out.

use super::ring::Ring;
use super::{ClientStats, Sessions};
use crate::config::{Config, TS_PACKET_SIZE};
use crate::engines::{Engine, EngineSession, EngineTimeouts, StreamLease};
use crate::error::EdgeError;
use bytes::{Buf, Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Timeout of the fire-and-forget stop call (spec §5: engines may hang).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a session is in its life, as its clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Choosing an engine and asking it for the session.
    Starting,
    /// An engine accepted the session; waiting for its first byte (prebuffering).
    Connected,
    /// Bytes are flowing into the ring.
    Streaming,
    /// Starting failed; every waiting client gets this error.
    Failed(EdgeError),
    /// The session is over (upstream ended, idle timeout, shutdown).
    Ended(String),
}

/// Mutable bookkeeping, guarded by one short-lived lock.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// Clients attached now.
    pub clients: usize,
    /// Bumped whenever the client count drops to zero; an idle timer only fires for its epoch.
    pub idle_epoch: u64,
    /// When the last client left (None while clients are attached).
    pub idle_since: Option<Instant>,
    /// The engine serving this session.
    pub engine: Option<Engine>,
    /// The engine's session (URLs, ids), once started.
    pub engine_session: Option<EngineSession>,
    /// Milliseconds from session start to the first upstream byte.
    pub first_byte_ms: Option<u64>,
    /// Wall-clock time of the first upstream byte.
    pub started_at: Option<SystemTime>,
    /// Wall-clock time the session ended.
    pub ended_at: Option<SystemTime>,
    /// Why the session ended or failed.
    pub error: Option<String>,
    /// The stream reserved on the engine; released when the session is dropped or ends.
    pub lease: Option<StreamLease>,
}

/// One content id's shared stream.
#[derive(Debug)]
pub struct Session {
    /// The content id (lower-case 40 hex), as the clients asked for it.
    pub content_id: String,
    /// The chunks every client reads.
    pub ring: Ring,
    /// Monotonic creation time.
    pub created: Instant,
    /// Wall-clock creation time.
    pub created_at: SystemTime,
    /// Bytes read from the engine.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients, all together.
    pub bytes_out: AtomicU64,
    phase: watch::Sender<Phase>,
    cancel: watch::Sender<Option<String>>,
    state: Mutex<SessionState>,
    clients: Mutex<Vec<Arc<ClientStats>>>,
}

impl Session {
    pub(crate) fn new(content_id: String, ring_capacity: usize) -> Self {
        Session {
            content_id,
            ring: Ring::new(ring_capacity),
            created: Instant::now(),
            created_at: SystemTime::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            phase: watch::channel(Phase::Starting).0,
            cancel: watch::channel(None).0,
            state: Mutex::new(SessionState::default()),
            clients: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn add_client_stats(&self, stats: Arc<ClientStats>) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stats);
    }

    pub(crate) fn remove_client_stats(&self, stats: &Arc<ClientStats>) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| !Arc::ptr_eq(c, stats));
    }

    /// The clients attached now.
    pub fn clients(&self) -> Vec<Arc<ClientStats>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        self.state().clients
    }

    /// Asks the upstream task to end the session (it stops the engine session and closes the ring).
    pub fn end(&self, reason: &str) {
        self.cancel.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason.to_string());
                true
            } else {
                false
            }
        });
    }

    /// Upstream bytes per second since the first byte, if known.
    pub fn byte_rate(&self) -> Option<f64> {
        let first_byte_ms = self.state().first_byte_ms?;
        let streaming_for = self.created.elapsed().as_secs_f64() - first_byte_ms as f64 / 1000.0;
        (streaming_for > 0.2).then(|| self.bytes_in.load(Ordering::Relaxed) as f64 / streaming_for)
    }
}

/// How the upstream task ended.
enum Outcome {
    /// Asked to end (idle, shutdown).
    Cancelled(String),
    /// Could not start: no engine, refusal, timeout.
    StartFailed(EdgeError),
    /// Was streaming, then the engine ended or broke.
    UpstreamEnded(String),
}

/// The session's upstream task: start, stream into the ring, stop. Runs until the session ends.
pub(crate) async fn run_upstream(sessions: Arc<Sessions>, session: Arc<Session>) {
    let config = sessions.config().clone();
    let mut cancel = session.cancel.subscribe();
    let outcome = tokio::select! {
        outcome = stream(&sessions, &session, &config) => outcome,
        reason = cancel.wait_for(|r| r.is_some()) => {
            Outcome::Cancelled(reason.ok().and_then(|r| r.clone()).unwrap_or_else(|| "ended".into()))
        }
    };
    let metrics = sessions.metrics();
    match &outcome {
        Outcome::StartFailed(e) => metrics
            .sessions_started
            .with_label_values(&[start_outcome(e)])
            .inc(),
        Outcome::Cancelled(_) if session.state().first_byte_ms.is_none() => metrics
            .sessions_started
            .with_label_values(&["cancelled"])
            .inc(),
        _ => {}
    }
    let (phase, reason) = match outcome {
        Outcome::Cancelled(reason) => (Phase::Ended(reason.clone()), reason),
        Outcome::UpstreamEnded(reason) => (Phase::Ended(reason.clone()), reason),
        Outcome::StartFailed(e) => (Phase::Failed(e.clone()), e.to_string()),
    };
    let (engine, engine_session) = {
        let mut st = session.state();
        st.ended_at = Some(SystemTime::now());
        if !matches!(phase, Phase::Ended(_)) || st.error.is_none() {
            st.error = Some(reason.clone());
        }
        (st.engine.clone(), st.engine_session.clone())
    };
    session.ring.close();
    session.phase.send_replace(phase);
    sessions.remove(&session);
    log::info!(
        "session {} stopped: reason={reason:?} engine={} duration={:.1}s bytes_in={} bytes_out={}",
        session.content_id,
        engine
            .as_ref()
            .map(|e| e.endpoint.to_string())
            .unwrap_or_else(|| "-".into()),
        session.created.elapsed().as_secs_f64(),
        session.bytes_in.load(Ordering::Relaxed),
        session.bytes_out.load(Ordering::Relaxed),
    );
    if let (Some(engine), Some(es)) = (engine, engine_session) {
        if let Some(cmd) = &es.command_path {
            if let Err(e) = engine.endpoint.stop(cmd, STOP_TIMEOUT).await {
                log::warn!("session {}: stop failed: {e}", session.content_id);
            }
        }
    }
    session.state().lease = None;
}

/// Bound on the stop of a failed upstream, which delays the failover (clients get keepalives).
const FAILOVER_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// How long failovers are counted against `max_failovers`.
const FAILOVER_WINDOW: Duration = Duration::from_secs(60);

async fn stream(sessions: &Sessions, session: &Arc<Session>, config: &Config) -> Outcome {
    let (mut upstream, first) = match start_within_deadline(sessions, session, config, &[]).await {
        Ok(v) => v,
        Err(e) => return Outcome::StartFailed(e),
    };
    let first_byte_ms = session.created.elapsed().as_millis() as u64;
    {
        let mut st = session.state();
        st.first_byte_ms = Some(first_byte_ms);
        st.started_at = Some(SystemTime::now());
    }
    log::info!(
        "session {}: first byte after {first_byte_ms} ms",
        session.content_id
    );
    let metrics = sessions.metrics();
    metrics.sessions_started.with_label_values(&["ok"]).inc();
    metrics
        .upstream_first_byte
        .observe(first_byte_ms as f64 / 1000.0);
    let count_in = |n: usize| {
        session.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        metrics.upstream_bytes.inc_by(n as u64);
    };
    let mut chunker = Rechunker::new(config.copy_chunk_size);
    count_in(first.len());
    chunker.push(&first);
    // The first bytes go out at once: clients are waiting for them.
    chunker.flush_whole_packets(&session.ring);
    session.phase.send_replace(Phase::Streaming);
    let mut failovers: std::collections::VecDeque<Instant> = Default::default();
    loop {
        let reason = pump(session, config, &mut upstream, &mut chunker, &count_in).await;
        chunker.flush_whole_packets(&session.ring);
        let now = Instant::now();
        while failovers
            .front()
            .is_some_and(|t| now.duration_since(*t) > FAILOVER_WINDOW)
        {
            failovers.pop_front();
        }
        if failovers.len() >= config.max_failovers {
            return Outcome::UpstreamEnded(reason);
        }
        failovers.push_back(now);
        metrics.failovers.inc();
        // Clients stay attached (and get keepalives) while the next engine starts.
        let (old_engine, old_session) = {
            let mut st = session.state();
            st.lease = None;
            (st.engine.take(), st.engine_session.take())
        };
        let mut exclude = Vec::new();
        if let Some(engine) = old_engine {
            log::warn!(
                "session {}: upstream on {} failed ({reason}); failing over",
                session.content_id,
                engine.endpoint
            );
            sessions.engines().penalize(engine.addr);
            exclude.push(engine.addr);
            // Stopped before the next start: the next engine may be the same one, and an engine
            // ends the older session of a content id by itself when a new one starts, which
            // would make this stop arrive too late to count.
            if let Some(cmd) = old_session.and_then(|es| es.command_path) {
                if let Err(e) = engine.endpoint.stop(&cmd, FAILOVER_STOP_TIMEOUT).await {
                    log::warn!(
                        "session {}: stop of the failed upstream: {e}",
                        session.content_id
                    );
                }
            }
        }
        let mut next = start_within_deadline(sessions, session, config, &exclude).await;
        if matches!(next, Err(EdgeError::NoEngine(_))) && !exclude.is_empty() {
            // The failed engine is the only one: try it again rather than give up.
            next = start_within_deadline(sessions, session, config, &[]).await;
        }
        match next {
            Ok((new_upstream, first)) => {
                upstream = new_upstream;
                chunker.begin_splice();
                count_in(first.len());
                chunker.push(&first);
                chunker.publish_full(&session.ring);
                log::info!(
                    "session {}: failed over to {}",
                    session.content_id,
                    session
                        .state()
                        .engine
                        .as_ref()
                        .map(|e| e.endpoint.to_string())
                        .unwrap_or_default()
                );
            }
            Err(e) => return Outcome::UpstreamEnded(format!("{reason}; failover failed: {e}")),
        }
    }
}

/// Starts (or restarts) the upstream within `empty_stream_timeout`.
async fn start_within_deadline(
    sessions: &Sessions,
    session: &Arc<Session>,
    config: &Config,
    exclude: &[SocketAddr],
) -> Result<(crate::http1::Response, Bytes), EdgeError> {
    let started = tokio::time::timeout(
        config.empty_stream_timeout,
        start_and_first_bytes(sessions, session, config, exclude),
    )
    .await;
    match started {
        Ok(r) => r,
        Err(_) => {
            if let Some(engine) = session.state().engine.clone() {
                sessions
                    .metrics()
                    .engine_start_errors
                    .with_label_values(&[&engine.addr.to_string(), "no_first_byte"])
                    .inc();
            }
            Err(EdgeError::EmptyStream(config.empty_stream_timeout))
        }
    }
}

/// Moves bytes from the upstream into the ring until the upstream fails; returns why.
async fn pump(
    session: &Arc<Session>,
    config: &Config,
    upstream: &mut crate::http1::Response,
    chunker: &mut Rechunker,
    count_in: &impl Fn(usize),
) -> String {
    let mut last_flush = tokio::time::Instant::now();
    let mut garbage = 0usize;
    loop {
        let flush_at = last_flush + config.chunk_flush_interval;
        let read = tokio::select! {
            r = tokio::time::timeout(config.upstream_stall_timeout, upstream.next_chunk()) => r,
            _ = tokio::time::sleep_until(flush_at), if chunker.pending() >= TS_PACKET_SIZE => {
                chunker.flush_whole_packets(&session.ring);
                last_flush = tokio::time::Instant::now();
                continue;
            }
        };
        match read {
            Ok(Ok(Some(bytes))) => {
                count_in(bytes.len());
                garbage += chunker.push(&bytes);
                if chunker.publish_full(&session.ring) {
                    last_flush = tokio::time::Instant::now();
                    garbage = 0;
                }
                if garbage >= config.copy_chunk_size {
                    return format!("upstream sent {garbage} bytes that are not MPEG-TS");
                }
            }
            Ok(Ok(None)) => return "upstream ended".into(),
            Ok(Err(e)) => return format!("upstream read failed: {e}"),
            Err(_) => return format!("upstream stalled for {:?}", config.upstream_stall_timeout),
        }
    }
}

/// The `outcome` label of a failed start.
fn start_outcome(e: &EdgeError) -> &'static str {
    match e {
        EdgeError::NoEngine(_) => "no_engine",
        EdgeError::EngineRefused { .. } => "engine_refused",
        EdgeError::EngineUnreachable { .. } => "engine_unreachable",
        EdgeError::EmptyStream(_) => "empty_stream",
        _ => "error",
    }
}

/// Starts the session on the best engine, and on a refusal or failure on the next-best one (each
/// engine at most once), until one sends its first bytes.
async fn start_and_first_bytes(
    sessions: &Sessions,
    session: &Arc<Session>,
    config: &Config,
    exclude: &[SocketAddr],
) -> Result<(crate::http1::Response, Bytes), EdgeError> {
    let timeouts = EngineTimeouts {
        connect: config.engine_connect_timeout,
        read: config.engine_read_timeout,
    };
    let mut tried = exclude.to_vec();
    let mut last_error = None;
    loop {
        let (engine, lease) = match sessions.engines().acquire(&tried).await {
            Ok(v) => v,
            // Every candidate failed: answer with the last engine's own reason.
            Err(e) => return Err(last_error.unwrap_or(e)),
        };
        tried.push(engine.addr);
        let label = engine.addr.to_string();
        let metrics = sessions.metrics();
        match start_on(session, &engine, timeouts).await {
            Ok(started) => {
                metrics
                    .engine_selections
                    .with_label_values(&[&label, "started"])
                    .inc();
                session.state().lease = Some(lease);
                return Ok(started);
            }
            Err(e) => {
                log::warn!("session {}: {e}", session.content_id);
                metrics
                    .engine_selections
                    .with_label_values(&[&label, "failed"])
                    .inc();
                let reason = match &e {
                    EdgeError::EngineRefused { .. } => "refused",
                    _ => "unreachable",
                };
                metrics
                    .engine_start_errors
                    .with_label_values(&[&label, reason])
                    .inc();
                // A started engine session that failed before its first byte is stopped now,
                // before trying the next engine.
                let es = session.state().engine_session.take();
                if let Some(cmd) = es.and_then(|es| es.command_path) {
                    let _ = engine.endpoint.stop(&cmd, STOP_TIMEOUT).await;
                }
                session.state().engine = None;
                last_error = Some(e);
            }
        }
    }
}

async fn start_on(
    session: &Arc<Session>,
    engine: &Engine,
    timeouts: EngineTimeouts,
) -> Result<(crate::http1::Response, Bytes), EdgeError> {
    let es = engine
        .endpoint
        .start_session(&session.content_id, timeouts)
        .await?;
    {
        // Recorded at once: from here on, every way out sends a stop.
        let mut st = session.state();
        st.engine = Some(engine.clone());
        st.engine_session = Some(es.clone());
    }
    session.phase.send_if_modified(|p| {
        let first_start = *p == Phase::Starting;
        if first_start {
            *p = Phase::Connected;
        }
        first_start
    });
    log::info!(
        "session {} created on engine {} (playback_session_id={})",
        session.content_id,
        engine.endpoint,
        es.playback_session_id.as_deref().unwrap_or("-")
    );
    let mut upstream = engine.endpoint.open_stream(&es, timeouts).await?;
    loop {
        match upstream.next_chunk().await {
            Ok(Some(b)) if b.is_empty() => continue,
            Ok(Some(b)) => return Ok((upstream, b)),
            Ok(None) => {
                return Err(EdgeError::EngineRefused {
                    engine: engine.endpoint.to_string(),
                    reason: "stream ended before its first byte".into(),
                })
            }
            Err(e) => {
                return Err(EdgeError::EngineUnreachable {
                    engine: engine.endpoint.to_string(),
                    reason: format!("stream failed before its first byte: {e}"),
                })
            }
        }
    }
}

/// Turns arbitrary upstream reads into chunks of whole TS packets that start with the sync byte,
/// and splices a new upstream in after a failover.
#[derive(Debug)]
pub(crate) struct Rechunker {
    chunk_size: usize,
    pending: BytesMut,
    /// Offset in `pending` of the first packet start not yet checked for the sync byte.
    checked: usize,
    splice: Option<Splice>,
}

/// State of a splice: the new upstream starts at its first PAT, and the first PCR-carrying
/// packet of each PID gets the discontinuity_indicator so players resynchronise their clocks.
#[derive(Debug, Default)]
struct Splice {
    found_pat: bool,
    marked_pids: Vec<u16>,
    /// Offset in `pending` of the first packet not yet scanned.
    scan_from: usize,
    scanned_packets: usize,
}

/// Packets scanned after a splice for PCR PIDs to mark.
const SPLICE_SCAN_PACKETS: usize = 4096;

fn pid_of(packet: &[u8]) -> u16 {
    (((packet[1] & 0x1F) as u16) << 8) | packet[2] as u16
}

/// True if the packet has an adaptation field carrying a PCR.
fn has_pcr(packet: &[u8]) -> bool {
    packet[3] & 0x20 != 0 && packet[4] >= 7 && packet[5] & 0x10 != 0
}

impl Rechunker {
    pub(crate) fn new(chunk_size: usize) -> Self {
        Rechunker {
            chunk_size,
            pending: BytesMut::with_capacity(chunk_size * 2),
            checked: 0,
            splice: None,
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Appends upstream bytes; returns how many non-TS bytes were dropped to regain sync.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> usize {
        self.pending.extend_from_slice(bytes);
        let dropped = self.resync();
        self.apply_splice();
        dropped
    }

    /// The next bytes come from a new upstream: drop what is left of the old one's partial
    /// packet and start the new one cleanly.
    pub(crate) fn begin_splice(&mut self) {
        self.pending.clear();
        self.checked = 0;
        self.splice = Some(Splice::default());
    }

    fn apply_splice(&mut self) {
        let Some(sp) = self.splice.as_mut() else {
            return;
        };
        let whole = self.pending.len() / TS_PACKET_SIZE;
        if !sp.found_pat {
            match (0..whole).find(|&i| pid_of(&self.pending[i * TS_PACKET_SIZE..]) == 0) {
                Some(i) => {
                    self.pending.advance(i * TS_PACKET_SIZE);
                    self.checked = self.checked.saturating_sub(i * TS_PACKET_SIZE);
                    sp.found_pat = true;
                    sp.scan_from = 0;
                }
                None => {
                    self.pending.advance(whole * TS_PACKET_SIZE);
                    self.checked = self.checked.saturating_sub(whole * TS_PACKET_SIZE);
                    return;
                }
            }
        }
        let whole = self.pending.len() / TS_PACKET_SIZE;
        let mut i = sp.scan_from / TS_PACKET_SIZE;
        while i < whole && sp.scanned_packets < SPLICE_SCAN_PACKETS {
            let packet = &mut self.pending[i * TS_PACKET_SIZE..(i + 1) * TS_PACKET_SIZE];
            let pid = pid_of(packet);
            if has_pcr(packet) && !sp.marked_pids.contains(&pid) {
                packet[5] |= 0x80; // discontinuity_indicator
                sp.marked_pids.push(pid);
            }
            i += 1;
            sp.scanned_packets += 1;
        }
        sp.scan_from = i * TS_PACKET_SIZE;
        if sp.scanned_packets >= SPLICE_SCAN_PACKETS {
            self.splice = None;
        }
    }

    /// Checks every packet start after `checked` for the sync byte. Where sync is lost, the
    /// packet before (likely truncated) and the bytes up to the next point where the sync byte
    /// repeats every 188 bytes are removed, so every published chunk is whole, aligned packets.
    /// Returns how many bytes were dropped.
    fn resync(&mut self) -> usize {
        let mut dropped = 0;
        loop {
            let len = self.pending.len();
            let mut p = self.checked;
            while p < len && self.pending[p] == 0x47 {
                p += TS_PACKET_SIZE;
            }
            if p >= len {
                self.checked = p;
                return dropped;
            }
            let buf = &self.pending;
            let aligned = |i: usize| {
                (0..3).all(|k| match buf.get(i + k * TS_PACKET_SIZE) {
                    Some(b) => *b == 0x47,
                    None => k > 0,
                })
            };
            let from = p.saturating_sub(TS_PACKET_SIZE);
            let to = (from + 1..len).find(|&i| aligned(i)).unwrap_or(len);
            let mut tail = self.pending.split_off(from);
            tail.advance(to - from);
            self.pending.unsplit(tail);
            dropped += to - from;
            self.checked = from;
            if let Some(sp) = self.splice.as_mut() {
                sp.scan_from = sp.scan_from.min(from);
            }
            log::debug!("upstream lost TS sync: dropped {} bytes", to - from);
        }
    }

    fn take(&mut self, n: usize) -> Bytes {
        self.checked = self.checked.saturating_sub(n);
        if let Some(sp) = self.splice.as_mut() {
            sp.scan_from = sp.scan_from.saturating_sub(n);
        }
        self.pending.split_to(n).freeze()
    }

    /// Publishes every full chunk; true if any was published.
    pub(crate) fn publish_full(&mut self, ring: &Ring) -> bool {
        let mut any = false;
        while self.pending.len() >= self.chunk_size {
            let chunk = self.take(self.chunk_size);
            ring.publish(chunk);
            any = true;
        }
        any
    }

    /// Publishes every full chunk and then whatever whole packets remain.
    pub(crate) fn flush_whole_packets(&mut self, ring: &Ring) {
        self.publish_full(ring);
        let whole = self.pending.len() / TS_PACKET_SIZE * TS_PACKET_SIZE;
        if whole > 0 {
            let chunk = self.take(whole);
            ring.publish(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::ring::Read;

    /// Feeds `data` to a rechunker in `piece`-byte reads and returns what reached the ring.
    fn rechunk(ring: &Ring, chunk_size: usize, data: &[u8], piece: usize) -> Vec<Bytes> {
        let mut c = Rechunker::new(chunk_size);
        for p in data.chunks(piece) {
            c.push(p);
            c.publish_full(ring);
        }
        c.flush_whole_packets(ring);
        match ring.read(0, 100) {
            Read::Chunks(chunks) => chunks,
            other => panic!("{other:?}"),
        }
    }

    fn packets(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let mut p = vec![i as u8; TS_PACKET_SIZE];
                p[0] = 0x47;
                p
            })
            .collect()
    }

    /// Reads of any size come out as chunks of whole packets starting with 0x47.
    #[test]
    fn rechunker_emits_whole_packets_on_boundaries() {
        let ring = Ring::new(1 << 20);
        let data = packets(10);
        let chunks = rechunk(&ring, 3 * TS_PACKET_SIZE, &data, 100);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![564, 564, 564, 188]
        );
        assert!(chunks.iter().all(|c| c[0] == 0x47));
        assert_eq!(chunks.concat(), data);
    }

    /// After a splice the new upstream starts at its first PAT and its first PCR packet carries
    /// the discontinuity indicator.
    #[test]
    fn splice_starts_at_pat_and_marks_discontinuity() {
        let ring = Ring::new(1 << 20);
        let mut c = Rechunker::new(TS_PACKET_SIZE * 100);
        c.begin_splice();
        let mut data = Vec::new();
        let mut video = vec![0u8; TS_PACKET_SIZE];
        video[..6].copy_from_slice(&[0x47, 0x01, 0x00, 0x30, 7, 0x10]); // PID 0x100, AF with PCR
        let mut pat = vec![0xFFu8; TS_PACKET_SIZE];
        pat[..4].copy_from_slice(&[0x47, 0x40, 0x00, 0x10]); // PID 0
        data.extend_from_slice(&video); // before the PAT: dropped
        data.extend_from_slice(&pat);
        data.extend_from_slice(&video);
        data.extend_from_slice(&video);
        c.push(&data);
        c.flush_whole_packets(&ring);
        let Read::Chunks(chunks) = ring.read(0, 10) else {
            panic!()
        };
        let out = chunks.concat();
        assert_eq!(out.len(), 3 * TS_PACKET_SIZE);
        assert_eq!(pid_of(&out), 0, "starts at the PAT");
        assert_eq!(
            out[TS_PACKET_SIZE + 5] & 0x80,
            0x80,
            "first PCR packet marked"
        );
        assert_eq!(out[2 * TS_PACKET_SIZE + 5] & 0x80, 0, "only the first one");
    }

    /// Garbage in the middle of the stream (even across reads) never reaches the ring: the
    /// packet cut by it and the garbage are dropped, and the stream resumes on the grid.
    #[test]
    fn rechunker_drops_garbage_mid_stream() {
        let ring = Ring::new(1 << 20);
        let mut data = packets(3);
        data.truncate(2 * TS_PACKET_SIZE + 50); // the third packet is cut ...
        data.extend(vec![0x99u8; 300]); // ... by garbage
        data.extend(packets(4));
        let chunks = rechunk(&ring, TS_PACKET_SIZE * 2, &data, 70);
        let out = chunks.concat();
        assert!(out
            .chunks(TS_PACKET_SIZE)
            .all(|p| p.len() == TS_PACKET_SIZE && p[0] == 0x47));
        assert_eq!(out.len(), 6 * TS_PACKET_SIZE, "2 good + 4 good packets");
    }

    /// Garbage before the stream is skipped up to the first real packet boundary.
    #[test]
    fn rechunker_resyncs_after_garbage() {
        let ring = Ring::new(1 << 20);
        let mut c = Rechunker::new(TS_PACKET_SIZE);
        let mut data = vec![0x47, 1, 2, 3, 0x99];
        data.extend(packets(4));
        c.push(&data);
        c.flush_whole_packets(&ring);
        let Read::Chunks(chunks) = ring.read(0, 100) else {
            panic!()
        };
        assert_eq!(chunks.concat(), packets(4));
    }
}
