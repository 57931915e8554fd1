//! Viewers parked at the live edge: their session sends to them itself.
//!
//! **Why.** At the live edge a `sendfile` viewer has one thing to do per wake of its session
//! (see [`super::ring::edge`]): send the bytes just told of. Done by each viewer's own task, a
//! wake costs per viewer a task wake, a poll, a read of the ring and a readiness check on top of
//! the one `sendfile`; at 1000 viewers that is most of what the proxy spends above a minimal
//! fan-out. msd_lite's single loop only makes the `sendfile`. So a viewer that has sent
//! everything it was told of parks here, and at each tell the session's edge writer
//! ([`run_edge_writer`]) sends every parked viewer its new bytes with one non-blocking
//! `sendfile` and updates its position and counters; the viewer's task sleeps meanwhile.
//!
//! **Handed back.** Anything beyond a whole send goes back to the viewer's own task, which has
//! every rule (timeouts, drops with their lag, keepalive nulls, DVR spill, the end of the
//! response): its socket is full or took part of the bytes, a send fails, the bytes it needs
//! left the page file, the buffer budget cut it, a keepalive tick, a wake that told nothing new
//! (a cut, a stream found to have no clock), the stream's end, and the writer's own end. A
//! viewer whose client has gone is dropped from the park at the next pass.
//!
//! **Who owns what.** The [`ParkedViewers`] list belongs to the session. A parked entry holds an
//! `Arc` of the viewer's socket fd (so the writer never sends on a closed or reused fd number),
//! its shared [`ClientStats`] (the writer advances their cursor, offset and byte counts as the
//! viewer's own writes would) and the sender half of its hand-back. While parked, the viewer's
//! own [`super::client::ClientHandle`] is not used; [`super::client::ClientHandle::resume`] takes
//! the position back from the stats when it is handed back.
//!
//! **No tell missed.** A viewer parks only while holding the list's lock and only if its own
//! edge receiver has seen every wake; the writer takes the list under the same lock after a
//! wake. So a wake either comes before the park (the viewer does not park and looks itself) or
//! its pass finds the viewer in the list.

use super::client::ClientStats;
use super::pages::PageFile;
use super::ring::edge::EdgeTell;
use super::StreamSession;
use crate::sync::Lock;
use prometheus::IntCounter;
use rustix::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{oneshot, watch};

/// Why a parked viewer's task is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandBack {
    /// It has something to look at (see the module docs); `sent_upto` is the next stream byte
    /// to send (inside a chunk after a short send).
    Look {
        /// The next stream byte to send.
        sent_upto: u64,
    },
    /// The bytes a send took from the page file were released meanwhile (they may have gone out
    /// as zeros): the viewer fell off the ring's tail and must be dropped with its lag.
    Torn,
}

/// One viewer parked at the live edge.
#[derive(Debug)]
struct Parked {
    /// Its socket (shared with its `ViewerSocket`).
    socket: Arc<OwnedFd>,
    /// Its position and counters, as the viewer's task would keep them.
    stats: Arc<ClientStats>,
    /// The next stream byte to send: the start of the chunk at `stats.cursor`.
    at: u64,
    /// Wakes its task.
    back: oneshot::Sender<HandBack>,
}

