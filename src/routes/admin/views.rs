//! The JSON shapes of `/proxy/status` and `/proxy/engines` (the user reference's field names).

use super::*;

/// `GET /proxy/status`: the seed's fields.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub(super) running: bool,
    /// The proxy's version.
    pub(super) version: &'static str,
    /// Seconds since the proxy started.
    pub(super) uptime_seconds: f64,
    pub(super) total_sessions: u64,
    pub(super) active_sessions: usize,
    pub(super) total_clients: usize,
    /// `max_buffer_bytes` and what all sessions' buffers hold now.
    pub(super) buffer: crate::streams::budget::BufferUse,
    pub(super) sessions: Vec<SessionView>,
}

/// `GET /proxy/sessions`.
#[derive(Debug, Serialize)]
pub struct SessionsView {
    pub(super) sessions: Vec<SessionView>,
}

/// `GET /proxy/engines`.
#[derive(Debug, Serialize)]
pub struct EnginesView {
    pub(super) engines: Vec<EngineView>,
}

/// One engine of the pool.
#[derive(Debug, Serialize)]
pub struct EngineView {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) address: String,
    pub(super) healthy: bool,
    pub(super) forwarded: bool,
    pub(super) container_id: Option<String>,
    pub(super) from_orchestrator: bool,
    pub(super) active_streams: usize,
    pub(super) orchestrator_streams: Option<usize>,
    /// Other cluster members' sessions on it, at their last answer (0 without a cluster).
    pub(super) peer_streams: usize,
    pub(super) recently_failed: bool,
    pub(super) score: i64,
    /// The orchestrator's VPN container of the engine.
    pub(super) vpn_container: Option<String>,
    /// The orchestrator drains it.
    pub(super) draining: bool,
    /// Streams on every engine behind the same VPN.
    pub(super) node_load: usize,
    /// Why it would not be chosen now (`null`: it would be a candidate).
    pub(super) not_candidate: Option<String>,
}

/// One session as `/proxy/sessions` shows it: the seed's fields (same names and types), then
/// what operators need beyond them.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub(super) stream_id: String,
    pub(super) ace_id: String,
    pub(super) engine_host: Option<String>,
    pub(super) engine_port: Option<u16>,
    pub(super) container_id: Option<String>,
    pub(super) playback_session_id: Option<String>,
    pub(super) is_live: bool,
    pub(super) is_active: bool,
    pub(super) client_count: usize,
    pub(super) created_at: String,
    pub(super) started_at: Option<String>,
    pub(super) ended_at: Option<String>,
    pub(super) error: Option<String>,
    /// Read from the process a graceful upgrade replaces (no engine session of its own yet).
    pub(super) relayed: bool,
    pub(super) idle_seconds: f64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) first_byte_ms: Option<u64>,
    /// The engine's score when this session chose it (`engine_score` is the older name of the same
    /// value, kept for existing readers; the engine's current score is in `/proxy/engines`).
    pub(super) engine_score_at_start: Option<i64>,
    pub(super) engine_score: Option<i64>,
    pub(super) bitrate_bps: Option<u64>,
    pub(super) ingest_lead_seconds: Option<f64>,
    /// Bytes read from the engine ahead of the paced edge (HLS's read-ahead; see
    /// `hls_read_ahead_bytes`).
    pub(super) read_ahead_bytes: usize,
    /// Seconds of stream the DVR spill holds now (0 with DVR off).
    pub(super) dvr_seconds: f64,
    /// Bytes the DVR spill holds on disk.
    pub(super) dvr_bytes: u64,
    pub(super) buffer_seconds: f64,
    pub(super) buffer_bytes: usize,
    /// The engine's last stat sample for the session (`null` before the first).
    pub(super) engine_stats: Option<EngineStatsView>,
    /// `starting`, `prebuffering` (the engine accepted, no byte yet), `streaming`, `lingering`
    /// (no client; it ends after `linger_seconds` of `idle_seconds`), `ended`, `failed`.
    pub(super) phase: &'static str,
    /// How long it lingers without clients (`/proxy/status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) linger_seconds: Option<f64>,
    /// Failovers so far.
    pub(super) failovers: u64,
    /// `[unix ms, ingest bit/s, egress bit/s]` every 2 s for the last 5 minutes
    /// (`/proxy/status?history=1` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) history: Option<Vec<(u64, u64, u64)>>,
    /// Bytes the HLS segment window holds (shared with the ring where they overlap).
    pub(super) hls_bytes: usize,
    pub(super) clients: Vec<ClientView>,
}

/// The engine's view of a session (`stat_url`), as last sampled.
#[derive(Debug, Serialize)]
pub struct EngineStatsView {
    pub(super) status: Option<String>,
    pub(super) peers: Option<u64>,
    /// KB/s, as the engine reports it.
    pub(super) speed_down: Option<u64>,
    /// KB/s.
    pub(super) speed_up: Option<u64>,
    pub(super) downloaded: Option<u64>,
    pub(super) uploaded: Option<u64>,
    /// `livepos.live_last`, when the engine reports it.
    pub(super) live_last: Option<u64>,
    /// When the sample was taken (RFC 3339).
    pub(super) sampled_at: String,
}

/// One client of a session.
#[derive(Debug, Serialize)]
pub struct ClientView {
    pub(super) address: Option<String>,
    /// `ts` or `hls`.
    pub(super) protocol: &'static str,
    pub(super) connected_seconds: f64,
    pub(super) bytes_sent: u64,
    pub(super) lag_bytes: u64,
    pub(super) lag_seconds: f64,
    /// A rewound viewer reading the DVR spill (its lag is measured there).
    pub(super) dvr: bool,
}

impl SessionView {
    /// A snapshot of `x`.
    pub fn of(x: &StreamSession) -> SessionView {
        let published = x.ring.published_bytes();
        let clients = x
            .clients()
            .iter()
            .map(|c| {
                let dvr = c.dvr.load(Ordering::Relaxed);
                let offset = c.offset.load(Ordering::Relaxed);
                let lag_seconds = match x.spill() {
                    Some(spill) if dvr => spill.lag_seconds(offset),
                    _ => x.ring.lag_seconds(c.cursor.load(Ordering::Relaxed)),
                };
                ClientView {
                    address: c.addr.map(|a| a.to_string()),
                    protocol: c.protocol.label(),
                    connected_seconds: c.joined.elapsed().as_secs_f64(),
                    bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                    lag_bytes: published.saturating_sub(offset),
                    lag_seconds,
                    dvr,
                }
            })
            .collect();
        let dvr = x.spill().map_or((0.0, 0), |s| s.held());
        let st = x.state();
        let engine = st.source.engine();
        let es = st.source.engine_session();
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
            error: x.error_text(),
            relayed: st.source.is_relay(),
            idle_seconds: st.idle_since.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            bytes_in: x.bytes_in.load(Ordering::Relaxed),
            bytes_out: x.bytes_out.load(Ordering::Relaxed),
            first_byte_ms: st.first_byte_ms,
            engine_score_at_start: engine.map(|e| e.score),
            engine_score: engine.map(|e| e.score),
            bitrate_bps: x.ring.bitrate_bps().map(|b| b.round() as u64),
            ingest_lead_seconds: x.ingest_lead_seconds(),
            read_ahead_bytes: x.read_ahead_bytes(),
            dvr_seconds: dvr.0,
            dvr_bytes: dvr.1,
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
