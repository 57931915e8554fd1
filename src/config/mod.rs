//! Configuration: one Pingora YAML file, Pingora's keys at the top and ours under `acestream:`.
//!
//! [`load_file`] / [`load_str`] read the text once for Pingora's [`ServerConf`] (which ignores keys
//! it does not know) and once more for our section, then validate everything into a typed
//! [`Config`]. Every problem is reported with its key path (`acestream.engines[0].port`) before
//! anything listens, and all validation problems are reported together, not one per run.
//!
//! (Over 400 lines with its tests: validation is one function on purpose, so that every problem
//! is collected in one pass.)

pub mod live;
mod wire;

use crate::access::cidr::Cidr;
use crate::access::passthrough::PassthroughRule;
use pingora::server::configuration::ServerConf;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use wire::{AceWire, FileWire};

use crate::ts::PACKET_SIZE as TS_PACKET_SIZE;

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

/// Checks a `host:port` member address; the reason when it is not one.
fn member_address(a: &str) -> Result<(), String> {
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err(format!("{a:?} is not host:port"));
    };
    if host.trim_matches(['[', ']']).is_empty() {
        return Err(format!("{a:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{a:?}: port must be 1..=65535")),
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

/// One problem in the configuration, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// `acestream.engines[0].port`, or the file path for I/O problems.
    pub path: String,
    /// What is wrong, in words.
    pub reason: String,
    /// The line of the file it is on, when it can be told.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// At least one problem.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                path: path.into(),
                reason: reason.into(),
                line: None,
            }],
        }
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

/// Most problems collected from one file before giving up (each pass drops the key at fault).
const MAX_PROBLEMS: usize = 64;

/// Validates configuration text (the content of a YAML file), reporting every problem at once,
/// each with its key path, its line and a reason in words.
pub fn load_str(text: &str) -> Result<LoadedConfig, ConfigError> {
    let mut doc: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Null
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let mut err = ConfigError::one("(document)", strip_location(&e.to_string()));
            err.problems[0].line = e.location().map(|l| l.line());
            err
        })?
    };
    if doc.is_null() {
        doc = serde_yaml::Value::Mapping(Default::default());
    }
    let mut problems = Vec::new();
    // Our section: every serde error, one per key. Each pass records the error and drops the
    // key at fault (so its default applies), then tries again.
    let acestream = loop {
        match serde_path_to_error::deserialize::<_, FileWire>(doc.clone()) {
            Ok(file) => break Some(file.acestream),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let key_path = describe_path(&path, &inner);
                let reason = humanize(&key_path, &strip_path_prefix(&inner, &path));
                problems.push(ConfigProblem {
                    line: line_of(text, &key_path),
                    path: key_path.clone(),
                    reason,
                });
                if problems.len() >= MAX_PROBLEMS || !drop_key(&mut doc, &key_path) {
                    break None;
                }
            }
        }
    };
    let acestream = acestream.and_then(|a| match validate(a) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.extend(e.problems.into_iter().map(|mut p| {
                p.line = line_of(text, &p.path);
                p
            }));
            None
        }
    });
    // Pingora's half: its keys at the top level, read from the same document (so an error names
    // the key and line instead of printing the whole file).
    let mut pingora_doc = doc.clone();
    if let serde_yaml::Value::Mapping(m) = &mut pingora_doc {
        m.remove("acestream");
    }
    let server = match serde_path_to_error::deserialize::<_, ServerConf>(pingora_doc) {
        Ok(conf) => Some(conf),
        Err(e) => {
            let path = e.path().to_string();
            problems.push(ConfigProblem {
                line: line_of(text, &path),
                reason: humanize(
                    &path,
                    &strip_path_prefix(&e.into_inner().to_string(), &path),
                ),
                path,
            });
            None
        }
    };
    match (acestream, server) {
        (Some(acestream), Some(server)) if problems.is_empty() => Ok(LoadedConfig {
            warnings: unknown_top_level_keys(&doc, text),
            server,
            acestream,
        }),
        _ => Err(ConfigError { problems }),
    }
}

