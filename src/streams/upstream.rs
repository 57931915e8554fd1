//! The session's upstream task: start the engine session (trying the next engine on a refusal),
//! read its MPEG-TS, pace it into the ring on the stream's clock, fail over when the upstream
//! breaks, and stop the engine session exactly once on every way out.
//!
//! The task is the only owner of the engine session and the only writer of the ring. Clients come
//! and go; the task only ends when the session is ended (its linger, shutdown) or the upstream
//! fails beyond its failover budget. Starting lives in [`super::start`], releasing chunks into the
//! ring in [`super::ingest`].

use super::ingest::Ingest;
use super::rechunk::Rechunker;
use super::session::{Linger, Phase, StopReason, StreamSession, UpstreamFailure};
use super::start::{start_outcome, start_within_deadline};
use super::Sessions;
use crate::config::Config;
use crate::engines::stat::{Stuck, StuckDetector};
use crate::engines::EngineStream;
use crate::error::EdgeError;
use crate::ts::PACKET_SIZE;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How the upstream task ended.
enum Outcome {
    /// Could not start: no engine, refusal, timeout.
    StartFailed(EdgeError),
    /// Asked to end, or was streaming and then ended for good.
    Stopped(StopReason),
}

/// The session's upstream task: start, stream into the ring, stop. Runs until the session ends.
pub(crate) async fn run_upstream(sessions: Arc<Sessions>, session: Arc<StreamSession>) {
    let config = sessions.config().clone();
    let mut cancel = session.cancel.subscribe();
    let outcome = tokio::select! {
        outcome = stream(&sessions, &session, &config) => outcome,
        // The linger is read when it starts: a reload applies to running sessions too, as
        // `/proxy/status` shows it.
        _ = session.linger(|| Linger::of(&sessions.config().sessions), || sessions.expire_if_idle(&session)) => {
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
    let phase_label = match &outcome {
        Outcome::Stopped(reason) => Some(reason.label()),
        Outcome::StartFailed(_) => None,
    };
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
        (
            st.source.engine().cloned(),
            st.source.engine_session().cloned(),
        )
    };
    session.ring.close();
    if let Some(spill) = session.spill() {
        spill.close();
    }
    session.phase.send_replace(phase);
    sessions.remove(&session);
    log::info!(
        content_id:% = session.content_id,
        engine:% = engine.as_ref().map(|e| e.endpoint.to_string()).unwrap_or_else(|| "-".into()),
        reason:% = reason;
        "session {} stopped: reason={reason:?} engine={} duration={:.1}s bytes_in={} bytes_out={} clients_peak={} joins={} leaves={}",
        session.content_id,
        engine
            .as_ref()
            .map(|e| e.endpoint.to_string())
            .unwrap_or_else(|| "-".into()),
        session.created.elapsed().as_secs_f64(),
        session.bytes_in.load(Ordering::Relaxed),
        session.bytes_out.load(Ordering::Relaxed),
        session.peak_clients.load(Ordering::Relaxed),
        session.joins.load(Ordering::Relaxed),
        session.leaves.load(Ordering::Relaxed),
    );
    if let (Some(engine), Some(_)) = (&engine, &engine_session) {
        sessions.report_ended(&session, engine, phase_label.unwrap_or("start_failed"));
    }
    if let (Some(engine), Some(es)) = (engine, engine_session) {
        if let Some(cmd) = &es.command_path {
            if let Err(e) = engine
                .endpoint
                .stop(cmd, config.pool.engine_stop_timeout)
                .await
            {
                log::warn!("session {}: stop failed: {e}", session.content_id);
            }
        }
    }
    session.state().source.release_lease();
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

async fn stream(sessions: &Sessions, session: &Arc<StreamSession>, config: &Config) -> Outcome {
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
    if let Some(spill) = sessions.new_spill(session) {
        session.set_spill(spill);
    }
    let mut chunker = Rechunker::new(config.buffers.copy_chunk_size);
    let mut ingest = Ingest::new(session, metrics, config);
    count_in(first.len());
    chunker.push(&first);
    // The first bytes go out at once: clients are waiting for them.
    while let Some(chunk) = chunker.next_flush() {
        ingest.release(chunk).await;
    }
    session.phase.send_replace(Phase::Streaming);
    let mut budget = FailoverBudget::new(
        config.sessions.max_failovers,
        config.sessions.failover_window,
    );
    loop {
        let reason = tokio::select! {
            r = pump(config, &mut upstream, &mut chunker, &mut ingest, &count_in) => r,
            r = watch_stats(session, config, metrics), if !config.pool.engine_stat_interval.is_zero() => r,
        };
        metrics
            .upstream_failures
            .with_label_values(&[reason.label()])
            .inc();
        while let Some(chunk) = chunker.next_flush() {
            ingest.release(chunk).await;
        }
        if session.state().source.is_relay() && session.client_count() == 0 {
            // A relayed session (a graceful upgrade) that nobody watches any more ends with its
            // relay: an engine session started for it would serve no one.
            return Outcome::Stopped(StopReason::IdleTimeout);
        }
        if !budget.take(Instant::now()) {
            return Outcome::Stopped(StopReason::Upstream(reason));
        }
        metrics.failovers.inc();
        session.failovers.fetch_add(1, Ordering::Relaxed);
        // Clients stay attached (and get keepalives) while the next engine starts.
        let (old_engine, old_session) = {
            let mut st = session.state();
            st.engine_stats = None;
            st.source.take_engine().unzip()
        };
        let mut exclude = Vec::new();
        if let Some(engine) = old_engine {
            sessions.report_ended(session, &engine, "failover");
            log::warn!(
                content_id:% = session.content_id, engine:% = engine.endpoint, reason:% = reason;
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
                    .stop(&cmd, config.sessions.failover_stop_timeout)
                    .await
                {
                    log::warn!(
                        "session {}: stop of the failed upstream: {e}",
                        session.content_id
                    );
                }
            }
        }
        // What was read ahead goes on into the ring on its time while the next engine starts.
        let mut next = {
            let start = start_within_deadline(sessions, session, config, &exclude);
            tokio::pin!(start);
            tokio::select! {
                r = &mut start => r,
                _ = ingest.drain() => start.await,
            }
        };
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
                        .source
                        .engine()
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

/// A stat poll waits at most this long (the orchestrator's collectors use 3 s too).
const STAT_TIMEOUT: Duration = Duration::from_secs(3);

/// Polls the session's `stat_url` every `engine_stat_interval`, keeps the last sample, and
/// returns when the stats say the stream is stuck (or the engine no longer knows the session).
/// A failed poll is counted, never fatal. Runs beside [`pump`] for one engine session.
async fn watch_stats(
    session: &StreamSession,
    config: &Config,
    metrics: &crate::metrics::Metrics,
) -> UpstreamFailure {
    let (endpoint, path) = {
        let st = session.state();
        let path = st
            .source
            .engine_session()
            .and_then(|es| es.stat_path.clone());
        (st.source.engine().map(|e| e.endpoint.clone()), path)
    };
    let (Some(endpoint), Some(path)) = (endpoint, path) else {
        return std::future::pending().await;
    };
    let mut detector = StuckDetector::new(
        config.pool.stuck_stream_timeout,
        config.sessions.empty_stream_timeout,
    );
    let mut tick = tokio::time::interval(config.pool.engine_stat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match endpoint.stat(&path, STAT_TIMEOUT).await {
            Ok(None) => return UpstreamFailure::UnknownSession,
            Ok(Some(sample)) => {
                let stuck = detector.observe(Instant::now(), &sample);
                session.state().engine_stats = Some((sample, SystemTime::now()));
                match stuck {
                    Some(Stuck::Livepos(d)) => return UpstreamFailure::LiveposStuck(d),
                    Some(Stuck::Prebuffering(d)) => return UpstreamFailure::Prebuffering(d),
                    None => {}
                }
            }
            Err(e) => {
                metrics.engine_stat_errors.inc();
                log::debug!("session {}: stat poll failed: {e}", session.content_id);
            }
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
    // The stall deadline runs from when the task was last ready to read (after a byte came and
    // its chunks were released: a release may wait seconds for the stream's clock, and that wait
    // is not the engine's), whatever else the loop wakes up for meanwhile.
    let stall = config.sessions.upstream_stall_timeout;
    let mut stall_at = tokio::time::Instant::now() + stall;
    loop {
        let flush_at = last_flush + config.buffers.chunk_flush_interval;
        let due = ingest.next_due();
        let read = tokio::select! {
            r = tokio::time::timeout_at(stall_at, upstream.next_chunk()) => r,
            _ = tokio::time::sleep_until(flush_at), if chunker.pending() >= PACKET_SIZE => {
                if let Some(chunk) = chunker.next_flush() {
                    ingest.release(chunk).await;
                }
                last_flush = tokio::time::Instant::now();
                stall_at = last_flush + stall;
                continue;
            }
            // Read-ahead chunks go into the ring on their time while the engine is read.
            _ = tokio::time::sleep_until(due.unwrap_or(flush_at)), if due.is_some() => {
                ingest.publish_due();
                continue;
            }
        };
        match read {
            Ok(Ok(Some(bytes))) => {
                count_in(bytes.len());
                garbage += chunker.push(&bytes);
                let mut released = false;
                while let Some(chunk) = chunker.next_full() {
                    // Waits for the chunk's time on the stream clock, or (with HLS) until the
                    // read-ahead has room: meanwhile nothing is read, and the rest of an engine's
                    // burst stays in the engine.
                    ingest.release(chunk).await;
                    released = true;
                }
                if released {
                    last_flush = tokio::time::Instant::now();
                    garbage = 0;
                }
                stall_at = tokio::time::Instant::now() + stall;
                if garbage >= config.buffers.copy_chunk_size {
                    return UpstreamFailure::NotTs(garbage);
                }
            }
            Ok(Ok(None)) => return UpstreamFailure::Ended,
            Ok(Err(e)) => return UpstreamFailure::ReadFailed(e.to_string()),
            Err(_) => return UpstreamFailure::Stalled(stall),
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
