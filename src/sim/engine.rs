//! The simulated AceStream engine: HTTP API per `docs/engine-api.md` §1–§9.
//!
//! Faithful where the proxy depends on it: errors as HTTP 200 + `error`, absolute URLs carrying the
//! engine's own host, `playback_url` answering 302 to `/content/...`, a prebuffer delay, one reader per
//! session (a second concurrent reader gets the corrupt double status line real engines send), "the
//! newest start for a content id wins", `method=stop` ending the reader, and an inactivity timeout.
//! Everything it was asked is counted and served at `GET /sim/stats`, so black-box tests can assert
//! what the engine saw.

use super::ts::{TsLoop, PACKET};
use crate::http1::{read_request_head, RequestHead};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Behaviour knobs of one simulated engine; change them live with [`SimEngine::set_knobs`] or
/// `GET /sim/set?name=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// Stream bitrate in bits per second; 0 = as fast as the socket takes it.
    pub bitrate_bps: u64,
    /// Delay between the playback request and the first TS byte.
    pub prebuffer: Duration,
    /// Send the response head at once and then prebuffer (true), or only after prebuffering.
    pub headers_before_prebuffer: bool,
    /// Latency of a successful `format=json` answer.
    pub json_latency: Duration,
    /// Latency of the `failed to load content` answer for ids that are not 40 hex.
    pub unknown_latency: Duration,
    /// If set, every getstream answers HTTP 200 `{"response": null, "error": <this>}`.
    pub start_error: Option<String>,
    /// If true, getstream answers HTTP 500 text/plain.
    pub http_500: bool,
    /// After this many stream bytes, stop sending but keep the socket open.
    pub stall_after_bytes: Option<u64>,
    /// After this many stream bytes, close the connection (no terminating chunk).
    pub drop_after_bytes: Option<u64>,
    /// After this many stream bytes, send non-TS bytes.
    pub garbage_after_bytes: Option<u64>,
    /// `playback_url` answers 302 to `/content/...` (true) or streams directly.
    pub redirect_playback: bool,
    /// Chunked transfer encoding (true) or close-delimited body.
    pub chunked: bool,
    /// `Content-Type` of the stream.
    pub content_type: String,
    /// Host:port written into returned URLs; default: the request's `Host` header.
    pub public_host: Option<String>,
    /// A session with no reader for this long ends by itself (not counted as a stop).
    pub inactivity_timeout: Duration,
    /// Bytes sent at line speed right after the prebuffer (a real engine dumps its live cache,
    /// about 20 MB), before the stream settles at `bitrate_bps`.
    pub burst_bytes: u64,
    /// After this many stream bytes, stop sending for `pause` (peers starving), then catch up at
    /// line speed to where the bitrate says the stream should be. Once per reader.
    pub pause_after_bytes: Option<u64>,
    /// Length of that pause.
    pub pause: Duration,
    /// Stream TS null packets only (a stream without a clock) instead of the looped fixture.
    pub null_stream: bool,
    /// Start each stream this many packets into the fixture (mid-GOP), as a real engine's
    /// stream starts wherever its cache does.
    pub start_packet: usize,
}

impl Knobs {
    /// Sets one knob by its field name from text, as `GET /sim/set?name=value` does: numbers for
    /// counts and sizes, `true`/`false` (or 1/0), durations as seconds or with a unit ("500ms",
    /// "5s"), and `none` (or empty) to clear an optional one.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let none = value.is_empty() || value == "none";
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{value:?} is not a number ({e})"))
        };
        let opt_num = || if none { Ok(None) } else { num().map(Some) };
        let flag = || match value {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(format!("{value:?} is not true or false")),
        };
        let duration = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .map_or_else(
                    || humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}")),
                    Ok,
                )
        };
        let opt_text = || (!none).then(|| value.to_string());
        match name {
            "bitrate_bps" => self.bitrate_bps = num()?,
            "prebuffer" => self.prebuffer = duration()?,
            "headers_before_prebuffer" => self.headers_before_prebuffer = flag()?,
            "json_latency" => self.json_latency = duration()?,
            "unknown_latency" => self.unknown_latency = duration()?,
            "start_error" => self.start_error = opt_text(),
            "http_500" => self.http_500 = flag()?,
            "stall_after_bytes" => self.stall_after_bytes = opt_num()?,
            "drop_after_bytes" => self.drop_after_bytes = opt_num()?,
            "garbage_after_bytes" => self.garbage_after_bytes = opt_num()?,
            "redirect_playback" => self.redirect_playback = flag()?,
            "chunked" => self.chunked = flag()?,
            "content_type" => self.content_type = value.to_string(),
            "public_host" => self.public_host = opt_text(),
            "inactivity_timeout" => self.inactivity_timeout = duration()?,
            "burst_bytes" => self.burst_bytes = num()?,
            "pause_after_bytes" => self.pause_after_bytes = opt_num()?,
            "pause" => self.pause = duration()?,
            "null_stream" => self.null_stream = flag()?,
            "start_packet" => self.start_packet = num()? as usize,
            _ => return Err("unknown knob".into()),
        }
        Ok(())
    }
}

