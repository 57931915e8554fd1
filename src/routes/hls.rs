//! `GET /ace/manifest.m3u8?id=<content id>`, its segments `GET /ace/hls/<generation>/<n>.ts` and,
//! with low-latency HLS, its parts `GET /ace/hls/<generation>/<n>.<part>.ts`: HLS cut from the
//! same session TS clients read (see [`crate::streams::hls`]).
//!
//! A playlist request counts its viewer in (admitted by the limits like a TS client; keyed by
//! address and User-Agent, present while it keeps asking), starts the session if needed, and
//! answers once the playlist lists a segment: the stream's first byte is waited for within
//! `empty_stream_timeout` (an engine's prebuffer), the first segment within what cutting it takes
//! after that (`503` with what was waited for, either way). A playlist of fewer than three
//! segments waits a quarter second for more (an engine's burst brings them at once), and while a
//! burst is being cut a playlist waits for its end (at most a second), so a player starts at the
//! live edge and its next segment is still in the window when it reloads. Segment
//! URIs are relative, carry the id (and the request's `token`, when stream URLs are signed) and
//! the session's generation, so a cached segment of an ended session is never served for a new
//! one. With `hls_low_latency`, `_HLS_msn`/`_HLS_part` hold a reload until the playlist has what
//! it names, and a part not cut yet (a preload hint) is awaited; both are bounded in time and per
//! address (`hls_max_blocking_requests`). `dvr=1` asks for the DVR window instead (see
//! [`super::hls_dvr`]).

use super::getstream::content_id;
use super::write_error;
use crate::access::{Access, ClientAddr};
use crate::engines::ContentKey;
use crate::error::EdgeError;
use crate::streams::hls::MIN_WINDOW_SEGMENTS;
use crate::streams::{record_cuts, BlockingHold, Phase, Sessions, StreamSession};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use std::sync::Arc;
use std::time::Duration;

/// Segments never change, so caches may keep them (a new session gets new URIs).
pub(super) const SEGMENT_CACHE_CONTROL: &str = "public, max-age=86400, immutable";

