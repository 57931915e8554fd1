//! `make bench`: a streaming load generator and the benchmark scenarios, run side by side against
//! the proxy and against the simulator serving the same clients directly (the floor).
//!
//! Everything runs on 127.0.0.1 with the release binaries (`ace-engine-sim`, `acestream-edge`) as
//! separate processes, so the CPU and memory of the server under test come from its own
//! `/proc/PID`. Bounded in clients and time. Results: a markdown table on stdout and JSON files in
//! `target/bench/`.
//!
//! Arguments (after `cargo bench --bench loadgen --`): `quick` runs one pass with small N;
//! a scenario name (`fanout`, `sessions`, `start`, `raw`, `slow`, `churn`, `clockless`) runs only
//! that one.

use acestream_edge::http1::{self, Response};
use serde::Serialize;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIM: &str = env!("CARGO_BIN_EXE_ace-engine-sim");
const EDGE: &str = env!("CARGO_BIN_EXE_acestream-edge");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn content_id(n: u32) -> String {
    format!("{n:08x}{}", "fedcba9876543210fedcba9876543210")
}

// === processes ===

struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_sim(bitrate: u64) -> Proc {
    start_sim_with(bitrate, &[])
}

/// A simulator at `bitrate` with extra flags (e.g. `--null-stream`).
fn start_sim_with(bitrate: u64, extra: &[&str]) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(SIM)
        .args([
            "--listen",
            &addr.to_string(),
            "--bitrate",
            &bitrate.to_string(),
            "--prebuffer",
            "0s",
            "--json-latency",
            "0s",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start simulator");
    wait_listening(addr);
    Proc { child, addr }
}

fn start_proxy(sim: SocketAddr, extra: &str) -> Proc {
    let port = free_port();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join(format!("edge-{port}.yaml"));
    std::fs::write(
        &conf,
        format!(
            "version: 1\nthreads: 2\npid_file: /tmp/ace-bench-{port}.pid\nupgrade_sock: /tmp/ace-bench-{port}.sock\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  max_streams_per_engine: 1000\n{extra}",
            sim.port()
        ),
    )
    .unwrap();
    let child = Command::new(EDGE)
        .arg("-c")
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start proxy");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    Proc { child, addr }
}

// === /proc sampling ===

fn clk_tck() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after the comm: state is [0]; utime is field 14 overall → [11], stime [12]
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples RSS every 250 ms until stopped; returns (start, peak, end) in MiB.
fn rss_sampler(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<(f64, f64, f64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        let start = rss_kib(pid);
        let mut peak = start;
        let mut last = start;
        while !s.load(Ordering::Relaxed) {
            last = rss_kib(pid);
            peak = peak.max(last);
            std::thread::sleep(Duration::from_millis(250));
        }
        (
            start as f64 / 1024.0,
            peak as f64 / 1024.0,
            last as f64 / 1024.0,
        )
    });
    (stop, h)
}

// === clients ===

#[derive(Default, Clone)]
struct ClientResult {
    status: u16,
    ttfb: Option<Duration>,
    window_bytes: u64,
    max_gap: Duration,
    misaligned: u64,
    disconnected: bool,
}

/// How a client reaches the stream.
#[derive(Clone, Copy)]
enum Target {
    /// `GET /ace/getstream?id=` on the proxy.
    Proxy,
    /// The engine API directly: JSON start, then the playback URL and its redirect.
    Direct,
}

async fn open(target: Target, addr: SocketAddr, id: &str) -> std::io::Result<Response> {
    match target {
        Target::Proxy => {
            http1::get(
                addr,
                &format!("/ace/getstream?id={id}"),
                Duration::from_secs(10),
            )
            .await
        }
        Target::Direct => {
            let mut r = http1::get(
                addr,
                &format!(
                    "/ace/getstream?format=json&id={id}&pid={}",
                    uuid::Uuid::new_v4()
                ),
                Duration::from_secs(10),
            )
            .await?;
            let body = r.read_to_end(1 << 16).await?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(std::io::Error::other)?;
            let mut path = acestream_edge::engines::client::path_of(
                v["response"]["playback_url"].as_str().unwrap_or(""),
            )
            .ok_or_else(|| std::io::Error::other("no playback_url"))?;
            loop {
                let r = http1::get(addr, &path, Duration::from_secs(10)).await?;
                if r.status == 302 {
                    path = acestream_edge::engines::client::path_of(
                        r.header("location").unwrap_or(""),
                    )
                    .ok_or_else(|| std::io::Error::other("bad location"))?;
                    continue;
                }
                return Ok(r);
            }
        }
    }
}

