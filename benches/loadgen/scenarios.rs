//! The benchmark scenarios, each run side by side (proxy vs the simulator serving directly) where
//! that comparison means something.

use super::load::*;
use super::procs::*;
use acestream_edge::http1::{self, Response};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

// === scenarios ===

pub struct Opts {
    pub quick: bool,
    pub runs: u32,
}

/// Who serves the fan-out rows, side by side in one run.
#[derive(Clone, Copy, PartialEq)]
enum FanoutServer {
    /// The simulator itself, one engine session per viewer.
    Direct,
    /// The minimal `sendfile` fan-out ([`super::floor`]).
    Floor,
    /// The proxy as before this wave: every viewer in Pingora's writer (`viewer_takeover:
    /// false`), one chunked write per chunk.
    ProxyBefore,
    /// The proxy with taken-over viewers that write each run of chunks (`zero_copy: false`).
    ProxySend,
    /// The proxy as shipped: taken-over viewers sent with `sendfile` from the page file
    /// (`zero_copy: true`, the default), parked at the live edge for the session's edge writer.
    Proxy,
    /// The proxy with `sendfile` viewers whose own tasks send at the live edge
    /// (`edge_writer: false`).
    ProxyTasks,
    /// Another build of the proxy (`BENCH_BEFORE_BIN`, e.g. the release before issue 24), as
    /// configured by default.
    ProxyBuild,
    /// msd_lite (`MSD_LITE_BIN`), fed the same stream by multicast on loopback.
    MsdLite,
}

impl FanoutServer {
    fn label(self) -> &'static str {
        match self {
            FanoutServer::Direct => "direct",
            FanoutServer::Floor => "floor (sendfile)",
            FanoutServer::ProxyBefore => "proxy before (Pingora writer)",
            FanoutServer::ProxySend => "proxy (send, zero_copy: false)",
            FanoutServer::Proxy => "proxy (sendfile, default)",
            FanoutServer::ProxyTasks => "proxy (sendfile, edge_writer: false)",
            FanoutServer::ProxyBuild => "proxy build of BENCH_BEFORE_BIN",
            FanoutServer::MsdLite => "msd_lite",
        }
    }

    /// The row named `key` in `BENCH_FANOUT_ROWS`.
    fn by_key(key: &str) -> Option<FanoutServer> {
        Some(match key {
            "direct" => FanoutServer::Direct,
            "floor" => FanoutServer::Floor,
            "before" => FanoutServer::ProxyBefore,
            "send" => FanoutServer::ProxySend,
            "proxy" => FanoutServer::Proxy,
            "tasks" => FanoutServer::ProxyTasks,
            "build" => FanoutServer::ProxyBuild,
            "msd" => FanoutServer::MsdLite,
            _ => return None,
        })
    }

    /// The rows `MSD_LITE_BIN` and `BENCH_BEFORE_BIN` add when set.
    fn optional() -> Vec<FanoutServer> {
        let set = |v: &str| std::env::var_os(v).is_some_and(|p| !p.is_empty());
        let mut out = Vec::new();
        if set("BENCH_BEFORE_BIN") {
            out.push(FanoutServer::ProxyBuild);
        }
        if set("MSD_LITE_BIN") {
            out.push(FanoutServer::MsdLite);
        }
        out
    }
}

/// What serves one fan-out row: a process on loopback (or none: the simulator itself), and what
/// its viewers ask for.
struct RowServer {
    proc_: Option<super::procs::Proc>,
    msd: Option<super::msd::MsdLite>,
}

