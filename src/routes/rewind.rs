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

use super::getstream::query_param;
use super::leaving::Leaving;
use crate::error::EdgeError;
use crate::streams::dvr::{Rewind, Spill, SpillRead};
use crate::streams::{ClientHandle, Sessions};
use bytes::Bytes;
use pingora::proxy::Session as HttpSession;
use std::sync::Arc;

/// Bytes read from the spill per write. Fixed: large sequential reads from the page cache, a
/// quarter second of a 8 Mbit/s stream, so a viewer catching up does so in few writes.
const SPILL_READ_BYTES: usize = 256 * 1024;

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
    s.set_write_timeout(Some(config.viewers.client_timeout));
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
    let keepalive = config.viewers.keepalive_interval;
    let mut offset = from;
    let mut written = spill.written();
    let leaving = loop {
        let reader = spill.clone();
        let read = tokio::task::spawn_blocking(move || reader.read(offset, SPILL_READ_BYTES)).await;
        match read {
            Ok(Ok(SpillRead::Data(bytes))) => {
                metrics.dvr_spill_reads.inc();
                let n = bytes.len();
                if let Err(e) = s.write_response_body(Some(bytes), false).await {
                    break Some(Leaving::Closed(e.to_string()));
                }
                offset += n as u64;
                client.wrote_from_spill(n, offset);
            }
            Ok(Ok(SpillRead::Pending)) => {
                written.borrow_and_update();
                tokio::select! {
                    _ = written.changed() => {}
                    _ = s.read_body_or_idle(true) => break Some(Leaving::Closed("closed".into())),
                    _ = tokio::time::sleep(keepalive), if !keepalive.is_zero() => {
                        // Nothing new (a stall, a failover): a null packet keeps the player.
                        let null = Bytes::from_static(&crate::ts::NULL_PACKET);
                        if let Err(e) = s.write_response_body(Some(null), false).await {
                            break Some(Leaving::Closed(e.to_string()));
                        }
                    }
                }
            }
            Ok(Ok(SpillRead::Gone)) if !spill.is_live() => break None,
            Ok(Ok(SpillRead::Gone)) => {
                break Some(Leaving::Dropped(format!(
                    "fell out of the DVR window (reading at stream offset {offset})"
                )))
            }
            Ok(Err(e)) => break Some(Leaving::Dropped(format!("DVR read failed: {e}"))),
            Err(e) => break Some(Leaving::Dropped(format!("DVR read task failed: {e}"))),
        }
    };
    match leaving {
        None => {
            let _ = s.write_response_body(None, true).await;
        }
        Some(l) => {
            l.log(&client, id);
            s.shutdown().await;
        }
    }
    Ok(())
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
