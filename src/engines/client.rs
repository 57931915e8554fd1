//! The proxy's client for one engine's HTTP API (`docs/engine-api.md` §2–§5).
//!
//! It follows the quirks checklist: success only when HTTP is 2xx, the body parses, `error` is null
//! or empty and `playback_url` is present; the host:port of every returned URL is replaced by the
//! address actually dialled (only path and query are kept); redirects are followed without reading
//! their bodies; `Accept-Encoding: identity`; a fresh `pid` per session; stop is best effort with a
//! short timeout and tolerates `unknown playback session id`.

mod content;
mod late_stop;

pub use content::{ContentKey, ContentKind};

use crate::error::EdgeError;
use crate::http1::{self, Response};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest JSON answer accepted from an engine. Fixed: the biggest real answer (a stat poll) is
/// about 1 KB; the cap only bounds memory against a broken or hostile engine.
const MAX_JSON: usize = 256 * 1024;
/// Most redirects followed from `playback_url` to the stream. Fixed: real engines redirect
/// exactly once (`/ace/r/...` → `/content/...`); more is a loop.
const MAX_REDIRECTS: usize = 5;

/// What went wrong talking to one engine, with its source. Converted into [`EdgeError`] (which
/// every waiting client shares, so it carries text) only where a client sees it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's name does not resolve.
    #[error("engine {engine}: {}", self.detail())]
    Resolve {
        /// `host:port`.
        engine: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting, writing or reading failed.
    #[error("engine {engine}: {}", self.detail())]
    Io {
        /// `host:port`.
        engine: String,
        /// Which call (`/ace/getstream`, "reading JSON body", ...).
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("engine {engine}: {}", self.detail())]
    Timeout {
        /// `host:port`.
        engine: String,
        /// Which call.
        what: String,
        /// The time allowed.
        after: Duration,
    },
    /// The answer is not the JSON the API promises.
    #[error("engine {engine}: {}", self.detail())]
    BadJson {
        /// `host:port`.
        engine: String,
        /// Which answer.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The engine answered, but with an error (JSON `error`, HTTP >= 400, no playback URL).
    #[error("engine {engine} refused: {reason}")]
    Refused {
        /// `host:port`.
        engine: String,
        /// The engine's own words.
        reason: String,
    },
}

impl EngineError {
    /// What went wrong, in words, without the engine's address (which every variant names
    /// apart): the one place the text of each failure is written.
    pub fn detail(&self) -> String {
        match self {
            EngineError::Resolve { source, .. } => format!("cannot resolve: {source}"),
            EngineError::Io { what, source, .. } => format!("{what}: {source}"),
            EngineError::Timeout { what, after, .. } => {
                format!("no answer to {what} within {after:?}")
            }
            EngineError::BadJson { what, source, .. } => format!("{what}: {source}"),
            EngineError::Refused { reason, .. } => format!("refused: {reason}"),
        }
    }
}

impl From<EngineError> for EdgeError {
    fn from(e: EngineError) -> EdgeError {
        match e {
            EngineError::Refused { engine, reason } => EdgeError::EngineRefused { engine, reason },
            EngineError::Resolve { ref engine, .. }
            | EngineError::Io { ref engine, .. }
            | EngineError::Timeout { ref engine, .. }
            | EngineError::BadJson { ref engine, .. } => EdgeError::EngineUnreachable {
                engine: engine.clone(),
                reason: e.detail(),
            },
        }
    }
}

/// An engine's address as dialled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineEndpoint {
    /// Host name or IP.
    pub host: String,
    /// HTTP API port.
    pub port: u16,
    /// Extra request headers on every call (`headers:` of a configured engine).
    pub headers: crate::config::Headers,
}

impl std::fmt::Display for EngineEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The MPEG-TS body of a started engine session, as the session's upstream task reads it. The
/// HTTP client underneath stays private to `engines`.
#[derive(Debug)]
pub struct EngineStream {
    body: Response,
}

impl EngineStream {
    /// A stream read from another acestream-edge process (the relay of a graceful upgrade),
    /// through the same cancel-safe reader.
    pub fn relayed(body: Response) -> EngineStream {
        EngineStream { body }
    }

