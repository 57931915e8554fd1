//! Operator endpoints: `/proxy/status`, `/proxy/sessions`, `/proxy/sessions/{ace_id}`,
//! `/proxy/engines` (JSON) and `/metrics` (Prometheus text), behind the optional admin token.
//!
//! Field names and types follow the seed's status API exactly (README, "Endpoints"); what operators need beyond the seed
//! (bytes, first-byte time, engine score, per-client lag) is added next to them.

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
    url: String,
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
            Route::ProxyToken => match self.mint(s.req_header().uri.query()) {
                Ok(v) => write_value(s, &v).await,
                Err(e) => write_error(s, &e).await,
            },
            _ => write_error(s, &EdgeError::NotFound(format!("no route {path}"))).await,
        }
    }

    /// `GET /proxy/token?id=<40 hex>&ttl=<seconds>`: a signed stream URL.
    fn mint(&self, query: Option<&str>) -> Result<TokenView, EdgeError> {
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
        Ok(TokenView {
            url: format!("/ace/getstream?{param}={}&token={token}", content.value),
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
        let linger = crate::streams::session::Linger::of(&self.sessions.config());
        StatusView {
            running: true,
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            total_sessions: self.sessions.started_total(),
            active_sessions: sessions.iter().filter(|x| is_active(x)).count(),
            total_clients: sessions.iter().map(|x| x.client_count()).sum(),
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
            if let (Some(e), Some((stat, _))) = (st.engine.as_ref(), st.engine_stats.as_ref()) {
                let label = e.addr.to_string();
                m.engine_peers
                    .with_label_values(&[&label])
                    .add(stat.peers.unwrap_or(0) as i64);
                m.engine_speed_down
                    .with_label_values(&[&label])
                    .add(stat.speed_down.unwrap_or(0) as i64);
            }
        }
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

/// `GET /proxy/status`: the seed's fields.
#[derive(Debug, Serialize)]
pub struct StatusView {
    running: bool,
    /// The proxy's version.
    version: &'static str,
    /// Seconds since the proxy started.
    uptime_seconds: f64,
    total_sessions: u64,
    active_sessions: usize,
    total_clients: usize,
    sessions: Vec<SessionView>,
}

/// `GET /proxy/sessions`.
#[derive(Debug, Serialize)]
pub struct SessionsView {
    sessions: Vec<SessionView>,
}

/// `GET /proxy/engines`.
#[derive(Debug, Serialize)]
pub struct EnginesView {
    engines: Vec<EngineView>,
}

/// One engine of the pool.
#[derive(Debug, Serialize)]
pub struct EngineView {
    host: String,
    port: u16,
    address: String,
    healthy: bool,
    forwarded: bool,
    container_id: Option<String>,
    from_orchestrator: bool,
    active_streams: usize,
    orchestrator_streams: Option<usize>,
    /// Other cluster members' sessions on it, at their last answer (0 without a cluster).
    peer_streams: usize,
    recently_failed: bool,
    score: i64,
    /// The orchestrator's VPN container of the engine.
    vpn_container: Option<String>,
    /// The orchestrator drains it.
    draining: bool,
    /// Streams on every engine behind the same VPN.
    node_load: usize,
    /// Why it would not be chosen now (`null`: it would be a candidate).
    not_candidate: Option<String>,
}

/// One session as `/proxy/sessions` shows it: the seed's fields (same names and types), then
/// what operators need beyond them.
#[derive(Debug, Serialize)]
pub struct SessionView {
    stream_id: String,
    ace_id: String,
    engine_host: Option<String>,
    engine_port: Option<u16>,
    container_id: Option<String>,
    playback_session_id: Option<String>,
    is_live: bool,
    is_active: bool,
    client_count: usize,
    created_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    error: Option<String>,
    /// Read from the process a graceful upgrade replaces (no engine session of its own yet).
    relayed: bool,
    idle_seconds: f64,
    bytes_in: u64,
    bytes_out: u64,
    first_byte_ms: Option<u64>,
    /// The engine's score when this session chose it (`engine_score` is the older name of the same
    /// value, kept for existing readers; the engine's current score is in `/proxy/engines`).
    engine_score_at_start: Option<i64>,
    engine_score: Option<i64>,
    bitrate_bps: Option<u64>,
    ingest_lead_seconds: Option<f64>,
    buffer_seconds: f64,
    buffer_bytes: usize,
    /// The engine's last stat sample for the session (`null` before the first).
    engine_stats: Option<EngineStatsView>,
    /// `starting`, `prebuffering` (the engine accepted, no byte yet), `streaming`, `lingering`
    /// (no client; it ends after `linger_seconds` of `idle_seconds`), `ended`, `failed`.
    phase: &'static str,
    /// How long it lingers without clients (`/proxy/status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    linger_seconds: Option<f64>,
    /// Failovers so far.
    failovers: u64,
    /// `[unix ms, ingest bit/s, egress bit/s]` every 2 s for the last 5 minutes
    /// (`/proxy/status?history=1` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<(u64, u64, u64)>>,
    /// Bytes the HLS segment window holds (shared with the ring where they overlap).
    hls_bytes: usize,
    clients: Vec<ClientView>,
}

/// The engine's view of a session (`stat_url`), as last sampled.
#[derive(Debug, Serialize)]
pub struct EngineStatsView {
    status: Option<String>,
    peers: Option<u64>,
    /// KB/s, as the engine reports it.
    speed_down: Option<u64>,
    /// KB/s.
    speed_up: Option<u64>,
    downloaded: Option<u64>,
    uploaded: Option<u64>,
    /// `livepos.live_last`, when the engine reports it.
    live_last: Option<u64>,
    /// When the sample was taken (RFC 3339).
    sampled_at: String,
}

/// One client of a session.
#[derive(Debug, Serialize)]
pub struct ClientView {
    address: Option<String>,
    /// `ts` or `hls`.
    protocol: &'static str,
    connected_seconds: f64,
    bytes_sent: u64,
    lag_bytes: u64,
    lag_seconds: f64,
}

impl SessionView {
    /// A snapshot of `x`.
    pub fn of(x: &StreamSession) -> SessionView {
        let published = x.ring.published_bytes();
        let clients = x
            .clients()
            .iter()
            .map(|c| ClientView {
                address: c.addr.map(|a| a.to_string()),
                protocol: c.protocol.label(),
                connected_seconds: c.joined.elapsed().as_secs_f64(),
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                lag_bytes: published.saturating_sub(c.offset.load(Ordering::Relaxed)),
                lag_seconds: x.ring.lag_seconds(c.cursor.load(Ordering::Relaxed)),
            })
            .collect();
        let st = x.state();
        let engine = st.engine.as_ref();
        let es = st.engine_session.as_ref();
        SessionView {
            stream_id: x.content.value.clone(),
            ace_id: x.content.value.clone(),
            engine_host: engine.map(|e| e.endpoint.host.clone()),
            engine_port: engine.map(|e| e.endpoint.port),
            container_id: engine.and_then(|e| e.container_id.clone()),
            playback_session_id: es.and_then(|e| e.playback_session_id.clone()),
            is_live: es.is_some_and(|e| e.is_live),
            is_active: is_active(x),
            client_count: x.client_count(),
            created_at: rfc3339(x.created_at),
            started_at: st.started_at.map(rfc3339),
            ended_at: st.ended_at.map(rfc3339),
            error: st.error.clone(),
            relayed: st.relayed,
            idle_seconds: st.idle_since.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            bytes_in: x.bytes_in.load(Ordering::Relaxed),
            bytes_out: x.bytes_out.load(Ordering::Relaxed),
            first_byte_ms: st.first_byte_ms,
            engine_score_at_start: engine.map(|e| e.score),
            engine_score: engine.map(|e| e.score),
            bitrate_bps: x.ring.bitrate_bps().map(|b| b.round() as u64),
            ingest_lead_seconds: x.ingest_lead_seconds(),
            buffer_seconds: x.ring.lag_seconds(x.ring.first_seq()),
            buffer_bytes: x.ring.held_bytes(),
            hls_bytes: x.hls().map_or(0, |h| h.held_bytes()),
            phase: match x.phase() {
                Phase::Starting => "starting",
                Phase::Connected => "prebuffering",
                Phase::Streaming if x.client_count() == 0 => "lingering",
                Phase::Streaming => "streaming",
                Phase::Ended(_) => "ended",
                Phase::Failed(_) => "failed",
            },
            linger_seconds: None,
            failovers: x.failovers.load(Ordering::Relaxed),
            history: None,
            engine_stats: st.engine_stats.as_ref().map(|(s, at)| EngineStatsView {
                status: s.status.clone(),
                peers: s.peers,
                speed_down: s.speed_down,
                speed_up: s.speed_up,
                downloaded: s.downloaded,
                uploaded: s.uploaded,
                live_last: s.live_last,
                sampled_at: rfc3339(*at),
            }),
            clients,
        }
    }
}
