//! The processes under test (the release simulator and proxy, started on free loopback ports) and
//! their CPU and memory, read from `/proc`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SIM: &str = env!("CARGO_BIN_EXE_ace-engine-sim");
pub const EDGE: &str = env!("CARGO_BIN_EXE_acestream-edge");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn content_id(n: u32) -> String {
    format!("{n:08x}{}", "fedcba9876543210fedcba9876543210")
}

// === processes ===

pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    /// A started process that listens on `addr`.
    pub fn new(child: Child, addr: SocketAddr) -> Self {
        Proc { child, addr }
    }

    pub fn pid(&self) -> u32 {
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

pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn start_sim(bitrate: u64) -> Proc {
    start_sim_with(bitrate, &[])
}

/// A simulator at `bitrate` with extra flags (e.g. `--null-stream`).
pub fn start_sim_with(bitrate: u64, extra: &[&str]) -> Proc {
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

pub fn start_proxy(sim: SocketAddr, extra: &str) -> Proc {
    start_proxy_on(free_port(), sim, extra)
}

/// [`start_proxy`] on a given port (a fleet's members must know each other's ports).
pub fn start_proxy_on(port: u16, sim: SocketAddr, extra: &str) -> Proc {
    start_proxy_bin(EDGE, port, sim, extra)
}

/// [`start_proxy_on`] with another build of the proxy (`BENCH_BEFORE_BIN`: the release before a
/// change, measured in the same run).
pub fn start_proxy_bin(bin: &str, port: u16, sim: SocketAddr, extra: &str) -> Proc {
    // BENCH_PROXY_EXTRA: more `acestream:` lines for every proxy (e.g. "  zero_copy: false").
    let extra = format!(
        "{extra}{}",
        std::env::var("BENCH_PROXY_EXTRA")
            .map(|e| format!("{}\n", e.replace("\\n", "\n")))
            .unwrap_or_default()
    );
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
    let child = Command::new(bin)
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

/// The floor fan-out (`super::floor`): this bench binary again, as a server reading `sim`.
pub fn start_floor(sim: SocketAddr) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(std::env::current_exe().expect("own path"))
        .env("LOADGEN_FLOOR_UPSTREAM", sim.to_string())
        .env("LOADGEN_FLOOR_LISTEN", addr.to_string())
        .env(
            "LOADGEN_FLOOR_BLOCK",
            std::env::var("LOADGEN_FLOOR_BLOCK").unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start floor");
    wait_listening(addr);
    Proc { child, addr }
}

/// Any program that listens on `port` once started (HAProxy).
pub fn start_process(program: &str, args: &[&str], port: u16) -> Proc {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start process");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    Proc { child, addr }
}

// === /proc sampling ===

pub fn clk_tck() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after the comm: state is [0]; utime is field 14 overall → [11], stime [12]
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the summed RSS of `pids` every 250 ms until stopped; returns (start, peak, end) in MiB.
pub fn rss_sampler(
    pids: impl Into<Vec<u32>>,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(f64, f64, f64)>) {
    let pids: Vec<u32> = pids.into();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        let rss = || pids.iter().map(|p| rss_kib(*p)).sum::<u64>();
        let start = rss();
        let mut peak = start;
        let mut last = start;
        while !s.load(Ordering::Relaxed) {
            last = rss();
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