    /// The next piece of stream bytes; `None` when the engine ended the stream. Cancel-safe: a
    /// `select!` may drop it between pieces without losing bytes.
    pub async fn next_chunk(&mut self) -> std::io::Result<Option<bytes::Bytes>> {
        self.body.next_chunk().await
    }
}

/// Timeouts for engine calls.
#[derive(Debug, Clone, Copy)]
pub struct EngineTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Idle read: no byte for this long is a failure.
    pub read: Duration,
}

/// A started engine session: what the proxy needs to read and stop it. Paths only: the engine's
/// idea of its own host is never trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSession {
    /// Path and query of the MPEG-TS playback URL.
    pub playback_path: String,
    /// Path and query of the stat URL, if the engine gave one.
    pub stat_path: Option<String>,
    /// Path and query of the command URL, if the engine gave one.
    pub command_path: Option<String>,
    /// The torrent infohash (differs from the content id).
    pub infohash: Option<String>,
    /// The engine's playback session id.
    pub playback_session_id: Option<String>,
    /// `is_live == 1`.
    pub is_live: bool,
    /// The `pid` this session was started with.
    pub pid: String,
}

#[derive(Deserialize)]
struct Envelope {
    response: Option<StartResponse>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StartResponse {
    playback_url: Option<String>,
    stat_url: Option<String>,
    command_url: Option<String>,
    infohash: Option<String>,
    playback_session_id: Option<String>,
    is_live: Option<serde_json::Value>,
}

impl EngineEndpoint {
    async fn resolve(&self) -> Result<SocketAddr, EngineError> {
        let resolve = |source| EngineError::Resolve {
            engine: self.to_string(),
            source,
        };
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(resolve)?
            .next()
            .ok_or_else(|| resolve(std::io::Error::other("the name resolves to no address")))
    }

    fn io(&self, what: impl Into<String>, source: std::io::Error) -> EngineError {
        EngineError::Io {
            engine: self.to_string(),
            what: what.into(),
            source,
        }
    }

    fn refused(&self, reason: String) -> EngineError {
        EngineError::Refused {
            engine: self.to_string(),
            reason,
        }
    }

    /// `GET path` on this engine; the response head is read within the read timeout.
    pub async fn get(&self, path: &str, t: EngineTimeouts) -> Result<Response, EngineError> {
        let addr = self.resolve().await?;
        let opts = http1::GetOptions::with_headers(&self.headers);
        let fut = http1::get_opts(addr, path, t.connect, &opts);
        match tokio::time::timeout(t.connect + t.read, fut).await {
            Err(_) => Err(EngineError::Timeout {
                engine: self.to_string(),
                what: short(path).to_string(),
                after: t.connect + t.read,
            }),
            Ok(Err(e)) => Err(self.io(short(path), e)),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// `GET path` and parse the body as JSON. HTTP >= 400 is a refusal carrying the body text.
    pub async fn get_json(
        &self,
        path: &str,
        t: EngineTimeouts,
    ) -> Result<serde_json::Value, EngineError> {
        let mut resp = self.get(path, t).await?;
        let body = tokio::time::timeout(t.read, resp.read_to_end(MAX_JSON))
            .await
            .map_err(|_| EngineError::Timeout {
                engine: self.to_string(),
                what: format!("the JSON body of {}", short(path)),
                after: t.read,
            })?
            .map_err(|e| self.io("reading JSON body", e))?;
        if resp.status >= 400 {
            let text = String::from_utf8_lossy(&body);
            return Err(self.refused(format!("HTTP {}: {}", resp.status, text.trim())));
        }
        serde_json::from_slice(&body).map_err(|source| EngineError::BadJson {
            engine: self.to_string(),
            what: "answer is not JSON".into(),
            source,
        })
    }

    /// Starts a session: `GET /ace/getstream?format=json&id=<id>&pid=<fresh uuid>` (or
    /// `infohash=<hash>`, as the client asked).
    pub async fn start_session(
        &self,
        content: &ContentKey,
        t: EngineTimeouts,
    ) -> Result<EngineSession, EngineError> {
        let pid = uuid::Uuid::new_v4().to_string();
        let path = format!(
            "/ace/getstream?format=json&{}={}&pid={pid}",
            content.param(),
            content.value
        );
        let value = self.get_json(&path, t).await?;
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|source| EngineError::BadJson {
                engine: self.to_string(),
                what: "unexpected getstream answer".into(),
                source,
            })?;
        if let Some(err) = envelope
            .error
            .filter(|e| !e.is_null() && e.as_str() != Some(""))
        {
            let reason = err
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            return Err(self.refused(reason));
        }
        let r = envelope
            .response
            .ok_or_else(|| self.refused("answer has neither response nor error".into()))?;
        let playback = r
            .playback_url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| self.refused("answer has no playback_url".into()))?;
        let is_live = match r.is_live {
            Some(serde_json::Value::Number(n)) => n.as_i64() == Some(1),
            Some(serde_json::Value::Bool(b)) => b,
            Some(serde_json::Value::String(s)) => s == "1" || s == "true",
            _ => false,
        };
        Ok(EngineSession {
            playback_path: path_of(&playback)
                .ok_or_else(|| self.refused(format!("bad playback_url {playback:?}")))?,
            stat_path: r.stat_url.as_deref().and_then(path_of),
            command_path: r.command_url.as_deref().and_then(path_of),
            infohash: r.infohash,
            playback_session_id: r.playback_session_id,
            is_live,
            pid,
        })
    }