impl Default for Knobs {
    /// Fast defaults for tests; the binary's flags default to the spec's slower engine timings.
    fn default() -> Self {
        Knobs {
            bitrate_bps: 4_000_000,
            prebuffer: Duration::ZERO,
            headers_before_prebuffer: true,
            json_latency: Duration::ZERO,
            unknown_latency: Duration::from_millis(100),
            start_error: None,
            http_500: false,
            stall_after_bytes: None,
            drop_after_bytes: None,
            garbage_after_bytes: None,
            redirect_playback: true,
            chunked: true,
            content_type: "video/mp2t".to_string(),
            public_host: None,
            inactivity_timeout: Duration::from_secs(60),
            burst_bytes: 0,
            pause_after_bytes: None,
            pause: Duration::ZERO,
            null_stream: false,
            start_packet: 0,
        }
    }
}

/// What the engine was asked, as served at `/sim/stats`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct SimStats {
    /// `/ace/getstream` and `/ace/manifest.m3u8` calls per content id.
    pub getstream_calls: BTreeMap<String, u64>,
    /// All getstream calls.
    pub getstream_total: u64,
    /// Sessions created (successful starts).
    pub sessions_started: u64,
    /// Sessions not yet stopped or expired.
    pub sessions_active: u64,
    /// Requests of a playback URL (`/ace/r/...` and `/content/...`).
    pub playback_requests: u64,
    /// Stream readers connected now.
    pub active_readers: u64,
    /// Most stream readers ever connected at once, over all sessions.
    pub max_active_readers: u64,
    /// A second reader arrived while a session already had one.
    pub second_reader_violations: u64,
    /// `method=stop` calls per content id (known sessions only).
    pub stop_calls: BTreeMap<String, u64>,
    /// All `method=stop` calls, including unknown sessions.
    pub stop_total: u64,
    /// Sessions that ended by the inactivity timeout.
    pub sessions_expired: u64,
    /// Stat URL polls.
    pub stat_calls: u64,
    /// Stream bytes written.
    pub bytes_sent: u64,
}

struct SimSession {
    content_id: String,
    infohash: String,
    playback_session_id: String,
    readers: u64,
    bytes_sent: u64,
    ended: watch::Sender<bool>,
    reader_epoch: u64,
    /// `/content/...` paths handed out for this session.
    content_paths: Vec<String>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, SimSession>,
    by_content: HashMap<String, String>,
    content_paths: HashMap<String, String>,
    stats: SimStats,
}

impl State {
    /// Ends a session: its reader sees the end, its URLs die, and its counts are updated.
    fn end_session(&mut self, token: &str) -> Option<SimSession> {
        let s = self.sessions.remove(token)?;
        s.ended.send_replace(true);
        if self.by_content.get(&s.content_id).map(String::as_str) == Some(token) {
            self.by_content.remove(&s.content_id);
        }
        for path in &s.content_paths {
            self.content_paths.remove(path);
        }
        self.stats.sessions_active -= 1;
        Some(s)
    }
}

struct Shared {
    knobs: Mutex<Knobs>,
    state: Mutex<State>,
    shutdown: watch::Sender<bool>,
}

