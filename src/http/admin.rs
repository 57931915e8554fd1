//! Operator endpoints: `/proxy/status`, `/proxy/sessions`, `/proxy/sessions/{ace_id}`,
//! `/proxy/engines` (JSON) and `/metrics` (Prometheus text), behind the optional admin token.
//!
//! Field names and types follow `spec/proxy-api.md` exactly; what operators need beyond the seed
//! (bytes, first-byte time, engine score, per-client lag) is added next to them.

use super::{write_error, write_json};
use crate::engines::EnginePool;
use crate::error::EdgeError;
use crate::metrics::Metrics;
use crate::streams::{Phase, Session, Sessions};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;
use subtle::ConstantTimeEq;

/// What the admin endpoints read.
pub struct Admin {
    /// Sessions to report.
    pub sessions: Arc<Sessions>,
    /// Engines to report.
    pub engines: Arc<EnginePool>,
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Required bearer token, if any.
    pub token: Option<String>,
}

/// True for paths this module answers.
pub fn is_admin_path(path: &str) -> bool {
    path == "/metrics" || path == "/proxy" || path.starts_with("/proxy/")
}

impl Admin {
    /// `Authorization: Bearer <token>` compared in constant time; always true without a token.
    fn authorized(&self, s: &HttpSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = s
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        bool::from(given.as_bytes().ct_eq(token.as_bytes()))
    }

    /// Answers an admin path; returns the route label for metrics.
    pub async fn serve(
        &self,
        s: &mut HttpSession,
        path: &str,
    ) -> (&'static str, pingora::Result<()>) {
        let route = route_of(path);
        if !self.authorized(s) {
            return (route, write_error(s, &EdgeError::Unauthorized).await);
        }
        let result = match route {
            "metrics" => self.write_metrics(s).await,
            "proxy_status" => write_value(s, self.status()).await,
            "proxy_sessions" => {
                let list: Vec<Value> = self
                    .sessions
                    .list()
                    .iter()
                    .map(|x| session_json(x))
                    .collect();
                write_value(s, json!({ "sessions": list })).await
            }
            "proxy_session" => {
                let id = path
                    .trim_start_matches("/proxy/sessions/")
                    .to_ascii_lowercase();
                match self.sessions.get(&id) {
                    Some(x) => write_value(s, session_json(&x)).await,
                    None => {
                        write_error(s, &EdgeError::NotFound(format!("no session for {id}"))).await
                    }
                }
            }
            "proxy_engines" => write_value(s, self.engines_json()).await,
            _ => write_error(s, &EdgeError::NotFound(format!("no route {path}"))).await,
        };
        (route, result)
    }

    fn status(&self) -> Value {
        let sessions = self.sessions.list();
        let list: Vec<Value> = sessions.iter().map(|x| session_json(x)).collect();
        let active = sessions.iter().filter(|x| is_active(x)).count();
        let clients: usize = sessions.iter().map(|x| x.client_count()).sum();
        json!({
            "running": true,
            "total_sessions": self.sessions.started_total(),
            "active_sessions": active,
            "total_clients": clients,
            "sessions": list,
        })
    }

    fn engines_json(&self) -> Value {
        let list: Vec<Value> = self
            .engines
            .status()
            .into_iter()
            .map(|e| {
                json!({
                    "host": e.meta.host,
                    "port": e.meta.port,
                    "address": e.addr.to_string(),
                    "healthy": e.healthy,
                    "forwarded": e.meta.forwarded,
                    "container_id": e.meta.container_id,
                    "from_orchestrator": e.meta.from_orchestrator,
                    "active_streams": e.proxy_streams,
                    "orchestrator_streams": e.meta.orchestrator_streams,
                    "recently_failed": e.recently_failed,
                    "score": e.score,
                })
            })
            .collect();
        json!({ "engines": list })
    }

