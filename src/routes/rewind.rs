//! A TS viewer that starts behind the live edge: `/ace/getstream?id=…&offset=-<seconds>` (relative
//! to live) or `&start=<unix seconds>` (absolute, what catch-up templates send as `{utc}`), read
//! from the session's DVR spill (see [`crate::streams::dvr`]).
//!
//! The viewer is a client of the session like any other (counted, limited, in the idle timer and
//! the status, with `"dvr": true` and its lag), but it reads the spill at its own pace and never
//! holds the ring. It starts on the last keyframe at or before the asked time, with the PAT and
//! PMT current there, and follows the spill up to the live edge: its bytes are one contiguous run
//! of the session's stream. A time before the window starts at the window's oldest keyframe; a
//! time at or past live starts live (the caller serves it as usual).

use super::getstream::{query_param, End};
use super::leaving::Leaving;
use crate::error::EdgeError;
use crate::streams::dvr::{Rewind, Spill, SpillAt};
use crate::streams::{ClientHandle, Sessions};
use bytes::Bytes;
use pingora::proxy::Session as HttpSession;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

/// Bytes read from the spill per write. Fixed: large sequential reads from the page cache, a
/// quarter second of a 8 Mbit/s stream, so a viewer catching up does so in few writes.
pub(super) const SPILL_READ_BYTES: usize = 256 * 1024;

/// Bytes handed to one `sendfile` from the spill. Fixed: like the ring's read batch (about
/// 1 MB), so a viewer catching up costs few calls; the kernel sends what the socket takes.
const SPILL_RUN_BYTES: usize = 1 << 20;

/// The rewind a request asks for: `offset=-<seconds>` (`offset` of zero or more means live) or
/// `start=<unix seconds>`; `400` for both, or a value that is not a number.
pub fn requested(query: Option<&str>) -> Result<Option<Rewind>, EdgeError> {
    let q = query.unwrap_or("");
    let num = |name: &str| -> Result<Option<f64>, EdgeError> {
        match query_param(q, name) {
            None => Ok(None),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    EdgeError::BadRequest(format!("{name} must be a number of seconds, not {v:?}"))
                }),
        }
    };
    match (num("offset")?, num("start")?) {
        (Some(_), Some(_)) => Err(EdgeError::BadRequest(
            "give offset (seconds back from live) or start (unix seconds), not both".into(),
        )),
        (Some(o), None) if o < 0.0 => Ok(Some(Rewind::Back(-o))),
        (Some(_), None) | (None, None) => Ok(None),
        (None, Some(u)) => Ok(Some(Rewind::At(u))),
    }
}

/// Streams the spill to a rewound viewer from the keyframe at `from` (its PAT + PMT `psi` first)
/// until the session ends, the viewer leaves, or it falls out of the DVR window.
pub async fn serve(
    s: &mut HttpSession,
    sessions: &Arc<Sessions>,
    mut client: ClientHandle,
    spill: Arc<Spill>,
    (from, psi): (u64, Bytes),
    id: &str,
) -> pingora::Result<()> {
    let config = sessions.config();
    let metrics = sessions.metrics();
    client.become_dvr(from);
    metrics.dvr_rewound_viewers.inc();
    s.set_write_timeout(Some(super::leaving::write_timeout(&client, &config)));
    let h = super::getstream::stream_header(s, false)?;
    s.write_response_header(Box::new(h), false).await?;
    metrics
        .http_responses
        .with_label_values(&[super::Route::GetStream.label(), "200"])
        .inc();
    s.set_keepalive(None);
    let psi_len = psi.len();
    if let Err(e) = s.write_response_body(Some(psi), false).await {
        Leaving::Closed(e.to_string()).log(&client, id);
        return Ok(());
    }
    client.wrote_from_spill(psi_len, from);
    match follow(s, sessions, &mut client, spill, from, id).await {
        End::Finished => {
            let _ = s.write_response_body(None, true).await;
        }
        End::Dropped => s.shutdown().await,
    }
    Ok(())
}

/// Streams the spill from stream offset `offset` through Pingora's writer (a rewound viewer, or
/// a live one that fell off the ring's tail and continues from the spill) until the session
/// ends (`Finished`), or the viewer leaves or falls out of the window (`Dropped`, logged).
pub(super) async fn follow(
    s: &mut HttpSession,
    sessions: &Sessions,
    client: &mut ClientHandle,
    spill: Arc<Spill>,
    offset: u64,
    id: &str,
) -> End {
    let config = sessions.config();
    let mut cursor = SpillCursor::new(spill, offset);
    loop {
        let step = tokio::select! {
            step = cursor.next(sessions, config.viewers.keepalive_interval) => step,
            _ = s.read_body_or_idle(true) => {
                Leaving::Closed("closed by the client".into()).log(client, id);
                return End::Dropped;
            }
        };
        let (piece, stream) = match step.into_piece() {
            Ok(p) => p,
            Err(why) => return ended(why, client, id),
        };
        let n = piece.len();
        if let Err(e) = s.write_response_body(Some(piece), false).await {
            Leaving::Closed(e.to_string()).log(client, id);
            return End::Dropped;
        }
        if stream {
            client.wrote_from_spill(n, cursor.offset);
        }
    }
}

/// Where a live viewer that fell off the ring's tail continues: the session's spill, from the
/// stream offset `offset` it had reached, if the spill still holds it (and the buffer budget did
/// not cut the viewer). The viewer becomes a DVR reader (its lag is measured in the spill).
pub(super) fn continue_from(
    sessions: &Sessions,
    client: &mut ClientHandle,
    offset: u64,
    id: &str,
) -> Option<Arc<Spill>> {
    if client.is_cut() {
        return None;
    }
    let spill = client.session().spill()?.clone();
    if !spill.is_live() || !spill.holds(offset) {
        return None;
    }
    log::info!(
        content_id:% = id, client:% = client.addr_text();
        "client {} of {id} fell off the ring's tail; it continues from the DVR spill",
        client.addr_text()
    );
    sessions.metrics().dvr_continued_viewers.inc();
    client.become_dvr(offset);
    Some(spill)
}

