//! `GET /ace/manifest.m3u8?id=<content id>` and its segments `GET /ace/hls/<generation>/<n>.ts`:
//! HLS cut from the same session TS clients read (see [`crate::streams::hls`]).
//!
//! A playlist request counts its viewer in (admitted by the limits like a TS client; keyed by
//! address and User-Agent, present while it keeps asking), starts the session if needed, and
//! answers once the playlist lists three segments (bounded by `empty_stream_timeout`, `503`
//! after). Segment URIs are relative, carry the id (and the request's `token`, when stream URLs
//! are signed) and the session's generation, so a cached segment of an ended session is never
//! served for a new one.

use super::getstream::content_id;
use super::write_error;
use crate::access::{Access, ClientAddr};
use crate::engines::ContentKey;
use crate::error::EdgeError;
use crate::streams::{record_cuts, Phase, Sessions, StreamSession};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use std::sync::Arc;

/// Segments never change, so caches may keep them (a new session gets new URIs).
const SEGMENT_CACHE_CONTROL: &str = "public, max-age=86400, immutable";

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
fn generation(session: &StreamSession) -> u128 {
    session
        .created_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The content a playlist or segment request names, once its token (if URLs are signed) holds.
fn requested_content(access: &Access, query: Option<&str>) -> Result<ContentKey, EdgeError> {
    let content = content_id(query)?;
    access.check_stream_token(&content.value, query)?;
    Ok(content)
}

/// Who asks: the client's address and its User-Agent (an HLS viewer is both, with the id).
fn viewer_of(s: &HttpSession, access: &Access) -> (Option<ClientAddr>, String) {
    (access.client_of(s), user_agent(s))
}

/// Finds (or starts, for a playlist) the session of the request's viewer.
fn viewer_session(
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
    let (hls, seeded) = session.start_hls();
    record_cuts(sessions.metrics(), seeded);
    let gen = generation(&session);
    let tail = segment_token(access, query.as_deref());
    let (param, value) = (content.param(), content.value.clone());
    let uri = move |n: u64| format!("hls/{gen}/{n}.ts?{param}={value}{tail}");
    // Two waits, each for what it is: the first stream byte within `empty_stream_timeout` (an
    // engine's prebuffer takes 8–30 s), then the first segments within what cutting them takes.
    let empty_stream_timeout = sessions.config().sessions.empty_stream_timeout;
    let first_byte_by = tokio::time::Instant::now() + empty_stream_timeout;
    let mut segments_by: Option<tokio::time::Instant> = None;
    let mut produced = hls.subscribe();
    let mut phase = session.watch_phase();
    loop {
        if let Some(text) = hls.playlist(&uri) {
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
        tokio::select! {
            _ = produced.changed() => {}
            _ = phase.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
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

async fn write_playlist(s: &mut HttpSession, text: String) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("Content-Type", "application/vnd.apple.mpegurl")?;
    h.insert_header("Content-Length", text.len().to_string())?;
    h.insert_header("Cache-Control", "no-cache")?;
    h.insert_header("Access-Control-Allow-Origin", "*")?;
    s.write_response_header(Box::new(h), false).await?;
    s.write_response_body(Some(Bytes::from(text)), true).await
}

/// `<generation>/<sequence>` from `/ace/hls/<generation>/<sequence>.ts`.
fn segment_path(path: &str) -> Option<(u128, u64)> {
    let rest = path.strip_prefix("/ace/hls/")?.strip_suffix(".ts")?;
    let (gen, seq) = rest.split_once('/')?;
    Some((gen.parse().ok()?, seq.parse().ok()?))
}

/// Answers a segment request.
pub async fn segment(
    s: &mut HttpSession,
    sessions: &Arc<Sessions>,
    access: &Access,
    path: &str,
) -> pingora::Result<()> {
    let not_found = |what: String| EdgeError::NotFound(what);
    let Some((gen, seq)) = segment_path(path) else {
        return write_error(s, &not_found(format!("no route {path}"))).await;
    };
    let query = s.req_header().uri.query().map(str::to_string);
    let content = match requested_content(access, query.as_deref()) {
        Ok(c) => c,
        Err(e) => return write_error(s, &e).await,
    };
    let viewer = viewer_of(s, access);
    let session = match viewer_session(&viewer, sessions, access, &content, false) {
        Ok(x) if generation(&x) == gen => x,
        Ok(_) => return write_error(s, &not_found("that session has ended".into())).await,
        Err(e) => return write_error(s, &e).await,
    };
    let Some(segment) = session.hls().and_then(|h| h.segment(seq)) else {
        let e = not_found(format!("segment {seq} is not held (gone, or not cut yet)"));
        return write_error(s, &e).await;
    };
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("Content-Type", "video/mp2t")?;
    h.insert_header("Content-Length", segment.len.to_string())?;
    h.insert_header("Cache-Control", SEGMENT_CACHE_CONTROL)?;
    // Browser players (hls.js) on another origin may read them, as any HLS server allows.
    h.insert_header("Access-Control-Allow-Origin", "*")?;
    let head_only = s.req_header().method == http::Method::HEAD;
    s.write_response_header(Box::new(h), head_only).await?;
    if head_only {
        return Ok(());
    }
    let last = segment.pieces.len().saturating_sub(1);
    for (i, piece) in segment.pieces.into_iter().enumerate() {
        s.write_response_body(Some(piece), i == last).await?;
    }
    sessions.hls_viewer_served(&content, viewer.0, &viewer.1);
    // The session was watched (it lingers `stream_idle_timeout`, not `unwatched_linger`).
    session
        .bytes_out
        .fetch_add(segment.len as u64, std::sync::atomic::Ordering::Relaxed);
    sessions
        .metrics()
        .downstream_bytes
        .inc_by(segment.len as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_paths() {
        assert_eq!(segment_path("/ace/hls/17/3.ts"), Some((17, 3)));
        assert_eq!(segment_path("/ace/hls/17/x.ts"), None);
        assert_eq!(segment_path("/ace/hls/3.ts"), None);
    }
}
