//! The configuration's sections: the validated keys grouped by the part of the proxy that
//! reads them, each declared reloadable or restart-only ([`Reload`]) in one place.
//!
//! A section's fields carry their YAML key's name (the file stays flat under `acestream:`);
//! [`section!`] writes each struct with its keys and the comparison a reload uses.

use super::cidr::Cidr;
use super::passthrough::PassthroughRule;
use std::num::NonZeroUsize;
use std::time::Duration;

/// Whether a SIGHUP may change a section while the proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Read by new requests, sessions and clients after a reload.
    Live,
    /// Wired into listeners or background tasks at start: a reload keeps the running value and
    /// names the keys that would change.
    AtRestartOnly,
}

/// Declares a section: its struct (fields named as their YAML keys), whether it reloads, its
/// keys, and the keys whose values differ between two of its values.
macro_rules! section {
    ($(#[$meta:meta])* $name:ident, $reload:expr, { $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// Whether a reload may change it.
            pub const RELOAD: Reload = $reload;
            /// Its keys, as written under `acestream:`.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// The keys whose value differs in `other`.
            pub fn differing(&self, other: &Self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$field != other.$field { out.push(stringify!($field)); } )*
                out
            }
        }
    };
}

section!(
    /// `acestream.*` keys the listeners and the connection guard are built with at start: how connections are accepted, bounded and told apart.
    Connections,
    Reload::AtRestartOnly,
    {
    /// Time to receive a whole request head, from the connection's start (or, on a kept-alive
    /// connection, from the head's first byte). Default 10 s.
        request_header_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection. Default 60 s.
        keepalive_timeout: Duration,
    /// Largest request head accepted, in bytes; no route needs more. Default 16 KiB.
        max_request_head_bytes: usize,
    /// Connections open at once; more are closed as they arrive. 0 (the default): the file
    /// descriptor limit (raised to its hard limit at start) minus a reserve for engine
    /// connections and health probes.
        max_connections: usize,
    /// Every connection starts with a PROXY protocol v1 or v2 header (HAProxy `send-proxy`)
    /// whose source is the client. Default false. Only for listeners that the front alone can
    /// reach: the header is believed.
        proxy_protocol: bool,
    /// `SO_SNDBUF` of every client connection, bytes; 0 leaves the kernel's autotuning (which
    /// grows to `net.ipv4.tcp_wmem`'s maximum, 4 MiB on Linux). Bounded by default (256 KiB) so a
    /// stalled player's lag shows in the ring, where it is measured and bounded, rather than
    /// hiding in kernel memory (up to 4 MiB per viewer).
        client_send_buffer: usize,
    /// Peers whose `X-Forwarded-For` names the client (a reverse proxy, HAProxy, a CDN). Default
    /// none: the client is the socket peer.
        trusted_proxies: Vec<Cidr>,
    }
);

section!(
    /// What reaches the engines and the streams without the admin token, fixed at start.
    AccessRules,
    Reload::AtRestartOnly,
    {
    /// Engine API calls passed through without the admin token: path prefixes, each optionally
    /// with `?method=<name>`. Default: only `get_version` and `get_status` of
    /// `/webui/api/service`. Anything else needs the token; `/ace/cmd/*` always does.
        passthrough: Vec<PassthroughRule>,
    /// With a secret, stream requests need `token=<expiry>.<signature>` (see
    /// [`crate::access::token`]). Default none: streams are open.
        stream_token_secret: Option<String>,
    }
);

section!(
    /// How the engine pool discovers and probes engines; its background tasks are built with them at start.
    Probes,
    Reload::AtRestartOnly,
    {
    /// Engine health probe period. Default 5 s, at least 0.2 s.
        health_check_interval: Duration,
    /// How long a fetched engine list is reused. Default 2 s, at least 0.1 s.
        engine_cache_ttl: Duration,
    /// TCP connect timeout towards engines. Default 5 s, at least 0.2 s.
        engine_connect_timeout: Duration,
    }
);