/// A running simulated engine. Dropping the handle does not stop it; call [`SimEngine::shutdown`].
#[derive(Clone)]
pub struct SimEngine {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl SimEngine {
    /// Binds `addr` (port 0 for an ephemeral one) and serves until [`SimEngine::shutdown`].
    pub async fn start(addr: SocketAddr, knobs: Knobs) -> io::Result<SimEngine> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            knobs: Mutex::new(knobs),
            state: Mutex::new(State::default()),
            shutdown,
        });
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            let mut stop = accept_shared.shutdown.subscribe();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((sock, _)) => {
                            let conn_shared = accept_shared.clone();
                            tokio::spawn(async move {
                                let _ = handle_connection(conn_shared, sock, addr).await;
                            });
                        }
                        Err(e) => {
                            log::warn!("sim {addr}: accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
        Ok(SimEngine { addr, shared })
    }

    /// Starts one engine on an ephemeral loopback port.
    pub async fn start_local(knobs: Knobs) -> io::Result<SimEngine> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0)), knobs).await
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        lock(&self.shared.state).stats.clone()
    }

    /// The current knobs.
    pub fn knobs(&self) -> Knobs {
        lock(&self.shared.knobs).clone()
    }

    /// Changes knobs; new requests see the change at once, running streams at their next tick.
    pub fn set_knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut lock(&self.shared.knobs));
    }

    /// Stops listening and closes every connection, like a killed engine.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let mut state = lock(&self.shared.state);
        let tokens: Vec<String> = state.sessions.keys().cloned().collect();
        for token in tokens {
            state.end_session(&token);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn handle_connection(
    shared: Arc<Shared>,
    mut sock: TcpStream,
    local: SocketAddr,
) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    let mut stop = shared.shutdown.subscribe();
    let head = tokio::select! {
        _ = stop.changed() => return Ok(()),
        head = read_request_head(&mut sock) => head?,
    };
    let Some(req) = head else { return Ok(()) };
    let host = lock(&shared.knobs)
        .public_host
        .clone()
        .or_else(|| req.header("host").map(str::to_string))
        .unwrap_or_else(|| local.to_string());
    let path = req.path.clone();
    match path.as_str() {
        "/ace/getstream" | "/ace/manifest.m3u8" => getstream(&shared, &mut sock, &req, &host).await,
        "/webui/api/service" => service(&mut sock, &req).await,
        "/server/api" => server_api(&mut sock, &req).await,
        "/sim/stats" => {
            let body = serde_json::to_vec(&lock(&shared.state).stats).unwrap_or_default();
            respond(&mut sock, 200, "application/json", &body).await
        }
        "/sim/set" => set_knobs_from_query(&shared, &mut sock, &req).await,
        p if p.starts_with("/ace/r/") => {
            playback(&shared, sock, &req, &host, PlaybackKind::Session).await
        }
        p if p.starts_with("/content/") => {
            playback(&shared, sock, &req, &host, PlaybackKind::Content).await
        }
        p if p.starts_with("/ace/stat/") => stat(&shared, &mut sock, &req).await,
        p if p.starts_with("/ace/cmd/") => command(&shared, &mut sock, &req).await,
        _ => respond(&mut sock, 404, "text/plain", b"Not Found").await,
    }
}

