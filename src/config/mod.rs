//! Configuration: one Pingora YAML file, Pingora's keys at the top and ours under `acestream:`.
//!
//! [`load_file`] / [`load_str`] read the text once for Pingora's [`ServerConf`] (which ignores keys
//! it does not know) and once more for our section, then validate everything into a typed
//! [`Config`]. Every problem is reported with its key path (`acestream.engines[0].port`) before
//! anything listens, and all validation problems are reported together, not one per run.
//!
//! `load` reads the text and reports problems with their lines; `validate` turns the wire form
//! (`wire`) into [`Config`]; `live` holds the running value that SIGHUP replaces.

pub mod cidr;
pub mod live;
mod load;
pub mod passthrough;
mod validate;
mod wire;

use cidr::Cidr;
pub use load::{load_str, ConfigError, ConfigProblem};
use passthrough::PassthroughRule;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use validate::validate;
use wire::AceWire;

/// The validated settings of the proxy. Defaults are the seed's (README, "Configuration").
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Addresses serving getstream, admin and metrics. Default `127.0.0.1:8000`.
    pub listen: Vec<SocketAddr>,
    /// If set, `/proxy/*` and `/metrics` require `Authorization: Bearer <token>`. Default none.
    pub admin_token: Option<String>,
    /// The static engine pool. Default empty.
    pub engines: Vec<EngineConfig>,
    /// Optional orchestrator that lists engines at `GET <url>/engines`. Default none.
    pub orchestrator: Option<OrchestratorConfig>,
    /// Several nodes as one fleet (see [`crate::cluster`]). Default none: a single node.
    pub cluster: Option<ClusterConfig>,
    /// `text` (the default) or `json` log lines.
    pub log_format: LogFormat,
    /// Longest wait from session start (engine JSON call included) to its first upstream byte.
    /// Default 30 s.
    pub empty_stream_timeout: Duration,
    /// How long a session lives after its last client leaves. Default 300 s.
    pub stream_idle_timeout: Duration,
    /// How often client activity is checked (default 10 s). Accepted for the seed's
    /// compatibility; client liveness is enforced per client (idle read, write errors,
    /// `client_timeout`), so nothing polls on this interval.
    pub client_heartbeat_interval: Duration,
    /// A client whose socket accepts nothing for this long is dropped. Default 30 s.
    pub client_timeout: Duration,
    /// Bytes the ring keeps at least (join burst + slow-client slack). Default 4 MiB.
    pub stream_buffer_size: usize,
    /// Upstream read / fan-out unit in bytes, already rounded down to whole 188-byte packets.
    /// Default 65536 (65424 after rounding).
    pub copy_chunk_size: usize,
    /// Bytes of recent stream within which a joiner's keyframe is looked for first (also how far
    /// a clockless stream's ring runs ahead of its fastest reader). Default 256 KiB.
    pub join_burst_bytes: usize,
    /// A partial chunk is published after this long, so low bitrates do not wait for a full chunk.
    /// Default 0.1 s.
    pub chunk_flush_interval: Duration,
    /// Longest time to pick an engine (discovery fetch included). Default 5 s.
    pub engine_selection_timeout: Duration,
    /// How long a fetched engine list is reused. Default 2 s, at least 0.1 s.
    pub engine_cache_ttl: Duration,
    /// TCP connect timeout towards engines. Default 5 s, at least 0.2 s.
    pub engine_connect_timeout: Duration,
    /// Timeout of engine API answers (JSON calls, the playback response head). A live stream's
    /// silence is judged by `upstream_stall_timeout`. Default 60 s.
    pub engine_read_timeout: Duration,
    /// Engines with this many streams are not candidates. Default 10.
    pub max_streams_per_engine: usize,
    /// Accepted for compatibility with the seed's configuration (seconds, default 60). Nothing
    /// polls on it: each session's own task watches its client count and ends it after
    /// `stream_idle_timeout`, so there is no timer to lose and nothing to reap.
    pub session_cleanup_interval: Duration,
    /// Engine health probe period. Default 5 s, at least 0.2 s.
    pub health_check_interval: Duration,
    /// Clients get a TS null packet at least this often while no stream bytes flow (prebuffer,
    /// stalls, failover), so players keep the socket. Zero disables keepalive (and headers then
    /// wait for the first stream byte). Default 1 s.
    pub keepalive_interval: Duration,
    /// A live upstream silent for this long is failed over to another engine. Default 5 s.
    pub upstream_stall_timeout: Duration,
    /// Most failovers of one session within `failover_window`; then its clients' responses end.
    /// Default 3.
    pub max_failovers: usize,
    /// How long an engine that failed a live session scores lower. Default 60 s.
    pub engine_failure_penalty: Duration,
    /// How far (in stream time) the ring's live edge may run ahead of the wall clock when the
    /// upstream can deliver faster than real time (an engine's cache burst, a catch-up). The rest
    /// stays in the engine. Default 2 s.
    pub live_lead: Duration,
    /// How far behind the live edge, in stream time, a client may fall before it is dropped: the
    /// ring keeps that much past `stream_buffer_size` while a reading client needs it (capped by
    /// `stream_buffer_max_bytes`). Default 15 s.
    pub stream_buffer_seconds: Duration,
    /// Hard cap on one session's ring, in bytes, whatever `stream_buffer_seconds` asks. Default
    /// 64 MiB.
    pub stream_buffer_max_bytes: usize,
    /// All sessions' stream buffers together (rings and HLS segments), bytes; over it the readers
    /// holding the most buffer behind the live edge are cut (see [`crate::streams::budget`]).
    /// Default: 1 GiB or a quarter of the machine's memory, whichever is smaller.
    pub max_buffer_bytes: usize,
    /// `SO_SNDBUF` of every client connection, bytes; 0 leaves the kernel's autotuning (which
    /// grows to `net.ipv4.tcp_wmem`'s maximum, 4 MiB on Linux). Bounded by default (256 KiB) so a
    /// stalled player's lag shows in the ring, where it is measured and bounded, rather than
    /// hiding in kernel memory (up to 4 MiB per viewer).
    pub client_send_buffer: usize,
    /// Serve HTTP/1 TS viewers from the session's page file with `sendfile` (one copy of the
    /// stream in memory, none per viewer), close-delimited. `false`, or a connection where it is
    /// not possible (HTTP/2, a kernel without `memfd`), uses the copying path. Default false:
    /// measured on this project's machine (Linux 6.18, 4 KiB shmem pages) a vectored `send` of the
    /// ring's chunks cost less CPU than `sendfile` (see the README's Performance section).
    pub zero_copy: bool,
    /// An HTTP/1 TS viewer takes its connection over from Pingora once its head is out and is
    /// written by its own small task (close-delimited, batched at the live edge, a few KiB per
    /// viewer). `false` keeps every viewer in Pingora's body writer (chunked, about 33 KiB per
    /// viewer, one write per chunk: the path of earlier releases, and a way back). Default true.
    pub viewer_takeover: bool,
    /// A zero-copy viewer at the live edge sends once this many bytes are new (or
    /// `send_batch_delay` passed), not at every chunk the ring publishes: every send costs the
    /// kernel a fixed amount, whatever its size. Default 0 (off: every chunk goes out when it is
    /// published): measured here it saved nothing, because a viewer is still woken at every
    /// publish to count what is pending (see the README's Performance section).
    pub send_batch_bytes: usize,
    /// The longest a zero-copy viewer at the live edge holds new bytes back to batch them
    /// (latency it adds, at most). Default 0.2 s.
    pub send_batch_delay: Duration,
    /// `max_failovers` counts failovers within this window. Default 60 s.
    pub failover_window: Duration,
    /// Timeout of the fire-and-forget `method=stop` call when a session ends (engines may hang;
    /// acexy and the orchestrator use 3 s). Default 3 s.
    pub engine_stop_timeout: Duration,
    /// Timeout of the stop sent to a failed upstream before failing over; it delays the
    /// failover, while clients get keepalives. Default 1 s.
    pub failover_stop_timeout: Duration,
    /// How long a session lingers after its last client left when no stream byte ever reached a
    /// client (aborted requests, probes): long enough for a player that probes and reconnects,
    /// short enough that requests nobody watches cannot hold engine slots. Sessions that were
    /// watched linger `stream_idle_timeout`. Default 5 s.
    pub unwatched_linger: Duration,
    /// Peers whose `X-Forwarded-For` names the client (a reverse proxy, HAProxy, a CDN). Default
    /// none: the client is the socket peer.
    pub trusted_proxies: Vec<Cidr>,
    /// Addresses the per-address limits do not apply to. Default loopback (`127.0.0.0/8`,
    /// `::1`): a local player, a reverse proxy on the same host not yet listed in
    /// `trusted_proxies`, the project's own load tests.
    pub limit_exempt: Vec<Cidr>,
    /// Concurrent viewers of one address (0: no limit). Default 16: a household behind one NAT
    /// with several players, each with a probe.
    pub max_clients_per_ip: usize,
    /// Distinct content ids one address watches at once (0: no limit). Default 8.
    pub max_sessions_per_ip: usize,
    /// New engine sessions one address may start per minute (0: no limit). Default 30: zapping
    /// through channels, not walking an id list.
    pub session_starts_per_ip_per_minute: usize,
    /// Concurrent viewers in all (0: no limit, the default; `max_connections` bounds them).
    pub max_clients: usize,
    /// Sessions in all (0: no limit, the default; engines × `max_streams_per_engine` bound them).
    pub max_sessions: usize,
    /// Engine API calls passed through without the admin token: path prefixes, each optionally
    /// with `?method=<name>`. Default: only `get_version` and `get_status` of
    /// `/webui/api/service`. Anything else needs the token; `/ace/cmd/*` always does.
    pub passthrough: Vec<PassthroughRule>,
    /// Time to receive a whole request head, from the connection's start (or, on a kept-alive
    /// connection, from the head's first byte). Default 10 s.
    pub request_header_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection. Default 60 s.
    pub keepalive_timeout: Duration,
    /// Largest request head accepted, in bytes; no route needs more. Default 16 KiB.
    pub max_request_head_bytes: usize,
    /// Connections open at once; more are closed as they arrive. 0 (the default): the file
    /// descriptor limit (raised to its hard limit at start) minus a reserve for engine
    /// connections and health probes.
    pub max_connections: usize,
    /// Every connection starts with a PROXY protocol v1 or v2 header (HAProxy `send-proxy`)
    /// whose source is the client. Default false. Only for listeners that the front alone can
    /// reach: the header is believed.
    pub proxy_protocol: bool,
    /// With a secret, stream requests need `token=<expiry>.<signature>` (see
    /// [`crate::access::token`]). Default none: streams are open.
    pub stream_token_secret: Option<String>,
    /// HLS segments are cut at the first keyframe at or after this much stream time. Default 4 s.
    pub hls_segment_seconds: Duration,
    /// Segments an HLS playlist lists (at least 3); as many more stay fetchable. Default 6.
    pub hls_window_segments: usize,
    /// How often a streaming session asks its engine for its stats (`stat_url`); 0 turns the
    /// polling (and the stuck-stream detection it feeds) off. Default 2 s.
    pub engine_stat_interval: Duration,
    /// A stream whose engine reports `dl` but a `livepos` that does not advance for this long is
    /// failed over. Default 30 s.
    pub stuck_stream_timeout: Duration,
    /// When no engine passes its health probe, try the least-bad ones anyway (a probe verdict
    /// can be stale by up to `health_check_interval`); an engine that answers becomes healthy at
    /// once. Default true.
    pub panic_when_all_unhealthy: bool,
    /// How long `/ace/check` waits for a stream's first byte. Default 15 s.
    pub check_timeout: Duration,
    /// `/ace/check` requests that may open an engine session at once (more get 429). Default 2.
    pub max_concurrent_checks: usize,
}