/// One streaming client: connects at `start_at`, reads until `end`, counts bytes inside
/// [`window_from`, `end`].
async fn run_client(
    target: Target,
    addr: SocketAddr,
    id: String,
    start_at: Instant,
    window_from: Instant,
    end: Instant,
) -> ClientResult {
    tokio::time::sleep_until(start_at.into()).await;
    let t0 = Instant::now();
    let mut res = ClientResult::default();
    let mut r = match open(target, addr, &id).await {
        Ok(r) => r,
        Err(_) => {
            res.disconnected = true;
            return res;
        }
    };
    res.status = r.status;
    let mut offset: u64 = 0;
    let mut last = Instant::now();
    loop {
        let piece = tokio::time::timeout_at(end.into(), r.next_chunk()).await;
        let now = Instant::now();
        match piece {
            Err(_) => break,
            Ok(Ok(Some(b))) => {
                if res.ttfb.is_none() {
                    res.ttfb = Some(now - t0);
                } else {
                    res.max_gap = res.max_gap.max(now - last);
                }
                last = now;
                // Every byte at a 188 multiple of the body must be the sync byte.
                let first = ((188 - offset % 188) % 188) as usize;
                let mut i = first;
                while i < b.len() {
                    if b[i] != 0x47 {
                        res.misaligned += 1;
                    }
                    i += 188;
                }
                offset += b.len() as u64;
                if now >= window_from {
                    res.window_bytes += b.len() as u64;
                }
            }
            Ok(_) => {
                res.disconnected = true;
                break;
            }
        }
    }
    if now_after(end) {
        res.max_gap = res.max_gap.max(Instant::now() - last);
    }
    res
}

fn now_after(t: Instant) -> bool {
    Instant::now() >= t
}