async fn respond(sock: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nServer: BaseHTTP/0.3 Python/2.7.18 (ace-engine-sim)\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    sock.write_all(&out).await?;
    sock.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

async fn respond_json(sock: &mut TcpStream, value: serde_json::Value) -> io::Result<()> {
    let body = serde_json::to_vec(&value).unwrap_or_default();
    respond(sock, 200, "application/json", &body).await
}

fn is_content_id(id: &str) -> bool {
    id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A content id is not the infohash (`docs/engine-api.md` §1): derive a different, stable 40-hex value.
fn infohash_for(content_id: &str) -> String {
    content_id
        .bytes()
        .rev()
        .map(|b| {
            let v = (b as char).to_digit(16).unwrap_or(0);
            std::char::from_digit((v + 7) % 16, 16).unwrap_or('0')
        })
        .collect()
}

fn random_hex(len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}

async fn getstream(
    shared: &Arc<Shared>,
    sock: &mut TcpStream,
    req: &RequestHead,
    host: &str,
) -> io::Result<()> {
    let content = ["content_id", "id", "infohash", "url", "magnet"]
        .iter()
        .find_map(|k| req.query_param(k));
    let knobs = lock(&shared.knobs).clone();
    {
        let mut st = lock(&shared.state);
        st.stats.getstream_total += 1;
        if let Some(id) = &content {
            *st.stats
                .getstream_calls
                .entry(id.to_ascii_lowercase())
                .or_default() += 1;
        }
    }
    let Some(content) = content else {
        return respond(
            sock,
            500,
            "text/plain",
            b"Internal Server Error, missing content id",
        )
        .await;
    };
    if knobs.http_500 {
        return respond(
            sock,
            500,
            "text/plain",
            b"Internal Server Error, couldn't find resource",
        )
        .await;
    }
    let json = req.query_param("format").as_deref() == Some("json");
    if let Some(err) = knobs.start_error {
        tokio::time::sleep(knobs.json_latency).await;
        return respond_json(sock, serde_json::json!({"response": null, "error": err})).await;
    }
    if !is_content_id(&content) {
        tokio::time::sleep(knobs.unknown_latency).await;
        return respond_json(
            sock,
            serde_json::json!({"response": null, "error": "failed to load content"}),
        )
        .await;
    }
    tokio::time::sleep(knobs.json_latency).await;
    let content = content.to_ascii_lowercase();
    let infohash = infohash_for(&content);
    let token = random_hex(32);
    let playback_session_id = random_hex(40);
    let (ended, _) = watch::channel(false);
    {
        let mut st = lock(&shared.state);
        // The newest start for the same content wins: the previous session ends.
        if let Some(old) = st.by_content.get(&content).cloned() {
            st.end_session(&old);
        }
        st.by_content.insert(content.clone(), token.clone());
        st.sessions.insert(
            token.clone(),
            SimSession {
                content_id: content.clone(),
                infohash: infohash.clone(),
                playback_session_id: playback_session_id.clone(),
                readers: 0,
                bytes_sent: 0,
                ended,
                reader_epoch: 0,
                content_paths: Vec::new(),
            },
        );
        st.stats.sessions_started += 1;
        st.stats.sessions_active += 1;
    }
    spawn_inactivity_timer(shared.clone(), token.clone(), 0, knobs.inactivity_timeout);
    let manifest = req.path == "/ace/manifest.m3u8";
    let playback_url = if manifest {
        format!("http://{host}/ace/m/{infohash}/{token}.m3u8")
    } else {
        format!("http://{host}/ace/r/{infohash}/{token}")
    };
    if !json {
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: {playback_url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).await?;
        return sock.shutdown().await;
    }
    let mut response = serde_json::json!({
        "playback_url": playback_url,
        "stat_url": format!("http://{host}/ace/stat/{infohash}/{token}"),
        "command_url": format!("http://{host}/ace/cmd/{infohash}/{token}"),
        "infohash": infohash,
        "playback_session_id": playback_session_id,
        "is_live": 1,
        "is_encrypted": 0,
        "client_session_id": -1,
    });
    if req.query_param("use_api_events").as_deref() == Some("1") {
        response["event_url"] = format!("http://{host}/ace/event/{infohash}/{token}").into();
    }
    respond_json(
        sock,
        serde_json::json!({"response": response, "error": null}),
    )
    .await
}

/// Ends a session that has had no reader since `epoch` for `timeout`.
fn spawn_inactivity_timer(shared: Arc<Shared>, token: String, epoch: u64, timeout: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let mut st = lock(&shared.state);
        let expired =
            matches!(st.sessions.get(&token), Some(s) if s.readers == 0 && s.reader_epoch == epoch);
        if expired && st.end_session(&token).is_some() {
            st.stats.sessions_expired += 1;
        }
    });
}

/// `/ace/<kind>/<infohash>/<token>`: the token, if the path has that shape.
fn token_of(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').split('/');
    let _ace = parts.next()?;
    let _kind = parts.next()?;
    let _infohash = parts.next()?;
    let token = parts.next()?;
    Some(token.trim_end_matches(".m3u8").to_string())
}