/// The viewer key's second half.
fn user_agent(s: &HttpSession) -> String {
    s.req_header()
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// What segment URIs carry of the playlist request's query: its `token`, percent-encoded, when
/// stream URLs are signed (a segment needs it then); nothing else, and nothing at all when they
/// are not (the query's text never reaches the playlist).
fn segment_token(access: &Access, query: Option<&str>) -> String {
    if !access.signs_streams() {
        return String::new();
    }
    match query.and_then(|q| super::getstream::query_param(q, "token")) {
        Some(t) => format!(
            "&token={}",
            form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
        ),
        None => String::new(),
    }
}

/// A session's generation: its creation time in milliseconds since the epoch.
pub(super) fn generation(session: &StreamSession) -> u128 {
    session
        .created_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The content a playlist or segment request names, once its token (if URLs are signed) holds.
pub(super) fn requested_content(
    access: &Access,
    query: Option<&str>,
) -> Result<ContentKey, EdgeError> {
    let content = content_id(query)?;
    access.check_stream_token(&content.value, query)?;
    Ok(content)
}

/// An HLS viewer: its address and its User-Agent.
pub(super) type Viewer = (Option<ClientAddr>, String);

/// Who asks: the client's address and its User-Agent (an HLS viewer is both, with the id).
pub(super) fn viewer_of(s: &HttpSession, access: &Access) -> Viewer {
    (access.client_of(s), user_agent(s))
}

/// Finds (or starts, for a playlist) the session of the request's viewer.
pub(super) fn viewer_session(
    viewer: &(Option<ClientAddr>, String),
    sessions: &Arc<Sessions>,
    access: &Access,
    content: &ContentKey,
    start: bool,
) -> Result<Arc<StreamSession>, EdgeError> {
    let (client, agent) = (viewer.0, viewer.1.as_str());
    let id = content.to_string();
    sessions.hls_viewer(content, client, agent, start, |starts, n| {
        let permit = access.admit_viewer(client, &id, starts, n)?;
        Ok(permit.map(|p| Box::new(p) as Box<dyn std::any::Any + Send + Sync>))
    })
}

/// Answers a playlist request.
pub async fn manifest(
    s: &mut HttpSession,
    sessions: &Arc<Sessions>,
    access: &Access,
) -> pingora::Result<()> {
    let query = s.req_header().uri.query().map(str::to_string);
    let content = match requested_content(access, query.as_deref()) {
        Ok(c) => c,
        Err(e) => return write_error(s, &e).await,
    };
    let viewer = viewer_of(s, access);
    let session = match viewer_session(&viewer, sessions, access, &content, true) {
        Ok(x) => x,
        Err(e) => return write_error(s, &e).await,
    };
    let tail = segment_token(access, query.as_deref());
    if super::hls_dvr::wanted(query.as_deref()) {
        let answered =
            super::hls_dvr::playlist(s, sessions, &session, (&content, tail.as_str())).await?;
        match answered {
            super::hls_dvr::Answered::Playlist => {
                sessions.hls_viewer_served(&content, viewer.0, &viewer.1);
                return Ok(());
            }
            super::hls_dvr::Answered::Refused => return Ok(()),
            super::hls_dvr::Answered::NoDvr => {}
        }
    }
    let (hls, seeded) = session.start_hls();
    record_cuts(sessions.metrics(), seeded);
    let gen = generation(&session);
    let (param, value) = (content.param(), content.value.clone());
    let uri = move |n: u64, part: Option<usize>| match part {
        None => format!("hls/{gen}/{n}.ts?{param}={value}{tail}"),
        Some(p) => format!("hls/{gen}/{n}.{p}.ts?{param}={value}{tail}"),
    };
    // Two waits, each for what it is: the first stream byte within `empty_stream_timeout` (an
    // engine's prebuffer takes 8–30 s), then the first segments within what cutting them takes.
    let empty_stream_timeout = sessions.config().sessions.empty_stream_timeout;
    let first_byte_by = tokio::time::Instant::now() + empty_stream_timeout;
    let mut segments_by: Option<tokio::time::Instant> = None;
    let wanted = match blocking_reload(query.as_deref(), hls) {
        Ok(w) => w,
        Err(e) => return write_error(s, &e).await,
    };
    // A blocking reload is held until the playlist has what it asks for, at most three target
    // durations (RFC 8216bis §6.2.5.2: then the current playlist), and only while its address
    // holds fewer than `hls_max_blocking_requests`.
    let mut hold: Option<(Option<BlockingHold>, tokio::time::Instant)> = None;
    let mut grace_until: Option<tokio::time::Instant> = None;
    let mut settle_cap: Option<tokio::time::Instant> = None;
    let mut produced = hls.subscribe();
    let mut phase = session.watch_phase();
    loop {
        let ready = |hold: &mut Option<(Option<BlockingHold>, tokio::time::Instant)>| {
            let Some((msn, part)) = wanted else {
                return true;
            };
            if hls.has(msn, part) {
                return true;
            }
            let (held, until) = hold.get_or_insert_with(|| {
                let wait = Duration::from_secs(hls.target_duration() * BLOCKING_RELOAD_TARGETS);
                (
                    sessions.hold_hls_request(viewer.0),
                    tokio::time::Instant::now() + wait,
                )
            });
            held.is_none() || tokio::time::Instant::now() >= *until
        };
        // A playlist shorter than a player's usual start distance waits a moment for more: an
        // engine's burst (read ahead) brings them within milliseconds, and a player given one
        // segment reads it and then waits a segment's length before it reloads.
        let short = hls.listed() < MIN_WINDOW_SEGMENTS;
        if short && grace_until.is_none() && hls.listed() > 0 {
            grace_until = Some(tokio::time::Instant::now() + SHORT_PLAYLIST_GRACE);
        }
        let graced = !short || grace_until.is_some_and(|t| tokio::time::Instant::now() >= t);
        // While an engine's burst is being cut the window slides by a segment a millisecond: a
        // playlist that is not a blocking reload waits for the burst's end (at most
        // BURST_SETTLE_MAX), so a player starts at the live edge instead of at a segment about
        // to leave the window.
        let now_t = tokio::time::Instant::now();
        if hls.listed() > 0 && settle_cap.is_none() {
            settle_cap = Some(now_t + BURST_SETTLE_MAX);
        }
        let settling = wanted
            .is_none()
            .then(|| hls.settling(now_t))
            .flatten()
            .filter(|_| settle_cap.is_some_and(|cap| now_t < cap));
        if let Some(text) = hls
            .playlist(&uri)
            .filter(|_| graced && settling.is_none() && ready(&mut hold))
        {
            // A held reload's place goes back before its answer does: a player asks for the
            // preload hint's part as soon as it has read the playlist, and that request must
            // not find its address still holding this one.
            drop(hold.take());
            write_playlist(s, text).await?;
            sessions.hls_viewer_served(&content, viewer.0, &viewer.1);
            return Ok(());
        }
        let now = phase.borrow_and_update().clone();
        if now == Phase::Streaming && segments_by.is_none() {
            segments_by = Some(tokio::time::Instant::now() + hls.first_playlist_within());
        }
        let (deadline, timed_out) = match segments_by {
            Some(by) => (by, EdgeError::PlaylistNotReady(hls.first_playlist_within())),
            None => (first_byte_by, EdgeError::EmptyStream(empty_stream_timeout)),
        };
        match now {
            Phase::Failed(e) => return write_error(s, &e).await,
            Phase::Ended(reason) => {
                let e = EdgeError::SessionEnded(reason.to_string());
                return write_error(s, &e).await;
            }
            _ => {}
        }
        // A held reload wakes at its own deadline and answers with the playlist it has; a short
        // one at the end of its grace.
        let block_until = hold
            .as_ref()
            .map(|(_, until)| *until)
            .or(grace_until.filter(|_| !graced))
            .or(settling);
        tokio::select! {
            _ = produced.changed() => {}
            _ = phase.changed() => {}
            _ = tokio::time::sleep_until(block_until.unwrap_or(deadline)), if block_until.is_some() => {}
            _ = tokio::time::sleep_until(deadline), if block_until.is_none() => {
                log::warn!(content_id:% = content.value; "playlist of {}: {timed_out}", content.value);
                return write_error(s, &timed_out).await;
            }
            _ = s.read_body_or_idle(true) => {
                // The player went away before its first playlist.
                if sessions.hls_viewer_abandoned(&content, viewer.0, &viewer.1) {
                    log::debug!(content_id:% = content.value; "HLS viewer left before its first playlist");
                }
                return Ok(());
            }
        }
    }
}

/// How long a playlist of fewer than [`MIN_WINDOW_SEGMENTS`] segments waits for more. Fixed:
/// a burst read ahead cuts its segments within a few milliseconds; a stream at its live edge
/// gains nothing by waiting, and a quarter second is a small part of the one-GOP first segment.
const SHORT_PLAYLIST_GRACE: Duration = Duration::from_millis(250);

/// The longest a playlist waits for an engine's burst to be cut, from its first segment on.
/// Fixed: a burst at line speed is cut within tens of milliseconds; one that arrives slower than
/// that (an engine behind a slow link) is answered mid-burst rather than kept waiting.
const BURST_SETTLE_MAX: Duration = Duration::from_secs(1);

/// A blocking reload holds for at most this many target durations: RFC 8216bis §6.2.5.2 has the
/// client treat a longer wait as a failure.
const BLOCKING_RELOAD_TARGETS: u64 = 3;

/// What a blocking playlist reload asks for: `_HLS_msn` (a segment) and optionally `_HLS_part`
/// (a part of it). Only with low-latency HLS on; `400` for a part without a segment or a segment
/// more than two past the one being built (RFC 8216bis §6.2.5.2).
fn blocking_reload(
    query: Option<&str>,
    hls: &crate::streams::hls::Hls,
) -> Result<Option<(u64, Option<u64>)>, EdgeError> {
    if !hls.low_latency() {
        return Ok(None);
    }
    let num = |name: &str| -> Result<Option<u64>, EdgeError> {
        match query.and_then(|q| super::getstream::query_param(q, name)) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| EdgeError::BadRequest(format!("{name} must be a number, not {v:?}"))),
        }
    };
    let (msn, part) = (num("_HLS_msn")?, num("_HLS_part")?);
    match (msn, part) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(EdgeError::BadRequest("_HLS_part needs _HLS_msn".into())),
        (Some(m), _) if m > hls.building() + 2 => Err(EdgeError::BadRequest(format!(
            "_HLS_msn {m} is more than two segments past the playlist's last ({})",
            hls.building()
        ))),
        (Some(m), p) => Ok(Some((m, p))),
    }
}