/// One stream, N viewers, served by each [`FanoutServer`] in turn.
async fn fanout_rows(
    scenario: &str,
    run: u32,
    n: usize,
    bitrate: u64,
    servers: &[FanoutServer],
    out: &mut Vec<Report>,
) {
    let env = |v: &str| std::env::var(v).unwrap_or_default();
    for &server in servers {
        let sim = start_sim(bitrate);
        let row = match server {
            FanoutServer::Direct => RowServer {
                proc_: None,
                msd: None,
            },
            FanoutServer::MsdLite => match super::msd::start(&env("MSD_LITE_BIN"), sim.addr) {
                Some(m) => RowServer {
                    proc_: None,
                    msd: Some(m),
                },
                None => continue,
            },
            other => RowServer {
                proc_: Some(match other {
                    FanoutServer::Floor => start_floor(sim.addr),
                    FanoutServer::ProxyBefore => {
                        start_proxy(sim.addr, "  viewer_takeover: false\n")
                    }
                    FanoutServer::ProxySend => start_proxy(sim.addr, "  zero_copy: false\n"),
                    FanoutServer::ProxyTasks => start_proxy(sim.addr, "  edge_writer: false\n"),
                    FanoutServer::ProxyBuild => {
                        start_proxy_bin(&env("BENCH_BEFORE_BIN"), free_port(), sim.addr, "")
                    }
                    _ => start_proxy(sim.addr, ""),
                }),
                msd: None,
            },
        };
        let load = match (&row.proc_, &row.msd) {
            // One stream, N viewers through msd_lite.
            (_, Some(m)) => Load::streaming(
                Target::Multicast,
                m.proc_.addr,
                m.proc_.pid(),
                vec![m.source.clone()],
                n,
                bitrate,
            ),
            // One id, N viewers through the proxy or the floor.
            (Some(p), None) => Load::streaming(
                Target::Proxy,
                p.addr,
                p.pid(),
                vec![content_id(1)],
                n,
                bitrate,
            ),
            // N viewers, each its own engine session.
            (None, None) => Load::streaming(
                Target::Direct,
                sim.addr,
                sim.pid(),
                (0..n as u32).map(content_id).collect(),
                1,
                bitrate,
            ),
        };
        let mut r = run_load(scenario, run, load).await;
        r.target = match server {
            FanoutServer::ProxyBuild => format!("proxy build {}", env("BENCH_BEFORE_BIN")),
            _ => server.label().into(),
        };
        record(out, r);
        drop(row);
    }
}

pub async fn fanout(o: &Opts, out: &mut Vec<Report>) {
    // BENCH_FANOUT_N=1000 runs one N; BENCH_FANOUT_PROXY_ONLY=1 runs the proxy alone (profiling).
    let only_n: Option<usize> = std::env::var("BENCH_FANOUT_N")
        .ok()
        .and_then(|v| v.parse().ok());
    let proxy_only = std::env::var_os("BENCH_FANOUT_PROXY_ONLY").is_some();
    let all = if o.quick {
        vec![100]
    } else {
        vec![100, 500, 1000, 2000]
    };
    let servers: Vec<FanoutServer> = if let Some(picked) = picked_rows() {
        picked
    } else if proxy_only {
        vec![FanoutServer::Proxy]
    } else if std::env::var_os("BENCH_FANOUT_FLOOR_ONLY").is_some() {
        vec![FanoutServer::Floor]
    } else {
        let mut all = vec![
            FanoutServer::Direct,
            FanoutServer::Floor,
            FanoutServer::ProxyBefore,
            FanoutServer::ProxySend,
            FanoutServer::Proxy,
        ];
        all.extend(FanoutServer::optional());
        all
    };
    for run in 1..=o.runs {
        for &n in only_n.as_ref().map(std::slice::from_ref).unwrap_or(&all) {
            fanout_rows("fanout", run, n, 4_000_000, &servers, out).await;
        }
    }
}

/// `BENCH_FANOUT_ROWS=floor,proxy,before`: only these rows (names as in
/// [`FanoutServer::by_key`]).
fn picked_rows() -> Option<Vec<FanoutServer>> {
    std::env::var("BENCH_FANOUT_ROWS").ok().map(|v| {
        v.split(',')
            .map(|k| FanoutServer::by_key(k.trim()).unwrap_or_else(|| panic!("no fan-out row {k}")))
            .collect()
    })
}

