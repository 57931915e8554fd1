//! The upgrade relay, the session side: a session of this process read from another
//! acestream-edge process of this machine instead of an engine (see [`crate::server::upgrade`]
//! for why and for the serving side).
//!
//! **Who may use a relay.** Each process makes a random secret at start and writes it, with its
//! relay's address, to `<upgrade_sock>.relay`, created with mode 0600: only the deployment's own
//! user can read it, so only a process started for this deployment can name the secret, and a
//! relay answers nothing (no byte, no engine start) without `Authorization: Bearer <secret>`.
//!
//! [`Handover`] holds what this process knows of its neighbours (its own relay, the predecessor's
//! it read at start, the successor's that replaces it in the file); [`from_predecessor`] and
//! [`from_successor`] open the stream a session then reads, an [`EngineStream`] like an engine's.

use super::session::{Phase, StreamSession};
use super::Sessions;
use crate::config::Config;
use crate::engines::{ContentKey, EngineStream};
use crate::error::EdgeError;
use crate::sync::Lock;
use bytes::Bytes;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the predecessor's relay may take to answer: it is on this machine, and a process
/// that does not answer in this time is not worth waiting for (the engine start follows).
const RELAY_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a process handing over looks whether its successor's relay is known yet (a read
/// of one small file, for at most a second or two).
const SUCCESSOR_POLL: Duration = Duration::from_millis(50);

/// Another process's relay (or this one's): where it listens and the secret it asks for.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayPeer {
    /// The relay's loopback address.
    pub addr: SocketAddr,
    /// The bearer secret; `None` for a process of an earlier release (which asks for none).
    pub secret: Option<String>,
}

impl std::fmt::Debug for RelayPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        write!(f, "{}", self.addr)
    }
}

impl std::fmt::Display for RelayPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

impl RelayPeer {
    /// This process's relay at `addr`, with a fresh random secret (244 random bits).
    pub fn own(addr: SocketAddr) -> Self {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        RelayPeer {
            addr,
            secret: Some(secret),
        }
    }

    /// Whether a request's `Authorization` header value names this relay's secret (compared in
    /// constant time). A relay without a secret authorizes nobody.
    pub fn authorizes(&self, authorization: Option<&str>) -> bool {
        use subtle::ConstantTimeEq as _;
        let (Some(secret), Some(given)) = (&self.secret, authorization) else {
            return false;
        };
        let Some(given) = given.strip_prefix("Bearer ") else {
            return false;
        };
        given.as_bytes().ct_eq(secret.as_bytes()).into()
    }
}

/// The file that names a process's relay, next to Pingora's upgrade socket.
pub fn relay_file(upgrade_sock: &str) -> PathBuf {
    PathBuf::from(format!("{upgrade_sock}.relay"))
}

/// Writes `peer` to `file` (address, then secret, one per line), readable by this user only:
/// written to a 0600 temporary file and renamed over the old one, so a reader never sees half.
pub fn write_relay_file(file: &Path, peer: &RelayPeer) -> std::io::Result<()> {
    let tmp = file.with_extension("relay.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{}", peer.addr)?;
    if let Some(secret) = &peer.secret {
        writeln!(f, "{secret}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// The relay a process wrote to `file`, if any.
pub fn read_relay_file(file: &Path) -> Option<RelayPeer> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines().map(str::trim);
    let addr = lines.next()?.parse().ok()?;
    let secret = lines.next().filter(|s| !s.is_empty()).map(str::to_string);
    Some(RelayPeer { addr, secret })
}

/// What this process knows of the processes around an upgrade. Owned by [`Sessions`].
#[derive(Debug, Default)]
pub struct Handover {
    /// This process's relay and the file it was written to. During an upgrade the file names
    /// the successor's relay instead.
    own: Mutex<Option<(PathBuf, RelayPeer)>>,
    /// The relay of the process this one replaces, while it runs.
    predecessor: Mutex<Option<RelayPeer>>,
}

impl Handover {
    /// Records this process's relay (written to `file`).
    pub fn set_own(&self, file: PathBuf, peer: RelayPeer) {
        *self.own.locked() = Some((file, peer));
    }

    /// The successor's relay, once the process taking over has written its own in place of ours.
    pub fn successor(&self) -> Option<RelayPeer> {
        let (file, own) = self.own.locked().clone()?;
        let named = read_relay_file(&file)?;
        (named.addr != own.addr).then_some(named)
    }

    /// The relay of the process this one replaces (a `-u` upgrade), if it still runs.
    pub fn predecessor(&self) -> Option<RelayPeer> {
        self.predecessor.locked().clone()
    }

    /// Sets (or, with `None`, forgets) the predecessor's relay.
    pub fn set_predecessor(&self, relay: Option<RelayPeer>) {
        *self.predecessor.locked() = relay;
    }
}

/// What a relay is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Only a live session it holds (the successor asks its predecessor).
    LiveOnly,
    /// Join or start the session (the predecessor, handing over, asks its successor).
    StartIfNeeded,
}

/// Opens `GET /relay?key=<key>[&start=1]` on `peer` and waits for its first bytes. `Ok(None)`:
/// it has no such session (and was not asked to start one) or ended it at once.
async fn open(
    peer: &RelayPeer,
    content: &ContentKey,
    ask: Ask,
    timeout: Duration,
) -> std::io::Result<Option<(crate::http1::Response, Bytes)>> {
    let key = content.to_string();
    let path = format!(
        "/relay?key={}{}",
        form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>(),
        if ask == Ask::StartIfNeeded {
            "&start=1"
        } else {
            ""
        }
    );
    let opts = crate::http1::GetOptions {
        headers: peer
            .secret
            .iter()
            .map(|s| ("Authorization".to_string(), format!("Bearer {s}")))
            .collect(),
        ..Default::default()
    };
    let opened = tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect(peer.addr).await?;
        let host = peer.addr.to_string();
        let mut resp = crate::http1::get_on(stream, &host, &path, &opts).await?;
        if resp.status != 200 {
            return Ok(None);
        }
        let first = loop {
            match resp.next_chunk().await? {
                Some(b) if b.is_empty() => continue,
                Some(b) => break Some(b),
                None => break None,
            }
        };
        Ok::<_, std::io::Error>(first.map(|b| (resp, b)))
    })
    .await;
    opened.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no first byte within {timeout:?}"),
        ))
    })
}

