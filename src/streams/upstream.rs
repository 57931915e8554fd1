//! The session's upstream task: start the engine session (trying the next engine on a refusal),
//! read its MPEG-TS, pace it into the ring on the stream's clock, fail over when the upstream
//! breaks, and stop the engine session exactly once on every way out.
//!
//! The task is the only owner of the engine session and the only writer of the ring. Clients come
//! and go; the task only ends when the session is ended (idle timer, shutdown) or the upstream
//! fails beyond its failover budget.

use super::pacer::{Admission, Pacer};
use super::rechunk::{Chunk, Rechunker};
use super::ring::MediaSpan;
use super::session::{Phase, Session, StopReason, UpstreamFailure};
use super::Sessions;
use crate::config::Config;
use crate::engines::{Engine, EngineStream, EngineTimeouts};
use crate::error::EdgeError;
use crate::metrics::Metrics;
use crate::ts::PACKET_SIZE;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Reader-paced ingest re-checks the leading client at least this often, in case a wake-up was
/// missed (a client that left between the check and the wait).
const READER_PACE_RECHECK: Duration = Duration::from_millis(100);

/// How the upstream task ended.
enum Outcome {
    /// Could not start: no engine, refusal, timeout.
    StartFailed(EdgeError),
    /// Asked to end, or was streaming and then ended for good.
    Stopped(StopReason),
}

/// The session's upstream task: start, stream into the ring, stop. Runs until the session ends.
pub(crate) async fn run_upstream(sessions: Arc<Sessions>, session: Arc<Session>) {
    let config = sessions.config().clone();
    let mut cancel = session.cancel.subscribe();
    let outcome = tokio::select! {
        outcome = stream(&sessions, &session, &config) => outcome,
        _ = session.linger(config.stream_idle_timeout, || sessions.expire_if_idle(&session)) => {
            Outcome::Stopped(StopReason::IdleTimeout)
        }
        reason = cancel.wait_for(|r| r.is_some()) => {
            Outcome::Stopped(reason.ok().and_then(|r| r.clone()).unwrap_or(StopReason::Shutdown))
        }
    };
    let metrics = sessions.metrics();
    match &outcome {
        Outcome::StartFailed(e) => metrics
            .sessions_started
            .with_label_values(&[start_outcome(e)])
            .inc(),
        Outcome::Stopped(_) if session.state().first_byte_ms.is_none() => metrics
            .sessions_started
            .with_label_values(&["cancelled"])
            .inc(),
        _ => {}
    }
    let (phase, reason) = match outcome {
        Outcome::Stopped(reason) => {
            let text = reason.to_string();
            (Phase::Ended(reason), text)
        }
        Outcome::StartFailed(e) => {
            let text = e.to_string();
            (Phase::Failed(e), text)
        }
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
            if let Err(e) = engine.endpoint.stop(cmd, config.engine_stop_timeout).await {
                log::warn!("session {}: stop failed: {e}", session.content_id);
            }
        }
    }
    session.state().lease = None;
}

/// At most `max` failovers within any `window`: a session whose engines keep failing ends
/// instead of hopping forever.
#[derive(Debug)]
pub(crate) struct FailoverBudget {
    max: usize,
    window: Duration,
    recent: std::collections::VecDeque<Instant>,
}

impl FailoverBudget {
    pub(crate) fn new(max: usize, window: Duration) -> Self {
        FailoverBudget {
            max,
            window,
            recent: Default::default(),
        }
    }

    /// Takes one failover at `now` if the budget allows it.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

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
    let mut ingest = Ingest::new(session, metrics, config);
    count_in(first.len());
    chunker.push(&first);
    // The first bytes go out at once: clients are waiting for them.
    while let Some(chunk) = chunker.next_flush() {
        ingest.release(chunk).await;
    }
    session.phase.send_replace(Phase::Streaming);
    let mut budget = FailoverBudget::new(config.max_failovers, config.failover_window);
    loop {
        let reason = pump(config, &mut upstream, &mut chunker, &mut ingest, &count_in).await;
        while let Some(chunk) = chunker.next_flush() {
            ingest.release(chunk).await;
        }
        if !budget.take(Instant::now()) {
            return Outcome::Stopped(StopReason::Upstream(reason));
        }
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
                if let Err(e) = engine
                    .endpoint
                    .stop(&cmd, config.failover_stop_timeout)
                    .await
                {
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
                ingest.pacer.splice();
                count_in(first.len());
                chunker.push(&first);
                while let Some(chunk) = chunker.next_full() {
                    ingest.release(chunk).await;
                }
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
            Err(error) => {
                return Outcome::Stopped(StopReason::FailoverFailed {
                    failure: reason,
                    error,
                })
            }
        }
    }
}