/// `acestream.cluster`: the nodes of a fleet, each owning the content ids Ketama hashing gives
/// it among the healthy ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's `host:port` as its peers reach it (one of the fleet's members).
    pub self_addr: String,
    /// The other nodes: `host:port` entries, each resolved every `health_check_interval` (a DNS
    /// name may stand for several, such as a Kubernetes headless Service). Listing this node
    /// too is fine: every node can share one list.
    pub peers: Vec<String>,
    /// What a node does with a request for an id another node serves.
    pub mode: ClusterMode,
    /// How often peers are resolved, health-checked (`GET /healthz`) and asked for their
    /// sessions. Default 2 s.
    pub health_check_interval: Duration,
    /// Longest wait for a peer's answer (its session list, a health check, a forwarded
    /// connection). Default 1 s.
    pub peer_timeout: Duration,
}

/// How log lines are written (`acestream.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `env_logger`'s text lines (the default).
    #[default]
    Text,
    /// One JSON object per line, with fields (see [`crate::server::logging`]).
    Json,
}

/// `acestream.cluster.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// Stream from the serving node through this one (the default): clients never see the fleet.
    #[default]
    Proxy,
    /// Answer `302` with the serving node's URL: the client connects there itself.
    Redirect,
}

impl ClusterMode {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterMode::Proxy => "proxy",
            ClusterMode::Redirect => "redirect",
        }
    }
}