section!(
    /// `/ace/check`: its concurrency and its wait, fixed at start.
    Checks,
    Reload::AtRestartOnly,
    {
    /// How long `/ace/check` waits for a stream's first byte. Default 15 s.
        check_timeout: Duration,
    /// `/ace/check` requests that may open an engine session at once (more get 429). Default 2.
        max_concurrent_checks: usize,
    }
);

section!(
    /// Choosing engines and talking to them during a session.
    Pool,
    Reload::Live,
    {
    /// Longest time to pick an engine (discovery fetch included). Default 5 s.
        engine_selection_timeout: Duration,
    /// Timeout of engine API answers (JSON calls, the playback response head). A live stream's
    /// silence is judged by `upstream_stall_timeout`. Default 60 s.
        engine_read_timeout: Duration,
    /// Engines with this many streams are not candidates. Default 10.
        max_streams_per_engine: usize,
    /// How long an engine that failed a live session scores lower. Default 60 s.
        engine_failure_penalty: Duration,
    /// Timeout of the fire-and-forget `method=stop` call when a session ends (engines may hang;
    /// acexy and the orchestrator use 3 s). Default 3 s.
        engine_stop_timeout: Duration,
    /// How often a streaming session asks its engine for its stats (`stat_url`); 0 turns the
    /// polling (and the stuck-stream detection it feeds) off. Default 2 s.
        engine_stat_interval: Duration,
    /// A stream whose engine reports `dl` but a `livepos` that does not advance for this long is
    /// failed over. Default 30 s.
        stuck_stream_timeout: Duration,
    /// When no engine passes its health probe, try the least-bad ones anyway (a probe verdict
    /// can be stale by up to `health_check_interval`); an engine that answers becomes healthy at
    /// once. Default true.
        panic_when_all_unhealthy: bool,
    }
);

section!(
    /// A session's life: its start, failovers and linger.
    Sessions,
    Reload::Live,
    {
    /// Longest wait from session start (engine JSON call included) to its first upstream byte.
    /// Default 30 s.
        empty_stream_timeout: Duration,
    /// How long a session lives after its last client leaves. Default 300 s.
        stream_idle_timeout: Duration,
    /// How long a session lingers after its last client left when no stream byte ever reached a
    /// client (aborted requests, probes): long enough for a player that probes and reconnects,
    /// short enough that requests nobody watches cannot hold engine slots. Sessions that were
    /// watched linger `stream_idle_timeout`. Default 5 s.
        unwatched_linger: Duration,
    /// A live upstream silent for this long is failed over to another engine. Default 5 s.
        upstream_stall_timeout: Duration,
    /// Most failovers of one session within `failover_window`; then its clients' responses end.
    /// Default 3.
        max_failovers: usize,
    /// `max_failovers` counts failovers within this window. Default 60 s.
        failover_window: Duration,
    /// Timeout of the stop sent to a failed upstream before failing over; it delays the
    /// failover, while clients get keepalives. Default 1 s.
        failover_stop_timeout: Duration,
    /// How far (in stream time) the ring's live edge may run ahead of the wall clock when the
    /// upstream can deliver faster than real time (an engine's cache burst, a catch-up). The rest
    /// stays in the engine. Default 2 s.
        live_lead: Duration,
    /// Accepted for compatibility with the seed's configuration (seconds, default 60). Nothing
    /// polls on it: each session's own task watches its client count and ends it after
    /// `stream_idle_timeout`, so there is no timer to lose and nothing to reap.
        session_cleanup_interval: Duration,
    }
);