/// Sends a playlist (never cached: it changes at every segment).
pub(super) async fn write_playlist(s: &mut HttpSession, text: String) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("Content-Type", "application/vnd.apple.mpegurl")?;
    h.insert_header("Content-Length", text.len().to_string())?;
    h.insert_header("Cache-Control", "no-cache")?;
    h.insert_header("Access-Control-Allow-Origin", "*")?;
    s.write_response_header(Box::new(h), false).await?;
    s.write_response_body(Some(Bytes::from(text)), true).await
}

/// What a media request names: `/ace/hls/<generation>/<sequence>.ts` (a segment) or
/// `/ace/hls/<generation>/<sequence>.<part>.ts` (a low-latency part).
fn segment_path(path: &str) -> Option<(u128, u64, Option<usize>)> {
    let rest = path.strip_prefix("/ace/hls/")?.strip_suffix(".ts")?;
    let (gen, name) = rest.split_once('/')?;
    let (seq, part) = match name.split_once('.') {
        Some((seq, part)) => (seq, Some(part.parse().ok()?)),
        None => (name, None),
    };
    Some((gen.parse().ok()?, seq.parse().ok()?, part))
}

/// Answers a segment or part request.
pub async fn segment(
    s: &mut HttpSession,
    sessions: &Arc<Sessions>,
    access: &Access,
    path: &str,
) -> pingora::Result<()> {
    if super::hls_dvr::is_segment(path) {
        return super::hls_dvr::segment(s, sessions, access, path).await;
    }
    let not_found = |what: String| EdgeError::NotFound(what);
    let Some((gen, seq, part)) = segment_path(path) else {
        return write_error(s, &not_found(format!("no route {path}"))).await;
    };
    let (content, viewer, session) = match segment_viewer(s, sessions, access, gen) {
        Ok(x) => x,
        Err(e) => return write_error(s, &e).await,
    };
    let Some(hls) = session.hls() else {
        return write_error(s, &not_found("the session has no HLS".into())).await;
    };
    let media = match part {
        None => hls.segment(seq).map(|x| (x.pieces, x.len)),
        Some(n) => awaited_part(sessions, hls, viewer.0, seq, n)
            .await
            .map(|x| (x.pieces, x.len)),
    };
    let Some((pieces, len)) = media else {
        let what = match part {
            None => format!("segment {seq}"),
            Some(n) => format!("part {n} of segment {seq}"),
        };
        let e = not_found(format!("{what} is not held (gone, or not cut yet)"));
        return write_error(s, &e).await;
    };
    if !write_segment_head(s, len as u64).await? {
        return Ok(());
    }
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.into_iter().enumerate() {
        s.write_response_body(Some(piece), i == last).await?;
    }
    segment_served(sessions, (&content, &viewer), &session, len as u64);
    Ok(())
}

