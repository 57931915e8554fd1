//! Releasing chunks into the ring: on the stream's clock ([`super::pacer`]) when it has one, else
//! at the pace of its most advanced reader. Owned by the session's upstream task.
//!
//! **Read-ahead for HLS.** While a session has HLS, a clocked stream is read up to
//! `hls_read_ahead_bytes` ahead of its paced edge: each chunk is admitted (timed by the pacer)
//! and handed to the HLS segmenter when it is read, then waits in a queue for its time in the
//! ring. So an engine's burst (its live cache, sent at line speed after prebuffering) becomes HLS
//! segments at once, while TS viewers still get the stream on its clock. The queue's chunks are
//! the same [`bytes::Bytes`] the segments and later the ring hold: no copy. Without HLS the queue
//! holds at most the chunk waiting for its time, and the rest of a burst stays in the engine.

use super::hls::{Cuts, FedChunk};
use super::pacer::{Admission, Pacer, Reanchor};
use super::rechunk::Chunk;
use super::ring::MediaSpan;
use super::session::{Readers, StreamSession};
use crate::config::Config;
use crate::metrics::Metrics;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Reader-paced ingest re-checks the leading client at least this often, in case a wake-up was
/// missed (a client that left between the check and the wait).
const READER_PACE_RECHECK: Duration = Duration::from_millis(100);

/// On a clocked stream, the slowest reader's cursor (what the ring must keep past its byte
/// minimum) is looked up at most this often. One lookup reads every client's cursor, about 3 ms
/// at 1000 viewers (each a cache miss on a line another core writes); done before every publish
/// it took 8–10 % of the proxy's CPU. A cursor a second old only keeps a little more, and joiners
/// start within the byte minimum, which is always kept.
const NEEDED_REFRESH: Duration = Duration::from_secs(1);

/// A chunk admitted by the pacer, waiting for its time in the ring.
struct Admitted {
    chunk: Chunk,
    media: MediaSpan,
    /// When it may enter the ring (`None`: the stream has no clock; its readers pace it).
    release_at: Option<std::time::Instant>,
    /// The stream's clock jumped here (a new HLS timeline starts).
    jump: bool,
    /// When its end plays on the stream's clock (`None` without one): how far the ring's edge
    /// runs ahead of real time once it is in.
    plays_at: Option<std::time::Instant>,
    /// Already handed to the HLS segmenter.
    fed_hls: bool,
}