/// 10,000 viewers of a 1 Mbit/s stream on one node (`fanout10k`, its rows picked by
/// `BENCH_FANOUT_ROWS` too; not in the default run: it needs 10,000 descriptors on each side
/// and takes the load generator most of the machine).
pub async fn fanout_10k(o: &Opts, out: &mut Vec<Report>) {
    let n = if o.quick { 2000 } else { 10_000 };
    fanout_rows(
        "fanout10k",
        1,
        n,
        1_000_000,
        &picked_rows().unwrap_or_else(|| {
            [
                &[
                    FanoutServer::Floor,
                    FanoutServer::ProxySend,
                    FanoutServer::Proxy,
                ][..],
                &FanoutServer::optional(),
            ]
            .concat()
        }),
        out,
    )
    .await;
}

pub async fn many_sessions(o: &Opts, out: &mut Vec<Report>) {
    let (ids, per) = if o.quick { (10, 10) } else { (100, 10) };
    let bitrate = 2_000_000;
    for run in 1..=o.runs {
        let sim = start_sim(bitrate);
        let p = start_proxy(sim.addr, "");
        let ids = (0..ids).map(|i| content_id(1000 + i)).collect();
        let load = Load {
            ramp: Duration::from_secs(3),
            ..Load::streaming(Target::Proxy, p.addr, p.pid(), ids, per, bitrate)
        };
        record(out, run_load("sessions", run, load).await);
    }
}

/// Opens `/ace/getstream?id=` on the proxy and waits (bounded) for its first piece of body.
pub async fn watch(addr: SocketAddr, id: &str) -> Response {
    let mut r = http1::get(
        addr,
        &format!("/ace/getstream?id={id}"),
        Duration::from_secs(10),
    )
    .await
    .expect("proxy answers");
    let _ = tokio::time::timeout(Duration::from_secs(10), r.next_chunk()).await;
    r
}

pub async fn ttfb_of(addr: SocketAddr, id: &str) -> f64 {
    let t = Instant::now();
    drop(watch(addr, id).await);
    t.elapsed().as_secs_f64() * 1000.0
}

pub async fn start_times(o: &Opts, out: &mut Vec<Report>) {
    let samples = if o.quick { 5 } else { 20 };
    // With `BENCH_BEFORE_BIN`, that build's start times too, in the same run.
    let before = std::env::var("BENCH_BEFORE_BIN")
        .ok()
        .filter(|b| !b.is_empty());
    let builds: Vec<(String, Option<String>)> = std::iter::once(("proxy".to_string(), None))
        .chain(before.map(|b| (format!("proxy build {b}"), Some(b))))
        .collect();
    for run in 1..=o.runs {
        for (label, bin) in &builds {
            start_times_of(samples, run, label, bin.as_deref(), out).await;
        }
    }
}

/// One run of [`start_times`] against the proxy (or the build `bin`), labelled `label`.
async fn start_times_of(
    samples: u32,
    run: u32,
    label: &str,
    bin: Option<&str>,
    out: &mut Vec<Report>,
) {
    {
        let sim = start_sim(4_000_000);
        let extra = "  stream_idle_timeout: 30\n";
        let p = match bin {
            Some(bin) => start_proxy_bin(bin, free_port(), sim.addr, extra),
            None => start_proxy(sim.addr, extra),
        };
        // The engine's own first byte, asked directly (JSON + playback + redirect).
        let mut engine = Vec::new();
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        let mut rejoin = Vec::new();
        for i in 0..samples {
            let t = Instant::now();
            let mut r = open(Target::Direct, sim.addr, &content_id(5000 + i))
                .await
                .unwrap();
            let _ = r.next_chunk().await;
            engine.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(r);
            let id = content_id(6000 + i + run * 100);
            cold.push(ttfb_of(p.addr, &id).await);
            // A warm join: someone is watching.
            let holder = watch(p.addr, &id).await;
            warm.push(ttfb_of(p.addr, &id).await);
            drop(holder);
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Everyone left; the session lingers: a rejoin.
            rejoin.push(ttfb_of(p.addr, &id).await);
        }
        for (name, mut v) in [
            ("start-engine-direct", engine),
            ("start-cold", cold),
            ("start-warm-join", warm),
            ("start-rejoin", rejoin),
        ] {
            let r = Report {
                scenario: name.into(),
                target: if name.contains("direct") {
                    "direct".into()
                } else {
                    label.to_string()
                },
                run,
                clients: v.len(),
                ttfb_p50_ms: percentile(&mut v.clone(), 0.5),
                ttfb_p99_ms: percentile(&mut v, 0.99),
                ..Report::default()
            };
            record(out, r);
        }
    }
}