section!(
    /// What each session's ring keeps, and all of them together.
    Buffers,
    Reload::Live,
    {
    /// Bytes the ring keeps at least (join burst + slow-client slack). Default 4 MiB.
        stream_buffer_size: usize,
    /// Upstream read / fan-out unit in bytes, already rounded down to whole 188-byte packets.
    /// Default 65536 (65424 after rounding).
        copy_chunk_size: usize,
    /// Bytes of recent stream within which a joiner's keyframe is looked for first (also how far
    /// a clockless stream's ring runs ahead of its fastest reader). Default 256 KiB.
        join_burst_bytes: usize,
    /// A partial chunk is published after this long, so low bitrates do not wait for a full chunk.
    /// Default 0.1 s.
        chunk_flush_interval: Duration,
    /// How far behind the live edge, in stream time, a client may fall before it is dropped: the
    /// ring keeps that much past `stream_buffer_size` while a reading client needs it (capped by
    /// `stream_buffer_max_bytes`). Default 15 s.
        stream_buffer_seconds: Duration,
    /// Hard cap on one session's ring, in bytes, whatever `stream_buffer_seconds` asks. Default
    /// 64 MiB.
        stream_buffer_max_bytes: usize,
    /// All sessions' stream buffers together (rings and HLS segments), bytes; over it the readers
    /// holding the most buffer behind the live edge are cut (see [`crate::streams::budget`]).
    /// Default: 1 GiB or a quarter of the machine's memory, whichever is smaller.
        max_buffer_bytes: usize,
    }
);

section!(
    /// How a TS viewer is written to and when it is given up.
    Viewers,
    Reload::Live,
    {
    /// A client whose socket accepts nothing for this long is dropped. Default 30 s.
        client_timeout: Duration,
    /// How often client activity is checked (default 10 s). Accepted for the seed's
    /// compatibility; client liveness is enforced per client (idle read, write errors,
    /// `client_timeout`), so nothing polls on this interval.
        client_heartbeat_interval: Duration,
    /// Clients get a TS null packet at least this often while no stream bytes flow (prebuffer,
    /// stalls, failover), so players keep the socket. Zero disables keepalive (and headers then
    /// wait for the first stream byte). Default 1 s.
        keepalive_interval: Duration,
    /// Serve HTTP/1 TS viewers from the session's page file with `sendfile` (one copy of the
    /// stream in memory, none per viewer), close-delimited. `false`, or a connection where it is
    /// not possible (HTTP/2, a kernel without `memfd`), uses the copying path. Default true:
    /// measured side by side on this project's machine, 1000 viewers of a 4 Mbit/s stream cost
    /// 16.7–19.4 % of a core with it against 21.6–23.0 % with the copying path, and 10 readers
    /// at line speed about the same per Gbit/s (see docs/performance.md).
        zero_copy: bool,
    /// An HTTP/1 TS viewer takes its connection over from Pingora once its head is out and is
    /// written by its own small task (close-delimited, batched at the live edge, a few KiB per
    /// viewer). `false` keeps every viewer in Pingora's body writer (chunked, about 33 KiB per
    /// viewer, one write per chunk: the path of earlier releases, and a way back). Default true.
        viewer_takeover: bool,
    /// Taken-over viewers at the live edge are woken (all at once, by the session) once this
    /// many bytes are new since the last wake, or at the first publish `send_batch_delay` after
    /// it, not at every chunk the ring publishes: every wake costs a task poll and every send a
    /// fixed amount in the kernel, whatever its size (see `streams::ring::edge`). A stream
    /// without a clock is never batched. 0 wakes them at every publish. Default 131072 (128 KiB).
        send_batch_bytes: usize,
    /// The longest new bytes wait for a batch before the session wakes its viewers at the live
    /// edge (latency it adds, at most). Default 0.2 s.
        send_batch_delay: Duration,
    /// A `sendfile` viewer at the live edge parks in its session, and the session's edge writer
    /// sends the new bytes of every parked viewer itself at each wake (one `sendfile` each, no
    /// task wake per viewer); a viewer goes back to its own task when its socket is full, at a
    /// keepalive tick and at the stream's end (see `streams::parked`). `false`: every viewer's
    /// task is woken and sends for itself. Default true.
        edge_writer: bool,
    }
);

