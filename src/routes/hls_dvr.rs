//! HLS over the DVR window: `GET /ace/manifest.m3u8?id=<content id>&dvr=1` answers a sliding
//! playlist of every segment the session's spill holds (each with `#EXT-X-PROGRAM-DATE-TIME`),
//! so hls.js, Safari and ExoPlayer show a seek bar over the window; its segments are
//! `GET /ace/hls/dvr/<generation>/<serial>.ts`, read from the spill by the byte range its index
//! gives, with the PAT and PMT current there in front (each decodes on its own). The segments are
//! cut where the spill is written (see [`crate::streams::dvr::hls`]).
//!
//! The viewer is an HLS viewer of the session like any other (counted, limited, present while it
//! keeps asking). Without DVR (`dvr_window: 0`, an unusable `dvr_dir`, or the session's spill
//! ended by a fault) the request gets the live playlist, as a rewound TS viewer plays live.

use super::hls::{generation, segment_served, segment_viewer, write_playlist, write_segment_head};
use super::rewind::SPILL_READ_BYTES;
use super::write_error;
use crate::access::Access;
use crate::engines::ContentKey;
use crate::error::EdgeError;
use crate::streams::dvr::hls::FORCED_CUT_FACTOR;
use crate::streams::dvr::SpillRead;
use crate::streams::{Phase, Sessions, StreamSession};
use pingora::proxy::Session as HttpSession;
use std::sync::Arc;
use std::time::Duration;