async fn stat(shared: &Arc<Shared>, sock: &mut TcpStream, req: &RequestHead) -> io::Result<()> {
    let body = {
        let mut st = lock(&shared.state);
        st.stats.stat_calls += 1;
        let token = token_of(&req.path).unwrap_or_default();
        match st.sessions.get(&token) {
            None => serde_json::json!({"response": null, "error": "unknown playback session id"}),
            Some(s) => {
                let status = if s.bytes_sent > 0 { "dl" } else { "prebuf" };
                serde_json::json!({"response": {
                    "status": status, "peers": 4, "speed_down": 512, "speed_up": 32,
                    "downloaded": s.bytes_sent, "uploaded": 0, "total_progress": 0,
                    "selected_stream_index": 0, "selected_file_index": -1, "stream_status": -1,
                    "client_session_id": -1, "playback_session_id": s.playback_session_id,
                    "infohash": s.infohash, "is_live": 1, "is_encrypted": 0,
                }, "error": null})
            }
        }
    };
    respond_json(sock, body).await
}

async fn command(shared: &Arc<Shared>, sock: &mut TcpStream, req: &RequestHead) -> io::Result<()> {
    let body = {
        let mut st = lock(&shared.state);
        let token = token_of(&req.path).unwrap_or_default();
        match req.query_param("method").as_deref() {
            Some("stop") => {
                st.stats.stop_total += 1;
                match st.end_session(&token) {
                    Some(s) => {
                        *st.stats.stop_calls.entry(s.content_id).or_default() += 1;
                        serde_json::json!({"response": "ok", "error": null})
                    }
                    None => {
                        serde_json::json!({"response": null, "error": "unknown playback session id"})
                    }
                }
            }
            _ => serde_json::json!({"response": null, "error": "unknown method"}),
        }
    };
    respond_json(sock, body).await
}

async fn service(sock: &mut TcpStream, req: &RequestHead) -> io::Result<()> {
    match req.query_param("method").as_deref() {
        Some("get_version") => {
            respond_json(
                sock,
                serde_json::json!({"result": {"code": 3017000, "platform": "linux", "version": "3.1.70"}, "error": null}),
            )
            .await
        }
        _ => respond_json(sock, serde_json::json!({"result": null, "error": "unknown method"})).await,
    }
}

async fn server_api(sock: &mut TcpStream, req: &RequestHead) -> io::Result<()> {
    let body = match req.query_param("method").as_deref() {
        Some("get_status") => serde_json::json!({"result": {"playlist_loaded": true,
            "version": {"code": 3017000, "platform": "linux", "version": "3.1.70"}}}),
        Some("get_network_connection_status") => serde_json::json!({"result": {"connected": true}}),
        Some("get_version") => serde_json::json!({"result": null, "error": "access denied"}),
        _ => serde_json::json!({"result": null, "error": "unknown method"}),
    };
    respond_json(sock, body).await
}

async fn set_knobs_from_query(
    shared: &Arc<Shared>,
    sock: &mut TcpStream,
    req: &RequestHead,
) -> io::Result<()> {
    let mut k = lock(&shared.knobs).clone();
    let mut problems = Vec::new();
    for (name, value) in form_urlencoded::parse(req.query.as_bytes()) {
        if let Err(e) = k.set(&name, &value) {
            problems.push(format!("{name}: {e}"));
        }
    }
    if !problems.is_empty() {
        let body = serde_json::json!({"error": problems.join("; ")});
        return respond(sock, 400, "application/json", body.to_string().as_bytes()).await;
    }
    *lock(&shared.knobs) = k;
    respond_json(sock, serde_json::json!({"result": "ok"})).await
}

enum PlaybackKind {
    Session,
    Content,
}