/// A run of a spill file holding the stream from a cursor on.
pub(super) struct SpillRun {
    /// The file.
    pub(super) file: Arc<std::fs::File>,
    /// Where in it.
    pub(super) at: u64,
    /// How many bytes (at most [`SPILL_RUN_BYTES`]).
    pub(super) len: usize,
}

/// What a viewer reading the spill does next.
pub(super) enum Step {
    /// Write these stream bytes.
    Data(Bytes),
    /// Send this run of a spill file ([`SpillCursor::next_run`]).
    Run(SpillRun),
    /// Nothing new for `keepalive_interval` (a stall, a failover): write a null packet.
    Idle,
    /// The session ended and everything was read.
    End,
    /// Out of the window (too slow), or a read failed: drop the viewer, for this reason.
    Drop(String),
}

impl Step {
    /// What to write: the bytes, and whether they are stream (a keepalive null is not). `Err`
    /// when the viewer's stream is over: `None` at the session's end, else why it is dropped.
    pub(super) fn into_piece(self) -> Result<(Bytes, bool), Option<String>> {
        match self {
            Step::Data(bytes) => Ok((bytes, true)),
            // Only `next_run` makes runs; its callers send them themselves.
            Step::Run(_) => Err(Some("a spill run reached a copying writer".into())),
            Step::Idle => Ok((Bytes::from_static(&crate::ts::NULL_PACKET), false)),
            Step::End => Err(None),
            Step::Drop(why) => Err(Some(why)),
        }
    }
}

/// How a spill reader's stream ended ([`Step::into_piece`]'s `Err`), logged if it was dropped.
pub(super) fn ended(why: Option<String>, client: &ClientHandle, id: &str) -> End {
    match why {
        None => End::Finished,
        Some(why) => {
            Leaving::Dropped(why).log(client, id);
            End::Dropped
        }
    }
}

/// A viewer's position in the spill, and the reads that move it.
pub(super) struct SpillCursor {
    spill: Arc<Spill>,
    /// Stream offset of the next byte to read.
    pub(super) offset: u64,
    written: tokio::sync::watch::Receiver<u64>,
}

impl SpillCursor {
    /// A cursor at stream offset `offset`.
    pub(super) fn new(spill: Arc<Spill>, offset: u64) -> Self {
        let written = spill.written();
        SpillCursor {
            spill,
            offset,
            written,
        }
    }

    /// The next step: bytes from the cursor on (read off the async workers), or waiting for the
    /// writer (a null packet's worth of `keepalive` at most; zero: no keepalive).
    pub(super) async fn next(&mut self, sessions: &Sessions, keepalive: Duration) -> Step {
        let (file, at, len) = match self.next_run(keepalive).await {
            Step::Run(run) => (run.file, run.at, run.len),
            other => return other,
        };
        let want = len.min(SPILL_READ_BYTES);
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
        })
        .await;
        match read {
            Ok(Ok(bytes)) => {
                sessions.metrics().dvr_spill_reads.inc();
                self.offset += bytes.len() as u64;
                Step::Data(bytes)
            }
            Ok(Err(e)) => Step::Drop(format!("DVR read failed: {e}")),
            Err(e) => Step::Drop(format!("DVR read task failed: {e}")),
        }
    }

    /// The next step without reading: the run of the spill file that holds the stream from the
    /// cursor on ([`Step::Run`], for `sendfile`; the cursor moves by [`Self::sent`]), or waiting
    /// as [`Self::next`] does.
    pub(super) async fn next_run(&mut self, keepalive: Duration) -> Step {
        loop {
            // Marked seen before the lookup: a write after it wakes the wait below.
            self.written.borrow_and_update();
            match self.spill.locate(self.offset) {
                SpillAt::File { file, at, len } => {
                    return Step::Run(SpillRun {
                        file,
                        at,
                        len: len.min(SPILL_RUN_BYTES as u64) as usize,
                    })
                }
                SpillAt::Pending => {
                    tokio::select! {
                        changed = self.written.changed() => if changed.is_err() { return Step::End },
                        _ = tokio::time::sleep(keepalive), if !keepalive.is_zero() => return Step::Idle,
                    }
                }
                SpillAt::Gone if !self.spill.is_live() => return Step::End,
                SpillAt::Gone => {
                    return Step::Drop(format!(
                        "fell out of the DVR window (reading at stream offset {})",
                        self.offset
                    ))
                }
            }
        }
    }

    /// `n` bytes of the last run went out.
    pub(super) fn sent(&mut self, n: usize) {
        self.offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewind_parameters() {
        assert_eq!(requested(Some("id=x")).unwrap(), None);
        assert_eq!(
            requested(Some("id=x&offset=-60")).unwrap(),
            Some(Rewind::Back(60.0))
        );
        assert_eq!(
            requested(Some("id=x&offset=5")).unwrap(),
            None,
            "future: live"
        );
        assert_eq!(
            requested(Some("id=x&start=1700000000")).unwrap(),
            Some(Rewind::At(1_700_000_000.0))
        );
        assert!(requested(Some("id=x&offset=-1&start=2")).is_err());
        assert!(requested(Some("id=x&offset=abc")).is_err());
        assert!(requested(Some("id=x&start=NaN")).is_err());
    }
}