/// Whether a playlist request asks for the DVR window (`dvr=1`, `dvr=true` or `dvr=yes`).
pub fn wanted(query: Option<&str>) -> bool {
    query
        .and_then(|q| super::getstream::query_param(q, "dvr"))
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

/// What [`playlist`] did.
pub enum Answered {
    /// The DVR playlist went out.
    Playlist,
    /// An error went out, or the player left.
    Refused,
    /// The session has no DVR: the caller answers the live playlist.
    NoDvr,
}

/// Answers a DVR playlist request of `session`, once its spill has a finished segment: the
/// stream's first byte within `empty_stream_timeout`, then its first segment within what cutting
/// it takes (`503` naming what was waited for, either way).
pub async fn playlist(
    s: &mut HttpSession,
    sessions: &Arc<Sessions>,
    session: &Arc<StreamSession>,
    (content, tail): (&ContentKey, &str),
) -> pingora::Result<Answered> {
    let config = sessions.config();
    let empty_stream_timeout = config.sessions.empty_stream_timeout;
    let segment_seconds = config.hls.hls_segment_seconds.as_secs_f64();
    // The first keyframe, then one segment of at most the forced-cut length, and a second more.
    let first_segment_within =
        Duration::from_secs_f64((FORCED_CUT_FACTOR + 1.0) * segment_seconds + 1.0);
    let gen = generation(session);
    let (param, value) = (content.param(), content.value.clone());
    let uri = |n: u64| format!("hls/dvr/{gen}/{n}.ts?{param}={value}{tail}");
    let first_byte_by = tokio::time::Instant::now() + empty_stream_timeout;
    let mut segment_by: Option<tokio::time::Instant> = None;
    let mut phase = session.watch_phase();
    loop {
        let now = phase.borrow_and_update().clone();
        match now {
            Phase::Failed(e) => {
                write_error(s, &e).await?;
                return Ok(Answered::Refused);
            }
            Phase::Ended(reason) => {
                write_error(s, &EdgeError::SessionEnded(reason.to_string())).await?;
                return Ok(Answered::Refused);
            }
            Phase::Streaming => {}
            Phase::Starting | Phase::Connected => {
                tokio::select! {
                    _ = phase.changed() => continue,
                    _ = tokio::time::sleep_until(first_byte_by) => {
                        write_error(s, &EdgeError::EmptyStream(empty_stream_timeout)).await?;
                        return Ok(Answered::Refused);
                    }
                    _ = s.read_body_or_idle(true) => return Ok(Answered::Refused),
                }
            }
        }
        let Some(spill) = session.spill().filter(|x| x.is_live()).cloned() else {
            return Ok(Answered::NoDvr);
        };
        let mut written = spill.written();
        written.borrow_and_update();
        if let Some(text) = spill.playlist(uri) {
            write_playlist(s, text).await?;
            return Ok(Answered::Playlist);
        }
        let by = *segment_by.get_or_insert(tokio::time::Instant::now() + first_segment_within);
        tokio::select! {
            _ = written.changed() => {}
            _ = phase.changed() => {}
            _ = tokio::time::sleep_until(by) => {
                let e = EdgeError::PlaylistNotReady(first_segment_within);
                log::warn!(content_id:% = content.value; "DVR playlist of {}: {e}", content.value);
                write_error(s, &e).await?;
                return Ok(Answered::Refused);
            }
            _ = s.read_body_or_idle(true) => return Ok(Answered::Refused),
        }
    }
}

/// `/ace/hls/dvr/<generation>/<serial>.ts`: (generation, serial).
fn segment_path(path: &str) -> Option<(u128, u64)> {
    let rest = path.strip_prefix("/ace/hls/dvr/")?.strip_suffix(".ts")?;
    let (gen, serial) = rest.split_once('/')?;
    Some((gen.parse().ok()?, serial.parse().ok()?))
}

/// Whether a media request names a DVR segment.
pub fn is_segment(path: &str) -> bool {
    path.starts_with("/ace/hls/dvr/")
}

/// Answers a DVR segment request: its PAT + PMT, then its bytes from the spill, read a piece at
/// a time off the async workers (a segment is never held whole in memory).
pub async fn segment(
    s: &mut HttpSession,
    sessions: &Arc<Sessions>,
    access: &Access,
    path: &str,
) -> pingora::Result<()> {
    let not_found = |what: String| EdgeError::NotFound(what);
    let Some((gen, serial)) = segment_path(path) else {
        return write_error(s, &not_found(format!("no route {path}"))).await;
    };
    let (content, viewer, session) = match segment_viewer(s, sessions, access, gen) {
        Ok(x) => x,
        Err(e) => return write_error(s, &e).await,
    };
    let found = session
        .spill()
        .cloned()
        .and_then(|spill| spill.segment(serial).map(|x| (spill, x)));
    let Some((spill, ((from, to), psi))) = found else {
        let e = not_found(format!(
            "DVR segment {serial} is not held (gone, or not cut yet)"
        ));
        return write_error(s, &e).await;
    };
    let len = psi.len() as u64 + (to - from);
    if !write_segment_head(s, len).await? {
        return Ok(());
    }
    s.write_response_body(Some(psi), from == to).await?;
    let mut at = from;
    while at < to {
        let (reader, want) = (spill.clone(), ((to - at) as usize).min(SPILL_READ_BYTES));
        let read = tokio::task::spawn_blocking(move || reader.read(at, want)).await;
        let piece = match read {
            Ok(Ok(SpillRead::Data(b))) => b,
            // The window moved past it (or the spill ended) while it was sent: the length
            // promised cannot be kept, so the connection ends short.
            Ok(Ok(SpillRead::Gone | SpillRead::Pending)) => {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::WriteError,
                    format!("DVR segment {serial} left the window while it was sent"),
                ));
            }
            Ok(Err(e)) => {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::ReadError,
                    format!("DVR segment {serial}: {e}"),
                ))
            }
            Err(e) => {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::InternalError,
                    format!("DVR segment {serial}: read task: {e}"),
                ))
            }
        };
        sessions.metrics().dvr_spill_reads.inc();
        at += piece.len() as u64;
        s.write_response_body(Some(piece), at >= to).await?;
    }
    segment_served(sessions, (&content, &viewer), &session, len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dvr_segment_paths_and_the_dvr_parameter() {
        assert_eq!(segment_path("/ace/hls/dvr/17/3.ts"), Some((17, 3)));
        assert_eq!(segment_path("/ace/hls/dvr/17/3.1.ts"), None);
        assert_eq!(segment_path("/ace/hls/17/3.ts"), None);
        assert!(is_segment("/ace/hls/dvr/17/3.ts"));
        assert!(!is_segment("/ace/hls/17/3.ts"));
        assert!(wanted(Some("id=x&dvr=1")));
        assert!(wanted(Some("dvr=true&id=x")));
        assert!(!wanted(Some("id=x&dvr=0")));
        assert!(!wanted(Some("id=x")));
        assert!(!wanted(None));
    }
}