/// Raw throughput: one very fast stream to many fast clients. A real engine never outruns its
/// bitrate, and the proxy's policy disconnects a client that falls a whole ring behind, so an
/// unthrottled source would only measure disconnects; the source is throttled to a high rate
/// instead: 10 clients at 1000 Mbit/s, 100 clients at 250 Mbit/s (25 Gbit/s delivered).
pub async fn raw(o: &Opts, out: &mut Vec<Report>) {
    let cases: &[(usize, u64)] = if o.quick {
        &[(10, 1_000_000_000)]
    } else {
        &[(10, 1_000_000_000), (100, 250_000_000)]
    };
    for run in 1..=o.runs {
        for &(n, bitrate) in cases {
            for target in [Target::Direct, Target::Proxy] {
                let sim = start_sim(bitrate);
                let proxy = matches!(target, Target::Proxy)
                    .then(|| start_proxy(sim.addr, "  stream_buffer_size: 67108864\n"));
                let (addr, pid, ids, per) = match &proxy {
                    Some(p) => (p.addr, p.pid(), vec![content_id(9)], n),
                    None => (
                        sim.addr,
                        sim.pid(),
                        (0..n as u32).map(content_id).collect(),
                        1,
                    ),
                };
                let load = Load {
                    ramp: Duration::ZERO,
                    warmup: Duration::from_secs(2),
                    measure: Duration::from_secs(5),
                    ..Load::streaming(target, addr, pid, ids, per, bitrate)
                };
                record(out, run_load("raw", run, load).await);
            }
        }
    }
}

/// A source faster than every client and without a clock (null packets, unlimited rate), and N
/// equal clients, each reading at the same player pace (200 Mbit/s for 10, 40 Mbit/s for 100):
/// reader-paced ingest must keep all of them.
pub async fn clockless(o: &Opts, out: &mut Vec<Report>) {
    let cases: &[(usize, u64)] = if o.quick {
        &[(10, 200_000_000)]
    } else {
        &[(10, 200_000_000), (100, 40_000_000)]
    };
    for run in 1..=o.runs {
        for &(n, read_bps) in cases {
            let sim = start_sim_with(0, &["--null-stream"]);
            let p = start_proxy(sim.addr, "");
            let load = Load {
                ramp: Duration::ZERO,
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(5),
                read_bps,
                ..Load::streaming(
                    Target::Proxy,
                    p.addr,
                    p.pid(),
                    vec![content_id(40000)],
                    n,
                    read_bps,
                )
            };
            let mut r = run_load("clockless", run, load).await;
            r.note = "null packets at line speed; equal clients at the bitrate shown".into();
            record(out, r);
        }
    }
}