async fn playback(
    shared: &Arc<Shared>,
    mut sock: TcpStream,
    req: &RequestHead,
    host: &str,
    kind: PlaybackKind,
) -> io::Result<()> {
    let knobs = lock(&shared.knobs).clone();
    let token = {
        let mut st = lock(&shared.state);
        st.stats.playback_requests += 1;
        match kind {
            PlaybackKind::Session => token_of(&req.path),
            PlaybackKind::Content => st.content_paths.get(&req.path).cloned(),
        }
        .filter(|t| st.sessions.contains_key(t))
    };
    let Some(token) = token else {
        // After stop, old playback URLs answer 500 (`docs/engine-api.md` §3).
        return respond(
            &mut sock,
            500,
            "text/plain",
            b"Internal Server Error, unknown playback session",
        )
        .await;
    };
    if matches!(kind, PlaybackKind::Session) && knobs.redirect_playback {
        let infohash = lock(&shared.state)
            .sessions
            .get(&token)
            .map(|s| s.infohash.clone())
            .unwrap_or_default();
        let path = format!(
            "/content/{infohash}/0.{}",
            &random_hex(10)
                .bytes()
                .map(|b| (b % 10 + b'0') as char)
                .collect::<String>()
        );
        {
            let mut st = lock(&shared.state);
            if let Some(s) = st.sessions.get_mut(&token) {
                s.content_paths.push(path.clone());
            }
            st.content_paths.insert(path.clone(), token);
        }
        let head = format!("HTTP/1.1 302 Found\r\nLocation: http://{host}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        sock.write_all(head.as_bytes()).await?;
        return sock.shutdown().await;
    }
    // Register the reader; a second concurrent reader gets the corrupt answer real engines send.
    enum Admit {
        Gone,
        Second,
        Reader(watch::Receiver<bool>),
    }
    let admit = {
        let mut st = lock(&shared.state);
        let state = &mut *st;
        match state.sessions.get_mut(&token) {
            None => Admit::Gone,
            Some(s) if s.readers > 0 => {
                state.stats.second_reader_violations += 1;
                Admit::Second
            }
            Some(s) => {
                s.readers += 1;
                s.reader_epoch += 1;
                state.stats.active_readers += 1;
                state.stats.max_active_readers = state
                    .stats
                    .max_active_readers
                    .max(state.stats.active_readers);
                Admit::Reader(s.ended.subscribe())
            }
        }
    };
    let ended = match admit {
        Admit::Gone => {
            return respond(&mut sock, 500, "text/plain", b"Internal Server Error").await
        }
        Admit::Second => {
            sock.write_all(b"HTTP/1.1 200 OK\r\nHTTP/1.1 200 OK\r\n\r\n")
                .await?;
            return sock.shutdown().await;
        }
        Admit::Reader(rx) => rx,
    };
    let result = stream_ts(shared, &mut sock, &token, &knobs, ended).await;
    let idle_epoch = {
        let mut st = lock(&shared.state);
        st.stats.active_readers -= 1;
        st.sessions.get_mut(&token).and_then(|s| {
            s.readers -= 1;
            (s.readers == 0).then_some(s.reader_epoch)
        })
    };
    if let Some(epoch) = idle_epoch {
        spawn_inactivity_timer(shared.clone(), token, epoch, knobs.inactivity_timeout);
    }
    result
}

/// Largest single write of stream data (5577 packets, about 1 MiB).
const MAX_PACKETS_PER_WRITE: usize = 5577;

/// What the stream loop does next, decided by the fault knobs.
enum Next {
    Send(Bytes),
    Stall,
    Drop(Bytes),
}

async fn stream_ts(
    shared: &Arc<Shared>,
    sock: &mut TcpStream,
    token: &str,
    knobs: &Knobs,
    mut ended: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut shutdown = shared.shutdown.subscribe();
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: BaseHTTP/0.3 Python/2.7.18 (ace-engine-sim)\r\nContent-Type: {}\r\n{}Connection: close\r\n\r\n",
        knobs.content_type,
        if knobs.chunked { "Transfer-Encoding: chunked\r\n" } else { "" }
    );
    let wait_or_end =
        |d: Duration, ended: &mut watch::Receiver<bool>, shutdown: &mut watch::Receiver<bool>| {
            let (mut e, mut s) = (ended.clone(), shutdown.clone());
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => false,
                    _ = e.wait_for(|v| *v) => true,
                    _ = s.wait_for(|v| *v) => true,
                }
            }
        };
    if knobs.headers_before_prebuffer {
        sock.write_all(head.as_bytes()).await?;
    }
    if wait_or_end(knobs.prebuffer, &mut ended, &mut shutdown).await {
        return Ok(());
    }
    if !knobs.headers_before_prebuffer {
        sock.write_all(head.as_bytes()).await?;
    }
    let mut ts = TsLoop::with_bitrate(knobs.bitrate_bps).starting_at(knobs.start_packet);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut paused = false;
    let tick = Duration::from_millis(20);
    let mut garbage_seed: u32 = 0x1234_5678;
    loop {
        let live = lock(&shared.knobs).clone();
        if !paused && live.pause_after_bytes.is_some_and(|at| sent >= at) {
            paused = true;
            if wait_or_end(live.pause, &mut ended, &mut shutdown).await {
                break;
            }
        }
        let due = if live.bitrate_bps == 0 {
            sent + 64 * 1024
        } else {
            live.burst_bytes
                + (start.elapsed().as_secs_f64() * live.bitrate_bps as f64 / 8.0) as u64
        };
        // At most ~1 MiB per write: a reader that cannot keep up gets the stream late, never an
        // ever-growing buffer (the engine's memory stays flat).
        let packets = ((due.saturating_sub(sent) as usize) / PACKET).min(MAX_PACKETS_PER_WRITE);
        if packets == 0 {
            if wait_or_end(tick, &mut ended, &mut shutdown).await {
                break;
            }
            continue;
        }
        let mut data = BytesMut::new();
        if live.null_stream {
            for _ in 0..packets {
                data.extend_from_slice(&crate::ts::NULL_PACKET);
            }
        } else {
            ts.fill(&mut data, packets);
        }
        let next = decide(&live, sent, data, &mut garbage_seed);
        let (data, last) = match next {
            Next::Send(d) => (d, false),
            Next::Drop(d) => (d, true),
            Next::Stall => {
                // Keep the socket, send nothing, until the session ends.
                let (mut e, mut s) = (ended.clone(), shutdown.clone());
                tokio::select! {
                    _ = e.wait_for(|v| *v) => {}
                    _ = s.wait_for(|v| *v) => {}
                }
                return Ok(());
            }
        };
        if !data.is_empty() {
            write_body(sock, &data, knobs.chunked).await?;
            sent += data.len() as u64;
            let mut st = lock(&shared.state);
            st.stats.bytes_sent += data.len() as u64;
            if let Some(s) = st.sessions.get_mut(token) {
                s.bytes_sent += data.len() as u64;
            }
        }
        if last {
            // Abrupt close: no terminating chunk.
            return Ok(());
        }
        if *ended.borrow() || *shutdown.borrow() {
            break;
        }
        // Behind schedule (a capped write): write again at once instead of waiting a tick.
        let behind = packets == MAX_PACKETS_PER_WRITE;
        if live.bitrate_bps != 0 && !behind && wait_or_end(tick, &mut ended, &mut shutdown).await {
            break;
        }
    }
    if knobs.chunked {
        sock.write_all(b"0\r\n\r\n").await?;
    }
    sock.shutdown().await
}