/// Starts (or restarts) the upstream within `empty_stream_timeout`.
async fn start_within_deadline(
    sessions: &Sessions,
    session: &Arc<Session>,
    config: &Config,
    exclude: &[SocketAddr],
) -> Result<(EngineStream, Bytes), EdgeError> {
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

/// Moves bytes from the upstream into the ring, paced, until the upstream fails; returns how.
async fn pump(
    config: &Config,
    upstream: &mut EngineStream,
    chunker: &mut Rechunker,
    ingest: &mut Ingest<'_>,
    count_in: &impl Fn(usize),
) -> UpstreamFailure {
    let mut last_flush = tokio::time::Instant::now();
    let mut garbage = 0usize;
    loop {
        let flush_at = last_flush + config.chunk_flush_interval;
        let read = tokio::select! {
            r = tokio::time::timeout(config.upstream_stall_timeout, upstream.next_chunk()) => r,
            _ = tokio::time::sleep_until(flush_at), if chunker.pending() >= PACKET_SIZE => {
                if let Some(chunk) = chunker.next_flush() {
                    ingest.release(chunk).await;
                }
                last_flush = tokio::time::Instant::now();
                continue;
            }
        };
        match read {
            Ok(Ok(Some(bytes))) => {
                count_in(bytes.len());
                garbage += chunker.push(&bytes);
                let mut released = false;
                while let Some(chunk) = chunker.next_full() {
                    // Waits for the chunk's time on the stream clock: meanwhile nothing is read,
                    // and the rest of an engine's burst stays in the engine.
                    ingest.release(chunk).await;
                    released = true;
                }
                if released {
                    last_flush = tokio::time::Instant::now();
                    garbage = 0;
                }
                if garbage >= config.copy_chunk_size {
                    return UpstreamFailure::NotTs(garbage);
                }
            }
            Ok(Ok(None)) => return UpstreamFailure::Ended,
            Ok(Err(e)) => return UpstreamFailure::ReadFailed(e.to_string()),
            Err(_) => return UpstreamFailure::Stalled(config.upstream_stall_timeout),
        }
    }
}

/// Releases chunks into the session's ring on the stream's clock (see [`super::pacer`]), or, for
/// a stream without a clock, no faster than the most advanced client takes them.
struct Ingest<'a> {
    session: &'a Session,
    metrics: &'a Metrics,
    pacer: Pacer,
    /// Reader-paced ingest keeps the ring at most this far ahead of its fastest reader
    /// (`join_burst_bytes`, at least one chunk).
    read_ahead: usize,
}

impl<'a> Ingest<'a> {
    fn new(session: &'a Session, metrics: &'a Metrics, config: &Config) -> Self {
        Ingest {
            session,
            metrics,
            pacer: Pacer::new(config.live_lead),
            read_ahead: config.join_burst_bytes.max(config.copy_chunk_size),
        }
    }

    async fn release(&mut self, chunk: Chunk) {
        let now = tokio::time::Instant::now();
        let Chunk { data, found, .. } = chunk;
        let a: Admission = self.pacer.admit(
            now.into_std(),
            data.len(),
            found.last_pcr,
            found.discontinuity,
        );
        if let Some(r) = a.reanchor {
            self.metrics
                .clock_reanchors
                .with_label_values(&[r.label()])
                .inc();
            log::info!(
                "session {}: stream clock re-anchored ({})",
                self.session.content_id,
                r.label()
            );
        }
        let media = MediaSpan {
            start: a.media_start,
            end: a.media_end,
            clocked: a.release_at.is_some(),
        };
        match a.release_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => self.wait_for_leader(data.len(), media).await,
        }
        let ring = &self.session.ring;
        if let Some(psi) = found.psi {
            ring.set_psi(psi, found.has_video);
        }
        ring.add_keyframes(found.keyframes);
        ring.publish(data, media);
        let lead = self.pacer.has_clock().then(|| {
            let now = tokio::time::Instant::now().into_std();
            self.pacer.lead(now).as_secs_f64()
        });
        self.session.set_ingest_lead(lead);
        if let Some(lead) = lead {
            self.metrics.ingest_lead.observe(lead);
        }
    }

    /// Reader-paced ingest: with clients attached, publish only once the most advanced client
    /// has less than `read_ahead` bytes left to read (so the ring fills at the pace of its fastest
    /// reader, and joiners, who start near the edge, start next to it), and never evict a chunk
    /// that client has not taken. With no client attached, evict freely.
    async fn wait_for_leader(&self, len: usize, media: MediaSpan) {
        let ring = &self.session.ring;
        loop {
            let Some((leader_cursor, leader_offset)) = self.session.leader() else {
                return;
            };
            let ahead = ring.published_bytes().saturating_sub(leader_offset);
            let through = ring.evicts_through(len, media);
            if ahead <= self.read_ahead as u64 && leader_cursor >= through {
                return;
            }
            self.session
                .wait_for_client_progress(READER_PACE_RECHECK)
                .await;
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
) -> Result<(EngineStream, Bytes), EdgeError> {
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
                    let _ = engine.endpoint.stop(&cmd, config.engine_stop_timeout).await;
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
) -> Result<(EngineStream, Bytes), EdgeError> {
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

#[cfg(test)]
mod tests {
    use super::FailoverBudget;
    use std::time::{Duration, Instant};

    /// Three failovers a minute: the fourth within the minute is refused, and one more is
    /// allowed once the oldest has left the window.
    #[test]
    fn failover_budget_counts_within_its_window() {
        let t0 = Instant::now();
        let mut b = FailoverBudget::new(3, Duration::from_secs(60));
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(b.take(at(0)) && b.take(at(10)) && b.take(at(20)));
        assert!(!b.take(at(30)), "a fourth within the minute");
        assert!(
            !b.take(at(60)),
            "the first is still inside the window at 60 s"
        );
        assert!(b.take(at(61)), "the first left the window");
        assert!(!b.take(at(62)));
        let mut none = FailoverBudget::new(0, Duration::from_secs(60));
        assert!(!none.take(t0), "max_failovers 0 never fails over");
    }
}
