//! A TS viewer served directly on its socket, after its response head went out: ring bytes go to
//! it with `sendfile` from the session's page file, in runs of up to a read batch of chunks
//! (about 1 MB); the few bytes that are not in the file in stream order (the join's PAT + PMT and
//! partial chunk, keepalive nulls) are sent as they are. With `zero_copy: false` (or no page
//! file) the same runs are written from the ring's chunks with one vectored `send` each.
//!
//! At the live edge it waits for the ring's edge wakes (`streams::ring::edge`): the session tells
//! all its edge viewers of new bytes at once, in batches of `send_batch_bytes` or
//! `send_batch_delay`, and ticks their keepalives while the stream pauses, so a viewer costs a
//! few large sends a second and no timer of its own; a viewer behind the edge sends everything it
//! can at once. With `edge_writer` on, a `sendfile` viewer that has sent everything told parks
//! in its session instead (`streams::parked`): the session's edge writer makes its sends at each
//! tell, and its task sleeps until it is handed back (a full socket, a keepalive tick, a cut, the
//! end), then goes on from where the writer left it.
//!
//! It usually runs in a task of its own, holding only what it needs (its place in the session,
//! its socket's dup, its limit permit and the connection's slot), after Pingora let the request go
//! (see `streams::sendfile`). The rules are those of the copying path: dropped when its socket
//! accepts nothing for `client_timeout` or when it falls off the ring's tail, keepalive nulls while
//! the stream pauses, the response finished when the stream ends.

use super::getstream::{guarded, lagged, End, Leaving};
use super::rewind::{ended, SpillCursor, Step};
use crate::config::Config;
use crate::streams::client::Next;
use crate::streams::parked::HandBack;
use crate::streams::ring::edge::EdgeTell;
use crate::streams::sendfile::{Connection, ViewerSocket};
use crate::streams::{ClientHandle, Sessions};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::watch;

/// A viewer taken over for zero-copy sends (see the module docs).
pub(super) struct ZeroCopyViewer {
    /// Its place in the session.
    pub(super) client: ClientHandle,
    /// Its socket (a dup, registered with the reactor).
    pub(super) socket: ViewerSocket,
    /// The sessions, for metrics and drops.
    pub(super) sessions: Arc<Sessions>,
    /// The configuration it started with.
    pub(super) config: Arc<Config>,
    /// The content id, for logs.
    pub(super) id: String,
    /// Held while it streams (its limit permit).
    pub(super) _held: Box<dyn Send + Sync>,
    /// Ring bytes go out with `sendfile` from the page file; else their chunks are written
    /// (`zero_copy: false`, or no page file), with the same batching.
    pub(super) sendfile: bool,
}

impl ZeroCopyViewer {
    /// Streams until the stream ends or the viewer leaves or is dropped, then ends the response.
    /// `connection` (when Pingora let the request go) is held to the end: it keeps the socket
    /// counted as open.
    pub(super) async fn run(mut self, connection: Option<Arc<Connection>>) -> End {
        let end = self.stream().await;
        if matches!(end, End::Finished) {
            self.socket.finish();
        }
        drop(connection);
        end
    }

