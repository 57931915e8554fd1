//! `GET /ace/getstream?id=<content id>`: attach to the content id's session and stream its ring.
//!
//! Headers go out when the session has its first bytes (an error before that is a JSON status).
//! Each client then writes at its own pace from its own cursor; Pingora's write timeout
//! (`client_timeout`) drops a client whose socket accepts nothing, and falling off the ring's tail
//! drops it too. Neither ever slows the session or another client.

pub(super) use super::leaving::{guarded, lagged, Leaving};
use super::zero_copy::ZeroCopyViewer;
use super::{write_error, Route};
use crate::access::Access;
use crate::config::Config;
use crate::engines::{ContentKey, ContentKind};
use crate::error::EdgeError;
use crate::streams::client::Next;
use crate::streams::sendfile::{CopyReason, ViewerSocket};
use crate::streams::ClientHandle;
use crate::streams::{Phase, Sessions};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use std::sync::Arc;
use tokio::sync::watch;

/// The first value of `name` in a query string, percent-decoded (for every route).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// What a request asks to play: `id`, else `infohash`; 40 hex characters, in lower case, with
/// the kind kept (an infohash is forwarded to the engine as `infohash=`).
pub fn content_id(query: Option<&str>) -> Result<ContentKey, EdgeError> {
    let query = query.unwrap_or("");
    let (kind, name, value) = match (query_param(query, "id"), query_param(query, "infohash")) {
        (Some(id), _) => (ContentKind::ContentId, "id", id),
        (None, Some(ih)) => (ContentKind::Infohash, "infohash", ih),
        (None, None) => {
            return Err(EdgeError::BadRequest(
                "missing query parameter 'id' (the 40-hex AceStream content id)".into(),
            ))
        }
    };
    if value.len() != 40 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EdgeError::BadRequest(format!(
            "query parameter '{name}' must be 40 hex characters, got {} characters",
            value.chars().count()
        )));
    }
    Ok(ContentKey {
        kind,
        value: value.to_ascii_lowercase(),
    })
}

/// What ended a client's stream.
pub(super) enum End {
    /// The stream ended normally: finish the response.
    Finished,
    /// The client went away or failed: close the socket.
    Dropped,
}

