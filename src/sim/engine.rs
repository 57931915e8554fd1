//! The simulated AceStream engine (its session API; playback is in [`super::stream`], knobs in
//! [`super::knobs`]): HTTP API per `docs/engine-api.md` §1–§9.
//!
//! Faithful where the proxy depends on it: errors as HTTP 200 + `error`, absolute URLs carrying the
//! engine's own host, `playback_url` answering 302 to `/content/...`, a prebuffer delay, one reader per
//! session (a second concurrent reader gets the corrupt double status line real engines send), "the
//! newest start for a content id wins", `method=stop` ending the reader, and an inactivity timeout.
//! Everything it was asked is counted and served at `GET /sim/stats`, so black-box tests can assert
//! what the engine saw.
//!
//! (About 500 lines: the session API handlers all share the engine's private state; playback
//! and the stream live in [`super::stream`], the knobs in [`super::knobs`].)

mod getstream;
mod search;

use getstream::getstream;
pub(super) use getstream::{spawn_inactivity_timer, token_of};

use super::stream::{playback, PlaybackKind};
use super::Knobs;
use crate::http1::{read_request_head, RequestHead};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the engine was asked, as served at `/sim/stats`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct SimStats {
    /// `/ace/getstream` and `/ace/manifest.m3u8` calls per content id.
    pub getstream_calls: BTreeMap<String, u64>,
    /// All getstream calls.
    pub getstream_total: u64,
    /// Getstream calls by the parameter that named the content (`id`, `infohash`, ...).
    #[serde(default)]
    pub getstream_params: BTreeMap<String, u64>,
    /// Sessions created (successful starts).
    pub sessions_started: u64,
    /// Sessions not yet stopped or expired.
    pub sessions_active: u64,
    /// Most sessions ever alive at once.
    #[serde(default)]
    pub max_sessions_active: u64,
    /// `/search` calls.
    #[serde(default)]
    pub search_calls: u64,
    /// Requests by their `Authorization` header (`-`: none), for tests of `headers:`.
    #[serde(default)]
    pub authorizations: BTreeMap<String, u64>,
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
    /// Sessions being read now, per start key (the content id, or `infohash:<value>`).
    #[serde(default)]
    pub read_sessions_by_id: BTreeMap<String, u64>,
}

pub(super) struct SimSession {
    /// `id` value or `infohash:<value>`: the key "the newest start wins" applies to.
    pub(super) start_key: String,
    pub(super) content_id: String,
    pub(super) infohash: String,
    pub(super) playback_session_id: String,
    pub(super) readers: u64,
    pub(super) bytes_sent: u64,
    pub(super) ended: watch::Sender<bool>,
    pub(super) reader_epoch: u64,
    /// `/content/...` paths handed out for this session.
    pub(super) content_paths: Vec<String>,
    /// When it started: its live position advances from here in real time.
    pub(super) started: std::time::Instant,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) sessions: HashMap<String, SimSession>,
    pub(super) by_content: HashMap<String, String>,
    pub(super) content_paths: HashMap<String, String>,
    pub(super) stats: SimStats,
}

impl State {
    /// The counters, with the sessions being read now counted per id.
    fn snapshot(&self) -> SimStats {
        let mut stats = self.stats.clone();
        for s in self.sessions.values().filter(|s| s.readers > 0) {
            *stats
                .read_sessions_by_id
                .entry(s.start_key.clone())
                .or_default() += 1;
        }
        stats
    }

    /// Ends a session: its reader sees the end, its URLs die, and its counts are updated.
    fn end_session(&mut self, token: &str) -> Option<SimSession> {
        let s = self.sessions.remove(token)?;
        s.ended.send_replace(true);
        if self.by_content.get(&s.start_key).map(String::as_str) == Some(token) {
            self.by_content.remove(&s.start_key);
        }
        for path in &s.content_paths {
            self.content_paths.remove(path);
        }
        self.stats.sessions_active -= 1;
        Some(s)
    }
}

pub(super) struct Shared {
    pub(super) knobs: Mutex<Knobs>,
    pub(super) state: Mutex<State>,
    pub(super) shutdown: watch::Sender<bool>,
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
        lock(&self.shared.state).snapshot()
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    // The test's own `/sim/*` calls are not the engine API.
    if !req.path.starts_with("/sim/") {
        *lock(&shared.state)
            .stats
            .authorizations
            .entry(req.header("authorization").unwrap_or("-").to_string())
            .or_default() += 1;
    }
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
        "/search" => {
            lock(&shared.state).stats.search_calls += 1;
            search::search(&mut sock, &req).await
        }
        "/sim/stats" => {
            let body = serde_json::to_vec(&lock(&shared.state).snapshot()).unwrap_or_default();
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

pub(super) async fn respond(
    sock: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
) -> io::Result<()> {
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

pub(super) fn random_hex(len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}

async fn stat(shared: &Arc<Shared>, sock: &mut TcpStream, req: &RequestHead) -> io::Result<()> {
    let body = {
        let mut st = lock(&shared.state);
        st.stats.stat_calls += 1;
        let token = token_of(&req.path).unwrap_or_default();
        let knobs = lock(&shared.knobs).clone();
        match st.sessions.get(&token) {
            Some(_) if knobs.stat_unknown => {
                serde_json::json!({"response": null, "error": "unknown playback session id"})
            }
            None => serde_json::json!({"response": null, "error": "unknown playback session id"}),
            Some(s) => {
                let status = if s.bytes_sent > 0 { "dl" } else { "prebuf" };
                // The live position: the newest piece's time, advancing in real time from a
                // fixed epoch (a frozen one stays where the session started).
                const EPOCH: u64 = 1_700_000_000;
                let live_last = if knobs.freeze_livepos {
                    EPOCH
                } else {
                    EPOCH + s.started.elapsed().as_secs()
                };
                let mut response = serde_json::json!({
                    "status": status, "peers": 4, "speed_down": 512, "speed_up": 32,
                    "downloaded": s.bytes_sent, "uploaded": 0, "total_progress": 0,
                    "selected_stream_index": 0, "selected_file_index": -1, "stream_status": -1,
                    "client_session_id": -1, "playback_session_id": s.playback_session_id,
                    "infohash": s.infohash, "is_live": 1, "is_encrypted": 0,
                });
                if status == "dl" {
                    // As strings, as engines send them; only while downloading.
                    let first = EPOCH.saturating_sub(1800).to_string();
                    let last = live_last.to_string();
                    response["livepos"] = serde_json::json!({
                        "pos": last, "last": last, "first_ts": first, "last_ts": last,
                        "live_first": first, "live_last": last, "is_live": "1",
                        "buffer_pieces": "30",
                    });
                }
                serde_json::json!({"response": response, "error": null})
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
