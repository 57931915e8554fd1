//! Prometheus metrics (`acestream_edge_*`), kept in a registry per server instance so that several
//! proxies in one process (tests) never share counters.
//!
//! Cardinality: labels are bounded sets. `engine` is one value per pool member (`host:port`),
//! `outcome`, `reason`, `route` and `status` are small fixed vocabularies. No label carries a
//! content id or a client address; per-session detail lives in `/proxy/sessions`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the proxy exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Sessions alive now.
    pub sessions_active: IntGauge,
    /// Sessions started, by outcome of their start (`ok`, `no_engine`, `engine_refused`,
    /// `engine_unreachable`, `empty_stream`, `cancelled`).
    pub sessions_started: IntCounterVec,
    /// Clients attached now.
    pub clients_active: IntGauge,
    /// Client joins.
    pub client_joins: IntCounter,
    /// Client leaves (for any reason).
    pub client_leaves: IntCounter,
    /// Clients dropped for falling off the ring or not accepting bytes.
    pub slow_client_drops: IntCounter,
    /// Readers cut to keep `max_buffer_bytes`.
    pub buffer_budget_drops: IntCounter,
    /// TS viewers by how their bytes are written: `path="sendfile"` (zero copy, `reason="-"`) or
    /// `path="copy"` with why zero copy was not possible (`disabled`, `transport`, `no_pages`,
    /// `socket`).
    pub ts_viewer_paths: IntCounterVec,
    /// Sends of stream bytes by taken-over TS viewers, by `path` (`sendfile` or `send`): with
    /// the stream's bitrate and viewer count, how well live-edge batching works.
    pub ts_viewer_sends: IntCounterVec,
    /// Sends made by sessions' edge writers to viewers parked at the live edge.
    pub ts_parked_sends: IntCounter,
    /// Stream bytes read from engines.
    pub upstream_bytes: IntCounter,
    /// Live sessions moved to another engine after an upstream failure.
    pub failovers: IntCounter,
    /// Stream bytes written to clients.
    pub downstream_bytes: IntCounter,
    /// Session start to first upstream byte.
    pub upstream_first_byte: Histogram,
    /// Engine selections, by engine and outcome (`started`, `failed`).
    pub engine_selections: IntCounterVec,
    /// Engine start errors, by engine and reason (`refused`, `unreachable`, `no_first_byte`).
    pub engine_start_errors: IntCounterVec,
    /// 1 if the engine is healthy (set at scrape time).
    pub engine_healthy: IntGaugeVec,
    /// This proxy's sessions per engine (set at scrape time).
    pub engine_active_streams: IntGaugeVec,
    /// The engine's current selection score (set at scrape time).
    pub engine_score: IntGaugeVec,
    /// HTTP responses by route and status code.
    pub http_responses: IntCounterVec,
    /// How far behind the live edge (stream seconds) clients were when dropped.
    pub client_lag_at_drop: Histogram,
    /// How far the ring's live edge ran ahead of real time (seconds), at each chunk released.
    pub ingest_lead: Histogram,
    /// Clock re-anchors of paced ingest, by reason (`discontinuity`, `jump`, `splice`, `late`).
    pub clock_reanchors: IntCounterVec,
    /// Failed orchestrator fetches (brought up to date at scrape time).
    pub orchestrator_failures: IntCounter,
    /// Requests refused with 429, by the limit they hit (`clients_per_ip`, `sessions_per_ip`,
    /// `session_starts_per_ip`, `clients`, `sessions`).
    pub limit_rejections: IntCounterVec,
    /// Connections closed at once: over `max_connections`, or without the PROXY header that
    /// `proxy_protocol` requires.
    pub connections_refused: IntCounter,
    /// HLS segments cut, by how (`keyframe`, `forced`: no keyframe within 2.5× the target).
    pub hls_segments: IntCounterVec,
    /// Low-latency HLS requests that asked to be held (blocking reloads, awaited parts), by
    /// outcome (`held`, `refused`: the address held `hls_max_blocking_requests` already).
    pub hls_blocking_requests: IntCounterVec,
    /// Bytes the DVR spills hold on disk, all sessions together.
    pub dvr_spill_bytes: IntGauge,
    /// DVR spills that ended before their session, by reason (`io_error`, `backlog`).
    pub dvr_spills_cut: IntCounterVec,
    /// Spill files dropped early to keep `dvr_max_bytes`.
    pub dvr_budget_drops: IntCounter,
    /// TS viewers that started behind the live edge (`offset=` or `start=`).
    pub dvr_rewound_viewers: IntCounter,
    /// Listed channels by what the channel checker last found (`alive`, `dead`, `unchecked`).
    pub channels: IntGaugeVec,
    /// Viewers per stream (a listed channel's name, one of the `metrics_top_streams` busiest
    /// other ids, or `other`) and protocol (`ts`, `hls`).
    pub stream_viewers: IntGaugeVec,
    /// Bytes sent to the viewers of each stream's live session so far.
    pub stream_egress_bytes: IntGaugeVec,
    /// Each stream's ingest bitrate, bit/s.
    pub stream_ingest_bitrate: IntGaugeVec,
    /// The 95th percentile of each stream's viewers' lag behind its live edge, seconds.
    pub stream_lag_p95: prometheus::GaugeVec,
    /// The channel checker's checks, by outcome (`alive`, `from_session`, `from_member`, `dead`, `skipped`:
    /// no engine slot to spare).
    pub channel_checks: IntCounterVec,
    /// Reads from DVR spills (each up to 256 KiB).
    pub dvr_spill_reads: IntCounter,
    /// Live TS viewers that fell off their ring's tail (a paused player) and continued from the
    /// DVR spill instead of being dropped.
    pub dvr_continued_viewers: IntCounter,
    /// Upstream failures, by reason (`ended`, `read_failed`, `not_ts`, `stalled`,
    /// `unknown_session`, `livepos_stuck`, `prebuffering`).
    pub upstream_failures: IntCounterVec,
    /// Stat polls of engines that failed (the stream goes on).
    pub engine_stat_errors: IntCounter,
    /// Peers the engine reports, summed over this proxy's sessions on it (at scrape time).
    pub engine_peers: IntGaugeVec,
    /// Download speed the engine reports, KB/s, summed over this proxy's sessions on it.
    pub engine_speed_down: IntGaugeVec,
    /// Events for the orchestrator, by outcome (`sent`, `failed` after retries, `dropped` when
    /// the queue was full).
    pub orchestrator_events: IntCounterVec,
    /// HLS viewers present now (they asked within the last three target durations).
    pub hls_viewers: IntGauge,
    /// Requests proxied to another cluster member, by why that member (`owner`, `holder`).
    pub cluster_forwarded: IntCounterVec,
    /// Requests answered `302` to another cluster member, by why that member.
    pub cluster_redirects: IntCounterVec,
    /// Changes of the set of healthy members (each moves the ownership of some ids).
    pub cluster_owner_changes: IntCounter,
    /// Other members passing their health check now.
    pub cluster_peers_healthy: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let r = Registry::new();
        let upstream_first_byte = histogram(
            &r,
            "acestream_edge_upstream_first_byte_seconds",
            "Time from session start (engine selection and JSON call included) to the first stream byte",
            vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0],
        );
        let client_lag_at_drop = histogram(
            &r,
            "acestream_edge_client_lag_at_drop_seconds",
            "How far behind the live edge, in stream seconds, a client was when it was dropped",
            vec![0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0],
        );
        let ingest_lead = histogram(
            &r,
            "acestream_edge_ingest_lead_seconds",
            "How far the ring's live edge ran ahead of real time when a chunk was released",
            vec![0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0],
        );
        Metrics {
            sessions_active: gauge(
                &r,
                "acestream_edge_sessions_active",
                "Sessions (one per content id) alive now",
            ),
            sessions_started: counter_vec(
                &r,
                "acestream_edge_sessions_started_total",
                "Sessions started, by outcome of the start",
                &["outcome"],
            ),
            clients_active: gauge(
                &r,
                "acestream_edge_clients_active",
                "Clients attached to a session now",
            ),
            client_joins: counter(
                &r,
                "acestream_edge_client_joins_total",
                "Clients that attached to a session",
            ),
            client_leaves: counter(
                &r,
                "acestream_edge_client_leaves_total",
                "Clients that left a session, for any reason",
            ),
            slow_client_drops: counter(
                &r,
                "acestream_edge_slow_client_drops_total",
                "Clients dropped for falling behind the ring",
            ),
            buffer_budget_drops: counter(
                &r,
                "acestream_edge_buffer_budget_drops_total",
                "Readers cut to keep max_buffer_bytes (all sessions' buffers together)",
            ),
            ts_viewer_paths: counter_vec(
                &r,
                "acestream_edge_ts_viewers_total",
                "TS viewers by write path (sendfile or copy) and why a viewer copies",
                &["path", "reason"],
            ),
            ts_viewer_sends: counter_vec(
                &r,
                "acestream_edge_ts_viewer_sends_total",
                "Sends of stream bytes by taken-over TS viewers, by path (sendfile or send)",
                &["path"],
            ),
            ts_parked_sends: counter(
                &r,
                "acestream_edge_ts_parked_sends_total",
                "Sends made by sessions' edge writers to TS viewers parked at the live edge (also counted in ts_viewer_sends_total{path=\"sendfile\"})",
            ),
            upstream_bytes: counter(
                &r,
                "acestream_edge_upstream_bytes_total",
                "Stream bytes read from engines",
            ),
            downstream_bytes: counter(
                &r,
                "acestream_edge_downstream_bytes_total",
                "Stream bytes written to clients",
            ),
            upstream_first_byte,
            failovers: counter(
                &r,
                "acestream_edge_failovers_total",
                "Live sessions moved to another engine after an upstream failure",
            ),
            engine_selections: counter_vec(
                &r,
                "acestream_edge_engine_selections_total",
                "Engines chosen for a session, by engine and whether the start worked",
                &["engine", "outcome"],
            ),
            engine_start_errors: counter_vec(
                &r,
                "acestream_edge_engine_start_errors_total",
                "Failed session starts, by engine and reason",
                &["engine", "reason"],
            ),
            engine_healthy: gauge_vec(
                &r,
                "acestream_edge_engine_healthy",
                "1 if the engine passes its health check, else 0",
                &["engine"],
            ),
            engine_active_streams: gauge_vec(
                &r,
                "acestream_edge_engine_active_streams",
                "Sessions of this proxy on the engine",
                &["engine"],
            ),
            engine_score: gauge_vec(
                &r,
                "acestream_edge_engine_score",
                "The selection score of the engine now",
                &["engine"],
            ),
            http_responses: counter_vec(
                &r,
                "acestream_edge_http_responses_total",
                "HTTP responses, by route and status code",
                &["route", "status"],
            ),
            client_lag_at_drop,
            ingest_lead,
            clock_reanchors: counter_vec(
                &r,
                "acestream_edge_clock_reanchors_total",
                "Restarts of the paced-ingest clock, by reason",
                &["reason"],
            ),
            orchestrator_failures: counter(
                &r,
                "acestream_edge_orchestrator_failures_total",
                "Orchestrator engine-list fetches that failed (the last good list was kept)",
            ),
            limit_rejections: counter_vec(
                &r,
                "acestream_edge_limit_rejections_total",
                "Requests refused with 429, by the limit they hit",
                &["limit"],
            ),
            hls_segments: counter_vec(
                &r,
                "acestream_edge_hls_segments_total",
                "HLS segments cut, by cut (keyframe, or forced when no keyframe came in 2.5x the target)",
                &["cut"],
            ),
            dvr_spill_bytes: gauge(
                &r,
                "acestream_edge_dvr_spill_bytes",
                "Bytes the DVR spills hold on disk, all sessions together",
            ),
            dvr_spills_cut: counter_vec(
                &r,
                "acestream_edge_dvr_spills_cut_total",
                "DVR spills that ended before their session, by reason (io_error, backlog)",
                &["reason"],
            ),
            dvr_budget_drops: counter(
                &r,
                "acestream_edge_dvr_budget_drops_total",
                "Spill files dropped early to keep dvr_max_bytes (the longest spill's oldest first)",
            ),
            dvr_rewound_viewers: counter(
                &r,
                "acestream_edge_dvr_rewound_viewers_total",
                "TS viewers that started behind the live edge (offset= or start=)",
            ),
            channels: gauge_vec(
                &r,
                "acestream_edge_channels",
                "Listed channels by what the channel checker last found (alive, dead, unchecked)",
                &["status"],
            ),
            stream_viewers: gauge_vec(
                &r,
                "acestream_edge_stream_viewers",
                "Viewers per stream (a listed channel's name, one of the metrics_top_streams busiest other ids, or other) and protocol",
                &["stream", "protocol"],
            ),
            stream_egress_bytes: gauge_vec(
                &r,
                "acestream_edge_stream_egress_bytes",
                "Bytes sent to the viewers of each stream's live session so far",
                &["stream"],
            ),
            stream_ingest_bitrate: gauge_vec(
                &r,
                "acestream_edge_stream_ingest_bitrate_bps",
                "Each stream's ingest bitrate, bit/s",
                &["stream"],
            ),
            stream_lag_p95: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "acestream_edge_stream_lag_p95_seconds",
                        "The 95th percentile of each stream's viewers' lag behind its live edge, seconds",
                    ),
                    &["stream"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            channel_checks: counter_vec(
                &r,
                "acestream_edge_channel_checks_total",
                "The channel checker's checks, by outcome (alive, from_session, from_member: a fleet member found it, dead, skipped: no engine slot to spare)",
                &["outcome"],
            ),
            dvr_spill_reads: counter(
                &r,
                "acestream_edge_dvr_spill_reads_total",
                "Reads from DVR spills (each up to 256 KiB)",
            ),
            dvr_continued_viewers: counter(
                &r,
                "acestream_edge_dvr_continued_viewers_total",
                "Live TS viewers that fell off the ring's tail (a paused player) and continued from the DVR spill",
            ),
            hls_blocking_requests: counter_vec(
                &r,
                "acestream_edge_hls_blocking_requests_total",
                "Low-latency HLS requests that asked to be held open, by outcome (held, refused: over hls_max_blocking_requests)",
                &["outcome"],
            ),
            upstream_failures: counter_vec(
                &r,
                "acestream_edge_upstream_failures_total",
                "Upstream failures of live sessions, by reason (each failed over or ended the session)",
                &["reason"],
            ),
            engine_stat_errors: counter(
                &r,
                "acestream_edge_engine_stat_errors_total",
                "Engine stat polls that failed (the stream goes on)",
            ),
            engine_peers: gauge_vec(
                &r,
                "acestream_edge_engine_peers",
                "Peers the engine reports, summed over this proxy's sessions on it",
                &["engine"],
            ),
            engine_speed_down: gauge_vec(
                &r,
                "acestream_edge_engine_speed_down_kbps",
                "Download speed the engine reports (KB/s), summed over this proxy's sessions on it",
                &["engine"],
            ),
            orchestrator_events: counter_vec(
                &r,
                "acestream_edge_orchestrator_events_total",
                "stream_started/stream_ended events for the orchestrator, by outcome",
                &["outcome"],
            ),
            hls_viewers: gauge(
                &r,
                "acestream_edge_hls_viewers",
                "HLS viewers present now (a request within the last three target durations)",
            ),
            connections_refused: counter(
                &r,
                "acestream_edge_connections_refused_total",
                "Connections closed at once (over max_connections, or no PROXY header where required)",
            ),
            cluster_forwarded: counter_vec(
                &r,
                "acestream_edge_cluster_forwarded_requests_total",
                "Requests proxied to the cluster member that serves their id, by why that member (owner, holder)",
                &["because"],
            ),
            cluster_redirects: counter_vec(
                &r,
                "acestream_edge_cluster_redirects_total",
                "Requests answered 302 to the cluster member that serves their id, by why that member",
                &["because"],
            ),
            cluster_owner_changes: counter(
                &r,
                "acestream_edge_cluster_owner_changes_total",
                "Changes of the set of healthy cluster members (each moves the ownership of some ids)",
            ),
            cluster_peers_healthy: gauge(
                &r,
                "acestream_edge_cluster_peers_healthy",
                "Other cluster members passing their health check now",
            ),
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("encoding metrics failed: {e}");
        }
        out
    }
}

