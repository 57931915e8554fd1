//! How a TS viewer leaves, on both write paths (Pingora's writer and a taken-over connection):
//! a write bounded by `client_timeout` and by the ring's tail ([`guarded`]), and the one log line
//! and count of why it left ([`Leaving`], [`lagged`]).

use crate::config::Config;
use crate::streams::{ClientHandle, Sessions};
use std::future::Future;
use tokio::sync::watch;

/// A write to a viewer, bounded the same way on both paths: dropped (and counted) when its
/// socket accepts nothing for `client_timeout`, or when the ring evicts the chunk it is writing
/// (it fell off the tail); any other failure means the client left.
pub(super) async fn guarded<T, E: std::fmt::Display>(
    write: impl Future<Output = Result<T, E>>,
    client: &ClientHandle,
    ring_changed: &mut watch::Receiver<u64>,
    sessions: &Sessions,
    config: &Config,
    id: &str,
) -> Result<T, Leaving> {
    // Most writes go through at once (the socket has room): those need no timer and no look at
    // the ring's tail, so the write is tried once before either is set up.
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(Ok(v)) => return Ok(v),
        std::task::Poll::Ready(Err(e)) => return Err(Leaving::Closed(e.to_string())),
        std::task::Poll::Pending => {}
    }
    let timeout = write_timeout(client, config);
    tokio::select! {
        biased;
        r = tokio::time::timeout(timeout, write) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Leaving::Closed(e.to_string())),
            Err(_) => {
                sessions.metrics().slow_client_drops.inc();
                sessions.metrics().client_lag_at_drop.observe(client.lag_seconds());
                Err(Leaving::Dropped(format!("accepted nothing for {timeout:?}")))
            }
        },
        // A write of bytes it holds may outlast the ring keeping them when the session has a
        // DVR spill: the viewer (a paused player) then goes on from the spill at its next step.
        behind = client.fell_off(ring_changed), if !spill_takes_over(client) => {
            Err(Leaving::Dropped(lagged(sessions, client, id, behind)))
        }
    }
}

/// How long a viewer's socket may accept nothing: `client_timeout`, or `dvr_pause_timeout` where
/// longer while the session's DVR spill would take the viewer over (a paused player then holds
/// no memory, only its socket).
pub(super) fn write_timeout(client: &ClientHandle, config: &Config) -> std::time::Duration {
    let base = config.viewers.client_timeout;
    if spill_takes_over(client) {
        base.max(config.dvr.dvr_pause_timeout)
    } else {
        base
    }
}

/// Whether a viewer that falls off the ring's tail goes on from the session's DVR spill (it has
/// a live one, and the viewer was not cut by the buffer budget).
fn spill_takes_over(client: &ClientHandle) -> bool {
    !client.is_cut() && client.session().spill().is_some_and(|s| s.is_live())
}

/// Why a client's stream ended before the stream did.
pub(super) enum Leaving {
    /// The client closed its connection (or it broke): it left. The session logs the leave.
    Closed(String),
    /// The proxy dropped it (too slow, accepted nothing), with the reason in words.
    Dropped(String),
}

impl Leaving {
    pub(super) fn log(&self, client: &ClientHandle, id: &str) {
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
pub(super) fn lagged(sessions: &Sessions, client: &ClientHandle, id: &str, behind: u64) -> String {
    if client.is_cut() {
        // Logged and counted when the budget cut it (see `streams::budget`).
        return format!("cut to keep max_buffer_bytes, {behind} bytes behind the live edge");
    }
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