pub async fn churn(o: &Opts, out: &mut Vec<Report>) {
    let cycles = if o.quick { 500 } else { 5000 };
    for run in 1..=o.runs {
        let sim = start_sim(2_000_000);
        let p = start_proxy(sim.addr, "  stream_idle_timeout: 0.5\n");
        let before = rss_kib(p.pid()) as f64 / 1024.0;
        let t = Instant::now();
        let cpu0 = cpu_ticks(p.pid());
        for i in 0..cycles {
            watch(p.addr, &content_id(20000 + i % 50)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(p.pid()) - cpu0) as f64 / clk_tck() / secs * 100.0;
        let peak = rss_kib(p.pid()) as f64 / 1024.0;
        tokio::time::sleep(Duration::from_secs(2)).await; // idle timers run out
        let mut status = http1::get(p.addr, "/proxy/status", Duration::from_secs(5))
            .await
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&status.read_to_end(1 << 20).await.unwrap()).unwrap();
        let after = rss_kib(p.pid()) as f64 / 1024.0;
        let r = Report {
            scenario: "churn".into(),
            target: "proxy".into(),
            run,
            clients: cycles as usize,
            cpu_percent: cpu,
            rss_start_mib: before,
            rss_peak_mib: peak,
            rss_end_mib: after,
            note: format!(
                "{} sessions left, {:.0} cycles/s",
                v["sessions"].as_array().map(|a| a.len()).unwrap_or(0),
                cycles as f64 / secs
            ),
            ..Report::default()
        };
        record(out, r);
    }
}

/// 100 clients that never read (tiny receive buffers) next to one normal client: the proxy's
/// memory must stay at rings + a constant, and the normal client must keep its bitrate.
pub async fn slow_clients(o: &Opts, out: &mut Vec<Report>) {
    let slow_n = if o.quick { 20 } else { 100 };
    for run in 1..=o.runs {
        let sim = start_sim(4_000_000);
        let p = start_proxy(sim.addr, "");
        let id = content_id(30000);
        let (stop, sampler) = rss_sampler(vec![p.pid()]);
        let mut normal = watch(p.addr, &id).await;
        let mut slow = Vec::new();
        for _ in 0..slow_n {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let stream = sock.connect(p.addr).await.unwrap();
            slow.push(
                http1::get_on(
                    stream,
                    "x",
                    &format!("/ace/getstream?id={id}"),
                    &Default::default(),
                )
                .await
                .unwrap(),
            );
        }
        let t = Instant::now();
        let mut bytes = 0u64;
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Ok(Some(b))) =
                tokio::time::timeout(Duration::from_millis(500), normal.next_chunk()).await
            {
                bytes += b.len() as u64;
            }
        }
        let rate = bytes as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e6;
        let mut m = http1::get(p.addr, "/metrics", Duration::from_secs(5))
            .await
            .unwrap();
        let text = String::from_utf8(m.read_to_end(1 << 20).await.unwrap()).unwrap();
        let drops = text
            .lines()
            .find_map(|l| l.strip_prefix("acestream_edge_slow_client_drops_total "))
            .unwrap_or("?")
            .to_string();
        stop.store(true, Ordering::Relaxed);
        let (a, b, c) = sampler.join().unwrap();
        drop(slow);
        let r = Report {
            scenario: "slow-clients".into(),
            target: "proxy".into(),
            run,
            clients: slow_n + 1,
            bitrate_bps: 4_000_000,
            aggregate_mbps: rate,
            client_min_mbps: rate,
            client_median_mbps: rate,
            kept_up: usize::from(rate >= 3.8),
            rss_start_mib: a,
            rss_peak_mib: b,
            rss_end_mib: c,
            note: format!("{slow_n} never-reading clients, {drops} dropped; ring 15 s"),
            ..Report::default()
        };
        record(out, r);
    }
}

/// `BENCH_ATTACH=addr,pid,n,bitrate` — clients against an already running proxy (for
/// profiling and tuning experiments); one 10 s measurement.
pub async fn attach(out: &mut Vec<Report>) {
    let Ok(spec) = std::env::var("BENCH_ATTACH") else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let (addr, pid, n, bitrate) = (
        parts[0].parse().unwrap(),
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
        parts[3].parse().unwrap(),
    );
    let load = Load::streaming(Target::Proxy, addr, pid, vec![content_id(77)], n, bitrate);
    record(out, run_load("attach", 1, load).await);
}