impl Parked {
    /// Sends this viewer the bytes `tell` told of from the page file, with one non-blocking
    /// `sendfile`, and advances its position when the send went through whole. `Some` (with
    /// the bytes sent) while it stays parked; `None` when it was handed back, or dropped because
    /// its task has gone.
    fn send(self, pages: &PageFile, tell: EdgeTell) -> Option<(Parked, u64)> {
        if self.back.is_closed() {
            return None;
        }
        if self.stats.is_cut() || pages.released() > self.at {
            let sent_upto = self.at;
            return self.hand_back(HandBack::Look { sent_upto });
        }
        if self.at >= tell.told {
            return Some((self, 0));
        }
        let len = tell.told - self.at;
        let mut from = self.at;
        let sent = rustix::fs::sendfile(&self.socket, pages.fd(), Some(&mut from), len as usize);
        // Bytes released between the check and the send may have gone out as zeros.
        if pages.released() > self.at {
            return self.hand_back(HandBack::Torn);
        }
        match sent {
            Ok(n) if n as u64 == len => {
                let mut me = self;
                me.at = tell.told;
                me.stats.cursor.store(tell.told_seq, Ordering::Relaxed);
                me.stats.offset.store(tell.told, Ordering::Relaxed);
                me.stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
                Some((me, len))
            }
            // A short send (its socket is full) or none: its task waits for room, with its
            // timeout; an error is met again by its task's own send, which has the words for it.
            Ok(n) => {
                let sent_upto = self.at + n as u64;
                self.hand_back(HandBack::Look { sent_upto })
            }
            Err(_) => {
                let sent_upto = self.at;
                self.hand_back(HandBack::Look { sent_upto })
            }
        }
    }

    fn hand_back(self, why: HandBack) -> Option<(Parked, u64)> {
        // A task that has gone meanwhile needs nothing.
        let _ = self.back.send(why);
        None
    }
}

#[derive(Debug, Default)]
struct Park {
    viewers: Vec<Parked>,
    /// The writer has ended: nobody parks any more.
    closed: bool,
}

/// A session's viewers parked at the live edge (see the module docs).
#[derive(Debug, Default)]
pub struct ParkedViewers {
    park: Mutex<Park>,
}

impl ParkedViewers {
    /// Parks a viewer whose next stream byte is `at` (the start of the chunk its stats' cursor
    /// names), unless `edge` (the viewer's own receiver of the session's edge wakes) has a wake
    /// it has not looked at, or the writer has ended. The receiver resolves when it is handed
    /// back (an error: the writer ended; it looks for itself).
    pub fn park(
        &self,
        socket: Arc<OwnedFd>,
        stats: Arc<ClientStats>,
        at: u64,
        edge: &watch::Receiver<EdgeTell>,
    ) -> Option<oneshot::Receiver<HandBack>> {
        let mut park = self.park.locked();
        if park.closed || edge.has_changed().unwrap_or(true) {
            return None;
        }
        let (back, woken) = oneshot::channel();
        park.viewers.push(Parked {
            socket,
            stats,
            at,
            back,
        });
        Some(woken)
    }

    /// How many viewers are parked now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.park.locked().viewers.len()
    }

    /// Whether no viewer is parked (for tests).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self) -> Vec<Parked> {
        std::mem::take(&mut self.park.locked().viewers)
    }

    fn put_back(&self, kept: Vec<Parked>) {
        let mut park = self.park.locked();
        if park.viewers.is_empty() {
            park.viewers = kept;
        } else {
            park.viewers.extend(kept);
        }
    }

    /// One pass of the edge writer: sends every parked viewer the bytes `tell` told of from
    /// `pages`, keeping those whose send went through whole and handing back the rest; the bytes
    /// sent and the sends made.
    async fn send_told(&self, pages: &PageFile, tell: EdgeTell) -> (u64, u64) {
        let viewers = self.take();
        if viewers.is_empty() {
            return (0, 0);
        }
        let mut kept = Vec::with_capacity(viewers.len());
        let (mut bytes, mut sends) = (0, 0);
        for v in viewers {
            // A long pass yields to other tasks now and then, as a task sending at line speed
            // does.
            tokio::task::coop::consume_budget().await;
            if let Some((v, n)) = v.send(pages, tell) {
                bytes += n;
                sends += u64::from(n > 0);
                kept.push(v);
            }
        }
        self.put_back(kept);
        (bytes, sends)
    }

    /// Hands every parked viewer back; with `close`, nobody parks from then on.
    fn hand_back_all(&self, close: bool) {
        let viewers = {
            let mut park = self.park.locked();
            park.closed |= close;
            std::mem::take(&mut park.viewers)
        };
        for v in viewers {
            let sent_upto = v.at;
            let _ = v.hand_back(HandBack::Look { sent_upto });
        }
    }
}

