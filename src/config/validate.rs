//! Validation: the wire form into the typed [`Config`], every problem collected in one pass.
//!
//! One function on purpose, so that a file with several mistakes is reported whole by `-t`.

use super::cidr::Cidr;
use super::load::{ConfigError, ConfigProblem};
use super::passthrough::PassthroughRule;
use super::wire::AceWire;
use super::{
    AccessRules, Buffers, Checks, ClusterConfig, Config, Connections, Dvr, EngineConfig, Hls,
    Limits, OrchestratorConfig, Pool, Probes, Sessions, Viewers,
};
use crate::ts::PACKET_SIZE as TS_PACKET_SIZE;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

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

pub(super) fn validate(mut w: AceWire) -> Result<Config, ConfigError> {
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
            headers: headers(
                &e.headers,
                &format!("acestream.engines[{i}].headers"),
                &mut bad,
            ),
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
                headers: headers(&o.headers, "acestream.orchestrator.headers", &mut bad),
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
    let max_buffer_bytes = match w.max_buffer_bytes {
        Some(n) => n as usize,
        None => default_buffer_budget(),
    };
    if max_buffer_bytes < stream_buffer_size {
        bad(
            "acestream.max_buffer_bytes".into(),
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
        ("hls_part_seconds", w.hls_part_seconds),
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
    if w.hls_part_seconds.0 > w.hls_segment_seconds.0 / 2 {
        bad(
            "acestream.hls_part_seconds".into(),
            format!(
                "must be at most half of hls_segment_seconds ({} s): a segment holds several parts",
                w.hls_segment_seconds.0.as_secs_f64()
            ),
        );
    }
    if w.hls_part_seconds.0 < Duration::from_millis(100) && !w.hls_part_seconds.0.is_zero() {
        bad(
            "acestream.hls_part_seconds".into(),
            "must be at least 0.1 s (a part is a request per viewer)".into(),
        );
    }
    if !w.dvr_window.0.is_zero() {
        if let Some(dir) = &w.dvr_dir {
            if let Err(e) = usable_dir(dir) {
                bad(
                    "acestream.dvr_dir".into(),
                    format!("{} cannot hold DVR spills: {e}", dir.display()),
                );
            }
        }
        if w.dvr_max_bytes < 16 << 20 {
            bad(
                "acestream.dvr_max_bytes".into(),
                "must be at least 16777216 (16 MiB: two 8 MiB spill files)".into(),
            );
        }
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
    let channels = channels(w.channels.take(), &mut bad);
    let public_url =
        Some(w.public_url.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty());
    if let Some(u) = &public_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            bad(
                "acestream.public_url".into(),
                format!("{u:?} must start with http:// or https://"),
            );
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError {
            problems,
            warnings: Vec::new(),
        });
    }
    Ok(Config {
        listen,
        admin_token: Some(w.admin_token).filter(|t| !t.is_empty()),
        engines,
        orchestrator,
        cluster,
        channels,
        public_url,
        metrics_top_streams: w.metrics_top_streams.min(1000) as usize,
        log_format: w.log_format,
        connections: Connections {
            client_send_buffer: w.client_send_buffer as usize,
            trusted_proxies,
            request_header_timeout: w.request_header_timeout.0,
            keepalive_timeout: w.keepalive_timeout.0,
            max_request_head_bytes: w.max_request_head_bytes as usize,
            max_connections: w.max_connections as usize,
            proxy_protocol: w.proxy_protocol,
        },
        access: AccessRules {
            passthrough,
            stream_token_secret: Some(w.stream_token_secret).filter(|s| !s.is_empty()),
        },
        probes: Probes {
            engine_cache_ttl: w.engine_cache_ttl.0,
            engine_connect_timeout: w.engine_connect_timeout.0,
            health_check_interval: w.health_check_interval.0,
        },
        checks: Checks {
            check_timeout: w.check_timeout.0,
            max_concurrent_checks: w.max_concurrent_checks as usize,
        },
        pool: Pool {
            engine_selection_timeout: w.engine_selection_timeout.0,
            engine_read_timeout: w.engine_read_timeout.0,
            max_streams_per_engine: w.max_streams_per_engine as usize,
            engine_failure_penalty: w.engine_failure_penalty.0,
            engine_stop_timeout: w.engine_stop_timeout.0,
            engine_stat_interval: w.engine_stat_interval.0,
            stuck_stream_timeout: w.stuck_stream_timeout.0,
            panic_when_all_unhealthy: w.panic_when_all_unhealthy,
        },
        sessions: Sessions {
            empty_stream_timeout: w.empty_stream_timeout.0,
            stream_idle_timeout: w.stream_idle_timeout.0,
            session_cleanup_interval: w.session_cleanup_interval.0,
            upstream_stall_timeout: w.upstream_stall_timeout.0,
            max_failovers: w.max_failovers as usize,
            live_lead: w.live_lead.0,
            failover_window: w.failover_window.0,
            failover_stop_timeout: w.failover_stop_timeout.0,
            unwatched_linger: w.unwatched_linger.0,
        },
        buffers: Buffers {
            stream_buffer_size,
            copy_chunk_size,
            join_burst_bytes: w.join_burst_bytes as usize,
            chunk_flush_interval: w.chunk_flush_interval.0,
            stream_buffer_seconds: w.stream_buffer_seconds.0,
            stream_buffer_max_bytes,
            max_buffer_bytes,
        },
        viewers: Viewers {
            client_heartbeat_interval: w.client_heartbeat_interval.0,
            client_timeout: w.client_timeout.0,
            keepalive_interval: w.keepalive_interval.0,
            zero_copy: w.zero_copy,
            viewer_takeover: w.viewer_takeover,
            send_batch_bytes: w.send_batch_bytes as usize,
            send_batch_delay: w.send_batch_delay.0,
            edge_writer: w.edge_writer,
        },
        limits: Limits {
            limit_exempt,
            // A limit of 0 in the file means none.
            max_clients_per_ip: NonZeroUsize::new(w.max_clients_per_ip as usize),
            max_sessions_per_ip: NonZeroUsize::new(w.max_sessions_per_ip as usize),
            session_starts_per_ip_per_minute: NonZeroUsize::new(
                w.session_starts_per_ip_per_minute as usize,
            ),
            max_clients: NonZeroUsize::new(w.max_clients as usize),
            max_sessions: NonZeroUsize::new(w.max_sessions as usize),
        },
        hls: Hls {
            hls_segment_seconds: w.hls_segment_seconds.0,
            hls_window_segments: w.hls_window_segments as usize,
            hls_first_segment_seconds: w.hls_first_segment_seconds.0,
            hls_read_ahead_bytes: w.hls_read_ahead_bytes as usize,
            hls_low_latency: w.hls_low_latency,
            hls_part_seconds: w.hls_part_seconds.0,
            hls_max_blocking_requests: w.hls_max_blocking_requests as usize,
        },
        dvr: Dvr {
            dvr_window: w.dvr_window.0,
            dvr_dir: w
                .dvr_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("acestream-edge-dvr")),
            dvr_max_bytes: w.dvr_max_bytes,
            dvr_pause_timeout: w.dvr_pause_timeout.0,
        },
    })
}