/// Releases chunks into the session's ring on the stream's clock (see [`super::pacer`]), or, for
/// a stream without a clock, no faster than the most advanced client takes them.
pub(crate) struct Ingest<'a> {
    session: &'a StreamSession,
    metrics: &'a Metrics,
    pub(crate) pacer: Pacer,
    /// Reader-paced ingest keeps the ring at most this far ahead of its fastest reader
    /// (`join_burst_bytes`, at least one chunk).
    read_ahead: usize,
    /// How far a clocked stream is read ahead of its paced edge while it has HLS
    /// (`hls_read_ahead_bytes`).
    hls_read_ahead: usize,
    /// Admitted chunks not yet in the ring, oldest first (clocked ones only).
    queue: VecDeque<Admitted>,
    queued_bytes: usize,
    /// Whether the stream has shown video (its PMT named a video stream).
    has_video: bool,
    /// When the slowest reader's cursor was last given to the ring (see [`NEEDED_REFRESH`]).
    needed_at: Option<Instant>,
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
            hls_read_ahead: config.hls.hls_read_ahead_bytes,
            queue: VecDeque::new(),
            queued_bytes: 0,
            has_video: false,
            needed_at: None,
        }
    }

    /// Admits a chunk and releases it into the ring when its time comes. Returns once the
    /// read-ahead queue has room for the next one (at once while it has, which is how an
    /// engine's burst reaches HLS at line speed).
    pub(crate) async fn release(&mut self, chunk: Chunk) {
        let admitted = self.admit(chunk);
        if admitted.release_at.is_none() {
            // No clock: everything before it goes in on its time first, then this one at its
            // leading reader's pace.
            self.drain().await;
            let media = admitted.media;
            self.wait_for_leader(admitted.chunk.data.len(), media).await;
            self.publish(admitted);
            return;
        }
        self.queued_bytes += admitted.chunk.data.len();
        self.queue.push_back(admitted);
        self.feed_hls();
        self.make_room().await;
    }

    /// When the oldest queued chunk is due in the ring (for the upstream task's wait).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.queue
            .front()
            .and_then(|a| a.release_at)
            .map(Instant::from_std)
    }

    /// Publishes every queued chunk whose time has come.
    pub(crate) fn publish_due(&mut self) {
        let now = std::time::Instant::now();
        while self
            .queue
            .front()
            .is_some_and(|a| a.release_at.is_none_or(|at| at <= now))
        {
            if let Some(a) = self.queue.pop_front() {
                self.queued_bytes -= a.chunk.data.len();
                self.publish(a);
            }
        }
        self.session.set_read_ahead(self.queued_bytes);
    }

    /// Publishes every queued chunk, each at its time (before a new upstream starts: the queue
    /// carries the viewers across the gap).
    pub(crate) async fn drain(&mut self) {
        while let Some(at) = self.next_due() {
            tokio::time::sleep_until(at).await;
            self.publish_due();
        }
    }

    /// Waits (publishing what falls due) until the queue holds no more than the read-ahead
    /// allows: `hls_read_ahead_bytes` while the session has HLS, else nothing beyond this chunk.
    async fn make_room(&mut self) {
        loop {
            self.publish_due();
            let allowed = if self.session.hls().is_some() {
                self.hls_read_ahead
            } else {
                0
            };
            if self.queued_bytes <= allowed {
                return;
            }
            match self.next_due() {
                // A chunk already due goes in now: a timer set in the past still waits for the
                // timer wheel's next turn (1 ms), which capped a fast source at one chunk per
                // millisecond (423 Mbit/s with 64 KiB chunks in the `raw` bench).
                Some(at) if at > Instant::now() => tokio::time::sleep_until(at).await,
                Some(_) => {}
                None => return,
            }
        }
    }

    /// Times a chunk on the stream's clock.
    fn admit(&mut self, chunk: Chunk) -> Admitted {
        let now = std::time::Instant::now();
        let found = &chunk.found;
        let a: Admission =
            self.pacer
                .admit(now, chunk.data.len(), found.last_pcr, found.discontinuity);
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
        self.has_video |= found.has_video;
        Admitted {
            media: MediaSpan {
                start: a.media_start,
                end: a.media_end,
                // Unscheduled chunks before a clock is known count as clockless for retention.
                clocked: self.pacer.has_clock(),
            },
            release_at: a.release_at,
            // A timestamp jump starts a new HLS timeline; a late upstream does not.
            jump: a.reanchor.is_some_and(|r| !matches!(r, Reanchor::Late)),
            plays_at: self.pacer.edge_due(),
            fed_hls: false,
            chunk,
        }
    }

    /// Hands the queued chunks HLS has not seen to its segmenter, in order (a session whose HLS
    /// started meanwhile gets them from its oldest unfed one on: no gap).
    fn feed_hls(&mut self) {
        let Some(hls) = self.session.hls() else {
            return;
        };
        let has_video = self.has_video || self.session.ring.has_video();
        for a in self.queue.iter_mut().filter(|a| !a.fed_hls) {
            a.fed_hls = true;
            record_cuts(self.metrics, hls.feed(fed_chunk(a, has_video)));
        }
    }

    /// Puts one chunk into the ring (and into HLS, if it has not had it).
    fn publish(&mut self, a: Admitted) {
        let ring = &self.session.ring;
        if a.media.clocked || a.release_at.is_some() {
            let now = Instant::now();
            if self
                .needed_at
                .is_none_or(|t| now.duration_since(t) >= NEEDED_REFRESH)
            {
                let needed = self.session.readers().slowest();
                ring.needed_from(needed);
                self.needed_at = Some(now);
            }
        }
        let hls_chunk = match self.session.hls() {
            Some(_) if !a.fed_hls => Some(fed_chunk(&a, self.has_video || ring.has_video())),
            _ => None,
        };
        let Admitted {
            chunk,
            media,
            plays_at,
            jump: a_jump,
            ..
        } = a;
        // The DVR spill gets every chunk the ring does, with its keyframes (not waited for).
        if let Some(spill) = self.session.spill() {
            let marks = chunk
                .found
                .keyframes
                .iter()
                .map(|k| (k.offset, k.psi.clone()))
                .collect();
            let media = (media.start, media.end);
            spill.append(
                self.metrics,
                (chunk.offset, chunk.data.clone()),
                media,
                a_jump,
                marks,
            );
        }
        if let Some(psi) = chunk.found.psi {
            ring.set_psi(psi, chunk.found.has_video);
        }
        ring.add_keyframes(chunk.found.keyframes);
        ring.publish(chunk.data, media);
        // HLS (if a request started it) gets a chunk it has not had right after the ring does.
        if let (Some(hls), Some(c)) = (self.session.hls(), hls_chunk) {
            record_cuts(self.metrics, hls.feed(c));
        }
        let lead = plays_at.map(|due| {
            due.saturating_duration_since(std::time::Instant::now())
                .as_secs_f64()
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

/// What the HLS segmenter is given of an admitted chunk (its bytes by reference).
fn fed_chunk(a: &Admitted, has_video: bool) -> FedChunk {
    let found = &a.chunk.found;
    FedChunk {
        data: a.chunk.data.clone(),
        offset: a.chunk.offset,
        media: (a.media.start, a.media.end),
        keyframes: found.keyframes.clone(),
        psi: found.psi.clone(),
        has_video: found.has_video || has_video,
        discontinuity: a.jump,
    }
}