/// N HLS viewers of one id, N low-latency HLS viewers (blocking reloads, every part) and N TS
/// clients of one id, each on a fresh proxy: the proxy's CPU and RSS side by side (2 s
/// segments, 0.5 s parts, playlists reloaded every second or blocking).
pub async fn hls(o: &Opts, out: &mut Vec<Report>) {
    let n = if o.quick { 50 } else { 200 };
    let bitrate = 4_000_000;
    for run in 1..=o.runs {
        for target in [Target::Proxy, Target::Hls, Target::HlsLowLatency] {
            let sim = start_sim(bitrate);
            let low_latency = matches!(target, Target::HlsLowLatency);
            let p = start_proxy(
                sim.addr,
                &format!(
                    "  hls_segment_seconds: {}\n  hls_low_latency: {low_latency}\n",
                    HLS_SEGMENT.as_secs()
                ),
            );
            let load = Load {
                // HLS viewers start after the first segments are cut.
                warmup: Duration::from_secs(8),
                ..Load::streaming(target, p.addr, p.pid(), vec![content_id(9000)], n, bitrate)
            };
            let mut r = run_load("hls", run, load).await;
            r.note = match target {
                Target::HlsLowLatency => "one id; LL-HLS: 0.5 s parts, blocking reloads",
                _ => "one id; HLS: 2 s segments, playlist reloaded every 1 s",
            }
            .into();
            record(out, r);
        }
    }
}

/// DVR's cost (issue 28), side by side in one run: N live viewers of one id with DVR off, the
/// same with DVR on (every chunk also written to the spill), and N viewers rewound 60 s
/// (`offset=-60`, reading the spill through the page cache) of a session that has run 65 s.
/// Every viewer reads at a player's pace.
pub async fn dvr(o: &Opts, out: &mut Vec<Report>) {
    let n = if o.quick { 50 } else { 200 };
    let bitrate = 4_000_000;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/dvr");
    for run in 1..=o.runs {
        for (label, window, rewound) in [
            ("DVR off, live viewers", "0", false),
            ("DVR on, live viewers", "5m", false),
            ("DVR on, viewers rewound 60 s", "5m", true),
        ] {
            let sim = start_sim(bitrate);
            let p = start_proxy(
                sim.addr,
                &format!("  dvr_window: {window}\n  dvr_dir: {}\n", dir.display()),
            );
            let id = content_id(9100);
            // The rewound viewers need a minute of stream behind them: one live viewer keeps
            // the session watched meanwhile (and during the measurement).
            let keeper = rewound.then(|| {
                let (addr, id) = (p.addr, id.clone());
                tokio::spawn(async move {
                    let mut r = watch(addr, &id).await;
                    while let Ok(Some(_)) = r.next_chunk().await {}
                })
            });
            if rewound {
                tokio::time::sleep(Duration::from_secs(65)).await;
            }
            let path_id = if rewound {
                format!("{id}&offset=-60")
            } else {
                id.clone()
            };
            // Viewers read at a player's pace (10 % over the stream's rate), so the rewound ones
            // stay a minute behind, reading the spill, through the whole measurement.
            let load = Load {
                read_bps: bitrate * 11 / 10,
                ..Load::streaming(Target::Proxy, p.addr, p.pid(), vec![path_id], n, bitrate)
            };
            let mut r = run_load("dvr", run, load).await;
            r.note = format!("one id, {label}");
            record(out, r);
            if let Some(k) = keeper {
                k.abort();
            }
        }
    }
}

