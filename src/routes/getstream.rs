//! `GET /ace/getstream?id=<content id>`: attach to the content id's session and stream its ring.
//!
//! Headers go out when the session has its first bytes (an error before that is a JSON status).
//! Each client then writes at its own pace from its own cursor; Pingora's write timeout
//! (`client_timeout`) drops a client whose socket accepts nothing, and falling off the ring's tail
//! drops it too. Neither ever slows the session or another client.

use super::{write_error, Route};
use crate::access::Access;
use crate::engines::{ContentKey, ContentKind};
use crate::error::EdgeError;
use crate::streams::client::Next;
use crate::streams::ClientHandle;
use crate::streams::{Phase, Sessions};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use std::sync::Arc;

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
enum End {
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
    if s.req_header().method == http::Method::HEAD {
        // A player's probe: answer the stream's headers without starting anything.
        let h = stream_header(s)?;
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
    let keepalive = !config.keepalive_interval.is_zero();
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
                return write_error(s, &EdgeError::NoEngine(format!("session ended: {reason}")))
                    .await
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
    client.position(waited);
    s.set_write_timeout(Some(config.client_timeout));
    let h = stream_header(s)?;
    s.write_response_header(Box::new(h), false).await?;
    // A stream's response counts when its headers go out, not hours later when it ends (the
    // logging hook skips it then).
    sessions
        .metrics()
        .http_responses
        .with_label_values(&[Route::GetStream.label(), "200"])
        .inc();
    let mut ring_changed = session.ring.subscribe();
    let end = loop {
        ring_changed.borrow_and_update();
        match client.next_step() {
            Next::Write(chunks) => {
                let mut stop = None;
                for chunk in chunks {
                    let outcome = tokio::select! {
                        r = s.write_response_body(Some(chunk.clone()), false) => r.map_err(|e| {
                            if e.etype() == &pingora::ErrorType::WriteTimedout {
                                sessions.metrics().slow_client_drops.inc();
                                sessions.metrics().client_lag_at_drop.observe(client.lag_seconds());
                                Leaving::Dropped(format!("accepted nothing for {:?}", config.client_timeout))
                            } else {
                                Leaving::Closed(e.to_string())
                            }
                        }),
                        behind = client.fell_off(&mut ring_changed) => Err(Leaving::Dropped(lagged(sessions, &client, &id, behind))),
                    };
                    match outcome {
                        Ok(()) => client.wrote(&chunk),
                        Err(e) => {
                            stop = Some(e);
                            break;
                        }
                    }
                }
                if let Some(leaving) = stop {
                    leaving.log(&client, &id);
                    break End::Dropped;
                }
            }
            Next::Wait => {
                let keepalive_due = tokio::time::Instant::now() + config.keepalive_interval;
                tokio::select! {
                    _ = ring_changed.changed() => {}
                    _ = s.read_body_or_idle(true) => break End::Dropped,
                    _ = tokio::time::sleep_until(keepalive_due), if keepalive => {
                        if let Err(e) = s.write_response_body(Some(Bytes::from_static(&crate::ts::NULL_PACKET)), false).await {
                            Leaving::Closed(e.to_string()).log(&client, &id);
                            break End::Dropped;
                        }
                    }
                }
            }
            Next::Lagged(behind) => {
                let why = lagged(sessions, &client, &id, behind);
                Leaving::Dropped(why).log(&client, &id);
                break End::Dropped;
            }
            Next::End => break End::Finished,
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

/// Why a client's stream ended before the stream did.
enum Leaving {
    /// The client closed its connection (or it broke): it left. The session logs the leave.
    Closed(String),
    /// The proxy dropped it (too slow, accepted nothing), with the reason in words.
    Dropped(String),
}

impl Leaving {
    fn log(&self, client: &ClientHandle, id: &str) {
        let addr = client.addr_text();
        match self {
            Leaving::Closed(how) => {
                log::debug!("client {addr} of {id} closed its connection: {how}")
            }
            Leaving::Dropped(why) => log::info!(
                content_id:% = id, client:% = addr, reason:% = why;
                "client {addr} of {id} dropped: {why}"
            ),
        }
    }
}

/// Logs and counts a slow-client drop (one warning line, lag in bytes and stream seconds) and
/// returns the reason.
fn lagged(sessions: &Sessions, client: &ClientHandle, id: &str, behind: u64) -> String {
    let metrics = sessions.metrics();
    metrics.slow_client_drops.inc();
    let ring = &client.session().ring;
    // The client's own chunk is gone; at least the ring's span, and its bytes at the bitrate.
    let by_bytes = ring
        .bitrate_bps()
        .map_or(0.0, |bps| behind as f64 * 8.0 / bps);
    let seconds = client.lag_seconds().max(by_bytes);
    metrics.client_lag_at_drop.observe(seconds);
    log::warn!(
        content_id:% = id, client:% = client.addr_text(), reason = "slow";
        "slow client {} of {id} dropped: {behind} bytes ({seconds:.1} s of stream) behind the live edge (ring {} bytes, {:.1} s)",
        client.addr_text(),
        ring.held_bytes(),
        ring.lag_seconds(ring.first_seq()),
    );
    format!("fell {behind} bytes ({seconds:.1} s) behind the live edge")
}

/// `200 video/mp2t`, chunked for HTTP/1.1, close-delimited for HTTP/1.0.
fn stream_header(s: &mut HttpSession) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("Content-Type", "video/mp2t")?;
    h.insert_header("Cache-Control", "no-cache, no-store")?;
    if s.req_header().version == http::Version::HTTP_10 {
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