/// The session reads `resp` from another process from now on.
fn relayed(
    session: &Arc<StreamSession>,
    resp: crate::http1::Response,
    first: Bytes,
    from: &str,
) -> (EngineStream, Bytes) {
    session.phase.send_if_modified(|p| {
        let first_start = *p == Phase::Starting;
        if first_start {
            *p = Phase::Connected;
        }
        first_start
    });
    log::info!(
        content_id:% = session.content_id;
        "session {}: relayed from {from}; no engine session of its own",
        session.content_id
    );
    session.state().source = super::session::Source::Relay;
    (EngineStream::relayed(resp), first)
}

/// During a graceful upgrade: the session's stream read from the process being replaced, if
/// that process still holds a live session of the id (two starts of one id would make the
/// engine end the older session, cutting that process's viewers). `None`: start on an engine.
pub(super) async fn from_predecessor(
    sessions: &Sessions,
    session: &Arc<StreamSession>,
) -> Option<(EngineStream, Bytes)> {
    let relay = sessions.handover().predecessor()?;
    match open(&relay, &session.content, Ask::LiveOnly, RELAY_TIMEOUT).await {
        Ok(Some((resp, first))) => Some(relayed(
            session,
            resp,
            first,
            &format!("the process being upgraded ({relay})"),
        )),
        Ok(None) => None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            log::info!("the upgraded process is gone ({relay}): sessions start on engines");
            sessions.handover().set_predecessor(None);
            None
        }
        Err(e) => {
            log::warn!("relay from the upgraded process failed: {e}");
            None
        }
    }
}

/// A session created while this process hands over (see [`StreamSession`]'s
/// `fed_by_successor`): its stream comes from the successor, which starts it if needed (within
/// `empty_stream_timeout`). Never an engine start here: the successor may be starting the same id.
pub(super) async fn from_successor(
    sessions: &Sessions,
    session: &Arc<StreamSession>,
    config: &Config,
) -> Result<(EngineStream, Bytes), EdgeError> {
    let handing_over = EdgeError::HandingOver;
    // The successor writes its relay once Pingora handed it the listeners (it polls for them
    // once a second): until then the client waits, as for any start.
    let deadline = tokio::time::Instant::now() + config.sessions.empty_stream_timeout;
    let relay = loop {
        if let Some(relay) = sessions.handover().successor() {
            break relay;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(handing_over("no successor took over".into()));
        }
        tokio::time::sleep(SUCCESSOR_POLL).await;
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match open(&relay, &session.content, Ask::StartIfNeeded, left).await {
        Ok(Some((resp, first))) => Ok(relayed(
            session,
            resp,
            first,
            &format!("the process taking over ({relay})"),
        )),
        Ok(None) => Err(handing_over("the successor could not start it".into())),
        Err(e) => Err(handing_over(format!("the successor did not answer ({e})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// The relay file sits next to the upgrade socket, holds the address and the secret, and is
    /// readable by its owner only.
    #[test]
    fn relay_file_round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("edge.sock");
        let file = relay_file(sock.to_str().unwrap());
        assert_eq!(file, dir.path().join("edge.sock.relay"));
        assert_eq!(read_relay_file(&file), None);
        let own = RelayPeer::own("127.0.0.1:4567".parse().unwrap());
        write_relay_file(&file, &own).unwrap();
        assert_eq!(read_relay_file(&file), Some(own.clone()));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // An earlier release's file: the address alone.
        std::fs::write(&file, "127.0.0.1:9\n").unwrap();
        let old = read_relay_file(&file).unwrap();
        assert_eq!((old.addr.port(), old.secret), (9, None));
    }

    /// Only the exact bearer secret is accepted; a relay without one accepts nobody.
    #[test]
    fn only_the_secret_authorizes() {
        let own = RelayPeer::own("127.0.0.1:1".parse().unwrap());
        let secret = own.secret.clone().unwrap();
        assert_eq!(secret.len(), 64);
        assert!(own.authorizes(Some(&format!("Bearer {secret}"))));
        assert!(!own.authorizes(None));
        assert!(!own.authorizes(Some(&secret)));
        assert!(!own.authorizes(Some(&format!("Bearer {}", &secret[..63]))));
        assert!(!own.authorizes(Some("Bearer ")));
        let none = RelayPeer {
            secret: None,
            ..own
        };
        assert!(!none.authorizes(Some("Bearer ")));
        assert_ne!(
            RelayPeer::own(none.addr).secret,
            RelayPeer::own(none.addr).secret
        );
    }
}