/// One statically configured engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Host name or IP the engine's HTTP API is reached at.
    pub host: String,
    /// The engine's HTTP API port.
    pub port: u16,
    /// Its P2P port is forwarded (scores +1000).
    pub forwarded: bool,
}

/// The orchestrator that lists engines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchestratorConfig {
    /// Base URL, `http://host:port`.
    pub url: String,
    /// Sent as a Bearer token when set.
    pub api_key: Option<String>,
    /// Send `stream_started` / `stream_ended` events for our sessions. Default true.
    pub report_events: bool,
}

impl Default for Config {
    fn default() -> Self {
        validate(AceWire::default()).expect("built-in defaults are valid")
    }
}

/// Both halves of the file: Pingora's server settings and ours.
#[derive(Debug)]
pub struct LoadedConfig {
    /// Pingora's `ServerConf`, validated by Pingora.
    pub server: ServerConf,
    /// Our `acestream:` section, validated.
    pub acestream: Config,
    /// Things that are not errors but are probably mistakes (a top-level key Pingora does not
    /// know, which it would silently ignore).
    pub warnings: Vec<ConfigProblem>,
}

/// Reads and validates a configuration file. A file must name an engine source
/// (`acestream.engines` or `acestream.orchestrator`): an empty file, or one without either, is
/// an error (running without `-c` uses the defaults, which have none, on purpose).
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(path.display().to_string(), e.to_string()))?;
    let loaded = load_str(&text)?;
    let c = &loaded.acestream;
    if c.engines.is_empty() && c.orchestrator.is_none() {
        let reason = if text.trim().is_empty() {
            "the file is empty: add `acestream: {engines: [{host: 127.0.0.1, port: 6878}]}` (or an `orchestrator: {url: ...}`)"
        } else {
            "no engine source: list engines (`engines: [{host: 127.0.0.1, port: 6878}]`) or set `acestream.orchestrator.url`"
        };
        return Err(ConfigError::one("acestream.engines", reason));
    }
    Ok(loaded)
}

/// Default settings when no file is given: Pingora's defaults and ours.
pub fn defaults() -> LoadedConfig {
    LoadedConfig {
        server: ServerConf::default(),
        acestream: Config::default(),
        warnings: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