/// Serves one getstream request; always answers the client itself.
pub async fn serve(
    s: &mut HttpSession,
    sessions: &Arc<Sessions>,
    access: &Access,
) -> pingora::Result<()> {
    let content = match content_id(s.req_header().uri.query()) {
        Ok(c) => c,
        Err(e) => return write_error(s, &e).await,
    };
    let id = content.to_string();
    if let Err(e) = access.check_stream_token(&content.value, s.req_header().uri.query()) {
        return write_error(s, &e).await;
    }
    if let Some(range) = s.req_header().headers.get(http::header::RANGE) {
        // A live stream has no byte positions: `bytes=0-` (what players send to probe) is the
        // stream itself, anything else cannot be satisfied.
        if range.to_str().map(|r| r.trim()).ok() != Some("bytes=0-") {
            let e = EdgeError::RangeNotSatisfiable(format!(
                "a live stream only serves Range: bytes=0-, not {range:?}"
            ));
            return write_error(s, &e).await;
        }
    }
    let rewind = match super::rewind::requested(s.req_header().uri.query()) {
        Ok(r) => r,
        Err(e) => return write_error(s, &e).await,
    };
    if s.req_header().method == http::Method::HEAD {
        // A player's probe: answer the stream's headers without starting anything.
        let h = stream_header(s, false)?;
        return s.write_response_header(Box::new(h), true).await;
    }
    let addr = access.client_of(s);
    let starts_session = sessions.get(&id).is_none();
    // Held while the client streams: dropping it frees the client's place.
    let _permit = match access.admit_viewer(addr, &id, starts_session, sessions.count()) {
        Ok(p) => p,
        Err(e) => return write_error(s, &e).await,
    };
    let mut client = match sessions.attach(&content, addr) {
        Ok(c) => c,
        Err(e) => return write_error(s, &e).await,
    };
    let session = client.session().clone();
    let mut phase = session.watch_phase();
    let config = sessions.config();
    let keepalive = !config.viewers.keepalive_interval.is_zero();
    let mut waited = false;
    loop {
        let current = phase.borrow_and_update().clone();
        match current {
            Phase::Streaming => break,
            // With keepalive, headers go out as soon as the engine accepted the session; null
            // packets then keep the player's socket alive through the prebuffer.
            Phase::Connected if keepalive => {
                waited = true;
                break;
            }
            Phase::Failed(e) => return write_error(s, &e).await,
            Phase::Ended(reason) if session.ring.published_bytes() == 0 => {
                return write_error(s, &EdgeError::SessionEnded(reason.to_string())).await
            }
            Phase::Ended(_) => break,
            Phase::Starting | Phase::Connected => {
                waited = true;
                tokio::select! {
                    changed = phase.changed() => if changed.is_err() { break },
                    _ = s.read_body_or_idle(true) => return Ok(()), // client gone while waiting
                }
            }
        }
    }
    // A rewound viewer reads the DVR spill from the keyframe at its time (a time at or past
    // live, or a session without a spill, plays live).
    let start = rewind.and_then(|r| {
        let spill = session.spill()?.clone();
        spill.start_for(r).map(|from| (spill, from))
    });
    if let Some((spill, from)) = start {
        // On a plain socket it is served directly, with `sendfile` from the spill's files.
        let socket = if config.viewers.viewer_takeover {
            ViewerSocket::of(s.stream()).ok()
        } else {
            None
        };
        let Some(socket) = socket else {
            return super::rewind::serve(s, sessions, client, spill, from, &id).await;
        };
        return serve_rewound_directly(s, sessions, client, (spill, from), socket, _permit, id)
            .await;
    }
    client.position(waited);
    s.set_write_timeout(Some(super::leaving::write_timeout(&client, &config)));
    // Decided before the head: it sets the framing (close-delimited when this task writes the
    // socket itself, see below). On a plain socket the viewer is served directly, with
    // `sendfile` from the page file, or (`zero_copy: false`, no page file) by writing the ring's
    // chunks; anything else goes through Pingora's writer.
    let path = if config.viewers.viewer_takeover {
        ViewerSocket::of(s.stream())
    } else {
        Err(CopyReason::Disabled)
    };
    let sendfile = if !config.viewers.zero_copy {
        Err(CopyReason::Disabled)
    } else if session.ring.pages().is_none() {
        Err(CopyReason::NoPages)
    } else {
        Ok(())
    };
    let h = stream_header(s, path.is_ok())?;
    s.write_response_header(Box::new(h), false).await?;
    // A stream's response counts when its headers go out, not hours later when it ends (the
    // logging hook skips it then).
    let metrics = sessions.metrics();
    metrics
        .http_responses
        .with_label_values(&[Route::GetStream.label(), "200"])
        .inc();
    let mut viewer = Viewer {
        s,
        sessions,
        client: &mut client,
        config: &config,
        id: &id,
    };
    let end = match path {
        Ok(socket) => {
            let label = match sendfile {
                Ok(()) => ["sendfile", "-"],
                Err(reason) => ["copy", reason.label()],
            };
            metrics.ts_viewer_paths.with_label_values(&label).inc();
            match viewer.through_pingora(Stay::UntilTheHeadIsOut).await {
                Ok(()) => {
                    let zero_copy = ZeroCopyViewer {
                        client,
                        socket,
                        sessions: sessions.clone(),
                        config: config.clone(),
                        id,
                        _held: Box::new(_permit),
                        sendfile: sendfile.is_ok(),
                    };
                    let fd = s.stream().map(|st| st.id());
                    match fd.and_then(crate::streams::sendfile::take_over) {
                        // Pingora lets the request go (its session and buffers are freed);
                        // the viewer streams on in its own small task.
                        Some(connection) => {
                            s.set_keepalive(None);
                            tokio::spawn(zero_copy.run(Some(connection)));
                            return Ok(());
                        }
                        None => zero_copy.run(None).await,
                    }
                }
                Err(end) => end,
            }
        }
        Err(reason) => {
            metrics
                .ts_viewer_paths
                .with_label_values(&["copy", reason.label()])
                .inc();
            match viewer.through_pingora(Stay::ToTheEnd).await {
                Ok(()) | Err(End::Finished) => End::Finished,
                Err(End::Dropped) => End::Dropped,
            }
        }
    };
    // Never reuse a stream's connection.
    s.set_keepalive(None);
    match end {
        End::Finished => {
            let _ = s.write_response_body(None, true).await;
        }
        End::Dropped => s.shutdown().await,
    }
    Ok(())
}

