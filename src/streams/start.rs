//! Starting a session's upstream: pick the best engine, start the engine session (JSON call),
//! open its stream and wait for the first bytes, trying the next-best engine on a refusal or
//! failure (each engine once), all within `empty_stream_timeout`.

use super::session::{Phase, Source, StreamSession};
use super::Sessions;
use crate::config::Config;
use crate::engines::{Engine, EngineStream, EngineTimeouts};
use crate::error::EdgeError;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

/// Starts (or restarts) the upstream within `empty_stream_timeout`.
pub(crate) async fn start_within_deadline(
    sessions: &Sessions,
    session: &Arc<StreamSession>,
    config: &Config,
    exclude: &[SocketAddr],
) -> Result<(EngineStream, Bytes), EdgeError> {
    if session.fed_by_successor {
        return super::relay::from_successor(sessions, session, config).await;
    }
    if let Some(relayed) = super::relay::from_predecessor(sessions, session).await {
        return Ok(relayed);
    }
    let started = tokio::time::timeout(
        config.sessions.empty_stream_timeout,
        start_and_first_bytes(sessions, session, config, exclude),
    )
    .await;
    match started {
        Ok(r) => r,
        Err(_) => {
            if let Some(engine) = session.state().source.engine().cloned() {
                sessions
                    .metrics()
                    .engine_start_errors
                    .with_label_values(&[&engine.addr.to_string(), "no_first_byte"])
                    .inc();
            }
            Err(EdgeError::EmptyStream(config.sessions.empty_stream_timeout))
        }
    }
}

/// The `outcome` label of a failed start.
pub(crate) fn start_outcome(e: &EdgeError) -> &'static str {
    match e {
        EdgeError::NoEngine(_) => "no_engine",
        EdgeError::ShuttingDown => "shutting_down",
        EdgeError::HandingOver(_) => "handing_over",
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
    session: &Arc<StreamSession>,
    config: &Config,
    exclude: &[SocketAddr],
) -> Result<(EngineStream, Bytes), EdgeError> {
    let timeouts = EngineTimeouts {
        connect: config.probes.engine_connect_timeout,
        read: config.pool.engine_read_timeout,
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
        match start_on(session, &engine, timeouts, config.pool.engine_stop_timeout).await {
            Ok(started) => {
                // It answered: healthy now, whatever its last probe said.
                sessions.engines().mark_working(engine.addr);
                if let Some(es) = session.state().source.engine_session().cloned() {
                    sessions.report_started(session, &engine, &es);
                }
                metrics
                    .engine_selections
                    .with_label_values(&[&label, "started"])
                    .inc();
                session.state().source.hold(lease);
                return Ok(started);
            }
            Err(e) => {
                log::warn!(content_id:% = session.content_id, engine:% = engine.endpoint, reason:% = e; "session {}: {e}", session.content_id);
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
                let es = session.state().source.take_engine().map(|(_, es)| es);
                if let Some(cmd) = es.and_then(|es| es.command_path) {
                    let _ = engine
                        .endpoint
                        .stop(&cmd, config.pool.engine_stop_timeout)
                        .await;
                }
                last_error = Some(e);
            }
        }
    }
}

async fn start_on(
    session: &Arc<StreamSession>,
    engine: &Engine,
    timeouts: EngineTimeouts,
    stop_timeout: std::time::Duration,
) -> Result<(EngineStream, Bytes), EdgeError> {
    let es = engine
        .endpoint
        .start_or_stop_later(&session.content, timeouts, stop_timeout)
        .await?;
    {
        // Recorded at once: from here on, every way out sends a stop.
        session.state().source = Source::Engine {
            engine: engine.clone(),
            session: es.clone(),
            lease: None,
        };
    }
    session.phase.send_if_modified(|p| {
        let first_start = *p == Phase::Starting;
        if first_start {
            *p = Phase::Connected;
        }
        first_start
    });
    log::info!(
        content_id:% = session.content_id, engine:% = engine.endpoint;
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
