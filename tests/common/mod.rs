//! Shared test harness: simulated engines and the real proxy on ephemeral loopback ports, and a
//! streaming HTTP client that speaks real HTTP/1.1 to them.
#![allow(dead_code)]

pub mod harness;
pub mod page;

use acestream_edge::config::{load_str, Config};
use acestream_edge::http1::{self, GetOptions, Response};
use acestream_edge::server::RunningServer;
use acestream_edge::sim::{Knobs, SimEngine, SimStats};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Logs to stderr when `RUST_LOG` is set (once per test binary).
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default())
        .is_test(true)
        .try_init();
}

/// A content id used across tests.
pub fn content_id(n: u32) -> String {
    format!("{n:08x}{}", "0123456789abcdef0123456789abcdef")
}

/// A free loopback port (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A proxy config for `engines`, with `extra` YAML lines appended inside `acestream:`.
pub fn proxy_config(engines: &[&SimEngine], extra: &str) -> Config {
    let mut yaml = format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  engines:\n",
        free_port()
    );
    for e in engines {
        yaml.push_str(&format!(
            "    - {{host: 127.0.0.1, port: {}}}\n",
            e.addr().port()
        ));
    }
    if engines.is_empty() {
        yaml.push_str("    []\n");
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        yaml.push_str(&format!("  {}\n", line.trim()));
    }
    // DVR is off unless a test asks for it (a `dvr_` key): every session would write its stream
    // to disk, load that the tests of other things run eight at a time do not need.
    if !extra.contains("dvr_") {
        yaml.push_str("  dvr_window: 0\n");
    }
    load_str(&yaml).expect("test config is valid").acestream
}

/// Starts the proxy (blocking until it listens).
pub fn start_proxy(config: Config) -> RunningServer {
    init_logging();
    RunningServer::start(config).expect("proxy starts")
}

/// A simulated engine with test knobs.
pub async fn sim(knobs: Knobs) -> SimEngine {
    SimEngine::start_local(knobs).await.expect("sim starts")
}

/// GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    http1::get(addr, path, Duration::from_secs(5))
        .await
        .expect("GET")
}

/// GET with options (HTTP/1.0, HEAD, headers).
pub async fn get_with(addr: SocketAddr, path: &str, opts: GetOptions) -> Response {
    let s = TcpStream::connect(addr).await.expect("connect");
    http1::get_on(s, &addr.to_string(), path, &opts)
        .await
        .expect("GET")
}

/// GET and parse the JSON body.
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut r = get(addr, path).await;
    let body = r.read_to_end(1 << 20).await.expect("body");
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{path}: not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    (r.status, v)
}

/// The simulator's counters, read over HTTP as a black-box test would.
pub async fn sim_stats(e: &SimEngine) -> SimStats {
    let (_, v) = get_json(e.addr(), "/sim/stats").await;
    serde_json::from_value(v).expect("stats shape")
}

/// Reads body pieces until `n` bytes or `limit` elapsed; returns the bytes and each piece.
pub async fn read_for(
    r: &mut Response,
    limit: Duration,
    n: usize,
) -> (BytesMut, Vec<bytes::Bytes>) {
    let mut out = BytesMut::new();
    let mut pieces = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, r.next_chunk()).await {
            Ok(Ok(Some(b))) => {
                out.extend_from_slice(&b);
                pieces.push(b);
            }
            _ => break,
        }
    }
    (out, pieces)
}

/// Waits until `cond` holds, polling every 20 ms, for at most `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True if every 188-byte packet of `data` starts with the sync byte.
pub fn ts_aligned(data: &[u8]) -> bool {
    data.len() % 188 == 0 && data.chunks(188).all(|p| p[0] == 0x47)
}

