//! Releasing chunks into the ring: on the stream's clock ([`super::pacer`]) when it has one, else
//! at the pace of its most advanced reader. Owned by the session's upstream task.

use super::hls::{Cuts, FedChunk};
use super::pacer::{Admission, Pacer, Reanchor};
use super::rechunk::Chunk;
use super::ring::MediaSpan;
use super::session::{Readers, StreamSession};
use crate::config::Config;
use crate::metrics::Metrics;
use std::time::Duration;

/// Reader-paced ingest re-checks the leading client at least this often, in case a wake-up was
/// missed (a client that left between the check and the wait).
const READER_PACE_RECHECK: Duration = Duration::from_millis(100);

/// On a clocked stream, the slowest reader's cursor (what the ring must keep past its byte
/// minimum) is looked up at most this often. One lookup reads every client's cursor, about 3 ms
/// at 1000 viewers (each a cache miss on a line another core writes); done before every publish
/// it took 8–10 % of the proxy's CPU. A cursor a second old only keeps a little more, and joiners
/// start within the byte minimum, which is always kept.
const NEEDED_REFRESH: Duration = Duration::from_secs(1);

/// Releases chunks into the session's ring on the stream's clock (see [`super::pacer`]), or, for
/// a stream without a clock, no faster than the most advanced client takes them.
pub(crate) struct Ingest<'a> {
    session: &'a StreamSession,
    metrics: &'a Metrics,
    pub(crate) pacer: Pacer,
    /// Reader-paced ingest keeps the ring at most this far ahead of its fastest reader
    /// (`join_burst_bytes`, at least one chunk).
    read_ahead: usize,
    /// When the slowest reader's cursor was last given to the ring (see [`NEEDED_REFRESH`]).
    needed_at: Option<tokio::time::Instant>,
}

impl<'a> Ingest<'a> {
    pub(crate) fn new(session: &'a StreamSession, metrics: &'a Metrics, config: &Config) -> Self {
        Ingest {
            session,
            metrics,
            pacer: Pacer::new(config.sessions.live_lead),
            read_ahead: config
                .buffers
                .join_burst_bytes
                .max(config.buffers.copy_chunk_size),
            needed_at: None,
        }
    }

    pub(crate) async fn release(&mut self, chunk: Chunk) {
        let now = tokio::time::Instant::now();
        let Chunk {
            data,
            found,
            offset,
        } = chunk;
        let a: Admission = self.pacer.admit(
            now.into_std(),
            data.len(),
            found.last_pcr,
            found.discontinuity,
        );
        if let Some(r) = a.reanchor {
            self.metrics
                .clock_reanchors
                .with_label_values(&[r.label()])
                .inc();
            log::info!(
                "session {}: stream clock re-anchored ({})",
                self.session.content_id,
                r.label()
            );
        }
        let media = MediaSpan {
            start: a.media_start,
            end: a.media_end,
            // Unscheduled chunks before a clock is known count as clockless for retention.
            clocked: self.pacer.has_clock(),
        };
        match a.release_at {
            Some(at) => {
                // A chunk already due goes in now: a timer set in the past still waits for the
                // timer wheel's next turn (1 ms), which capped a fast source at one chunk per
                // millisecond (423 Mbit/s with 64 KiB chunks in the `raw` bench).
                if at > now.into_std() {
                    tokio::time::sleep_until(at.into()).await;
                }
                let now = tokio::time::Instant::now();
                if self
                    .needed_at
                    .is_none_or(|t| now.duration_since(t) >= NEEDED_REFRESH)
                {
                    let needed = self.session.readers().slowest();
                    self.session.ring.needed_from(needed);
                    self.needed_at = Some(now);
                }
            }
            None => self.wait_for_leader(data.len(), media).await,
        }
        let ring = &self.session.ring;
        // HLS (if a request started it) gets the chunk right after the ring does.
        let hls_chunk = self.session.hls().map(|_| FedChunk {
            data: data.clone(),
            offset,
            media: (media.start, media.end),
            keyframes: found.keyframes.clone(),
            psi: found.psi.clone(),
            has_video: found.has_video || ring.has_video(),
            // A timestamp jump starts a new HLS timeline; a late upstream does not.
            discontinuity: a.reanchor.is_some_and(|r| !matches!(r, Reanchor::Late)),
        });
        if let Some(psi) = found.psi {
            ring.set_psi(psi, found.has_video);
        }
        ring.add_keyframes(found.keyframes);
        ring.publish(data, media);
        if let (Some(hls), Some(c)) = (self.session.hls(), hls_chunk) {
            record_cuts(self.metrics, hls.feed(c));
        }
        let lead = self.pacer.has_clock().then(|| {
            let now = tokio::time::Instant::now().into_std();
            self.pacer.lead(now).as_secs_f64()
        });
        self.session.set_ingest_lead(lead);
        if let Some(lead) = lead {
            self.metrics.ingest_lead.observe(lead);
        }
    }

    /// Reader-paced ingest: with clients attached, publish only once the most advanced client
    /// has less than `read_ahead` bytes left to read (so the ring fills at the pace of its fastest
    /// reader, and joiners, who start near the edge, start next to it), and never evict a chunk
    /// that client has not taken. Slower readers are kept what they still need, up to
    /// `stream_buffer_max_bytes`: equal readers drift apart, and none is held back by another.
    /// While attached clients have not started reading, wait for them. With no client attached,
    /// evict freely.
    async fn wait_for_leader(&self, len: usize, media: MediaSpan) {
        self.session.set_clockless();
        let ring = &self.session.ring;
        loop {
            match self.session.readers() {
                Readers::None => {
                    ring.needed_from(None);
                    return;
                }
                Readers::Leader {
                    cursor,
                    offset,
                    slowest,
                } => {
                    ring.needed_from(Some(slowest));
                    let ahead = ring.published_bytes().saturating_sub(offset);
                    if ahead <= self.read_ahead as u64 && cursor >= ring.evicts_through(len, media)
                    {
                        return;
                    }
                }
                Readers::Starting => {}
            }
            self.session
                .wait_for_client_progress(READER_PACE_RECHECK)
                .await;
        }
    }
}

/// Counts HLS cuts in the metrics.
pub(crate) fn record_cuts(metrics: &Metrics, cuts: Cuts) {
    if cuts.keyframe > 0 {
        metrics
            .hls_segments
            .with_label_values(&["keyframe"])
            .inc_by(cuts.keyframe);
    }
    if cuts.forced > 0 {
        metrics
            .hls_segments
            .with_label_values(&["forced"])
            .inc_by(cuts.forced);
    }
}