fn decide(k: &Knobs, sent: u64, mut data: BytesMut, seed: &mut u32) -> Next {
    let len = data.len() as u64;
    if let Some(limit) = k.drop_after_bytes {
        if sent + len >= limit {
            let keep = (limit.saturating_sub(sent) as usize) / PACKET * PACKET;
            data.truncate(keep);
            return Next::Drop(data.freeze());
        }
    }
    if let Some(limit) = k.stall_after_bytes {
        if sent >= limit {
            return Next::Stall;
        }
        if sent + len > limit {
            data.truncate(((limit - sent) as usize).div_ceil(PACKET) * PACKET);
        }
    }
    if let Some(limit) = k.garbage_after_bytes {
        if sent + len > limit {
            let from = (limit.saturating_sub(sent)) as usize;
            for b in data[from..].iter_mut() {
                // xorshift: noise that never lines up as 0x47 sync every 188 bytes.
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                *b = (*seed as u8) | 0x80;
            }
        }
    }
    Next::Send(data.freeze())
}

async fn write_body(sock: &mut TcpStream, data: &[u8], chunked: bool) -> io::Result<()> {
    if !chunked {
        return sock.write_all(data).await;
    }
    let mut out = BytesMut::with_capacity(data.len() + 16);
    out.put_slice(format!("{:X}\r\n", data.len()).as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
    sock.write_all(&out).await
}
