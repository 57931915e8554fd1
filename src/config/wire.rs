//! The YAML wire format of the `acestream:` section.
//!
//! These serde types mirror the configuration contract (docs/reference.md, "Configuration") key for key. They exist only to be turned into the
//! validated [`crate::config::Config`]; nothing outside `config/` sees them, so the file format can
//! change without touching the proxy (River's split of wire and internal config).

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// The whole file as the proxy reads it: Pingora's keys are ignored here (Pingora reads them).
#[derive(Debug, Default, Deserialize)]
pub struct FileWire {
    /// Our section; absent means every default.
    #[serde(default)]
    pub acestream: AceWire,
}

/// `acestream:`; every key optional, unknown keys rejected so a typo never falls back silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AceWire {
    pub listen: Vec<String>,
    pub admin_token: String,
    pub engines: Vec<EngineWire>,
    pub orchestrator: Option<OrchestratorWire>,
    pub cluster: Option<ClusterWire>,
    pub channels: Option<ChannelsWire>,
    pub public_url: String,
    pub metrics_top_streams: u64,
    pub log_format: super::LogFormat,
    pub empty_stream_timeout: DurationWire,
    pub stream_idle_timeout: DurationWire,
    pub client_heartbeat_interval: DurationWire,
    pub client_timeout: DurationWire,
    pub stream_buffer_size: u64,
    pub copy_chunk_size: u64,
    pub join_burst_bytes: u64,
    pub chunk_flush_interval: DurationWire,
    pub engine_selection_timeout: DurationWire,
    pub engine_cache_ttl: DurationWire,
    pub engine_connect_timeout: DurationWire,
    pub engine_read_timeout: DurationWire,
    pub max_streams_per_engine: u64,
    pub session_cleanup_interval: DurationWire,
    pub health_check_interval: DurationWire,
    pub keepalive_interval: DurationWire,
    pub upstream_stall_timeout: DurationWire,
    pub max_failovers: u64,
    pub engine_failure_penalty: DurationWire,
    pub live_lead: DurationWire,
    pub stream_buffer_seconds: DurationWire,
    pub stream_buffer_max_bytes: u64,
    pub max_buffer_bytes: Option<u64>,
    pub client_send_buffer: u64,
    pub zero_copy: bool,
    pub viewer_takeover: bool,
    pub send_batch_bytes: u64,
    pub send_batch_delay: DurationWire,
    pub edge_writer: bool,
    pub failover_window: DurationWire,
    pub engine_stop_timeout: DurationWire,
    pub failover_stop_timeout: DurationWire,
    pub unwatched_linger: DurationWire,
    pub trusted_proxies: Vec<String>,
    pub limit_exempt: Vec<String>,
    pub max_clients_per_ip: u64,
    pub max_sessions_per_ip: u64,
    pub session_starts_per_ip_per_minute: u64,
    pub max_clients: u64,
    pub max_sessions: u64,
    pub passthrough: Vec<String>,
    pub request_header_timeout: DurationWire,
    pub keepalive_timeout: DurationWire,
    pub max_request_head_bytes: u64,
    pub max_connections: u64,
    pub proxy_protocol: bool,
    pub stream_token_secret: String,
    pub hls_segment_seconds: DurationWire,
    pub hls_window_segments: u64,
    pub hls_first_segment_seconds: DurationWire,
    pub hls_read_ahead_bytes: u64,
    pub hls_low_latency: bool,
    pub hls_part_seconds: DurationWire,
    pub hls_max_blocking_requests: u64,
    pub dvr_window: DurationWire,
    pub dvr_dir: Option<std::path::PathBuf>,
    pub dvr_max_bytes: u64,
    pub dvr_pause_timeout: DurationWire,
    pub engine_stat_interval: DurationWire,
    pub stuck_stream_timeout: DurationWire,
    pub panic_when_all_unhealthy: bool,
    pub check_timeout: DurationWire,
    pub max_concurrent_checks: u64,
}

impl Default for AceWire {
    fn default() -> Self {
        let secs = |s: f64| DurationWire(Duration::from_secs_f64(s));
        AceWire {
            listen: vec!["127.0.0.1:8000".to_string()],
            admin_token: String::new(),
            engines: Vec::new(),
            orchestrator: None,
            cluster: None,
            channels: None,
            public_url: String::new(),
            metrics_top_streams: 20,
            log_format: super::LogFormat::Text,
            empty_stream_timeout: secs(30.0),
            stream_idle_timeout: secs(300.0),
            client_heartbeat_interval: secs(10.0),
            client_timeout: secs(30.0),
            stream_buffer_size: 4 * 1024 * 1024,
            copy_chunk_size: 64 * 1024,
            join_burst_bytes: 256 * 1024,
            chunk_flush_interval: secs(0.1),
            engine_selection_timeout: secs(5.0),
            engine_cache_ttl: secs(2.0),
            engine_connect_timeout: secs(5.0),
            engine_read_timeout: secs(60.0),
            max_streams_per_engine: 10,
            session_cleanup_interval: secs(60.0),
            health_check_interval: secs(5.0),
            keepalive_interval: secs(1.0),
            upstream_stall_timeout: secs(5.0),
            max_failovers: 3,
            engine_failure_penalty: secs(60.0),
            live_lead: secs(2.0),
            stream_buffer_seconds: secs(15.0),
            stream_buffer_max_bytes: 64 * 1024 * 1024,
            max_buffer_bytes: None,
            client_send_buffer: 256 * 1024,
            zero_copy: true,
            viewer_takeover: true,
            send_batch_bytes: 128 * 1024,
            send_batch_delay: secs(0.2),
            edge_writer: true,
            failover_window: secs(60.0),
            engine_stop_timeout: secs(3.0),
            failover_stop_timeout: secs(1.0),
            unwatched_linger: secs(5.0),
            trusted_proxies: Vec::new(),
            limit_exempt: vec!["127.0.0.0/8".into(), "::1".into()],
            max_clients_per_ip: 16,
            max_sessions_per_ip: 8,
            session_starts_per_ip_per_minute: 30,
            max_clients: 0,
            max_sessions: 0,
            passthrough: super::passthrough::default_rules(),
            request_header_timeout: secs(10.0),
            keepalive_timeout: secs(60.0),
            max_request_head_bytes: 16 * 1024,
            max_connections: 0,
            proxy_protocol: false,
            stream_token_secret: String::new(),
            hls_segment_seconds: secs(4.0),
            hls_window_segments: 6,
            hls_first_segment_seconds: secs(1.0),
            hls_read_ahead_bytes: 24 * 1024 * 1024,
            hls_low_latency: false,
            hls_part_seconds: secs(0.5),
            hls_max_blocking_requests: 4,
            dvr_window: secs(30.0 * 60.0),
            dvr_dir: None,
            dvr_max_bytes: 4 << 30,
            dvr_pause_timeout: secs(300.0),
            engine_stat_interval: secs(2.0),
            stuck_stream_timeout: secs(30.0),
            panic_when_all_unhealthy: true,
            check_timeout: secs(15.0),
            max_concurrent_checks: 2,
        }
    }
}

