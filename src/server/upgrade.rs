//! A graceful upgrade (`acestream-edge -u`, then SIGQUIT to the running process) that keeps
//! every viewer.
//!
//! Pingora hands the listening sockets to the new process; the old one stops accepting and
//! would end its streams. Two things make it right for long-lived streams whose engine session
//! exists once per content id:
//!
//! - **The old process drains.** On SIGQUIT its sessions are not ended: each goes on until its
//!   last client left (and its linger ran out), at most `graceful_shutdown_timeout_seconds`;
//!   then the rest are ended, every one sending its engine stop, and the process exits.
//! - **The new process relays what the old one holds.** A second start of an id would make the
//!   engine end the old process's session and cut its viewers. So every process serves a relay
//!   on a loopback port, whose address it writes next to the upgrade socket
//!   (`<upgrade_sock>.relay`). A process started with `-u` reads the old process's address from
//!   that file before writing its own; while the old process runs, a new session first asks it
//!   (`GET /relay?key=<id>`). If it holds a live session of the id, the new session reads that
//!   stream instead of starting one: no second engine session, and the old viewers keep theirs.
//!   When the old process ends it, the new session fails over to an engine like after any
//!   upstream end (the old one sent its stop first).
//! - **Neither starts what the other may start.** For Pingora's hand-over time (about 5 s) both
//!   processes accept. From SIGQUIT on, the old process starts no engine session: a new id that
//!   reaches it is read from the successor's relay with `start=1` (the successor starts or joins
//!   it), and such a session is never relayed back.
//!
//! Owned by the server: [`RelayService`] is a background service, [`note_upgrade`] is called by
//! the signal watch, and the session reaper asks [`is_upgrading`].

use crate::access::ClientAddr;
use crate::cluster::{Cluster, Placement};
use crate::engines::ContentKey;
use crate::http1;
use crate::streams::client::Next;
use crate::streams::relay::{write_relay_file, RelayPeer};
use crate::streams::Sessions;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Set once SIGQUIT started a graceful upgrade.
static UPGRADING: AtomicBool = AtomicBool::new(false);

/// Records that the shutdown in progress is an upgrade (the new process has the listeners).
pub fn note_upgrade() {
    UPGRADING.store(true, Ordering::Relaxed);
}

/// Whether the shutdown in progress is an upgrade.
pub fn is_upgrading() -> bool {
    UPGRADING.load(Ordering::Relaxed)
}

/// Serves this process's sessions to the process that replaces it: `GET /relay?key=<id>` streams
/// a live session's bytes from its live edge (a client of the session, so the session stays
/// while it is read), `404` when there is none. Loopback only; never started sessions.
pub struct RelayService {
    /// The sessions it relays.
    pub sessions: Arc<Sessions>,
    /// Where the relay address is written.
    pub file: PathBuf,
    /// The fleet, if any: the relay starts only ids this node would serve itself.
    pub cluster: Option<Arc<Cluster>>,
}

/// Whether this node would start a session of `key` for a request of its own: one it holds
/// already, or one within `max_sessions` that no other fleet member holds or owns. The relay
/// starts nothing a viewer's request here could not start.
async fn would_start_here(
    sessions: &Sessions,
    cluster: Option<&Cluster>,
    key: &str,
) -> Result<(), String> {
    if sessions.get(key).is_some() {
        return Ok(());
    }
    let max = sessions.config().limits.max_sessions;
    if let Some(max) = max.filter(|m| sessions.count() >= m.get()) {
        return Err(format!("max_sessions ({max}) reached"));
    }
    if let Some(cluster) = cluster {
        if let Placement::Forward { to, because } = cluster.place(key, false, &[]).await {
            return Err(format!("fleet member {to} serves it ({})", because.label()));
        }
    }
    Ok(())
}