/// Runs ffprobe on `data`; returns the codec types it found (e.g. ["video", "audio"]).
pub fn ffprobe_streams(data: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("probe.ts");
    std::fs::write(&path, data).expect("write ts");
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe must be installed (make test installs ffmpeg)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Runs `ffmpeg -v error -i f.ts -f null -` as a real player would decode: whether it exited
/// successfully, and what it printed as errors.
pub fn ffmpeg_decode(data: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("decode.ts");
    std::fs::write(&path, data).expect("write ts");
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `ffmpeg -v error -i URL -t SECONDS -f null -` as a real player: whether it exited
/// successfully, and what it printed as errors.
pub async fn ffmpeg_play(url: String, seconds: u32) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-v",
                "error",
                "-i",
                &url,
                "-t",
                &seconds.to_string(),
            ])
            .args(["-f", "null", "-"])
            .output()
            .expect("ffmpeg must be installed (make test installs it)")
    })
    .await
    .expect("ffmpeg task");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// This process's resident memory, KiB (for tests that run alone in their binary).
pub fn rss_kib() -> u64 {
    rss_kib_of(std::process::id())
}

/// VmRSS of process `pid`, KiB (0 once it is gone).
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Starts the real `acestream-edge` binary with `-c conf` (and `-u` for an upgrade), its log
/// (RUST_LOG=info) to `log`; killed when dropped.
#[allow(dead_code)] // not every test binary starts one
pub fn spawn_edge(conf: &std::path::Path, upgrade: bool, log: &std::path::Path) -> Process {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_acestream-edge"));
    cmd.arg("-c").arg(conf);
    if upgrade {
        cmd.arg("-u");
    }
    cmd.env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .map(Process::new)
        .expect("start acestream-edge")
}

/// A fake orchestrator: serves `GET /engines` with whatever JSON it is given, records the
/// Authorization headers it saw, and records every `POST /events/...` (path, JSON body).
pub struct FakeOrchestrator {
    /// Where it listens.
    pub addr: SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    auth: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    events: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One request: its head (lower-case) and body, read by Content-Length.
async fn read_request(sock: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let len = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(str::to_string))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < i + 4 + len {
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((head, buf[i + 4..i + 4 + len].to_vec()));
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl FakeOrchestrator {
    /// Starts serving `body` on an ephemeral loopback port.
    pub async fn start(body: serde_json::Value) -> FakeOrchestrator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = std::sync::Arc::new(std::sync::Mutex::new(body.to_string()));
        let auth = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (b, a, ev) = (body.clone(), auth.clone(), events.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (b, a, ev) = (b.clone(), a.clone(), ev.clone());
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let Some((head, req_body)) = read_request(&mut sock).await else {
                        return;
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    if let Some(h) = head.lines().find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                            .map(|(_, v)| v.trim().to_string())
                    }) {
                        a.lock().unwrap().push(h);
                    }
                    let (status, text) = if path == "/engines" {
                        ("200 OK", b.lock().unwrap().clone())
                    } else if path.starts_with("/events/") {
                        if let Ok(v) = serde_json::from_slice(&req_body) {
                            ev.lock().unwrap().push((path, v));
                        }
                        ("200 OK", "{}".to_string())
                    } else {
                        ("404 Not Found", "{}".into())
                    };
                    let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        FakeOrchestrator {
            addr,
            body,
            auth,
            events,
            task,
        }
    }

    /// Changes the engine list it serves.
    pub fn set(&self, body: serde_json::Value) {
        *self.body.lock().unwrap() = body.to_string();
    }

    /// Authorization headers received.
    pub fn auth_seen(&self) -> Vec<String> {
        self.auth.lock().unwrap().clone()
    }

    /// The events received so far with this path.
    pub fn events(&self, path: &str) -> Vec<serde_json::Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stops listening (the orchestrator goes down).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Keeps `addr`'s port bound but not listening: connections to it are refused, and no other
/// test can be handed the port meanwhile (a freed ephemeral port may be reused at once by a
/// parallel test's server, which would then answer as the "dead" engine).
pub fn hold_port(addr: SocketAddr) -> socket2::Socket {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    // A just-shut-down engine's listener closes a moment later: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Err(e) = s.bind(&addr.into()) {
        assert!(Instant::now() < deadline, "cannot hold {addr}: {e}");
        std::thread::sleep(Duration::from_millis(5));
    }
    s
}

/// A loopback address where nothing answers (connections refused), held for the test's life.
pub fn dead_port() -> (SocketAddr, socket2::Socket) {
    let s = hold_port("127.0.0.1:0".parse().unwrap());
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (addr, s)
}

/// GET on a connection whose receive buffer is `rcvbuf` bytes (a player's small socket buffer,
/// or a client that never reads and must not hide behind megabytes of kernel buffers).
pub async fn get_small_buffer(addr: SocketAddr, path: &str, rcvbuf: u32) -> Response {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    let stream = sock.connect(addr).await.expect("connect");
    http1::get_on(stream, &addr.to_string(), path, &GetOptions::default())
        .await
        .expect("GET")
}

/// What a player-like reader saw: bytes over time and whether the proxy cut it off.
#[derive(Debug, Default)]
pub struct ReadLog {
    /// (time since start, total bytes) after every read.
    pub samples: Vec<(Duration, usize)>,
    /// Why the stream ended before the reader stopped, if it did.
    pub cut_off: Option<String>,
    /// TS null packets (keepalives) received, by the time they arrived.
    pub null_packets: Vec<Duration>,
}

impl ReadLog {
    /// Total bytes received.
    pub fn total(&self) -> usize {
        self.samples.last().map_or(0, |s| s.1)
    }