/// Top-level keys neither Pingora nor we know: Pingora would ignore them silently.
fn unknown_top_level_keys(doc: &serde_yaml::Value, text: &str) -> Vec<ConfigProblem> {
    let known: Vec<String> = match serde_yaml::to_value(ServerConf::default()) {
        Ok(serde_yaml::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let serde_yaml::Value::Mapping(m) = doc else {
        return Vec::new();
    };
    m.keys()
        .filter_map(|k| k.as_str())
        .filter(|k| *k != "acestream" && !known.iter().any(|n| n == k))
        .map(|k| ConfigProblem {
            path: k.to_string(),
            reason: "not a Pingora setting and not `acestream`: ignored (a typo?)".into(),
            line: line_of(text, k),
        })
        .collect()
}

/// Removes the key a problem is about, at the level right under `acestream` (or the top level),
/// so the next pass gets further. False if there is nothing left to remove.
fn drop_key(doc: &mut serde_yaml::Value, key_path: &str) -> bool {
    let mut parts = key_path.split(['.', '[']);
    let first = parts.next().unwrap_or("");
    let serde_yaml::Value::Mapping(top) = doc else {
        return false;
    };
    if first != "acestream" {
        return top.remove(first).is_some();
    }
    match parts.next() {
        Some(key) => match top.get_mut("acestream") {
            Some(serde_yaml::Value::Mapping(ace)) => ace.remove(key).is_some(),
            _ => top.remove("acestream").is_some(),
        },
        None => top.remove("acestream").is_some(),
    }
}

/// The line (1-based) a key path is on, found by walking its keys down the text: each key is
/// looked for after the line of its parent. `None` when the text does not show it plainly.
fn line_of(text: &str, key_path: &str) -> Option<usize> {
    let keys: Vec<&str> = key_path
        .split('.')
        .map(|k| k.split('[').next().unwrap_or(k))
        .filter(|k| !k.is_empty() && !k.starts_with('('))
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for key in keys {
        let at = (from..lines.len()).find(|&i| {
            let l = lines[i];
            let pattern = format!("{key}:");
            l.match_indices(&pattern).any(|(pos, _)| {
                pos == 0
                    || l[..pos]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_whitespace() || c == '{' || c == ',' || c == '-')
            })
        })?;
        found = Some(at + 1);
        from = at;
    }
    found
}

/// serde_yaml's messages end with their own location; the problem carries the line already.
fn strip_location(reason: &str) -> String {
    match reason.find(" at line ") {
        Some(i) => reason[..i].to_string(),
        None => reason.to_string(),
    }
}

/// Serde's words for types, in a user's words.
fn humanize(key_path: &str, reason: &str) -> String {
    let reason = strip_location(reason);
    if key_path.ends_with("port") && reason.contains("u16") {
        return "a port is a whole number 1–65535".to_string() + &got(&reason);
    }
    reason
        .replace("expected u16", "expected a whole number 0–65535")
        .replace("expected u64", "expected a whole number (0 or more)")
        .replace("expected usize", "expected a whole number (0 or more)")
        .replace("expected u32", "expected a whole number (0 or more)")
        .replace("expected a sequence", "expected a list (`[a, b]`)")
        .replace("expected a boolean", "expected true or false")
}

/// ", got X" from a serde "invalid value: integer `X`" message.
fn got(reason: &str) -> String {
    reason
        .split('`')
        .nth(1)
        .map(|v| format!(", got {v}"))
        .unwrap_or_default()
}

/// Default settings when no file is given: Pingora's defaults and ours.
pub fn defaults() -> LoadedConfig {
    LoadedConfig {
        server: ServerConf::default(),
        acestream: Config::default(),
        warnings: Vec::new(),
    }
}

/// An unknown key is reported at the path of the key itself, not of its parent map.
fn describe_path(path: &str, reason: &str) -> String {
    let base = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    if let Some(rest) = reason.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let key = &rest[..end];
            return if base.is_empty() {
                key.to_string()
            } else if base == key || base.ends_with(&format!(".{key}")) {
                // Some deserializers already put the unknown key in the path.
                base
            } else {
                format!("{base}.{key}")
            };
        }
    }
    if base.is_empty() {
        "(document)".to_string()
    } else {
        base
    }
}