/// A segment request's content, viewer and session (of generation `gen`, else `404`).
pub(super) fn segment_viewer(
    s: &HttpSession,
    sessions: &Arc<Sessions>,
    access: &Access,
    gen: u128,
) -> Result<(ContentKey, Viewer, Arc<StreamSession>), EdgeError> {
    let query = s.req_header().uri.query().map(str::to_string);
    let content = requested_content(access, query.as_deref())?;
    let viewer = viewer_of(s, access);
    match viewer_session(&viewer, sessions, access, &content, false)? {
        x if generation(&x) == gen => Ok((content, viewer, x)),
        _ => Err(EdgeError::NotFound("that session has ended".into())),
    }
}

/// Sends a segment's response head (`len` bytes of TS, cacheable); false for a `HEAD` request
/// (nothing more to send).
pub(super) async fn write_segment_head(s: &mut HttpSession, len: u64) -> pingora::Result<bool> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("Content-Type", "video/mp2t")?;
    h.insert_header("Content-Length", len.to_string())?;
    h.insert_header("Cache-Control", SEGMENT_CACHE_CONTROL)?;
    // Browser players (hls.js) on another origin may read them, as any HLS server allows.
    h.insert_header("Access-Control-Allow-Origin", "*")?;
    let head_only = s.req_header().method == http::Method::HEAD;
    s.write_response_header(Box::new(h), head_only).await?;
    Ok(!head_only)
}

/// A segment of `len` bytes reached its viewer: it stays present, and the session counts as
/// watched (it lingers `stream_idle_timeout`, not `unwatched_linger`).
pub(super) fn segment_served(
    sessions: &Sessions,
    (content, viewer): (&ContentKey, &Viewer),
    session: &StreamSession,
    len: u64,
) {
    sessions.hls_viewer_served(content, viewer.0, &viewer.1);
    session
        .bytes_out
        .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    sessions.metrics().downstream_bytes.inc_by(len);
}

/// A part, held or (the one a preload hint names, not cut yet) awaited: for at most a target
/// duration, while the client may hold a request; `None` if it is gone or did not come.
async fn awaited_part(
    sessions: &Sessions,
    hls: &crate::streams::hls::Hls,
    client: Option<crate::access::ClientAddr>,
    seq: u64,
    index: usize,
) -> Option<crate::streams::hls::Part> {
    let mut produced = hls.subscribe();
    if let Some(p) = hls.part(seq, index) {
        return Some(p);
    }
    if seq != hls.building() {
        return None;
    }
    let _hold = sessions.hold_hls_request(client)?;
    let until = tokio::time::Instant::now() + Duration::from_secs(hls.target_duration());
    loop {
        tokio::select! {
            r = produced.changed() => r.ok()?,
            _ = tokio::time::sleep_until(until) => return None,
        }
        if let Some(p) = hls.part(seq, index) {
            return Some(p);
        }
        if seq != hls.building() {
            // The segment was cut before that part: the hint named one that never came.
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_paths() {
        assert_eq!(segment_path("/ace/hls/17/3.ts"), Some((17, 3, None)));
        assert_eq!(segment_path("/ace/hls/17/3.2.ts"), Some((17, 3, Some(2))));
        assert_eq!(segment_path("/ace/hls/17/3.x.ts"), None);
        assert_eq!(segment_path("/ace/hls/17/x.ts"), None);
        assert_eq!(segment_path("/ace/hls/3.ts"), None);
    }
}