    /// Bytes per second received between `from` and `to` (times since the reader started).
    pub fn rate_between(&self, from: Duration, to: Duration) -> f64 {
        let at = |t: Duration| {
            self.samples
                .iter()
                .take_while(|s| s.0 <= t)
                .last()
                .map_or(0, |s| s.1)
        };
        (at(to) - at(from)) as f64 / (to - from).as_secs_f64()
    }
}

/// How a player-like reader consumes a stream.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Bytes read as fast as they come first (the player's cache filling).
    pub prefill: usize,
    /// Then at most this many bytes per second (0 = as fast as they come).
    pub rate: f64,
    /// Stop reading entirely for this window (from, to), times since the start.
    pub pause: Option<(Duration, Duration)>,
}

/// Reads `r` for `duration` like a player at `pace`, logging bytes over time, keepalive null
/// packets, and whether the proxy ended the stream early.
pub async fn read_like_player(r: &mut Response, pace: Pace, duration: Duration) -> ReadLog {
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let mut log = ReadLog::default();
    let mut total = 0usize;
    let mut bucket_from: Option<(tokio::time::Instant, usize)> = None;
    let mut carry = Vec::new();
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            return log;
        }
        if let Some((from, to)) = pace.pause {
            if now >= start + from && now < start + to {
                tokio::time::sleep_until((start + to).min(end)).await;
                // Resume: the rate counts from here, with the prefill already done.
                bucket_from = Some((tokio::time::Instant::now(), total));
                continue;
            }
        }
        if total >= pace.prefill && pace.rate > 0.0 {
            let (t0, b0) = *bucket_from.get_or_insert((now, total));
            let allowed = b0 as f64 + pace.rate * (now - t0).as_secs_f64();
            if total as f64 >= allowed {
                let wait = (total as f64 - allowed) / pace.rate;
                tokio::time::sleep(Duration::from_secs_f64(wait.max(0.001))).await;
                continue;
            }
        }
        match tokio::time::timeout_at(end, r.next_chunk()).await {
            Err(_) => return log,
            Ok(Ok(Some(b))) => {
                total += b.len();
                carry.extend_from_slice(&b);
                let whole = carry.len() / 188 * 188;
                let nulls = carry[..whole]
                    .chunks(188)
                    .filter(|p| acestream_edge::ts::pid(p) == acestream_edge::ts::NULL_PID)
                    .count();
                carry.drain(..whole);
                let t = start.elapsed();
                log.null_packets.extend(std::iter::repeat_n(t, nulls));
                log.samples.push((t, total));
            }
            Ok(Ok(None)) => {
                log.cut_off = Some(format!("stream ended after {total} bytes"));
                return log;
            }
            Ok(Err(e)) => {
                log.cut_off = Some(format!("read failed after {total} bytes: {e}"));
                return log;
            }
        }
    }
}

/// Headless Chromium (Debian's `chromium`) set up for tests: no sandbox (CI runs as root), no
/// GPU, muted, autoplay allowed, a fresh profile in `profile`. `None` when it is not installed.
pub fn chromium(profile: &std::path::Path) -> Option<std::process::Command> {
    let bin = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok()
    })?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    Some(cmd)
}