/// One live session, as the per-stream metrics see it.
#[derive(Debug, Clone, Default)]
pub struct StreamSample {
    /// Its content key (`<hex>` or `infohash:<hex>`).
    pub key: String,
    /// TS viewers.
    pub ts_viewers: i64,
    /// HLS viewers.
    pub hls_viewers: i64,
    /// Bytes sent to its viewers so far.
    pub egress_bytes: i64,
    /// Its ingest bitrate, bit/s.
    pub bitrate_bps: i64,
    /// Each viewer's lag, seconds.
    pub lags: Vec<f64>,
}

/// The series of one `stream` label: its sessions summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSeries {
    /// The label: a listed channel's name, a content key, or `other`.
    pub label: String,
    /// TS viewers.
    pub ts_viewers: i64,
    /// HLS viewers.
    pub hls_viewers: i64,
    /// Bytes sent.
    pub egress_bytes: i64,
    /// Ingest bitrate, bit/s.
    pub bitrate_bps: i64,
    /// The 95th percentile of its viewers' lag (0 without viewers).
    pub lag_p95: f64,
}

/// The label that sums the streams past `metrics_top_streams`.
pub const OTHER_STREAMS: &str = "other";

/// Labels `samples` within the cardinality bound: a listed channel's name (`names`: key to
/// name; bounded by the list), else the key for the `top` busiest others (by viewers, then
/// egress), else [`OTHER_STREAMS`]. At most `names.len() + top + 1` series come out.
pub fn per_stream(
    samples: &[StreamSample],
    names: &std::collections::HashMap<String, String>,
    top: usize,
) -> Vec<StreamSeries> {
    let mut others: Vec<&StreamSample> = samples
        .iter()
        .filter(|s| !names.contains_key(&s.key))
        .collect();
    others.sort_by_key(|s| std::cmp::Reverse((s.ts_viewers + s.hls_viewers, s.egress_bytes)));
    let own: std::collections::HashSet<&str> =
        others.iter().take(top).map(|s| s.key.as_str()).collect();
    let mut by_label: std::collections::BTreeMap<String, (StreamSeries, Vec<f64>)> =
        Default::default();
    for s in samples {
        let label = match names.get(&s.key) {
            Some(name) => name.clone(),
            None if own.contains(s.key.as_str()) => s.key.clone(),
            None => OTHER_STREAMS.to_string(),
        };
        let (series, lags) = by_label.entry(label.clone()).or_default();
        series.label = label;
        series.ts_viewers += s.ts_viewers;
        series.hls_viewers += s.hls_viewers;
        series.egress_bytes += s.egress_bytes;
        series.bitrate_bps += s.bitrate_bps;
        lags.extend_from_slice(&s.lags);
    }
    by_label
        .into_values()
        .map(|(mut series, mut lags)| {
            lags.sort_by(f64::total_cmp);
            series.lag_p95 = match lags.len() {
                0 => 0.0,
                n => lags[((n as f64 * 0.95).ceil() as usize).clamp(1, n) - 1],
            };
            series
        })
        .collect()
}