    async fn write_metrics(&self, s: &mut HttpSession) -> pingora::Result<()> {
        // Engine gauges are a snapshot of the pool, taken now.
        let m = &self.metrics;
        m.engine_healthy.reset();
        m.engine_active_streams.reset();
        m.engine_score.reset();
        for e in self.engines.status() {
            let label = e.addr.to_string();
            m.engine_healthy
                .with_label_values(&[&label])
                .set(e.healthy as i64);
            m.engine_active_streams
                .with_label_values(&[&label])
                .set(e.proxy_streams as i64);
            m.engine_score.with_label_values(&[&label]).set(e.score);
        }
        let body = m.render();
        let mut h = ResponseHeader::build(200, Some(3))?;
        h.insert_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
        h.insert_header("Content-Length", body.len().to_string())?;
        s.write_response_header(Box::new(h), false).await?;
        s.write_response_body(Some(Bytes::from(body)), true).await
    }
}

fn route_of(path: &str) -> &'static str {
    match path {
        "/metrics" => "metrics",
        "/proxy/status" => "proxy_status",
        "/proxy/sessions" => "proxy_sessions",
        "/proxy/engines" => "proxy_engines",
        p if p.starts_with("/proxy/sessions/") && p.len() > "/proxy/sessions/".len() => {
            "proxy_session"
        }
        _ => "not_found",
    }
}

async fn write_value(s: &mut HttpSession, v: Value) -> pingora::Result<()> {
    write_json(s, 200, serde_json::to_vec(&v).unwrap_or_default()).await
}

fn is_active(x: &Session) -> bool {
    matches!(
        x.phase(),
        Phase::Starting | Phase::Connected | Phase::Streaming
    )
}

fn rfc3339(t: Option<SystemTime>) -> Value {
    t.map(|t| Value::String(humantime::format_rfc3339_millis(t).to_string()))
        .unwrap_or(Value::Null)
}

/// One session as `/proxy/sessions` shows it.
pub fn session_json(x: &Session) -> Value {
    let st = x.state();
    let engine = st.engine.clone();
    let es = st.engine_session.clone();
    let idle_seconds = st
        .idle_since
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    let published = x.ring.published_bytes();
    let clients: Vec<Value> = x
        .clients()
        .iter()
        .map(|c| {
            json!({
                "address": c.addr.map(|a| a.to_string()),
                "connected_seconds": c.joined.elapsed().as_secs_f64(),
                "bytes_sent": c.bytes_sent.load(Ordering::Relaxed),
                "lag_bytes": published.saturating_sub(c.offset.load(Ordering::Relaxed)),
                "lag_seconds": x.ring.lag_seconds(c.cursor.load(Ordering::Relaxed)),
            })
        })
        .collect();
    json!({
        "stream_id": x.content_id,
        "ace_id": x.content_id,
        "engine_host": engine.as_ref().map(|e| e.endpoint.host.clone()),
        "engine_port": engine.as_ref().map(|e| e.endpoint.port),
        "container_id": engine.as_ref().and_then(|e| e.container_id.clone()),
        "playback_session_id": es.as_ref().and_then(|e| e.playback_session_id.clone()),
        "is_live": es.as_ref().is_some_and(|e| e.is_live),
        "is_active": is_active(x),
        "client_count": st.clients,
        "created_at": rfc3339(Some(x.created_at)),
        "started_at": rfc3339(st.started_at),
        "ended_at": rfc3339(st.ended_at),
        "error": st.error,
        "idle_seconds": idle_seconds,
        "bytes_in": x.bytes_in.load(Ordering::Relaxed),
        "bytes_out": x.bytes_out.load(Ordering::Relaxed),
        "first_byte_ms": st.first_byte_ms,
        "engine_score": engine.as_ref().map(|e| e.score),
        "bitrate_bps": x.ring.bitrate_bps().map(|b| b.round() as u64),
        "ingest_lead_seconds": x.ingest_lead_seconds(),
        "buffer_seconds": x.ring.lag_seconds(x.ring.first_seq()),
        "buffer_bytes": x.ring.held_bytes(),
        "clients": clients,
    })
}