/// A client that streams in the background: it counts its bytes and its longest gap between
/// two pieces, until the stream ends or the viewer is dropped.
pub struct Viewer {
    bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_gap_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Viewer {
    /// `GET /ace/getstream?id=` on `addr`; expects `200`.
    pub async fn start(addr: SocketAddr, id: &str) -> Viewer {
        let r = get(addr, &format!("/ace/getstream?id={id}")).await;
        assert_eq!(r.status, 200, "{id} through {addr}");
        Viewer::reading(r)
    }

    /// Reads `r` in the background.
    pub fn reading(mut r: Response) -> Viewer {
        use std::sync::atomic::Ordering;
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_gap_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (count, gap) = (bytes.clone(), max_gap_ms.clone());
        let task = tokio::spawn(async move {
            let mut last = Instant::now();
            while let Ok(Some(piece)) = r.next_chunk().await {
                count.fetch_add(piece.len(), Ordering::Relaxed);
                gap.fetch_max(last.elapsed().as_millis() as u64, Ordering::Relaxed);
                last = Instant::now();
            }
        });
        Viewer {
            bytes,
            max_gap_ms,
            task,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The longest wait between two pieces so far, in milliseconds.
    pub fn max_gap_ms(&self) -> u64 {
        self.max_gap_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (at most 15 s) until the viewer read `n` more bytes than now.
    pub async fn gets(&self, n: usize) -> bool {
        let from = self.bytes();
        wait_until(Duration::from_secs(15), || async {
            self.bytes() >= from + n
        })
        .await
    }

    /// The stream ended or broke.
    pub fn ended(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A child process that is killed when dropped, so a failing test leaves nothing running.
pub struct Process(Option<std::process::Child>);

impl Process {
    /// Takes charge of `child`.
    pub fn new(child: std::process::Child) -> Process {
        Process(Some(child))
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    /// Waits for it to exit by itself.
    pub fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("a running child");
        child.wait().expect("wait for the child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A small HTTP server standing for a list or guide source: every request gets what `answer`
/// returns for its head (status, body; `Content-Length`, `Connection: close`). It keeps each
/// request head (lower case), until the test ends.
#[allow(dead_code)] // not every test binary serves sources
pub struct SourceServer {
    /// Where it listens.
    pub addr: SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[allow(dead_code)]
impl SourceServer {
    /// Starts one answering with `answer`.
    pub async fn start<F>(answer: F) -> SourceServer
    where
        F: Fn(&str) -> (u16, Vec<u8>) + Send + Sync + 'static,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let (kept, answer) = (heads.clone(), std::sync::Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (kept, answer) = (kept.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                    let (status, body) = answer(&head);
                    kept.lock().unwrap().push(head);
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                });
            }
        });
        SourceServer { addr, heads }
    }

    /// The request heads it got, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Starts the real `acestream-edge` binary with `-c conf`, `env` added, its log to `log`, and
/// waits until it listens on `addr`; killed when dropped.
#[allow(dead_code)]
pub async fn spawn_edge_listening(
    conf: &std::path::Path,
    env: &[(&str, &str)],
    log: std::process::Stdio,
    addr: SocketAddr,
) -> Process {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_acestream-edge"));
    cmd.arg("-c").arg(conf).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map(Process::new)
        .expect("start acestream-edge");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await,
        "the proxy did not start listening on {addr}"
    );
    child
}

/// Writes `edge.yaml` in `dir`: `acestream:` listening on a free loopback port, then `rest` (the
/// section's other lines, each indented two spaces). Returns its path and the address.
#[allow(dead_code)]
pub fn edge_conf(dir: &std::path::Path, rest: &str) -> (std::path::PathBuf, SocketAddr) {
    let port = free_port();
    let conf = dir.join("edge.yaml");
    std::fs::write(
        &conf,
        format!("acestream:\n  listen: [\"127.0.0.1:{port}\"]\n{rest}"),
    )
    .expect("write the config");
    (
        conf,
        format!("127.0.0.1:{port}").parse().expect("an address"),
    )
}