/// serde_yaml already starts its message with the path; we print the path once, in front.
fn strip_path_prefix(reason: &str, path: &str) -> String {
    reason
        .strip_prefix(path)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(reason)
        .to_string()
}

fn validate(w: AceWire) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut bad = |path: String, reason: String| {
        problems.push(ConfigProblem {
            path,
            reason,
            line: None,
        })
    };

    if w.listen.is_empty() {
        bad(
            "acestream.listen".into(),
            "needs at least one address".into(),
        );
    }
    let mut listen = Vec::new();
    for (i, a) in w.listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => bad(
                format!("acestream.listen[{i}]"),
                "port 0 is not allowed".into(),
            ),
            Ok(addr) => listen.push(addr),
            Err(e) => bad(
                format!("acestream.listen[{i}]"),
                if a.starts_with("localhost") {
                    format!(
                        "{a:?}: names are not resolved; use 127.0.0.1{} (or [::1]:PORT)",
                        a.trim_start_matches("localhost")
                    )
                } else {
                    format!("{a:?} is not an ip:port address ({e})")
                },
            ),
        }
    }
    let mut engines = Vec::new();
    for (i, e) in w.engines.iter().enumerate() {
        if e.host.trim().is_empty() {
            bad(format!("acestream.engines[{i}].host"), "is empty".into());
        }
        if e.port == 0 {
            bad(
                format!("acestream.engines[{i}].port"),
                "port 0 is not allowed (1..=65535)".into(),
            );
        }
        engines.push(EngineConfig {
            host: e.host.trim().to_string(),
            port: e.port,
            forwarded: e.forwarded,
        });
    }
    let orchestrator = match w.orchestrator {
        None => None,
        Some(o) => {
            let url = o.url.trim().trim_end_matches('/').to_string();
            match url.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {}
                _ => bad(
                    "acestream.orchestrator.url".into(),
                    format!("{:?} is not an http://host:port URL", o.url),
                ),
            }
            Some(OrchestratorConfig {
                url,
                api_key: Some(o.api_key).filter(|k| !k.is_empty()),
                report_events: o.report_events,
            })
        }
    };
    let cluster = match w.cluster {
        None => None,
        Some(c) => {
            let self_addr = c.self_addr.trim().to_string();
            if let Err(e) = member_address(&self_addr) {
                bad("acestream.cluster.self".into(), e);
            }
            let mut peers = Vec::new();
            for (i, p) in c.peers.iter().enumerate() {
                let p = p.trim().to_string();
                match member_address(&p) {
                    Ok(()) => peers.push(p),
                    Err(e) => bad(format!("acestream.cluster.peers[{i}]"), e),
                }
            }
            for (key, d) in [
                ("health_check_interval", c.health_check_interval.0),
                ("peer_timeout", c.peer_timeout.0),
            ] {
                if d < Duration::from_millis(100) {
                    bad(
                        format!("acestream.cluster.{key}"),
                        "must be at least 0.1 s".into(),
                    );
                }
            }
            Some(ClusterConfig {
                self_addr,
                peers,
                mode: c.mode,
                health_check_interval: c.health_check_interval.0,
                peer_timeout: c.peer_timeout.0,
            })
        }
    };
    let copy_chunk_size = (w.copy_chunk_size as usize / TS_PACKET_SIZE) * TS_PACKET_SIZE;
    if copy_chunk_size == 0 {
        bad(
            "acestream.copy_chunk_size".into(),
            format!("must be at least {TS_PACKET_SIZE} bytes (one TS packet)"),
        );
    }
    let stream_buffer_size = w.stream_buffer_size as usize;
    if copy_chunk_size > 0 && stream_buffer_size < 2 * copy_chunk_size {
        bad(
            "acestream.stream_buffer_size".into(),
            format!(
                "must hold at least two chunks ({} bytes)",
                2 * copy_chunk_size
            ),
        );
    }
    let stream_buffer_max_bytes = w.stream_buffer_max_bytes as usize;
    if stream_buffer_max_bytes < stream_buffer_size {
        bad(
            "acestream.stream_buffer_max_bytes".into(),
            format!("must be at least stream_buffer_size ({stream_buffer_size} bytes)"),
        );
    }
    let positive = [
        ("client_heartbeat_interval", w.client_heartbeat_interval),
        ("client_timeout", w.client_timeout),
        ("engine_selection_timeout", w.engine_selection_timeout),
        ("engine_connect_timeout", w.engine_connect_timeout),
        ("engine_read_timeout", w.engine_read_timeout),
        ("session_cleanup_interval", w.session_cleanup_interval),
        ("health_check_interval", w.health_check_interval),
        ("empty_stream_timeout", w.empty_stream_timeout),
        ("chunk_flush_interval", w.chunk_flush_interval),
        ("upstream_stall_timeout", w.upstream_stall_timeout),
        ("failover_window", w.failover_window),
        ("engine_stop_timeout", w.engine_stop_timeout),
        ("failover_stop_timeout", w.failover_stop_timeout),
        ("request_header_timeout", w.request_header_timeout),
        ("keepalive_timeout", w.keepalive_timeout),
        ("hls_segment_seconds", w.hls_segment_seconds),
        ("stuck_stream_timeout", w.stuck_stream_timeout),
        ("check_timeout", w.check_timeout),
    ];
    for (key, d) in positive {
        if d.0.is_zero() {
            bad(format!("acestream.{key}"), "must be greater than 0".into());
        }
    }
    // Floors that used to be silent clamps in the engine pool, now reported by `-t`.
    let floors = [
        (
            "engine_cache_ttl",
            w.engine_cache_ttl,
            0.1,
            "the engine list is refreshed no faster",
        ),
        (
            "health_check_interval",
            w.health_check_interval,
            0.2,
            "a health probe needs time to answer",
        ),
        (
            "engine_connect_timeout",
            w.engine_connect_timeout,
            0.2,
            "a health probe needs time to connect",
        ),
    ];
    for (key, d, min, why) in floors {
        if !d.0.is_zero() && d.0.as_secs_f64() < min {
            bad(
                format!("acestream.{key}"),
                format!("must be at least {min} s ({why})"),
            );
        }
    }
    if w.hls_window_segments < 3 {
        bad(
            "acestream.hls_window_segments".into(),
            "must be at least 3 (a player starts three segments from the end)".into(),
        );
    }
    if w.max_request_head_bytes < 1024 {
        bad(
            "acestream.max_request_head_bytes".into(),
            "must be at least 1024 (a player's request head is a few hundred bytes)".into(),
        );
    }
    if w.max_streams_per_engine == 0 {
        bad(
            "acestream.max_streams_per_engine".into(),
            "must be at least 1".into(),
        );
    }
    let mut ranges = |key: &str, list: &[String]| -> Vec<Cidr> {
        let mut out = Vec::new();
        for (i, r) in list.iter().enumerate() {
            match r.parse::<Cidr>() {
                Ok(c) => out.push(c),
                Err(e) => bad(format!("acestream.{key}[{i}]"), e.to_string()),
            }
        }
        out
    };
    let trusted_proxies = ranges("trusted_proxies", &w.trusted_proxies);
    let limit_exempt = ranges("limit_exempt", &w.limit_exempt);
    let mut passthrough = Vec::new();
    for (i, r) in w.passthrough.iter().enumerate() {
        match PassthroughRule::parse(r) {
            Ok(rule) => passthrough.push(rule),
            Err(e) => bad(format!("acestream.passthrough[{i}]"), e),
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Ok(Config {
        listen,
        admin_token: Some(w.admin_token).filter(|t| !t.is_empty()),
        engines,
        orchestrator,
        cluster,
        log_format: w.log_format,
        empty_stream_timeout: w.empty_stream_timeout.0,
        stream_idle_timeout: w.stream_idle_timeout.0,
        client_heartbeat_interval: w.client_heartbeat_interval.0,
        client_timeout: w.client_timeout.0,
        stream_buffer_size,
        copy_chunk_size,
        join_burst_bytes: w.join_burst_bytes as usize,
        chunk_flush_interval: w.chunk_flush_interval.0,
        engine_selection_timeout: w.engine_selection_timeout.0,
        engine_cache_ttl: w.engine_cache_ttl.0,
        engine_connect_timeout: w.engine_connect_timeout.0,
        engine_read_timeout: w.engine_read_timeout.0,
        max_streams_per_engine: w.max_streams_per_engine as usize,
        session_cleanup_interval: w.session_cleanup_interval.0,
        health_check_interval: w.health_check_interval.0,
        keepalive_interval: w.keepalive_interval.0,
        upstream_stall_timeout: w.upstream_stall_timeout.0,
        max_failovers: w.max_failovers as usize,
        engine_failure_penalty: w.engine_failure_penalty.0,
        live_lead: w.live_lead.0,
        stream_buffer_seconds: w.stream_buffer_seconds.0,
        stream_buffer_max_bytes,
        client_send_buffer: w.client_send_buffer as usize,
        zero_copy: w.zero_copy,
        viewer_takeover: w.viewer_takeover,
        send_batch_bytes: w.send_batch_bytes as usize,
        send_batch_delay: w.send_batch_delay.0,
        failover_window: w.failover_window.0,
        engine_stop_timeout: w.engine_stop_timeout.0,
        failover_stop_timeout: w.failover_stop_timeout.0,
        unwatched_linger: w.unwatched_linger.0,
        trusted_proxies,
        limit_exempt,
        max_clients_per_ip: w.max_clients_per_ip as usize,
        max_sessions_per_ip: w.max_sessions_per_ip as usize,
        session_starts_per_ip_per_minute: w.session_starts_per_ip_per_minute as usize,
        max_clients: w.max_clients as usize,
        max_sessions: w.max_sessions as usize,
        passthrough,
        request_header_timeout: w.request_header_timeout.0,
        keepalive_timeout: w.keepalive_timeout.0,
        max_request_head_bytes: w.max_request_head_bytes as usize,
        max_connections: w.max_connections as usize,
        proxy_protocol: w.proxy_protocol,
        stream_token_secret: Some(w.stream_token_secret).filter(|s| !s.is_empty()),
        hls_segment_seconds: w.hls_segment_seconds.0,
        hls_window_segments: w.hls_window_segments as usize,
        engine_stat_interval: w.engine_stat_interval.0,
        stuck_stream_timeout: w.stuck_stream_timeout.0,
        panic_when_all_unhealthy: w.panic_when_all_unhealthy,
        check_timeout: w.check_timeout.0,
        max_concurrent_checks: w.max_concurrent_checks as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<String> {
        load_str(text)
            .expect_err("config must be rejected")
            .problems
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    /// A file with only engines is valid and every other key takes the spec's default.
    #[test]
    fn minimal_file_takes_spec_defaults() {
        let c = load_str("acestream: {engines: [{host: 127.0.0.1, port: 6878}]}")
            .unwrap()
            .acestream;
        assert_eq!(c.listen, vec!["127.0.0.1:8000".parse().unwrap()]);
        assert_eq!(c.empty_stream_timeout, Duration::from_secs(30));
        assert_eq!(c.stream_idle_timeout, Duration::from_secs(300));
        assert_eq!(c.client_timeout, Duration::from_secs(30));
        assert_eq!(c.stream_buffer_size, 4_194_304);
        assert_eq!(c.copy_chunk_size, 65_424); // 65536 rounded down to 348 packets
        assert_eq!(c.max_streams_per_engine, 10);
        assert_eq!(c.engine_cache_ttl, Duration::from_secs(2));
        assert_eq!(c.health_check_interval, Duration::from_secs(5));
        assert_eq!(c.engines[0].port, 6878);
        assert!(!c.engines[0].forwarded);
        assert_eq!(c.admin_token, None);
        assert_eq!(c.live_lead, Duration::from_secs(2));
        assert_eq!(c.stream_buffer_seconds, Duration::from_secs(15));
        assert_eq!(c.stream_buffer_max_bytes, 64 << 20);
    }

    /// Durations: seconds, fractions, and unit strings.
    #[test]
    fn durations_accept_seconds_fractions_and_units() {
        let c = load_str(
            "acestream: {stream_idle_timeout: 0.5, client_timeout: \"500ms\", empty_stream_timeout: \"5m\", engine_cache_ttl: \"3\"}",
        )
        .unwrap()
        .acestream;
        assert_eq!(c.stream_idle_timeout, Duration::from_millis(500));
        assert_eq!(c.client_timeout, Duration::from_millis(500));
        assert_eq!(c.empty_stream_timeout, Duration::from_secs(300));
        assert_eq!(c.engine_cache_ttl, Duration::from_secs(3));
    }

    /// A port out of range is named by its key path.
    #[test]
    fn port_out_of_range_names_key_path() {
        assert_eq!(
            paths("acestream: {engines: [{host: 127.0.0.1, port: 99999}]}"),
            vec!["acestream.engines[0].port"]
        );
    }

    /// A typo inside `acestream:` is an error naming the key, never a silent default.
    #[test]
    fn unknown_key_is_named() {
        assert_eq!(
            paths("acestream: {idle_timeot: 3}"),
            vec!["acestream.idle_timeot"]
        );
        assert_eq!(
            paths("acestream: {engines: [{host: a, port: 1, forwardd: true}]}"),
            vec!["acestream.engines[0].forwardd"]
        );
    }

    /// Pingora's keys and unknown top-level keys stay Pingora's business.
    #[test]
    fn pingora_keys_are_left_to_pingora() {
        let c = load_str("version: 1\nthreads: 3\nsomething_else: 1\nacestream: {}\n").unwrap();
        assert_eq!(c.server.threads, 3);
    }

    /// Negative durations, an empty listen list and wrong types are rejected with paths.
    #[test]
    fn bad_values_are_rejected_with_paths() {
        assert_eq!(
            paths("acestream: {client_timeout: -1}"),
            vec!["acestream.client_timeout"]
        );
        assert_eq!(paths("acestream: {listen: []}"), vec!["acestream.listen"]);
        assert_eq!(
            paths("acestream: {stream_buffer_size: lots}"),
            vec!["acestream.stream_buffer_size"]
        );
    }

    /// Floors that used to be silent clamps are reported with their key.
    #[test]
    fn floors_are_reported_not_clamped() {
        assert_eq!(
            paths("acestream: {engine_cache_ttl: 0.05, health_check_interval: 0.1}"),
            vec![
                "acestream.engine_cache_ttl",
                "acestream.health_check_interval"
            ]
        );
    }

    /// Validation reports every problem at once.
    #[test]
    fn all_validation_problems_are_reported_together() {
        let p = paths(
            "acestream: {listen: [\"nope\"], engines: [{host: \"\", port: 0}], copy_chunk_size: 10}",
        );
        assert_eq!(
            p,
            vec![
                "acestream.listen[0]",
                "acestream.engines[0].host",
                "acestream.engines[0].port",
                "acestream.copy_chunk_size"
            ]
        );
    }
}
