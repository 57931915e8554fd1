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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Timeout of the fire-and-forget stop call (spec §5: engines may hang).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a session is in its life, as its clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Choosing an engine and waiting for the first byte.
    Starting,
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

async fn stream(sessions: &Sessions, session: &Arc<Session>, config: &Config) -> Outcome {
    let deadline = tokio::time::Instant::now() + config.empty_stream_timeout;
    let started =
        tokio::time::timeout_at(deadline, start_and_first_bytes(sessions, session, config)).await;
    let (mut upstream, first) = match started {
        Err(_) => {
            if let Some(engine) = session.state().engine.clone() {
                sessions
                    .metrics()
                    .engine_start_errors
                    .with_label_values(&[&engine.addr.to_string(), "no_first_byte"])
                    .inc();
            }
            return Outcome::StartFailed(EdgeError::EmptyStream(config.empty_stream_timeout));
        }
        Ok(Err(e)) => return Outcome::StartFailed(e),
        Ok(Ok(v)) => v,
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
    let mut last_flush = tokio::time::Instant::now();
    loop {
        let flush_at = last_flush + config.chunk_flush_interval;
        let read = tokio::select! {
            r = tokio::time::timeout(config.engine_read_timeout, upstream.next_chunk()) => r,
            _ = tokio::time::sleep_until(flush_at), if chunker.pending() >= TS_PACKET_SIZE => {
                chunker.flush_whole_packets(&session.ring);
                last_flush = tokio::time::Instant::now();
                continue;
            }
        };
        match read {
            Ok(Ok(Some(bytes))) => {
                count_in(bytes.len());
                chunker.push(&bytes);
                if chunker.publish_full(&session.ring) {
                    last_flush = tokio::time::Instant::now();
                }
            }
            Ok(Ok(None)) => {
                chunker.flush_whole_packets(&session.ring);
                return Outcome::UpstreamEnded("upstream ended".into());
            }
            Ok(Err(e)) => {
                chunker.flush_whole_packets(&session.ring);
                return Outcome::UpstreamEnded(format!("upstream read failed: {e}"));
            }
            Err(_) => {
                return Outcome::UpstreamEnded(format!(
                    "upstream stalled for {:?}",
                    config.engine_read_timeout
                ))
            }
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
) -> Result<(crate::http1::Response, Bytes), EdgeError> {
    let timeouts = EngineTimeouts {
        connect: config.engine_connect_timeout,
        read: config.engine_read_timeout,
    };
    let mut tried = Vec::new();
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

/// Turns arbitrary upstream reads into chunks of whole TS packets that start with the sync byte.
#[derive(Debug)]
pub(crate) struct Rechunker {
    chunk_size: usize,
    pending: BytesMut,
}

impl Rechunker {
    pub(crate) fn new(chunk_size: usize) -> Self {
        Rechunker {
            chunk_size,
            pending: BytesMut::with_capacity(chunk_size * 2),
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.resync();
    }

    /// Drops bytes until the buffer starts at a sync byte that repeats every 188 bytes (as far as
    /// the buffer shows), so every published chunk starts on a packet boundary.
    fn resync(&mut self) {
        let buf = &self.pending;
        if buf.is_empty()
            || (buf[0] == 0x47 && (buf.len() <= TS_PACKET_SIZE || buf[TS_PACKET_SIZE] == 0x47))
        {
            return;
        }
        let aligned = |i: usize| {
            (0..3).all(|k| match buf.get(i + k * TS_PACKET_SIZE) {
                Some(b) => *b == 0x47,
                None => k > 0,
            })
        };
        match (0..buf.len()).find(|&i| aligned(i)) {
            Some(i) => {
                log::warn!("upstream lost TS sync: skipped {i} bytes");
                self.pending.advance(i);
            }
            None => {
                log::warn!("upstream sent {} bytes without TS sync", buf.len());
                self.pending.clear();
            }
        }
    }

    /// Publishes every full chunk; true if any was published.
    pub(crate) fn publish_full(&mut self, ring: &Ring) -> bool {
        let mut any = false;
        while self.pending.len() >= self.chunk_size {
            ring.publish(self.pending.split_to(self.chunk_size).freeze());
            any = true;
        }
        any
    }

    /// Publishes every full chunk and then whatever whole packets remain.
    pub(crate) fn flush_whole_packets(&mut self, ring: &Ring) {
        self.publish_full(ring);
        let whole = self.pending.len() / TS_PACKET_SIZE * TS_PACKET_SIZE;
        if whole > 0 {
            ring.publish(self.pending.split_to(whole).freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::ring::Read;

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
        let mut c = Rechunker::new(3 * TS_PACKET_SIZE);
        let data = packets(10);
        for piece in data.chunks(100) {
            c.push(piece);
            c.publish_full(&ring);
        }
        c.flush_whole_packets(&ring);
        let Read::Chunks(chunks) = ring.read(0, 100) else {
            panic!()
        };
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![564, 564, 564, 188]
        );
        assert!(chunks.iter().all(|c| c[0] == 0x47));
        assert_eq!(chunks.concat(), data);
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