#[derive(Serialize, Clone, Default)]
struct Report {
    scenario: String,
    target: String,
    run: u32,
    clients: usize,
    bitrate_bps: u64,
    aggregate_mbps: f64,
    client_min_mbps: f64,
    client_median_mbps: f64,
    kept_up: usize,
    stalled: usize,
    disconnected: usize,
    misaligned: u64,
    ttfb_p50_ms: f64,
    ttfb_p99_ms: f64,
    cpu_percent: f64,
    rss_start_mib: f64,
    rss_peak_mib: f64,
    rss_end_mib: f64,
    note: String,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

struct Load {
    target: Target,
    addr: SocketAddr,
    pid: u32,
    ids: Vec<String>,
    per_id: usize,
    bitrate: u64,
    ramp: Duration,
    warmup: Duration,
    measure: Duration,
}

impl Load {
    /// A streaming load with the standard timings: 2 s ramp, 3 s warm-up, 10 s window.
    fn streaming(
        target: Target,
        addr: SocketAddr,
        pid: u32,
        ids: Vec<String>,
        per_id: usize,
        bitrate: u64,
    ) -> Load {
        Load {
            target,
            addr,
            pid,
            ids,
            per_id,
            bitrate,
            ramp: Duration::from_secs(2),
            warmup: Duration::from_secs(3),
            measure: Duration::from_secs(10),
        }
    }
}

/// Prints a row and keeps it for the JSON file.
fn record(out: &mut Vec<Report>, r: Report) {
    print_row(&r);
    out.push(r);
}

async fn run_load(scenario: &str, run: u32, l: Load) -> Report {
    let n = l.ids.len() * l.per_id;
    let t_start = Instant::now() + Duration::from_millis(200);
    let window_from = t_start + l.ramp + l.warmup;
    let end = window_from + l.measure;
    let (stop, sampler) = rss_sampler(l.pid);
    let mut tasks = Vec::with_capacity(n);
    let mut k = 0;
    for id in &l.ids {
        for _ in 0..l.per_id {
            let at = t_start + l.ramp.mul_f64(k as f64 / n.max(1) as f64);
            tasks.push(tokio::spawn(run_client(
                l.target,
                l.addr,
                id.clone(),
                at,
                window_from,
                end,
            )));
            k += 1;
        }
    }
    tokio::time::sleep_until(window_from.into()).await;
    let cpu0 = cpu_ticks(l.pid);
    let w0 = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = cpu_ticks(l.pid);
    let secs = w0.elapsed().as_secs_f64();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.unwrap_or_default());
    }
    stop.store(true, Ordering::Relaxed);
    let (rss_start, rss_peak, rss_end) = sampler.join().unwrap();
    let measure = l.measure.as_secs_f64();
    let rates: Vec<f64> = results
        .iter()
        .map(|r| r.window_bytes as f64 * 8.0 / measure / 1e6)
        .collect();
    let aggregate: f64 = rates.iter().sum();
    let need = l.bitrate as f64 * 0.95 / 1e6;
    let kept_up = if l.bitrate == 0 {
        0
    } else {
        rates.iter().filter(|r| **r >= need).count()
    };
    let mut ttfb: Vec<f64> = results
        .iter()
        .filter_map(|r| r.ttfb)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let median = percentile(&mut rates.clone(), 0.5);
    Report {
        scenario: scenario.into(),
        target: match l.target {
            Target::Proxy => "proxy",
            Target::Direct => "direct",
        }
        .into(),
        run,
        clients: n,
        bitrate_bps: l.bitrate,
        aggregate_mbps: aggregate,
        client_min_mbps: rates.iter().cloned().fold(f64::INFINITY, f64::min),
        client_median_mbps: median,
        kept_up,
        stalled: results
            .iter()
            .filter(|r| r.max_gap > Duration::from_secs(2))
            .count(),
        disconnected: results
            .iter()
            .filter(|r| r.disconnected || r.status != 200)
            .count(),
        misaligned: results.iter().map(|r| r.misaligned).sum(),
        ttfb_p50_ms: percentile(&mut ttfb.clone(), 0.5),
        ttfb_p99_ms: percentile(&mut ttfb, 0.99),
        cpu_percent: (cpu1 - cpu0) as f64 / clk_tck() / secs * 100.0,
        rss_start_mib: rss_start,
        rss_peak_mib: rss_peak,
        rss_end_mib: rss_end,
        note: String::new(),
    }
}

// === scenarios ===

struct Opts {
    quick: bool,
    runs: u32,
}

async fn fanout(o: &Opts, out: &mut Vec<Report>) {
    // BENCH_FANOUT_N=1000 runs one N, through the proxy only (for profiling).
    let only_n: Option<usize> = std::env::var("BENCH_FANOUT_N")
        .ok()
        .and_then(|v| v.parse().ok());
    let all = if o.quick {
        vec![100]
    } else {
        vec![100, 500, 1000, 2000]
    };
    let bitrate = 4_000_000;
    for run in 1..=o.runs {
        for &n in only_n.as_ref().map(std::slice::from_ref).unwrap_or(&all) {
            for target in [Target::Direct, Target::Proxy] {
                if only_n.is_some() && matches!(target, Target::Direct) {
                    continue;
                }
                let sim = start_sim(bitrate);
                let proxy = matches!(target, Target::Proxy).then(|| start_proxy(sim.addr, ""));
                let load = match &proxy {
                    // One id, N viewers through the proxy.
                    Some(p) => {
                        Load::streaming(target, p.addr, p.pid(), vec![content_id(1)], n, bitrate)
                    }
                    // The floor: N viewers, each its own engine session.
                    None => Load::streaming(
                        target,
                        sim.addr,
                        sim.pid(),
                        (0..n as u32).map(content_id).collect(),
                        1,
                        bitrate,
                    ),
                };
                record(out, run_load("fanout", run, load).await);
            }
        }
    }
}

