//! The proxy's client for one engine's HTTP API (`spec/engine-api.md` §2–§5, §10).
//!
//! It follows the quirks checklist: success only when HTTP is 2xx, the body parses, `error` is null
//! or empty and `playback_url` is present; the host:port of every returned URL is replaced by the
//! address actually dialled (only path and query are kept); redirects are followed without reading
//! their bodies; `Accept-Encoding: identity`; a fresh `pid` per session; stop is best effort with a
//! short timeout and tolerates `unknown playback session id`.

use crate::error::EdgeError;
use crate::http1::{self, Response};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest JSON answer accepted from an engine.
const MAX_JSON: usize = 256 * 1024;
/// Most redirects followed from `playback_url` to the stream.
const MAX_REDIRECTS: usize = 5;

/// An engine's address as dialled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineEndpoint {
    /// Host name or IP.
    pub host: String,
    /// HTTP API port.
    pub port: u16,
}

impl std::fmt::Display for EngineEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
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
    async fn resolve(&self) -> Result<SocketAddr, EdgeError> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable(format!("cannot resolve: {e}")))?;
        addrs
            .next()
            .ok_or_else(|| self.unreachable("name resolves to no address".into()))
    }

    fn unreachable(&self, reason: String) -> EdgeError {
        EdgeError::EngineUnreachable {
            engine: self.to_string(),
            reason,
        }
    }

    fn refused(&self, reason: String) -> EdgeError {
        EdgeError::EngineRefused {
            engine: self.to_string(),
            reason,
        }
    }

    /// `GET path` on this engine; the response head is read within the read timeout.
    pub async fn get(&self, path: &str, t: EngineTimeouts) -> Result<Response, EdgeError> {
        let addr = self.resolve().await?;
        let fut = http1::get(addr, path, t.connect);
        match tokio::time::timeout(t.connect + t.read, fut).await {
            Err(_) => Err(self.unreachable(format!(
                "no answer to {} within {:?}",
                short(path),
                t.connect + t.read
            ))),
            Ok(Err(e)) => Err(self.unreachable(format!("{}: {e}", short(path)))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// `GET path` and parse the body as JSON. HTTP >= 400 is a refusal carrying the body text.
    pub async fn get_json(
        &self,
        path: &str,
        t: EngineTimeouts,
    ) -> Result<serde_json::Value, EdgeError> {
        let mut resp = self.get(path, t).await?;
        let body = tokio::time::timeout(t.read, resp.read_to_end(MAX_JSON))
            .await
            .map_err(|_| self.unreachable("JSON body timed out".into()))?
            .map_err(|e| self.unreachable(format!("reading JSON body: {e}")))?;
        if resp.status >= 400 {
            let text = String::from_utf8_lossy(&body);
            return Err(self.refused(format!("HTTP {}: {}", resp.status, text.trim())));
        }
        serde_json::from_slice(&body)
            .map_err(|e| self.unreachable(format!("answer is not JSON: {e}")))
    }

    /// Starts a session: `GET /ace/getstream?format=json&id=<id>&pid=<fresh uuid>`.
    pub async fn start_session(
        &self,
        content_id: &str,
        t: EngineTimeouts,
    ) -> Result<EngineSession, EdgeError> {
        let pid = uuid::Uuid::new_v4().to_string();
        let path = format!("/ace/getstream?format=json&id={content_id}&pid={pid}");
        let value = self.get_json(&path, t).await?;
        let envelope: Envelope = serde_json::from_value(value)
            .map_err(|e| self.unreachable(format!("unexpected getstream answer: {e}")))?;
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
    ) -> Result<Response, EdgeError> {
        let mut path = session.playback_path.clone();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.get(&path, t).await?;
            match resp.status {
                200..=299 => return Ok(resp),
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

    /// `command_url?method=stop`, best effort. `unknown playback session id` counts as stopped.
    pub async fn stop(&self, command_path: &str, timeout: Duration) -> Result<(), EdgeError> {
        let sep = if command_path.contains('?') { '&' } else { '?' };
        let path = format!("{command_path}{sep}method=stop");
        let t = EngineTimeouts {
            connect: timeout,
            read: timeout,
        };
        let value = self.get_json(&path, t).await?;
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
mod tests {
    use super::*;

    /// The engine's host is dropped; path and query are kept.
    #[test]
    fn returned_urls_keep_only_path_and_query() {
        assert_eq!(
            path_of("http://172.17.0.5:6878/ace/r/abc/def?x=1").as_deref(),
            Some("/ace/r/abc/def?x=1")
        );
        assert_eq!(
            path_of("/content/ab/0.123").as_deref(),
            Some("/content/ab/0.123")
        );
        assert_eq!(path_of("not a url"), None);
    }
}