    /// Opens the MPEG-TS stream of a started session, following redirects (never reading their
    /// bodies) and always dialling this engine.
    pub async fn open_stream(
        &self,
        session: &EngineSession,
        t: EngineTimeouts,
    ) -> Result<EngineStream, EngineError> {
        let mut path = session.playback_path.clone();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.get(&path, t).await?;
            match resp.status {
                200..=299 => return Ok(EngineStream { body: resp }),
                301 | 302 | 303 | 307 | 308 => {
                    let location = resp.header("location").and_then(path_of).ok_or_else(|| {
                        self.refused(format!("HTTP {} without a usable Location", resp.status))
                    })?;
                    drop(resp);
                    path = location;
                }
                status => return Err(self.refused(format!("playback answered HTTP {status}"))),
            }
        }
        Err(self.refused("too many redirects from playback_url".into()))
    }

    /// `get_json` of `path` with `param` (`name=value`) added to its query, within `timeout`
    /// for connecting and for the answer.
    async fn get_json_with(
        &self,
        path: &str,
        param: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, EngineError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let t = EngineTimeouts {
            connect: timeout,
            read: timeout,
        };
        self.get_json(&format!("{path}{sep}{param}"), t).await
    }

    /// One stat sample of a session (`stat_url` with `skip_player_activity=1`). `Ok(None)`: the
    /// engine does not know the session (it ended or was replaced).
    pub async fn stat(
        &self,
        stat_path: &str,
        timeout: Duration,
    ) -> Result<Option<super::stat::EngineStat>, EngineError> {
        let value = self
            .get_json_with(stat_path, "skip_player_activity=1", timeout)
            .await?;
        match value.get("error") {
            Some(e) if e.as_str() == Some(super::stat::UNKNOWN_SESSION) => return Ok(None),
            None | Some(serde_json::Value::Null) => {}
            Some(e) => return Err(self.refused(format!("stat: {e}"))),
        }
        let response = value.get("response").cloned().unwrap_or_default();
        let response = if response.is_null() {
            serde_json::json!({})
        } else {
            response
        };
        serde_json::from_value(response)
            .map(Some)
            .map_err(|source| EngineError::BadJson {
                engine: self.to_string(),
                what: "stat answer".into(),
                source,
            })
    }

    /// `command_url?method=stop`, best effort. `unknown playback session id` counts as stopped.
    pub async fn stop(&self, command_path: &str, timeout: Duration) -> Result<(), EngineError> {
        let value = self
            .get_json_with(command_path, "method=stop", timeout)
            .await?;
        match value.get("error") {
            None | Some(serde_json::Value::Null) => Ok(()),
            Some(e) if e.as_str() == Some("unknown playback session id") => Ok(()),
            Some(e) => Err(self.refused(format!("stop: {e}"))),
        }
    }
}

/// Path and query of an absolute or relative URL; the scheme and authority are dropped because the
/// proxy always dials the engine it chose (engines write their own idea of their host).
pub fn path_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let pq = uri.path_and_query()?.as_str();
    if pq.starts_with('/') {
        Some(pq.to_string())
    } else {
        None
    }
}

fn short(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

#[cfg(test)]
mod tests;