/// The counters the edge writer adds to.
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    /// `ts_viewer_sends_total{path="sendfile"}`.
    pub sendfiles: IntCounter,
    /// `ts_parked_sends_total`.
    pub parked_sends: IntCounter,
    /// `downstream_bytes_total`.
    pub downstream_bytes: IntCounter,
}

/// The session's edge writer: at each tell of new bytes it sends every parked viewer its bytes
/// (see the module docs); any other wake hands every parked viewer back. Ends, handing everyone
/// back, when the stream ends, the session is dropped or its edge wakes end.
pub async fn run_edge_writer(
    session: Weak<StreamSession>,
    mut edge: watch::Receiver<EdgeTell>,
    metrics: WriterMetrics,
) {
    let mut seen = *edge.borrow_and_update();
    loop {
        let changed = edge.changed().await;
        let Some(session) = session.upgrade() else {
            return;
        };
        let parked = &session.parked;
        if changed.is_err() {
            parked.hand_back_all(true);
            return;
        }
        let tell = *edge.borrow_and_update();
        let news = tell.keepalives == seen.keepalives && tell.told > seen.told;
        seen = tell;
        if tell.told == u64::MAX {
            parked.hand_back_all(true);
            return;
        }
        let pages = session.ring.pages();
        let (true, Some(pages)) = (news, pages) else {
            parked.hand_back_all(false);
            continue;
        };
        let (bytes, sends) = parked.send_told(pages, tell).await;
        if bytes > 0 {
            session.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            metrics.downstream_bytes.inc_by(bytes);
            metrics.sendfiles.inc_by(sends);
            metrics.parked_sends.inc_by(sends);
            session.client_advanced();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::client::Protocol;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A loopback TCP connection: the viewer's side (non-blocking, as tokio leaves it) as an
    /// fd, and the player's side.
    fn connection() -> (Arc<OwnedFd>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let player = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (viewer, _) = listener.accept().expect("accept");
        viewer.set_nonblocking(true).expect("non-blocking");
        player.set_nonblocking(true).expect("non-blocking");
        (Arc::new(OwnedFd::from(viewer)), player)
    }

    /// A page file holding `len` bytes of a recognisable stream from offset 0.
    fn pages(len: usize) -> (PageFile, Vec<u8>) {
        let pages = PageFile::new().expect("page file");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        pages.append(0, &data).expect("append");
        (pages, data)
    }

    /// Everything the player has received so far.
    fn received(player: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match player.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn tell(told: u64, told_seq: u64) -> EdgeTell {
        EdgeTell {
            keepalives: 0,
            told,
            told_seq,
        }
    }

    /// A viewer that has seen every wake, parked at stream byte `at` (chunk `cursor`).
    fn parked_at(
        parked: &ParkedViewers,
        socket: &Arc<OwnedFd>,
        at: u64,
        cursor: u64,
    ) -> (Arc<ClientStats>, oneshot::Receiver<HandBack>) {
        let stats = Arc::new(ClientStats::new(None, Protocol::Ts));
        stats.cursor.store(cursor, Ordering::Relaxed);
        stats.offset.store(at, Ordering::Relaxed);
        let (_tx, mut edge) = watch::channel(EdgeTell::default());
        edge.borrow_and_update();
        let woken = parked
            .park(socket.clone(), stats.clone(), at, &edge)
            .expect("parks");
        (stats, woken)
    }

    #[tokio::test]
    async fn a_parked_viewer_is_sent_what_was_told_and_moved_on_as_its_own_writes_would() {
        let (pages, data) = pages(3000);
        let (socket, mut player) = connection();
        let parked = ParkedViewers::default();
        let (stats, mut woken) = parked_at(&parked, &socket, 1000, 1);
        assert_eq!(parked.send_told(&pages, tell(3000, 3)).await, (2000, 1));
        // Nothing more told: nothing sent, still parked.
        assert_eq!(parked.send_told(&pages, tell(3000, 3)).await, (0, 0));
        assert_eq!(parked.len(), 1);
        assert!(woken.try_recv().is_err(), "not woken");
        assert_eq!(stats.cursor.load(Ordering::Relaxed), 3);
        assert_eq!(stats.offset.load(Ordering::Relaxed), 3000);
        assert_eq!(stats.bytes_sent.load(Ordering::Relaxed), 2000);
        let got = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            while got.len() < 2000 {
                got.extend(received(&mut player));
                std::thread::yield_now();
            }
            got
        })
        .await
        .expect("reader");
        assert_eq!(got, data[1000..3000], "the told bytes, in order");
    }

    #[tokio::test]
    async fn a_viewer_with_a_wake_it_has_not_looked_at_does_not_park() {
        let (socket, _player) = connection();
        let parked = ParkedViewers::default();
        let stats = Arc::new(ClientStats::new(None, Protocol::Ts));
        let (tx, mut edge) = watch::channel(EdgeTell::default());
        edge.borrow_and_update();
        tx.send_modify(|t| t.told = 100);
        assert!(parked
            .park(socket.clone(), stats.clone(), 0, &edge)
            .is_none());
        edge.borrow_and_update();
        assert!(parked.park(socket, stats, 0, &edge).is_some());
        // Once the writer ended, nobody parks.
        parked.hand_back_all(true);
        let (socket, _player) = connection();
        let stats = Arc::new(ClientStats::new(None, Protocol::Ts));
        assert!(parked.park(socket, stats, 0, &edge).is_none());
    }

    #[tokio::test]
    async fn a_full_socket_hands_the_viewer_back_where_its_send_stopped() {
        // Far more than a loopback socket holds while its player reads nothing.
        let len = 16 << 20;
        let (pages, _) = pages(len);
        let (socket, _player) = connection();
        let parked = ParkedViewers::default();
        let (stats, woken) = parked_at(&parked, &socket, 0, 0);
        let (bytes, _) = parked.send_told(&pages, tell(len as u64, 1)).await;
        assert_eq!(bytes, 0, "a short send is not counted as the viewer's");
        assert!(parked.is_empty(), "handed back");
        match woken.await {
            Ok(HandBack::Look { sent_upto }) => {
                assert!(sent_upto > 0 && sent_upto < len as u64, "{sent_upto}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stats.offset.load(Ordering::Relaxed), 0, "its task goes on");
        assert_eq!(stats.bytes_sent.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn released_bytes_a_cut_or_a_gone_task_end_the_parking() {
        let len = 1 << 20;
        let (pages, _) = pages(len);
        let told = tell(len as u64, 20);
        let parked = ParkedViewers::default();
        // Bytes it needs released: handed back before anything is sent.
        let (socket, mut player) = connection();
        let (_, woken) = parked_at(&parked, &socket, 100_000, 2);
        pages.release_before(600_000);
        assert!(pages.released() > 100_000);
        assert_eq!(parked.send_told(&pages, told).await, (0, 0));
        assert_eq!(
            woken.await.ok(),
            Some(HandBack::Look { sent_upto: 100_000 })
        );
        assert!(received(&mut player).is_empty());
        // Cut by the buffer budget: handed back.
        let (socket, _player) = connection();
        let (stats, woken) = parked_at(&parked, &socket, 700_000, 14);
        stats.cut();
        assert_eq!(parked.send_told(&pages, told).await, (0, 0));
        assert_eq!(
            woken.await.ok(),
            Some(HandBack::Look { sent_upto: 700_000 })
        );
        // Its task has gone (the client closed): dropped, nothing sent.
        let (socket, mut player) = connection();
        let (_, woken) = parked_at(&parked, &socket, 700_000, 14);
        drop(woken);
        assert_eq!(parked.send_told(&pages, told).await, (0, 0));
        assert!(parked.is_empty());
        assert!(received(&mut player).is_empty());
    }
}