    async fn stream(&mut self) -> End {
        let session = self.client.session().clone();
        let ring = &session.ring;
        let mut ring_changed = ring.subscribe();
        // At the live edge the viewer waits for the ring's edge wakes: new bytes in batches and
        // keepalive ticks, shared by every viewer of the session (see `streams::ring::edge`).
        let mut edge = ring.subscribe_edge();
        let mut keepalives = edge.borrow().keepalives;
        // The next stream byte to send, when a `sendfile` stopped inside a chunk.
        let mut sent_upto: Option<u64> = None;
        let sends = &self.sessions.metrics().ts_viewer_sends;
        let (sendfiles, copies) = (
            sends.with_label_values(&["sendfile"]),
            sends.with_label_values(&["send"]),
        );
        // Whether the client closed its side: one future for the whole stream, so a wait at the
        // edge does not register (and drop) its read interest anew each time.
        let mut closed = Box::pin(self.socket.closed());
        // Set when a send reached what the edge viewers were told of.
        let mut at_told_edge = false;
        loop {
            // Sent everything told and no wake since: wait without reading the ring again (the
            // bytes published since come with the next tell).
            if std::mem::take(&mut at_told_edge) && !edge.has_changed().unwrap_or(true) {
                // Parked in the session, whose edge writer sends to it until it hands it back
                // (see `streams::parked`); else woken to send for itself.
                let woken = self.parkable(sent_upto).and_then(|at| {
                    session.parked.park(
                        self.socket.shared_fd(),
                        self.client.stats().clone(),
                        at,
                        &edge,
                    )
                });
                let waited = match woken {
                    Some(woken) => parked(
                        &mut self.client,
                        &self.sessions,
                        &self.id,
                        woken,
                        &mut closed,
                    )
                    .await
                    .map(|upto| sent_upto = Some(upto)),
                    None => self.wait(&mut edge, &mut closed).await,
                };
                if let Err(end) = waited {
                    return end;
                }
            }
            ring_changed.borrow_and_update();
            let ticked = edge.borrow_and_update().keepalives != keepalives;
            keepalives = edge.borrow().keepalives;
            let chunks = match self.client.next_step() {
                Next::Write(chunks) => chunks,
                // A keepalive tick found nothing to send: one null packet.
                Next::Wait if ticked => match self.keepalive(&mut ring_changed).await {
                    Ok(()) => continue,
                    Err(end) => return end,
                },
                Next::Wait => match self.wait(&mut edge, &mut closed).await {
                    Ok(()) => continue,
                    Err(end) => return end,
                },
                Next::Lagged(behind) => {
                    // A viewer that paused past the ring's tail goes on from the DVR spill, from
                    // the byte it had reached (a send may have stopped inside a chunk).
                    let reached = self.client.stream_offset();
                    let offset = sent_upto.filter(|u| *u >= reached).unwrap_or(reached);
                    drop(closed);
                    return self.fell_behind(offset, behind).await;
                }
                Next::End => return End::Finished,
            };
            let pages = ring.pages().filter(|_| self.sendfile);
            let sent = match self.client.ring_offset() {
                Some(first) => {
                    // A run of ring chunks, contiguous in the stream from `first`.
                    let end = first + chunks.iter().map(|c| c.len() as u64).sum::<u64>();
                    let from = sent_upto
                        .filter(|p| (first..end).contains(p))
                        .unwrap_or(first);
                    let result = match pages {
                        Some(pages) => {
                            let send = self.socket.send_file_while(
                                pages.fd(),
                                from,
                                (end - from) as usize,
                                || pages.released() <= from,
                            );
                            match self.guard(send, &mut ring_changed).await {
                                // Released while the socket took nothing (a paused player):
                                // nothing was sent; it goes on from the DVR spill where it can.
                                Ok(None) => {
                                    let behind = ring.published_bytes().saturating_sub(from);
                                    drop(closed);
                                    return self.fell_behind(from, behind).await;
                                }
                                // Bytes punched between the check and `sendfile` may have gone
                                // out as zeros: only a reader at the ring's very tail can see
                                // that.
                                Ok(Some(_)) if pages.released() > from => {
                                    Err(Leaving::Dropped(lagged(
                                        &self.sessions,
                                        &self.client,
                                        &self.id,
                                        ring.published_bytes().saturating_sub(from),
                                    )))
                                }
                                Ok(Some(n)) => {
                                    sendfiles.inc();
                                    Ok(n)
                                }
                                Err(e) => Err(e),
                            }
                        }
                        None => {
                            let send = self.socket.send_chunks(&chunks, (from - first) as usize);
                            let sent = self.guard(send, &mut ring_changed).await;
                            if sent.is_ok() {
                                copies.inc();
                            }
                            sent
                        }
                    };
                    result.map(|n| {
                        let upto = from + n as u64;
                        at_told_edge = upto >= edge.borrow().told;
                        let mut at = first;
                        for c in &chunks {
                            at += c.len() as u64;
                            if at > upto {
                                break;
                            }
                            self.client.wrote(c);
                        }
                        sent_upto = Some(upto);
                    })
                }
                None => {
                    // Join pieces (PAT + PMT, the keyframe's partial chunk): as they are.
                    sent_upto = None;
                    let mut result = Ok(());
                    for chunk in &chunks {
                        let send = self.socket.send_all(chunk);
                        result = self.guard(send, &mut ring_changed).await;
                        if result.is_err() {
                            break;
                        }
                        self.client.wrote(chunk);
                    }
                    result
                }
            };
            if let Err(leaving) = sent {
                leaving.log(&self.client, &self.id);
                return End::Dropped;
            }
        }
    }

    /// A viewer behind its ring's tail at stream offset `offset` (`behind` bytes behind the
    /// edge): goes on from the session's DVR spill from that byte where it can, else is dropped
    /// with its lag.
    async fn fell_behind(&mut self, offset: u64, behind: u64) -> End {
        let spill =
            super::rewind::continue_from(&self.sessions, &mut self.client, offset, &self.id);
        if let Some(spill) = spill {
            return self.stream_spill(spill, offset).await;
        }
        let why = lagged(&self.sessions, &self.client, &self.id, behind);
        Leaving::Dropped(why).log(&self.client, &self.id);
        End::Dropped
    }

    /// Streams a rewound viewer from the DVR spill (its response head and PAT + PMT already
    /// out), then ends the response as [`Self::run`] does.
    pub(super) async fn run_from_spill(
        mut self,
        connection: Option<Arc<Connection>>,
        spill: Arc<crate::streams::dvr::Spill>,
        offset: u64,
    ) -> End {
        let end = self.stream_spill(spill, offset).await;
        if matches!(end, End::Finished) {
            self.socket.finish();
        }
        drop(connection);
        end
    }