async fn many_sessions(o: &Opts, out: &mut Vec<Report>) {
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
async fn watch(addr: SocketAddr, id: &str) -> Response {
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

async fn ttfb_of(addr: SocketAddr, id: &str) -> f64 {
    let t = Instant::now();
    drop(watch(addr, id).await);
    t.elapsed().as_secs_f64() * 1000.0
}

async fn start_times(o: &Opts, out: &mut Vec<Report>) {
    let samples = if o.quick { 5 } else { 20 };
    for run in 1..=o.runs {
        let sim = start_sim(4_000_000);
        let p = start_proxy(sim.addr, "  stream_idle_timeout: 30\n");
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
                    "direct"
                } else {
                    "proxy"
                }
                .into(),
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
async fn raw(o: &Opts, out: &mut Vec<Report>) {
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

/// A source faster than every client and without a clock (null packets, unlimited rate), and
/// N equal clients reading as fast as they can: reader-paced ingest must keep all of them.
async fn clockless(o: &Opts, out: &mut Vec<Report>) {
    let ns: &[usize] = if o.quick { &[10] } else { &[10, 100] };
    for run in 1..=o.runs {
        for &n in ns {
            let sim = start_sim_with(0, &["--null-stream"]);
            let p = start_proxy(sim.addr, "");
            let load = Load {
                ramp: Duration::ZERO,
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(5),
                ..Load::streaming(
                    Target::Proxy,
                    p.addr,
                    p.pid(),
                    vec![content_id(40000)],
                    n,
                    0,
                )
            };
            let mut r = run_load("clockless", run, load).await;
            r.note = "null packets at line speed; kept = not disconnected".into();
            record(out, r);
        }
    }
}

async fn churn(o: &Opts, out: &mut Vec<Report>) {
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
async fn slow_clients(o: &Opts, out: &mut Vec<Report>) {
    let slow_n = if o.quick { 20 } else { 100 };
    for run in 1..=o.runs {
        let sim = start_sim(4_000_000);
        let p = start_proxy(sim.addr, "");
        let id = content_id(30000);
        let (stop, sampler) = rss_sampler(p.pid());
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
async fn attach(out: &mut Vec<Report>) {
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

fn header() {
    println!("| scenario | target | run | clients | bitrate | aggregate Mbit/s | client min / median Mbit/s | kept up | stalled | disconn. | off-grid | TTFB p50 / p99 ms | CPU % | RSS start / peak / end MiB | note |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_row(r: &Report) {
    println!(
        "| {} | {} | {} | {} | {} | {:.1} | {:.2} / {:.2} | {} | {} | {} | {} | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} / {:.1} | {} |",
        r.scenario,
        r.target,
        r.run,
        r.clients,
        if r.bitrate_bps == 0 { "max".to_string() } else { format!("{:.1}M", r.bitrate_bps as f64 / 1e6) },
        r.aggregate_mbps,
        r.client_min_mbps,
        r.client_median_mbps,
        r.kept_up,
        r.stalled,
        r.disconnected,
        r.misaligned,
        r.ttfb_p50_ms,
        r.ttfb_p99_ms,
        r.cpu_percent,
        r.rss_start_mib,
        r.rss_peak_mib,
        r.rss_end_mib,
        r.note
    );
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too; the load generator only runs under
    // `cargo bench` (which passes `--bench`).
    if !std::env::args().any(|a| a == "--bench") {
        println!("loadgen: run with `make bench` or `cargo bench --bench loadgen`");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let quick = args.iter().any(|a| a == "quick");
    let only: Vec<&String> = args.iter().filter(|a| *a != "quick").collect();
    let want = |name: &str| only.is_empty() || only.iter().any(|a| *a == name);
    let o = Opts {
        quick,
        runs: if quick { 1 } else { 2 },
    };
    let _ = rlimit::increase_nofile_limit(65536);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::new();
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    header();
    rt.block_on(async {
        if want("attach") {
            attach(&mut out).await;
        }
        if want("fanout") {
            fanout(&o, &mut out).await;
        }
        if want("sessions") {
            many_sessions(&o, &mut out).await;
        }
        if want("start") {
            start_times(&o, &mut out).await;
        }
        if want("raw") {
            raw(&o, &mut out).await;
        }
        if want("slow") {
            slow_clients(&o, &mut out).await;
        }
        if want("churn") {
            churn(&o, &mut out).await;
        }
        if want("clockless") {
            clockless(&o, &mut out).await;
        }
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let results = Mutex::new(out);
    let json = serde_json::to_vec_pretty(&*results.lock().unwrap()).unwrap();
    std::fs::write(dir.join("results.json"), json).unwrap();
    println!("\nJSON: {}", dir.join("results.json").display());
}