/// `max_buffer_bytes` when not set: 1 GiB, or a quarter of the machine's memory
/// (`/proc/meminfo`) when that is less.
fn default_buffer_budget() -> usize {
    const GIB: usize = 1 << 30;
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<usize>()
            .ok()
    });
    match total {
        Some(kib) => GIB.min(kib * 1024 / 4),
        None => GIB,
    }
}

/// Whether `dir` can hold DVR spills: it exists or can be created, and a file can be written in
/// it (the file is removed again).
pub fn usable_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"acestream-edge")?;
    std::fs::remove_file(&probe)
}

/// `acestream.channels`, validated: sources are `http://` or `https://` URLs or paths, inline ids
/// are ids or links, limits are usable.
fn channels(
    w: Option<super::wire::ChannelsWire>,
    bad: &mut impl FnMut(String, String),
) -> super::ChannelsConfig {
    let w = w.unwrap_or_default();
    let sources = channel_sources(w.sources, "sources", Duration::from_secs(3600), bad);
    let epg = channel_sources(w.epg, "epg", Duration::from_secs(6 * 3600), bad);
    let mut list = Vec::new();
    for (i, e) in w.list.into_iter().enumerate() {
        let Some(key) = crate::channels::m3u::parse_link(&e.id) else {
            bad(
                format!("acestream.channels.list[{i}].id"),
                format!(
                    "{:?} is not a content id (40 hex characters) or an AceStream link",
                    e.id
                ),
            );
            continue;
        };
        let attrs = [
            ("tvg-id", e.tvg_id),
            ("tvg-logo", e.logo),
            ("group-title", e.group),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect();
        list.push(super::ChannelEntry {
            name: e.name,
            key,
            attrs,
        });
    }
    if w.max_source_bytes < 1024 {
        bad(
            "acestream.channels.max_source_bytes".into(),
            "must be at least 1024".into(),
        );
    }
    if w.fetch_timeout.0 < Duration::from_millis(100) {
        bad(
            "acestream.channels.fetch_timeout".into(),
            "must be at least 0.1 s".into(),
        );
    }
    if w.max_guide_bytes < 1024 {
        bad(
            "acestream.channels.max_guide_bytes".into(),
            "must be at least 1024".into(),
        );
    }
    if !w.check_interval.0.is_zero() && w.check_interval.0 < Duration::from_secs(10) {
        bad(
            "acestream.channels.check_interval".into(),
            "must be 0 (off) or at least 10 s".into(),
        );
    }
    super::ChannelsConfig {
        sources,
        list,
        max_source_bytes: w.max_source_bytes,
        fetch_timeout: w.fetch_timeout.0,
        playlist_token_ttl: w.playlist_token_ttl.0,
        epg,
        max_guide_bytes: w.max_guide_bytes,
        check_interval: w.check_interval.0,
    }
}

/// Extra request headers of `field`, checked: valid HTTP names and values, and none the proxy
/// sets itself (`Host`, `Connection`, `Content-Length`, `Transfer-Encoding`).
fn headers(
    wire: &std::collections::BTreeMap<String, String>,
    field: &str,
    bad: &mut impl FnMut(String, String),
) -> super::Headers {
    const OURS: [&str; 4] = ["host", "connection", "content-length", "transfer-encoding"];
    let mut out = Vec::new();
    for (name, value) in wire {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            bad(
                format!("{field}.{name}"),
                "is not a valid header name".into(),
            );
        } else if OURS.contains(&name.to_ascii_lowercase().as_str()) {
            bad(
                format!("{field}.{name}"),
                "is set by the proxy itself and cannot be configured".into(),
            );
        } else if http::HeaderValue::from_str(value).is_err() {
            // The value itself is not echoed: it may be a secret.
            bad(
                format!("{field}.{name}"),
                "the value is not a valid header value (control characters?)".into(),
            );
        } else {
            out.push((name.clone(), value.clone()));
        }
    }
    super::Headers(out.into())
}