/// A rewound viewer on a plain socket: its head and the PAT + PMT go out through Pingora's
/// writer (which flushes them), then it takes its connection over and streams the spill with
/// `sendfile` in a task of its own ([`ZeroCopyViewer::run_from_spill`]).
async fn serve_rewound_directly(
    s: &mut HttpSession,
    sessions: &Arc<Sessions>,
    mut client: ClientHandle,
    (spill, (from, psi)): (Arc<crate::streams::dvr::Spill>, (u64, Bytes)),
    socket: ViewerSocket,
    permit: impl Send + Sync + 'static,
    id: String,
) -> pingora::Result<()> {
    let config = sessions.config();
    let metrics = sessions.metrics();
    client.become_dvr(from);
    metrics.dvr_rewound_viewers.inc();
    metrics
        .ts_viewer_paths
        .with_label_values(&["sendfile", "-"])
        .inc();
    let h = stream_header(s, true)?;
    s.write_response_header(Box::new(h), false).await?;
    metrics
        .http_responses
        .with_label_values(&[Route::GetStream.label(), "200"])
        .inc();
    s.set_keepalive(None);
    let psi_len = psi.len();
    if let Err(e) = s.write_response_body(Some(psi), false).await {
        Leaving::Closed(e.to_string()).log(&client, &id);
        return Ok(());
    }
    client.wrote_from_spill(psi_len, from);
    let viewer = ZeroCopyViewer {
        client,
        socket,
        sessions: sessions.clone(),
        config,
        id,
        _held: Box::new(permit),
        sendfile: true,
    };
    let fd = s.stream().map(|st| st.id());
    match fd.and_then(crate::streams::sendfile::take_over) {
        Some(connection) => {
            tokio::spawn(viewer.run_from_spill(Some(connection), spill, from));
            Ok(())
        }
        None => match viewer.run_from_spill(None, spill, from).await {
            End::Finished => s.write_response_body(None, true).await,
            End::Dropped => {
                s.shutdown().await;
                Ok(())
            }
        },
    }
}

/// How long a viewer's bytes go through Pingora's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stay {
    /// The whole stream.
    ToTheEnd,
    /// Until the response head went out; then the viewer takes its connection over.
    UntilTheHeadIsOut,
}

/// One TS viewer's response body: its request, its place in the session, and the settings.
struct Viewer<'a> {
    s: &'a mut HttpSession,
    sessions: &'a Arc<Sessions>,
    client: &'a mut ClientHandle,
    config: &'a Config,
    id: &'a str,
}

