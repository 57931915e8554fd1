//! The proxy's error type and its one mapping to HTTP status codes.
//!
//! Every failure a client can see is an [`EdgeError`]; [`EdgeError::status`] is the only place
//! that decides which status it gets (like Pingora's `fail_to_proxy`), and [`EdgeError::json_body`]
//! the only place that renders it, always as `{"error": "<text>"}`.

use std::time::Duration;

/// Why no engine can take a stream (a start, or a failover's next engine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoEngine {
    /// None is configured or discovered.
    #[error("no engines known")]
    NoneKnown,
    /// Every engine is unhealthy (how many are known).
    #[error("no healthy engine ({0} known)")]
    NoneHealthy(usize),
    /// Every healthy engine is at its stream limit (`max_streams_per_engine`).
    #[error("every healthy engine is at max_streams_per_engine ({0})")]
    AllFull(usize),
    /// A failover tried every engine there is.
    #[error("every engine was tried")]
    EveryEngineTried,
    /// Background work (the channel checker) found only the slots it must leave to viewers.
    #[error("only {0} free engine slot(s) left, kept for viewers")]
    SlotsKept(usize),
}

/// A failure a client can see. `Clone`, because every client waiting on a failed session gets the
/// same answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// The request itself is wrong (missing or malformed parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The admin token is missing or wrong.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// A `Range` the live stream cannot serve.
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// No engine can take the stream, and why.
    #[error("no engine available: {0}")]
    NoEngine(NoEngine),
    /// The proxy is shutting down: it starts and attaches nothing.
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// This process hands over to its successor (graceful upgrade) and could not get the stream
    /// from it, with what happened; a retry reaches the successor.
    #[error("this process is handing over to its successor (graceful upgrade) and {0}; retry")]
    HandingOver(String),
    /// The session ended before it sent a byte, with its stop reason.
    #[error("session ended: {0}")]
    SessionEnded(String),
    /// The engine answered, but with an error (JSON `error`, or HTTP >= 400).
    #[error("engine {engine} refused the stream: {reason}")]
    EngineRefused {
        /// `host:port` of the engine.
        engine: String,
        /// The engine's own words.
        reason: String,
    },
    /// The engine could not be reached or broke the protocol.
    #[error("engine {engine} unreachable: {reason}")]
    EngineUnreachable {
        /// `host:port` of the engine.
        engine: String,
        /// What went wrong.
        reason: String,
    },
    /// The engine started a session but sent no stream byte in time.
    #[error("no stream data from the engine within {0:?}")]
    EmptyStream(Duration),
    /// Stream data came, but the first playlist's segments were not cut within the time they
    /// need after the first byte (a stream without keyframes and a clock, a stall just then).
    #[error("the stream's first HLS segments were not ready within {0:?} of its first byte")]
    PlaylistNotReady(Duration),
    /// The client hit one of the viewer limits; nothing was started.
    #[error("{message}")]
    TooManyRequests {
        /// What the client is told.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// The client may not use this route (an admin route from outside loopback without a
    /// configured token, a passthrough prefix not opened).
    #[error("{0}")]
    Forbidden(String),
    /// A feature that is named but not built yet.
    #[error("{0}")]
    NotImplemented(String),
    /// Something the proxy gets from elsewhere (a guide source) could not be had, and why.
    #[error("{0}")]
    SourceUnavailable(String),
    /// Anything else: a bug or an unexpected condition.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EdgeError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            EdgeError::BadRequest(_) => 400,
            EdgeError::Unauthorized => 401,
            EdgeError::NotFound(_) => 404,
            EdgeError::RangeNotSatisfiable(_) => 416,
            EdgeError::TooManyRequests { .. } => 429,
            EdgeError::Forbidden(_) => 403,
            // Every upstream-side failure is "try again later" for a player: 503.
            EdgeError::NoEngine(_)
            | EdgeError::ShuttingDown
            | EdgeError::HandingOver(_)
            | EdgeError::SessionEnded(_)
            | EdgeError::EngineRefused { .. }
            | EdgeError::EngineUnreachable { .. }
            | EdgeError::EmptyStream(_)
            | EdgeError::PlaylistNotReady(_)
            | EdgeError::SourceUnavailable(_) => 503,
            EdgeError::Internal(_) => 500,
            EdgeError::NotImplemented(_) => 501,
        }
    }

    /// How long the client should wait before retrying (`Retry-After`), if the error says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EdgeError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// `{"error": "<text>"}` for the client: [`EdgeError::public_text`].
    pub fn json_body(&self) -> Vec<u8> {
        error_json(&self.public_text())
    }

    /// What a client is told. Names no engine address and repeats at most a short, printable
    /// part of an engine's own words; the whole story (`Display`) goes to the log and to
    /// `/proxy/*`.
    pub fn public_text(&self) -> String {
        match self {
            EdgeError::EngineRefused { reason, .. } => {
                format!("the engine refused the stream: {}", sanitize(reason))
            }
            EdgeError::EngineUnreachable { .. } => "the engine could not be reached".into(),
            EdgeError::SessionEnded(why) => format!("session ended: {}", sanitize(why)),
            EdgeError::HandingOver(_) => {
                "this process is handing over to its successor (graceful upgrade); retry".into()
            }
            EdgeError::Internal(_) => "internal error (see the proxy's log)".into(),
            other => other.to_string(),
        }
    }
}

