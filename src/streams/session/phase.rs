//! Where a session is in its life, how long it lingers and how it ended: [`Phase`], [`StopReason`] and
//! [`UpstreamFailure`], the values its clients, the status page and the metrics read.

use super::*;

/// Where a session is in its life, as its clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Choosing an engine and asking it for the session.
    Starting,
    /// An engine accepted the session; waiting for its first byte (prebuffering).
    Connected,
    /// Bytes are flowing into the ring.
    Streaming,
    /// Starting failed; every waiting client gets this error.
    Failed(EdgeError),
    /// The session is over (upstream ended, idle timeout, shutdown).
    Ended(StopReason),
}
/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    /// Nobody watched for `stream_idle_timeout`.
    #[error("idle timeout")]
    IdleTimeout,
    /// The proxy is shutting down.
    #[error("proxy shutting down")]
    Shutdown,
    /// The upstream failed and the failover budget (`max_failovers` per `failover_window`) was
    /// spent.
    #[error("{0}; no failover left")]
    Upstream(UpstreamFailure),
    /// The upstream failed and no engine could take the session over.
    #[error("{failure}; failover failed: {error}")]
    FailoverFailed {
        /// How the upstream failed.
        failure: UpstreamFailure,
        /// Why the next start failed.
        error: EdgeError,
    },
}

impl StopReason {
    /// A short label (logs, the orchestrator's `stream_ended` reason).
    pub fn label(&self) -> &'static str {
        match self {
            StopReason::IdleTimeout => "idle_timeout",
            StopReason::Shutdown => "shutdown",
            StopReason::Upstream(f) => f.label(),
            StopReason::FailoverFailed { .. } => "failover_failed",
        }
    }
}

/// How a live upstream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    /// The engine ended the stream.
    #[error("upstream ended")]
    Ended,
    /// Reading failed (connection reset, broken framing).
    #[error("upstream read failed: {0}")]
    ReadFailed(String),
    /// More than a chunk's worth of bytes that are not MPEG-TS.
    #[error("upstream sent {0} bytes that are not MPEG-TS")]
    NotTs(usize),
    /// No byte for `upstream_stall_timeout`.
    #[error("upstream stalled for {0:?}")]
    Stalled(std::time::Duration),
    /// The engine's stats say it no longer knows the session.
    #[error("the engine reports an unknown playback session")]
    UnknownSession,
    /// The engine reports `dl`, but its live position stood still this long.
    #[error("the engine's live position stood still for {0:?}")]
    LiveposStuck(std::time::Duration),
    /// The engine went back to prebuffering for this long.
    #[error("the engine prebuffered for {0:?}")]
    Prebuffering(std::time::Duration),
}

impl UpstreamFailure {
    /// The `reason` label of `acestream_edge_upstream_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamFailure::Ended => "ended",
            UpstreamFailure::ReadFailed(_) => "read_failed",
            UpstreamFailure::NotTs(_) => "not_ts",
            UpstreamFailure::Stalled(_) => "stalled",
            UpstreamFailure::UnknownSession => "unknown_session",
            UpstreamFailure::LiveposStuck(_) => "livepos_stuck",
            UpstreamFailure::Prebuffering(_) => "prebuffering",
        }
    }
}

/// How long a session without clients lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Linger {
    /// After a client got stream bytes (`stream_idle_timeout`).
    pub(crate) watched: std::time::Duration,
    /// When no stream byte ever reached a client (`unwatched_linger`).
    pub(crate) unwatched: std::time::Duration,
}

impl Linger {
    /// The lingers the `sessions` section sets.
    pub(crate) fn of(sessions: &crate::config::Sessions) -> Self {
        Linger {
            watched: sessions.stream_idle_timeout,
            unwatched: sessions.unwatched_linger,
        }
    }
}

/// Where a session's stream comes from now: one value, set by the upstream task as the session
/// moves between engines, so that what exists with an engine (its session, the stream reserved
/// on it) exists only with it.
// One per session, inside its state lock: the empty variants' unused bytes cost nothing worth a
// box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
pub(crate) enum Source {
    /// Nothing yet, or nothing any more (starting, between engines after a failure).
    #[default]
    None,
    /// An engine session: every way out of it sends its stop.
    Engine {
        /// The engine.
        engine: crate::engines::Engine,
        /// Its session (URLs, ids).
        session: crate::engines::EngineSession,
        /// The stream reserved on it once it sent its first bytes; released with the source.
        lease: Option<crate::engines::StreamLease>,
    },
    /// Another acestream-edge process of this machine: a graceful upgrade's relay.
    Relay,
}

impl Source {
    /// The engine, with an engine session.
    pub(crate) fn engine(&self) -> Option<&crate::engines::Engine> {
        match self {
            Source::Engine { engine, .. } => Some(engine),
            _ => None,
        }
    }

    /// The engine session.
    pub(crate) fn engine_session(&self) -> Option<&crate::engines::EngineSession> {
        match self {
            Source::Engine { session, .. } => Some(session),
            _ => None,
        }
    }

    /// Whether the stream comes from a relay.
    pub(crate) fn is_relay(&self) -> bool {
        matches!(self, Source::Relay)
    }

    /// Holds `lease` with the engine session (it counts in the engine's load until released).
    pub(crate) fn hold(&mut self, lease: crate::engines::StreamLease) {
        if let Source::Engine { lease: held, .. } = self {
            *held = Some(lease);
        }
    }

    /// Releases the reserved stream, keeping the rest (the session's stop is still to be sent).
    pub(crate) fn release_lease(&mut self) {
        if let Source::Engine { lease, .. } = self {
            *lease = None;
        }
    }

    /// Takes the engine and its session out (the lease is released), leaving nothing.
    pub(crate) fn take_engine(
        &mut self,
    ) -> Option<(crate::engines::Engine, crate::engines::EngineSession)> {
        match std::mem::take(self) {
            Source::Engine {
                engine, session, ..
            } => Some((engine, session)),
            other => {
                *self = other;
                None
            }
        }
    }
}