/// The sources of `acestream.channels.<field>` (M3U lists or guides): `http://` URLs or paths,
/// each with its `refresh` (`default_refresh` when not given).
fn channel_sources(
    wire: Vec<super::wire::ChannelSourceWire>,
    field: &str,
    default_refresh: Duration,
    bad: &mut impl FnMut(String, String),
) -> Vec<super::ChannelSource> {
    let mut sources = Vec::new();
    for (i, s) in wire.into_iter().enumerate() {
        let (location, refresh, extra) = match s {
            super::wire::ChannelSourceWire::Plain(u) => (u, None, Default::default()),
            super::wire::ChannelSourceWire::Full {
                url,
                refresh,
                headers,
            } => (url, refresh, headers),
        };
        let extra = headers(
            &extra,
            &format!("acestream.channels.{field}[{i}].headers"),
            bad,
        );
        let location = location.trim().to_string();
        let refresh = refresh.map_or(default_refresh, |r| r.0);
        if location.is_empty()
            || (location.contains("://")
                && !location.starts_with("http://")
                && !location.starts_with("https://"))
        {
            bad(
                format!("acestream.channels.{field}[{i}]"),
                format!("{location:?} is neither an http(s):// URL nor a file path"),
            );
        }
        if refresh < Duration::from_secs(1) {
            bad(
                format!("acestream.channels.{field}[{i}].refresh"),
                "must be at least 1 s".into(),
            );
        }
        sources.push(super::ChannelSource {
            location,
            refresh,
            headers: extra,
        });
    }
    sources
}