/// Engine text shown to clients is cut to this many characters: enough for "content not
/// found" or "no peers", too little to reflect a page of someone else's text.
const PUBLIC_REASON_CHARS: usize = 120;

/// `text` with control characters dropped, engine addresses (`host:port`) masked, cut to
/// [`PUBLIC_REASON_CHARS`].
fn sanitize(text: &str) -> String {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            let bare = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let looks_like_addr = bare
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                || w.contains("://");
            if looks_like_addr {
                "<engine>".to_string()
            } else {
                w.chars().filter(|c| !c.is_control()).collect()
            }
        })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() > PUBLIC_REASON_CHARS {
        let cut: String = joined.chars().take(PUBLIC_REASON_CHARS).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// The one rendering of an error body, for our errors and Pingora's alike: `{"error": "<text>"}`.
pub fn error_json(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": text }))
        .unwrap_or_else(|_| b"{\"error\":\"unprintable error\"}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream failures are 503, requests 4xx, bugs 500.
    #[test]
    fn status_mapping() {
        assert_eq!(EdgeError::BadRequest("x".into()).status(), 400);
        assert_eq!(EdgeError::Unauthorized.status(), 401);
        assert_eq!(EdgeError::NoEngine(NoEngine::NoneKnown).status(), 503);
        assert_eq!(EdgeError::ShuttingDown.status(), 503);
        assert_eq!(EdgeError::EmptyStream(Duration::from_secs(1)).status(), 503);
        assert_eq!(EdgeError::Internal("bug".into()).status(), 500);
        let body: serde_json::Value =
            serde_json::from_slice(&EdgeError::NotFound("no route /x".into()).json_body()).unwrap();
        assert_eq!(body["error"], "no route /x");
    }

    /// Clients never see an engine's address or more than a short part of its text.
    #[test]
    fn public_text_hides_engines() {
        let refused = EdgeError::EngineRefused {
            engine: "10.1.2.3:6878".into(),
            reason: format!(
                "boom at http://10.1.2.3:6878/x from 10.1.2.3:6878 {}",
                "y".repeat(100_000)
            ),
        };
        let text = refused.public_text();
        assert!(text.chars().count() < 200, "{}", text.len());
        assert!(!text.contains("10.1.2.3"), "{text}");
        assert!(
            refused.to_string().contains("10.1.2.3:6878"),
            "the log keeps it"
        );
        let gone = EdgeError::EngineUnreachable {
            engine: "10.1.2.3:6878".into(),
            reason: "connection refused".into(),
        };
        assert!(!gone.public_text().contains("10.1.2.3"));
        assert_eq!(
            EdgeError::EngineRefused {
                engine: "e:1".into(),
                reason: "content not found".into()
            }
            .public_text(),
            "the engine refused the stream: content not found"
        );
    }
}
