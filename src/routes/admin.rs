//! Operator endpoints: `/proxy/status`, `/proxy/sessions`, `/proxy/sessions/{ace_id}`,
//! `/proxy/engines` (JSON) and `/metrics` (Prometheus text), behind the optional admin token.
//!
//! Field names and types follow the seed's status API exactly (README, "Endpoints"); what operators need beyond the seed
//! (bytes, first-byte time, engine score, per-client lag) is added next to them.

mod views;

pub use views::*;

use super::{write_error, write_json, Route};
use crate::access::token::StreamTokens;
use crate::access::ClientAddr;
use crate::engines::EnginePool;
use crate::error::EdgeError;
use crate::metrics::Metrics;
use crate::streams::{Phase, Sessions, StreamSession};
use crate::sync::Lock;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use subtle::ConstantTimeEq;

/// What the admin endpoints read.
pub struct Admin {
    /// Sessions to report.
    pub sessions: Arc<Sessions>,
    /// Engines to report.
    pub engines: Arc<EnginePool>,
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Required bearer token, if any (a reload may change it).
    pub token: Arc<AdminToken>,
    /// Signs stream URLs (`stream_token_secret`), if set.
    pub tokens: Option<StreamTokens>,
    /// The last `/proxy/status` body and when it was rendered (see [`STATUS_MAX_AGE`]).
    /// One cached body per `history` flag.
    pub status_cache: std::sync::Mutex<[Option<CachedBody>; 2]>,
    /// When the proxy started (for `uptime_seconds`).
    pub started: Instant,
    /// The channel list, whose names label the per-stream metrics.
    pub channels: Arc<crate::channels::Channels>,
    /// `metrics_top_streams`.
    pub top_streams: usize,
}

use crate::access::AdminToken;

/// A rendered body and when it was rendered.
pub type CachedBody = (Instant, Vec<u8>);

/// A minted token lives this long unless `ttl` says otherwise (seconds).
const DEFAULT_TOKEN_TTL: u64 = 3600;
/// The longest `ttl` minted: a week, so a leaked URL does not open a stream for ever.
const MAX_TOKEN_TTL: u64 = 7 * 24 * 3600;

/// `GET /proxy/token`'s answer.
#[derive(Debug, Serialize)]
pub struct TokenView {
    token: String,
    expires: u64,
    /// The signed stream URL, absolute: `http://` and the Host the request was sent to (a front
    /// with another scheme or name rewrites it, like any absolute URL it passes on).
    url: String,
    /// The same, as a path.
    path: String,
}

/// `/proxy/status` is rendered at most this often and shared between callers: with hundreds of
/// viewers one rendering is tens of kilobytes, and a client polling it in a loop must not take
/// CPU from streaming. A quarter second is fresher than any dashboard needs.
pub const STATUS_MAX_AGE: Duration = Duration::from_millis(250);

/// True for paths this module answers.
pub fn is_admin_path(path: &str) -> bool {
    path == "/metrics" || path == "/proxy" || path.starts_with("/proxy/")
}