#[async_trait]
impl BackgroundService for RelayService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                log::warn!("upgrade relay: cannot listen ({e}); an upgrade will restart sessions");
                return;
            }
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        let own = RelayPeer::own(addr);
        if let Err(e) = write_relay_file(&self.file, &own) {
            log::warn!(
                "upgrade relay: cannot write {} ({e}); an upgrade will restart sessions",
                self.file.display()
            );
            return;
        }
        self.sessions
            .handover()
            .set_own(self.file.clone(), own.clone());
        log::debug!(
            "upgrade relay on {addr} ({}, mode 0600)",
            self.file.display()
        );
        let own = Arc::new(own);
        // SIGQUIT (the signal watch ends Pingora's main loop on it too): from then on both
        // processes accept for Pingora's hand-over time, and only the new one starts sessions on
        // engines; a new one here is read from it.
        let mut quit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit()).ok();
        let mut shutting = false;
        loop {
            tokio::select! {
                Some(()) = async { quit.as_mut()?.recv().await } => {
                    self.sessions.hand_over();
                    quit = None;
                }
                accepted = listener.accept() => match accepted {
                    Ok((sock, peer)) if peer.ip().is_loopback() => {
                        tokio::spawn(relay(
                            self.sessions.clone(),
                            self.cluster.clone(),
                            own.clone(),
                            sock,
                            peer,
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => log::debug!("upgrade relay: accept failed: {e}"),
                },
                // A plain shutdown ends the relay; an upgrade keeps it until the process exits.
                _ = shutdown.changed(), if !shutting => {
                    shutting = true;
                    if !is_upgrading() {
                        return;
                    }
                }
            }
        }
    }
}

/// One relay connection: answered only with this process's secret (see
/// [`crate::streams::relay`]); its reader is cut like any viewer that takes nothing for
/// `client_timeout`.
async fn relay(
    sessions: Arc<Sessions>,
    cluster: Option<Arc<Cluster>>,
    own: Arc<RelayPeer>,
    mut sock: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let config = sessions.config();
    let head = tokio::time::timeout(
        config.connections.request_header_timeout,
        http1::read_request_head(&mut sock),
    )
    .await;
    let Ok(Ok(Some(head))) = head else {
        return;
    };
    if !own.authorizes(head.header("authorization")) {
        log::warn!("upgrade relay: a request from {peer} without this deployment's secret refused");
        let _ = sock
            .write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        return;
    }
    let key = http1::query_param(&head.query, "key").unwrap_or_default();
    let client = Some(ClientAddr::from(peer));
    // `start=1`: the predecessor asks for an id it may not start itself while it hands over:
    // attach as a viewer, starting the session here if needed. Otherwise only a live session
    // is relayed.
    let start = http1::query_param(&head.query, "start").is_some_and(|v| v == "1");
    let handle = match ContentKey::parse_key(&key) {
        None => None,
        Some(c) if !start => sessions.join_existing(&c, client),
        Some(c) => match would_start_here(&sessions, cluster.as_deref(), &key).await {
            Ok(()) => sessions.attach(&c, client).ok(),
            Err(why) => {
                log::warn!(content_id:% = key; "upgrade relay: not starting {key} for the predecessor: {why}");
                None
            }
        },
    };
    let Some(mut client) = handle else {
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    log::info!(
        content_id:% = key;
        "session {key}: relayed to the {} process",
        if start { "predecessor (handing over)" } else { "successor (taking over)" }
    );
    if sock
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    // Joins like a viewer: on a keyframe near the live edge, PAT and PMT first (the start of
    // the stream left the ring long ago); a session started for this request from its start.
    let waited = start && !matches!(client.session().phase(), crate::streams::Phase::Streaming);
    client.position(waited);
    let session = client.session().clone();
    let mut ring_changed = session.ring.subscribe();
    loop {
        ring_changed.borrow_and_update();
        match client.next_step() {
            Next::Write(chunks) => {
                for chunk in chunks {
                    let written =
                        tokio::time::timeout(config.viewers.client_timeout, sock.write_all(&chunk))
                            .await;
                    if !matches!(written, Ok(Ok(()))) {
                        if written.is_err() {
                            log::info!(
                                content_id:% = key;
                                "session {key}: relay reader took nothing for {:?}; cut",
                                config.viewers.client_timeout
                            );
                        }
                        return;
                    }
                    client.wrote(&chunk);
                }
            }
            Next::Wait => {
                if ring_changed.changed().await.is_err() {
                    return;
                }
            }
            Next::Lagged(_) | Next::End => return,
        }
    }
}