/// Three nodes, 300 clients over 30 ids: through random nodes of a fleet (`acestream.cluster`,
/// each client on a node that mostly does not serve its id, so it is proxied) vs through HAProxy
/// with `deploy/haproxy.cfg` in front of three unclustered nodes (no hop between nodes). CPU and
/// RSS are the sums over the three nodes; HAProxy's own CPU is in the note.
pub async fn fleet(o: &Opts, out: &mut Vec<Report>) {
    let (ids, per) = if o.quick { (6, 10) } else { (30, 10) };
    let bitrate = 2_000_000;
    let has_haproxy = std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok();
    for run in 1..=o.runs {
        for front in ["random nodes", "haproxy"] {
            if front == "haproxy" && !has_haproxy {
                eprintln!("fleet: haproxy is not installed; its row is skipped");
                continue;
            }
            let sim = start_sim(bitrate);
            let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let nodes: Vec<Proc> = ports
                .iter()
                .map(|port| {
                    let cluster = if front == "random nodes" {
                        format!(
                            "  cluster:\n    self: \"127.0.0.1:{port}\"\n    peers: [{}]\n",
                            ports
                                .iter()
                                .map(|p| format!("\"127.0.0.1:{p}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    } else {
                        String::new()
                    };
                    start_proxy_on(*port, sim.addr, &cluster)
                })
                .collect();
            // The first cluster pass (resolve, health check) before any client.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let haproxy = (front == "haproxy").then(|| start_haproxy(&ports));
            let entry: Vec<SocketAddr> = match &haproxy {
                Some((h, _)) => vec![h.addr],
                None => nodes.iter().map(|n| n.addr).collect(),
            };
            let hap_cpu0 = haproxy.as_ref().map_or(0, |(h, _)| cpu_ticks(h.pid()));
            let t0 = Instant::now();
            let load = Load {
                ramp: Duration::from_secs(3),
                more_addrs: entry[1..].to_vec(),
                more_pids: nodes[1..].iter().map(|n| n.pid()).collect(),
                ..Load::streaming(
                    Target::Proxy,
                    entry[0],
                    nodes[0].pid(),
                    (0..ids).map(|i| content_id(20_000 + i)).collect(),
                    per,
                    bitrate,
                )
            };
            let mut r = run_load(&format!("fleet ({front})"), run, load).await;
            let mut forwarded = 0.0;
            for n in &nodes {
                forwarded +=
                    metric(n.addr, "acestream_edge_cluster_forwarded_requests_total").await;
            }
            r.target = "3 nodes".into();
            r.note = match &haproxy {
                Some((h, _)) => format!(
                    "HAProxy itself {:.1} % CPU; {forwarded} forwarded",
                    (cpu_ticks(h.pid()) - hap_cpu0) as f64 / clk_tck() / t0.elapsed().as_secs_f64()
                        * 100.0
                ),
                None => format!("{forwarded} requests forwarded between nodes"),
            };
            record(out, r);
        }
    }
}

/// The sum of a Prometheus metric's samples on `addr`.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let Ok(mut r) = http1::get(addr, "/metrics", Duration::from_secs(5)).await else {
        return f64::NAN;
    };
    let text =
        String::from_utf8_lossy(&r.read_to_end(1 << 20).await.unwrap_or_default()).to_string();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// HAProxy with `deploy/haproxy.cfg`, its front and node ports rewritten; returns it and its
/// config file (kept while it runs).
fn start_haproxy(nodes: &[u16]) -> (Proc, std::path::PathBuf) {
    let front = free_port();
    let cfg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
        .expect("deploy/haproxy.cfg")
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{front}"))
        .replace("127.0.0.1:8001", &format!("127.0.0.1:{}", nodes[0]))
        .replace("127.0.0.1:8002", &format!("127.0.0.1:{}", nodes[1]))
        .replace("127.0.0.1:8003", &format!("127.0.0.1:{}", nodes[2]))
        .replace("maxconn 8000", "maxconn 4000")
        .replace(
            "/run/haproxy/admin.sock",
            &format!("/tmp/ace-bench-haproxy-{front}.sock"),
        );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("haproxy-{front}.cfg"));
    std::fs::write(&path, cfg).unwrap();
    (
        start_process(
            "haproxy",
            &["-db", "-f", path.to_str().unwrap_or("")],
            front,
        ),
        path,
    )
}