impl Admin {
    /// `Authorization: Bearer <token>` compared in constant time; always true without a token.
    pub fn authorized(&self, s: &HttpSession) -> bool {
        let token = self.token.get();
        let Some(token) = token.as_ref() else {
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

    /// Whether `client` may use the admin routes: with a token, if it sends it; without one, only
    /// from loopback (the routes show every viewer's address and every engine's).
    pub fn admit(&self, s: &HttpSession, client: Option<ClientAddr>) -> Result<(), EdgeError> {
        if self.token.get().is_none() && !client.is_some_and(|c| c.ip.is_loopback()) {
            return Err(EdgeError::Forbidden(
                "the admin routes answer only loopback clients while acestream.admin_token is empty; set it to reach them from elsewhere".into(),
            ));
        }
        if !self.authorized(s) {
            return Err(EdgeError::Unauthorized);
        }
        Ok(())
    }

    /// Answers an admin route (after [`Admin::admit`]).
    pub async fn serve(
        &self,
        s: &mut HttpSession,
        route: Route,
        path: &str,
        client: Option<ClientAddr>,
    ) -> pingora::Result<()> {
        if let Err(e) = self.admit(s, client) {
            return write_error(s, &e).await;
        }
        match route {
            Route::Metrics => self.write_metrics(s).await,
            Route::ProxyStatus => {
                let history = s
                    .req_header()
                    .uri
                    .query()
                    .and_then(|q| super::getstream::query_param(q, "history"))
                    .is_some_and(|v| v == "1");
                let body = self.status_body(Instant::now(), history);
                write_json(s, 200, body).await
            }
            Route::ProxySessions => {
                let sessions = self.sessions.list();
                let sessions = sessions.iter().map(|x| SessionView::of(x)).collect();
                write_value(s, &SessionsView { sessions }).await
            }
            Route::ProxySession => {
                let id = path
                    .trim_start_matches("/proxy/sessions/")
                    .to_ascii_lowercase();
                match self.sessions.find(&id) {
                    Some(x) => write_value(s, &SessionView::of(&x)).await,
                    None => {
                        write_error(s, &EdgeError::NotFound(format!("no session for {id}"))).await
                    }
                }
            }
            Route::ProxyEngines => write_value(s, &self.engines_view()).await,
            Route::ProxyToken => match self.mint(s.req_header().uri.query(), request_host(s)) {
                Ok(v) => write_value(s, &v).await,
                Err(e) => write_error(s, &e).await,
            },
            _ => write_error(s, &EdgeError::NotFound(format!("no route {path}"))).await,
        }
    }

    /// `GET /proxy/token?id=<40 hex>&ttl=<seconds>`: a signed stream URL.
    fn mint(&self, query: Option<&str>, host: Option<String>) -> Result<TokenView, EdgeError> {
        let Some(tokens) = &self.tokens else {
            return Err(EdgeError::NotFound(
                "stream URLs are not signed here (acestream.stream_token_secret is empty)".into(),
            ));
        };
        let content = super::getstream::content_id(query)?;
        let ttl = match query.and_then(|q| super::getstream::query_param(q, "ttl")) {
            None => DEFAULT_TOKEN_TTL,
            Some(t) => t
                .parse::<u64>()
                .ok()
                .filter(|t| (1..=MAX_TOKEN_TTL).contains(t))
                .ok_or_else(|| {
                    EdgeError::BadRequest(format!("ttl must be 1–{MAX_TOKEN_TTL} seconds"))
                })?,
        };
        let expires = crate::access::token::unix_now() + ttl;
        let token = tokens.sign(&content.value, expires);
        let param = match content.kind {
            crate::engines::ContentKind::ContentId => "id",
            crate::engines::ContentKind::Infohash => "infohash",
        };
        let path = format!("/ace/getstream?{param}={}&token={token}", content.value);
        Ok(TokenView {
            url: host.map_or_else(|| path.clone(), |h| format!("http://{h}{path}")),
            path,
            token,
            expires,
        })
    }

    /// The `/proxy/status` body, rendered again only when the last one is older than
    /// [`STATUS_MAX_AGE`].
    fn status_body(&self, now: Instant, history: bool) -> Vec<u8> {
        let mut cache = self.status_cache.locked();
        let slot = &mut cache[history as usize];
        if let Some((at, body)) = slot.as_ref() {
            if now.duration_since(*at) < STATUS_MAX_AGE {
                return body.clone();
            }
        }
        let body = serde_json::to_vec(&self.status(history)).unwrap_or_default();
        *slot = Some((now, body.clone()));
        body
    }

    fn status(&self, history: bool) -> StatusView {
        let sessions = self.sessions.list();
        // Read per render: a reload changes `stream_idle_timeout` and `unwatched_linger` for the
        // sessions' lingers, and the countdown shown must be theirs.
        let linger = crate::streams::session::Linger::of(&self.sessions.config().sessions);
        StatusView {
            running: true,
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            total_sessions: self.sessions.started_total(),
            active_sessions: sessions.iter().filter(|x| is_active(x)).count(),
            total_clients: sessions.iter().map(|x| x.client_count()).sum(),
            buffer: self.sessions.buffer_use(),
            sessions: sessions
                .iter()
                .map(|x| {
                    let mut v = SessionView::of(x);
                    v.linger_seconds = Some(x.linger_for(linger).as_secs_f64());
                    if history {
                        v.history = Some(x.history.locked().iter().copied().collect());
                    }
                    v
                })
                .collect(),
        }
    }

    fn engines_view(&self) -> EnginesView {
        let engines = self
            .engines
            .status()
            .into_iter()
            .map(|e| EngineView {
                not_candidate: e
                    .meta
                    .ruled_out()
                    .map(str::to_string)
                    .or_else(|| (!e.healthy).then(|| "its health probe failed".to_string()))
                    .or_else(|| {
                        (e.candidate.active_streams >= self.engines.max_streams())
                            .then(|| "it is at max_streams_per_engine".to_string())
                    }),
                vpn_container: e.meta.vpn_container.clone(),
                draining: e.meta.draining,
                node_load: e.candidate.node_load,
                address: e.addr.to_string(),
                host: e.meta.host,
                port: e.meta.port,
                healthy: e.healthy,
                forwarded: e.meta.forwarded,
                container_id: e.meta.container_id,
                from_orchestrator: e.meta.from_orchestrator,
                active_streams: e.proxy_streams,
                orchestrator_streams: e.meta.orchestrator_streams,
                peer_streams: e.peer_streams,
                recently_failed: e.recently_failed,
                score: e.score,
            })
            .collect();
        EnginesView { engines }
    }

    /// The per-stream series, set anew from the live sessions (see [`crate::metrics::per_stream`]).
    fn per_stream_metrics(&self) {
        let samples: Vec<crate::metrics::StreamSample> = self
            .sessions
            .list()
            .iter()
            .map(|x| {
                let clients = x.clients();
                let count = |p: crate::streams::client::Protocol| {
                    clients.iter().filter(|c| c.protocol == p).count() as i64
                };
                crate::metrics::StreamSample {
                    key: x.content.to_string(),
                    ts_viewers: count(crate::streams::client::Protocol::Ts),
                    hls_viewers: count(crate::streams::client::Protocol::Hls),
                    egress_bytes: x.bytes_out.load(Ordering::Relaxed) as i64,
                    bitrate_bps: x.ring.bitrate_bps().map_or(0, |b| b.round() as i64),
                    lags: clients
                        .iter()
                        .map(|c| x.ring.lag_seconds(c.cursor.load(Ordering::Relaxed)))
                        .collect(),
                }
            })
            .collect();
        let m = &self.metrics;
        m.stream_viewers.reset();
        m.stream_egress_bytes.reset();
        m.stream_ingest_bitrate.reset();
        m.stream_lag_p95.reset();
        let names = self.channels.names_now();
        for s in crate::metrics::per_stream(&samples, &names, self.top_streams) {
            let l = s.label.as_str();
            m.stream_viewers
                .with_label_values(&[l, "ts"])
                .set(s.ts_viewers);
            m.stream_viewers
                .with_label_values(&[l, "hls"])
                .set(s.hls_viewers);
            m.stream_egress_bytes
                .with_label_values(&[l])
                .set(s.egress_bytes);
            m.stream_ingest_bitrate
                .with_label_values(&[l])
                .set(s.bitrate_bps);
            m.stream_lag_p95.with_label_values(&[l]).set(s.lag_p95);
        }
    }

    async fn write_metrics(&self, s: &mut HttpSession) -> pingora::Result<()> {
        // Engine gauges are a snapshot of the pool, taken now.
        let m = &self.metrics;
        let failures = self.engines.orchestrator_failures();
        m.orchestrator_failures
            .inc_by(failures.saturating_sub(m.orchestrator_failures.get()));
        m.engine_healthy.reset();
        m.engine_active_streams.reset();
        m.engine_score.reset();
        m.engine_peers.reset();
        m.engine_speed_down.reset();
        for x in self.sessions.list() {
            let st = x.state();
            if let (Some(e), Some((stat, _))) = (st.source.engine(), st.engine_stats.as_ref()) {
                let label = e.addr.to_string();
                m.engine_peers
                    .with_label_values(&[&label])
                    .add(stat.peers.unwrap_or(0) as i64);
                m.engine_speed_down
                    .with_label_values(&[&label])
                    .add(stat.speed_down.unwrap_or(0) as i64);
            }
        }
        self.per_stream_metrics();
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

/// The request's Host (HTTP/1.1 header, or HTTP/2 authority), when it is a plain host[:port].
pub(super) fn request_host(s: &HttpSession) -> Option<String> {
    let h = s.req_header();
    let host = h
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| h.uri.authority().map(|a| a.to_string()))?;
    let plain = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    plain.then_some(host)
}

async fn write_value(s: &mut HttpSession, v: &impl Serialize) -> pingora::Result<()> {
    write_json(s, 200, serde_json::to_vec(v).unwrap_or_default()).await
}

fn is_active(x: &StreamSession) -> bool {
    matches!(
        x.phase(),
        Phase::Starting | Phase::Connected | Phase::Streaming
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