#[cfg(test)]
mod per_stream_tests {
    use super::*;

    fn sample(key: &str, viewers: i64, lag: f64) -> StreamSample {
        StreamSample {
            key: key.into(),
            ts_viewers: viewers,
            egress_bytes: 1000 * viewers,
            bitrate_bps: 4_000_000,
            lags: vec![lag; viewers as usize],
            ..Default::default()
        }
    }

    #[test]
    fn listed_by_name_the_busiest_by_key_the_rest_summed() {
        let names: std::collections::HashMap<String, String> =
            [("a".to_string(), "Channel A".to_string())].into();
        let samples: Vec<StreamSample> = std::iter::once(sample("a", 2, 1.0))
            .chain((0..10).map(|i| sample(&format!("x{i}"), i + 1, i as f64)))
            .collect();
        let series = per_stream(&samples, &names, 3);
        let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["Channel A", "other", "x7", "x8", "x9"]);
        let other = &series[1];
        // x0..x6: 1+2+…+7 viewers.
        assert_eq!(other.ts_viewers, 28);
        assert_eq!(other.bitrate_bps, 7 * 4_000_000);
        // The 95th percentile of 28 lags (1 of 0 s, 2 of 1 s, …, 7 of 6 s): the 27th, 6 s.
        assert_eq!(other.lag_p95, 6.0);
        assert_eq!(series.iter().map(|s| s.ts_viewers).sum::<i64>(), 2 + 55);
        assert!(per_stream(&samples, &names, 100).len() == 11);
    }
}