impl Viewer<'_> {
    /// Streams through Pingora's body writer (chunked on HTTP/1.1): to the end for a connection
    /// whose socket this task cannot write itself (HTTP/2, a subrequest, TLS) or with
    /// `viewer_takeover: false`; or only until the response head went out with a first piece
    /// (Pingora's writer offers no other flush), whatever that piece is: the join's PAT + PMT, a
    /// first chunk, or a keepalive null while the stream starts. `Err` with how the stream ended.
    async fn through_pingora(&mut self, stay: Stay) -> Result<(), End> {
        let session = self.client.session().clone();
        let mut ring_changed = session.ring.subscribe();
        loop {
            ring_changed.borrow_and_update();
            match self.client.next_step() {
                Next::Write(chunks) => {
                    for chunk in chunks {
                        let write = self.s.write_response_body(Some(chunk.clone()), false);
                        if let Err(leaving) = guarded(
                            write,
                            self.client,
                            &mut ring_changed,
                            self.sessions,
                            self.config,
                            self.id,
                        )
                        .await
                        {
                            leaving.log(self.client, self.id);
                            return Err(End::Dropped);
                        }
                        self.client.wrote(&chunk);
                        if stay == Stay::UntilTheHeadIsOut {
                            return Ok(());
                        }
                    }
                }
                Next::Wait => {
                    if self.wait(&mut ring_changed).await? && stay == Stay::UntilTheHeadIsOut {
                        return Ok(());
                    }
                }
                Next::Lagged(behind) => {
                    // A viewer that paused past the ring's tail goes on from the DVR spill.
                    let offset = self.client.stream_offset();
                    let spill =
                        super::rewind::continue_from(self.sessions, self.client, offset, self.id);
                    let Some(spill) = spill else {
                        return Err(self.lagged(behind));
                    };
                    let end = super::rewind::follow(
                        self.s,
                        self.sessions,
                        self.client,
                        spill,
                        offset,
                        self.id,
                    );
                    return Err(end.await);
                }
                Next::End => return Err(End::Finished),
            }
        }
    }

    /// Waits for the ring to change; sends a keepalive null packet when due. `Ok(true)` when a
    /// null went out, `Err` when the client is gone.
    async fn wait(&mut self, ring_changed: &mut watch::Receiver<u64>) -> Result<bool, End> {
        let keepalive = !self.config.viewers.keepalive_interval.is_zero();
        let keepalive_due = tokio::time::Instant::now() + self.config.viewers.keepalive_interval;
        tokio::select! {
            _ = ring_changed.changed() => return Ok(false),
            _ = self.s.read_body_or_idle(true) => return Err(End::Dropped),
            _ = tokio::time::sleep_until(keepalive_due), if keepalive => {}
        }
        let null = Bytes::from_static(&crate::ts::NULL_PACKET);
        let sent = self
            .s
            .write_response_body(Some(null), false)
            .await
            .map_err(|e| e.to_string());
        match sent {
            Ok(()) => Ok(true),
            Err(e) => {
                Leaving::Closed(e).log(self.client, self.id);
                Err(End::Dropped)
            }
        }
    }

    /// Drops a client that fell off the ring's tail.
    fn lagged(&mut self, behind: u64) -> End {
        let why = lagged(self.sessions, self.client, self.id, behind);
        Leaving::Dropped(why).log(self.client, self.id);
        End::Dropped
    }
}

/// `200 video/mp2t`: chunked for HTTP/1.1 on the copying path; close-delimited (the body ends with
/// the connection, RFC 9112 §6.3) for HTTP/1.0 and for zero-copy viewers, whose `sendfile` runs
/// would each need a chunk-size line and CRLF written around them (two more syscalls per send),
/// for a stream that ends with its connection anyway.
pub(super) fn stream_header(
    s: &mut HttpSession,
    close_delimited: bool,
) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("Content-Type", "video/mp2t")?;
    h.insert_header("Cache-Control", "no-cache, no-store")?;
    if close_delimited || s.req_header().version == http::Version::HTTP_10 {
        s.set_keepalive(None);
    } else {
        h.insert_header("Transfer-Encoding", "chunked")?;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789ABCDEF01234567";

    /// Ids are 40 hex characters, case-insensitive, normalised to lower case; `id` wins.
    #[test]
    fn content_id_rules() {
        assert_eq!(
            content_id(Some(&format!("id={ID}"))).unwrap(),
            ContentKey::content_id(ID.to_ascii_lowercase())
        );
        let ih = content_id(Some(&format!("infohash={ID}&x=1"))).unwrap();
        assert_eq!(
            (ih.kind, ih.value.as_str(), ih.param()),
            (
                ContentKind::Infohash,
                ID.to_ascii_lowercase().as_str(),
                "infohash"
            )
        );
        assert_eq!(
            ih.to_string(),
            format!("infohash:{}", ID.to_ascii_lowercase())
        );
        let other = "f".repeat(40);
        assert_eq!(
            content_id(Some(&format!("infohash={other}&id={ID}"))).unwrap(),
            ContentKey::content_id(ID.to_ascii_lowercase())
        );
        for bad in [
            "id=zz",
            "id=../",
            &format!("id={}", &ID[..39]),
            &format!("id={ID}0"),
            "",
            "id=",
        ] {
            let e = content_id(Some(bad)).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        assert!(content_id(None).unwrap_err().to_string().contains("'id'"));
    }
}