/// One entry of `acestream.engines`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineWire {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub forwarded: bool,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `acestream.orchestrator`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorWire {
    pub url: String,
    #[serde(default)]
    pub api_key: String,
    #[serde(default = "yes")]
    pub report_events: bool,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

/// `acestream.channels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsWire {
    #[serde(default)]
    pub sources: Vec<ChannelSourceWire>,
    #[serde(default)]
    pub list: Vec<ChannelEntryWire>,
    #[serde(default = "channels_max_source_bytes")]
    pub max_source_bytes: u64,
    #[serde(default = "channels_fetch_timeout")]
    pub fetch_timeout: DurationWire,
    #[serde(default = "channels_playlist_token_ttl")]
    pub playlist_token_ttl: DurationWire,
    #[serde(default)]
    pub epg: Vec<ChannelSourceWire>,
    #[serde(default = "channels_max_guide_bytes")]
    pub max_guide_bytes: u64,
    #[serde(default = "channels_check_interval")]
    pub check_interval: DurationWire,
}

impl Default for ChannelsWire {
    fn default() -> Self {
        ChannelsWire {
            sources: Vec::new(),
            list: Vec::new(),
            max_source_bytes: channels_max_source_bytes(),
            fetch_timeout: channels_fetch_timeout(),
            playlist_token_ttl: channels_playlist_token_ttl(),
            epg: Vec::new(),
            max_guide_bytes: channels_max_guide_bytes(),
            check_interval: channels_check_interval(),
        }
    }
}

fn channels_max_guide_bytes() -> u64 {
    100 << 20
}

fn channels_check_interval() -> DurationWire {
    DurationWire(Duration::from_secs(30 * 60))
}

fn channels_max_source_bytes() -> u64 {
    16 << 20
}

fn channels_fetch_timeout() -> DurationWire {
    DurationWire(Duration::from_secs(10))
}

fn channels_playlist_token_ttl() -> DurationWire {
    DurationWire(Duration::from_secs(7 * 24 * 3600))
}

/// One source: a URL or path alone, or with its `refresh`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ChannelSourceWire {
    Plain(String),
    Full {
        url: String,
        #[serde(default)]
        refresh: Option<DurationWire>,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
    },
}

/// One inline channel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelEntryWire {
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub logo: Option<String>,
    #[serde(default)]
    pub tvg_id: Option<String>,
}

/// `acestream.cluster`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWire {
    #[serde(rename = "self")]
    pub self_addr: String,
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub mode: super::ClusterMode,
    #[serde(default = "cluster_health_check_interval")]
    pub health_check_interval: DurationWire,
    #[serde(default = "cluster_peer_timeout")]
    pub peer_timeout: DurationWire,
}

fn cluster_health_check_interval() -> DurationWire {
    DurationWire(Duration::from_secs(2))
}

fn cluster_peer_timeout() -> DurationWire {
    DurationWire(Duration::from_secs(1))
}

/// A duration written as seconds (`30`, `0.5`) or with a unit (`"500ms"`, `"5m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationWire(pub Duration);

impl<'de> Deserialize<'de> for DurationWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = DurationWire;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration: seconds as a number, or a string like \"500ms\" or \"5m\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(DurationWire(Duration::from_secs(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        if v < 0 {
            return Err(E::custom(format!("negative duration {v}")));
        }
        Ok(DurationWire(Duration::from_secs(v as u64)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if !v.is_finite() || v < 0.0 {
            return Err(E::custom(format!("negative or non-finite duration {v}")));
        }
        Duration::try_from_secs_f64(v)
            .map(DurationWire)
            .map_err(|e| E::custom(format!("duration {v}: {e}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let text = v.trim();
        if text.starts_with('-') {
            return Err(E::custom(format!("negative duration {text:?}")));
        }
        if let Ok(secs) = text.parse::<f64>() {
            return self.visit_f64(secs);
        }
        humantime::parse_duration(text)
            .map(DurationWire)
            .map_err(|e| E::custom(format!("bad duration {text:?}: {e}")))
    }
}
