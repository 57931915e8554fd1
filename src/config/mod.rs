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
pub mod sections;
mod validate;
pub use validate::usable_dir;
mod wire;

pub use load::{acestream_keys, load_str, ConfigError, ConfigProblem};
use pingora::server::configuration::ServerConf;
pub use sections::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use validate::validate;
use wire::AceWire;

/// The validated settings of the proxy, in sections (see [`sections`]). Defaults are the seed's
/// (docs/reference.md, "Configuration").
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
    /// `acestream.*` keys the listeners and the connection guard are built with at start: how connections are accepted, bounded and told apart. (restart only)
    pub connections: Connections,
    /// What reaches the engines and the streams without the admin token, fixed at start. (restart only)
    pub access: AccessRules,
    /// How the engine pool discovers and probes engines; its background tasks are built with them at start. (restart only)
    pub probes: Probes,
    /// `/ace/check`: its concurrency and its wait, fixed at start. (restart only)
    pub checks: Checks,
    /// Choosing engines and talking to them during a session. (reloadable)
    pub pool: Pool,
    /// A session's life: its start, failovers and linger. (reloadable)
    pub sessions: Sessions,
    /// What each session's ring keeps, and all of them together. (reloadable)
    pub buffers: Buffers,
    /// How a TS viewer is written to and when it is given up. (reloadable)
    pub viewers: Viewers,
    /// Per-address and global viewer limits. (reloadable)
    pub limits: Limits,
    /// Shared HLS: segment length and playlist window. (reloadable)
    pub hls: Hls,
    /// DVR: the on-disk window behind each session's ring. (restart only)
    pub dvr: Dvr,
    /// Channel lists in, playlists out (`acestream.channels`). Default: none. (reloadable)
    pub channels: ChannelsConfig,
    /// The proxy's address as clients reach it (`http://tv.example:8000`), for the absolute URLs
    /// of `/playlist.m3u`; empty: the request's `Host`.
    pub public_url: Option<String>,
    /// Streams not in the channel list that get their own series in the per-stream metrics (the
    /// busiest by viewers); the others are summed as `other`. Default 20, at most 1000.
    pub metrics_top_streams: usize,
}

/// `acestream.channels`: where channel lists come from (see [`crate::channels`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChannelsConfig {
    /// M3U sources, in order.
    pub sources: Vec<ChannelSource>,
    /// Inline entries (they come first).
    pub list: Vec<ChannelEntry>,
    /// Largest source accepted, bytes. Default 16 MiB.
    pub max_source_bytes: u64,
    /// Longest a source's load may take. Default 10 s.
    pub fetch_timeout: Duration,
    /// Lifetime of the stream tokens `/playlist.m3u` puts in its URLs when stream URLs are
    /// signed (a TV app keeps a playlist for days). Default 7 days.
    pub playlist_token_ttl: Duration,
    /// XMLTV guides (`.xml` or `.xml.gz`, `http://` URLs or files), merged into `/epg.xml`.
    /// Each `refresh` defaults to 6 h.
    pub epg: Vec<ChannelSource>,
    /// Largest guide accepted, bytes, both as fetched and unpacked. Default 100 MiB.
    pub max_guide_bytes: u64,
    /// How often the channel checker visits every channel; zero: never. Default 30 min.
    pub check_interval: Duration,
}

/// One M3U source of `acestream.channels.sources`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSource {
    /// An `http://` URL or a file path.
    pub location: String,
    /// How old its list may get before a request loads it again. Default 1 h.
    pub refresh: Duration,
    /// Extra request headers on every fetch of it (an `http://` source).
    pub headers: Headers,
}

/// One inline entry of `acestream.channels.list`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelEntry {
    /// Its name.
    pub name: String,
    /// What it plays.
    pub key: crate::engines::ContentKey,
    /// `group-title`, `tvg-logo`, `tvg-id` as given.
    pub attrs: Vec<(String, String)>,
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
    /// Extra request headers on every call to it (`headers:`).
    pub headers: Headers,
}

/// Extra request headers (`headers:` of an engine, the orchestrator or a channel source), sent
/// on every request to it, e.g. `Authorization` for an engine behind an authenticating reverse
/// proxy. Names and values were checked to be valid HTTP. Its `Debug` shows the names only: a
/// value is a secret and never reaches a log.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Headers(pub std::sync::Arc<[(String, String)]>);

impl Headers {
    /// The `(name, value)` pairs.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|(k, _)| format!("{k}: <{} hidden>", "value")),
            )
            .finish()
    }
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
    /// Extra request headers on every call to it.
    pub headers: Headers,
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