    /// Streams the DVR spill from stream offset `offset` (a rewound viewer, or one that fell off
    /// the ring's tail) with `sendfile` from the spill's files (the page cache's pages go to the
    /// socket by reference, as the ring's do) until the session ends, the viewer leaves, or it
    /// falls out of the DVR window.
    async fn stream_spill(&mut self, spill: Arc<crate::streams::dvr::Spill>, offset: u64) -> End {
        let timeout = super::leaving::write_timeout(&self.client, &self.config);
        let mut cursor = SpillCursor::new(spill, offset);
        loop {
            let step = tokio::select! {
                step = cursor.next_run(self.config.viewers.keepalive_interval) => step,
                _ = self.socket.closed() => {
                    Leaving::Closed("closed by the client".into()).log(&self.client, &self.id);
                    return End::Dropped;
                }
            };
            let sent = match step {
                Step::Run(run) => {
                    use std::os::fd::AsFd;
                    let send = self.socket.send_file(run.file.as_fd(), run.at, run.len);
                    tokio::time::timeout(timeout, send).await
                }
                other => {
                    let piece = match other.into_piece() {
                        Ok((piece, _)) => piece,
                        Err(why) => return ended(why, &self.client, &self.id),
                    };
                    let send = self.socket.send_all(&piece);
                    tokio::time::timeout(timeout, send)
                        .await
                        .map(|r| r.map(|()| 0))
                }
            };
            let leaving = match sent {
                Ok(Ok(n)) => {
                    if n > 0 {
                        self.sessions.metrics().dvr_spill_reads.inc();
                        cursor.sent(n);
                        self.client.wrote_from_spill(n, cursor.offset);
                    }
                    None
                }
                Ok(Err(e)) => Some(Leaving::Closed(e.to_string())),
                Err(_) => {
                    self.sessions.metrics().slow_client_drops.inc();
                    Some(Leaving::Dropped(format!(
                        "accepted nothing for {timeout:?}"
                    )))
                }
            };
            if let Some(l) = leaving {
                l.log(&self.client, &self.id);
                return End::Dropped;
            }
        }
    }

    /// Where this viewer can park at the live edge (see `streams::parked`): the next ring byte
    /// when it is the start of a chunk that `sent_upto` reached, on the `sendfile` path of a
    /// stream with a clock (a stream without one moves only as its readers take bytes, and is
    /// told at every publish), with `edge_writer` on.
    fn parkable(&self, sent_upto: Option<u64>) -> Option<u64> {
        let session = self.client.session();
        let at = self.client.ring_offset()?;
        (self.sendfile
            && self.config.viewers.edge_writer
            && sent_upto == Some(at)
            && session.ring.pages().is_some()
            && !session.is_clockless())
        .then_some(at)
    }

    /// Waits for the ring's next edge wake (see `streams::ring::edge`). `Err` when the client
    /// is gone.
    async fn wait(
        &self,
        edge: &mut watch::Receiver<EdgeTell>,
        closed: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<(), End> {
        tokio::select! {
            biased;
            _ = edge.changed() => Ok(()),
            _ = closed => {
                Leaving::Closed("closed by the client".into()).log(&self.client, &self.id);
                Err(End::Dropped)
            }
        }
    }

    /// Sends one keepalive null packet. `Err` when the client is gone or accepts nothing.
    async fn keepalive(&self, ring_changed: &mut watch::Receiver<u64>) -> Result<(), End> {
        let null = Bytes::from_static(&crate::ts::NULL_PACKET);
        match self.guard(self.socket.send_all(&null), ring_changed).await {
            Ok(()) => Ok(()),
            Err(leaving) => {
                leaving.log(&self.client, &self.id);
                Err(End::Dropped)
            }
        }
    }

    /// [`guarded`] for this viewer's socket writes.
    async fn guard<T>(
        &self,
        write: impl std::future::Future<Output = std::io::Result<T>>,
        ring_changed: &mut watch::Receiver<u64>,
    ) -> Result<T, Leaving> {
        guarded(
            write,
            &self.client,
            ring_changed,
            &self.sessions,
            &self.config,
            &self.id,
        )
        .await
    }
}

/// Sleeps while `client` is parked, until the edge writer hands it back: `Ok` with the next
/// stream byte to send (inside a chunk after a short send); `Err` when the client is gone or
/// the bytes sent were released meanwhile. Its position is taken back from its stats either
/// way.
async fn parked(
    client: &mut ClientHandle,
    sessions: &Arc<Sessions>,
    id: &str,
    woken: tokio::sync::oneshot::Receiver<HandBack>,
    closed: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Result<u64, End> {
    let back = tokio::select! {
        biased;
        back = woken => back,
        _ = closed => {
            client.resume();
            Leaving::Closed("closed by the client".into()).log(client, id);
            return Err(End::Dropped);
        }
    };
    client.resume();
    match back {
        Ok(HandBack::Look { sent_upto }) => Ok(sent_upto),
        // The writer ended: the viewer looks for itself.
        Err(_) => Ok(client.stream_offset()),
        Ok(HandBack::Torn) => {
            let behind = client
                .session()
                .ring
                .published_bytes()
                .saturating_sub(client.stream_offset());
            let why = lagged(sessions, client, id, behind);
            Leaving::Dropped(why).log(client, id);
            Err(End::Dropped)
        }
    }
}