section!(
    /// Per-address and global viewer limits.
    Limits,
    Reload::Live,
    {
    /// Addresses the per-address limits do not apply to. Default loopback (`127.0.0.0/8`,
    /// `::1`): a local player, a reverse proxy on the same host not yet listed in
    /// `trusted_proxies`, the project's own load tests.
        limit_exempt: Vec<Cidr>,
    /// Concurrent viewers of one address (`None`: no limit, `0` in the file). Default 16: a
    /// household behind one NAT with several players, each with a probe.
        max_clients_per_ip: Option<NonZeroUsize>,
    /// Distinct content ids one address watches at once (`None`: no limit). Default 8.
        max_sessions_per_ip: Option<NonZeroUsize>,
    /// New engine sessions one address may start per minute (`None`: no limit). Default 30:
    /// zapping through channels, not walking an id list.
        session_starts_per_ip_per_minute: Option<NonZeroUsize>,
    /// Concurrent viewers in all (`None`, the default: no limit; `max_connections` bounds them).
        max_clients: Option<NonZeroUsize>,
    /// Sessions in all (`None`, the default: no limit; engines × `max_streams_per_engine` bound
    /// them).
        max_sessions: Option<NonZeroUsize>,
    }
);

section!(
    /// Shared HLS: segment length and playlist window.
    Hls,
    Reload::Live,
    {
    /// HLS segments are cut at the first keyframe at or after this much stream time. Default 4 s.
        hls_segment_seconds: Duration,
    /// Segments an HLS playlist lists (at least 3); as many more stay fetchable. Default 6.
        hls_window_segments: usize,
    /// A new session's first segment is cut at the first keyframe after this much stream time,
    /// each next one twice as long, up to `hls_segment_seconds`: a player can start after one
    /// short segment. Zero: every segment full length. Default 1 s.
        hls_first_segment_seconds: Duration,
    /// While a session has HLS, its engine is read up to this many bytes ahead of the paced TS
    /// edge, so the engine's burst (its live cache, ~20 MB after prebuffering) becomes segments
    /// at once; TS viewers still get the stream on its clock. Zero: HLS gets the stream when TS
    /// viewers do. Default 24 MiB.
        hls_read_ahead_bytes: usize,
    /// Low-latency HLS (RFC 8216bis): parts, preload hints and blocking playlist reloads.
    /// Players that do not know the tags play the segments as before. Default false: TV apps
    /// handle the tags unevenly.
        hls_low_latency: bool,
    /// Low-latency HLS part length (`PART-TARGET`), stream time. Default 0.5 s.
        hls_part_seconds: Duration,
    /// Requests one client address may hold open waiting for a playlist update or a part
    /// (blocking reloads, preload hints); more are answered at once. Default 4.
        hls_max_blocking_requests: usize,
    }
);

section!(
    /// DVR: each session's recent stream kept on disk behind its ring, for rewound and paused
    /// viewers (see [`crate::streams::dvr`]). Its directory is prepared at start.
    Dvr,
    Reload::AtRestartOnly,
    {
    /// How much stream each session keeps on disk for rewinding (wall time). Zero: DVR off.
    /// Default 30 min.
        dvr_window: Duration,
    /// Where the spills are written: created at start, emptied of an earlier run's spills.
    /// Default `<system temp dir>/acestream-edge-dvr`.
        dvr_dir: std::path::PathBuf,
    /// All spills together, bytes; over it the oldest data of the longest spill goes first.
    /// Default 4 GiB.
        dvr_max_bytes: u64,
    /// With DVR on, how long a TS viewer's socket may accept nothing (a paused player) before
    /// it is dropped, when longer than `client_timeout`: its stream goes on from the spill, so a
    /// pause holds no memory. Default 5 min.
        dvr_pause_timeout: Duration,
    }
);
