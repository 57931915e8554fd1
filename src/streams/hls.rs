//! HLS from the session's own stream: a segmenter cuts what the upstream task releases into
//! segments at keyframes, and a live media playlist (RFC 8216, version 3) lists the newest ones.
//!
//! **Who owns what.** A session's [`Hls`] is created on its first HLS request and lives as long as
//! the session. The upstream task feeds it every released chunk (after publishing it to the
//! ring), with the chunk's keyframe marks and whether the stream's clock jumped there; routes
//! read segments and playlists. Segments hold the ring's chunks by reference ([`Bytes`] slices):
//! no second copy of the stream exists, only the PAT/PMT packets put in front of each segment.
//!
//! **Cutting.** A segment starts on a keyframe, with the PAT and PMT current there, and ends
//! where the next segment starts: at the first keyframe at or after `hls_segment_seconds` of
//! stream time (keyframe PTS, 33-bit wrap handled; the session's PCR-based media clock where a
//! PTS is missing). With no keyframe by 2.5× the target, the segment is cut anyway at a chunk
//! boundary and the cut is counted. A stream without video is cut at chunk boundaries. The
//! concatenation of the segments is the stream from the first cut on: nothing is lost or
//! repeated between two segments.
//!
//! **Playlist.** `#EXT-X-TARGETDURATION` is the longest segment the cutter can make (2.5× the
//! target, rounded up), fixed for the session's life; `#EXT-X-MEDIA-SEQUENCE` only grows; a
//! splice or clock jump puts `#EXT-X-DISCONTINUITY` before the first segment after it, and
//! `#EXT-X-DISCONTINUITY-SEQUENCE` counts the ones that left the window. The playlist shows
//! `hls_window_segments`; segments that left it stay fetchable for one more window.

mod playlist;

use super::ring::RingSnapshot;
use crate::sync::Lock;
use crate::ts::{wrapping_delta, KeyframeMark, PTS_WRAP};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// A session's HLS: its segmenter, and a signal for requests waiting for segments.
#[derive(Debug)]
pub struct Hls {
    segmenter: Mutex<Segmenter>,
    /// Segments cut so far.
    produced: watch::Sender<u64>,
}

impl Hls {
    /// HLS cutting at `target_seconds` with a playlist of `window` segments.
    pub fn new(target_seconds: f64, window: usize) -> Self {
        Hls {
            segmenter: Mutex::new(Segmenter::new(target_seconds, window)),
            produced: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Segmenter> {
        self.segmenter.locked()
    }

    /// Feeds a released chunk; returns the cuts it made.
    pub fn feed(&self, chunk: FedChunk) -> Cuts {
        let mut seg = self.lock();
        let before = seg.cuts;
        seg.feed(chunk);
        let after = seg.cuts;
        drop(seg);
        let made = Cuts {
            keyframe: after.keyframe - before.keyframe,
            forced: after.forced - before.forced,
        };
        if made.keyframe + made.forced > 0 {
            self.produced.send_replace(after.keyframe + after.forced);
        }
        made
    }

    /// Feeds what the ring still holds (for HLS starting on a running session). Chunks the
    /// upstream task fed meanwhile are skipped by offset.
    pub fn seed(&self, snap: RingSnapshot) -> Cuts {
        let mut total = Cuts::default();
        for (offset, data, media) in snap.chunks {
            let end = offset + data.len() as u64;
            let keyframes = snap
                .keyframes
                .iter()
                .filter(|k| k.offset >= offset && k.offset < end)
                .cloned()
                .collect();
            let made = self.feed(FedChunk {
                data,
                offset,
                media: (media.start, media.end),
                keyframes,
                psi: snap.psi.clone(),
                has_video: snap.has_video,
                discontinuity: false,
            });
            total.keyframe += made.keyframe;
            total.forced += made.forced;
        }
        total
    }

    /// Waits for segments: resolves with the count once it changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.produced.subscribe()
    }

    /// The playlist, once it lists at least [`MIN_PLAYLIST_SEGMENTS`] segments.
    pub fn playlist(&self, uri: impl Fn(u64) -> String) -> Option<String> {
        let seg = self.lock();
        (seg.playlist_len() >= MIN_PLAYLIST_SEGMENTS).then(|| seg.playlist(uri))
    }

    /// A segment still held.
    pub fn segment(&self, sequence: u64) -> Option<Segment> {
        self.lock().segment(sequence).cloned()
    }

    /// Bytes the held segments take (shared with the ring while it holds the same chunks).
    pub fn held_bytes(&self) -> usize {
        self.lock().held_bytes()
    }

    /// `#EXT-X-TARGETDURATION`, in seconds.
    pub fn target_duration(&self) -> u64 {
        self.lock().target_duration()
    }

    /// The longest the first playlist can take once stream bytes flow: its
    /// [`MIN_PLAYLIST_SEGMENTS`] segments, each cut at the latest when it reaches the forced-cut
    /// length, plus a second for the first keyframe's wait.
    pub fn first_playlist_within(&self) -> std::time::Duration {
        let target = self.lock().target;
        std::time::Duration::from_secs_f64(
            MIN_PLAYLIST_SEGMENTS as f64 * target * FORCED_CUT_FACTOR + 1.0,
        )
    }
}

/// A forced cut happens when a segment reaches this many targets without a keyframe.
const FORCED_CUT_FACTOR: f64 = 2.5;

/// Segments the playlist must list before it is served: a player starting on fewer stalls.
pub const MIN_PLAYLIST_SEGMENTS: usize = 3;

/// One released chunk, as the segmenter sees it.
#[derive(Debug, Clone)]
pub struct FedChunk {
    /// Its bytes (the ring's, by reference).
    pub data: Bytes,
    /// Stream offset of its first byte.
    pub offset: u64,
    /// Media time (seconds, the session's clock) at its start and end.
    pub media: (f64, f64),
    /// Keyframes found while it was inspected (offsets may lie in earlier chunks).
    pub keyframes: Vec<KeyframeMark>,
    /// The current PAT + PMT after this chunk, if known.
    pub psi: Option<Bytes>,
    /// Whether the stream has video keyframes to cut on.
    pub has_video: bool,
    /// The stream's clock jumped at this chunk (failover splice, discontinuity, loop).
    pub discontinuity: bool,
}

/// A finished segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its media sequence number.
    pub sequence: u64,
    /// Its duration in seconds.
    pub duration: f64,
    /// PAT + PMT, then the stream from the keyframe on.
    pub pieces: Vec<Bytes>,
    /// Total length.
    pub len: usize,
    /// `#EXT-X-DISCONTINUITY` goes before it.
    pub discontinuity: bool,
    /// Cut without a keyframe at its end (forced).
    pub forced: bool,
}

/// The segment being built.
#[derive(Debug)]
struct Pending {
    /// Pieces from the segment's start, with their stream offsets.
    pieces: Vec<(u64, Bytes)>,
    /// PAT + PMT to put in front.
    psi: Bytes,
    /// Keyframe PTS at the start, if the segment starts on one that has it.
    start_pts: Option<u64>,
    /// Media time at the start.
    start_media: f64,
    discontinuity: bool,
}

impl Pending {
    /// Splits the pieces at stream offset `at`: keeps those before it, returns the rest.
    fn split_off(&mut self, at: u64) -> Vec<(u64, Bytes)> {
        let mut rest = Vec::new();
        let mut keep = Vec::new();
        for (o, b) in self.pieces.drain(..) {
            let end = o + b.len() as u64;
            if end <= at {
                keep.push((o, b));
            } else if o >= at {
                rest.push((o, b));
            } else {
                let cut = (at - o) as usize;
                keep.push((o, b.slice(..cut)));
                rest.push((at, b.slice(cut..)));
            }
        }
        self.pieces = keep;
        rest
    }
}

/// Counts of what the segmenter did (the caller turns them into metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cuts {
    /// Segments cut on a keyframe.
    pub keyframe: u64,
    /// Segments cut without one.
    pub forced: u64,
}

/// The segmenter and the segment window of one session.
#[derive(Debug)]
pub struct Segmenter {
    target: f64,
    window: usize,
    pending: Option<Pending>,
    /// Offset the next fed chunk must start at (chunks already seen are skipped).
    next_offset: Option<u64>,
    /// The PSI seen last.
    psi: Option<Bytes>,
    /// Finished segments, oldest first: the playlist's window plus one more window.
    segments: VecDeque<Segment>,
    next_sequence: u64,
    /// `#EXT-X-DISCONTINUITY` tags of segments that left the playlist window.
    discontinuity_sequence: u64,
    /// The next segment starts after a clock jump or a gap.
    discontinuity_next: bool,
    /// Totals since creation.
    pub cuts: Cuts,
}

impl Segmenter {
    /// A segmenter cutting at `target_seconds`, with a playlist of `window` segments.
    pub fn new(target_seconds: f64, window: usize) -> Self {
        Segmenter {
            target: target_seconds,
            window: window.max(MIN_PLAYLIST_SEGMENTS),
            pending: None,
            next_offset: None,
            psi: None,
            segments: VecDeque::new(),
            next_sequence: 0,
            discontinuity_sequence: 0,
            discontinuity_next: false,
            cuts: Cuts::default(),
        }
    }

    /// `#EXT-X-TARGETDURATION`: the longest segment the cutter can make, in whole seconds.
    pub fn target_duration(&self) -> u64 {
        (self.target * FORCED_CUT_FACTOR).ceil() as u64
    }

    /// Bytes held by the finished segments (shared with the ring while it still holds them).
    pub fn held_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Segments in the playlist window now.
    pub fn playlist_len(&self) -> usize {
        self.segments.len().min(self.window)
    }

    /// A segment by sequence number, if still held.
    pub fn segment(&self, sequence: u64) -> Option<&Segment> {
        let first = self.segments.front()?.sequence;
        self.segments.get(sequence.checked_sub(first)? as usize)
    }

    /// Feeds one released chunk.
    pub fn feed(&mut self, c: FedChunk) {
        let end = c.offset + c.data.len() as u64;
        match self.next_offset {
            Some(next) if end <= next => return, // already seen (fed from the ring at start)
            Some(next) if c.offset > next => {
                // A gap: what was pending cannot continue across it.
                self.pending = None;
                self.discontinuity_next = true;
            }
            _ => {}
        }
        self.next_offset = Some(end);
        let (m0, m1) = c.media;
        if c.discontinuity {
            // The old timeline ends before this chunk; the next segment starts a new one.
            if let Some(p) = self.pending.as_ref() {
                let elapsed = m0 - p.start_media;
                self.cut(c.offset, elapsed, false);
            }
            self.pending = None;
            self.discontinuity_next = true;
        }
        if c.psi.is_some() {
            self.psi = c.psi.clone();
        }
        let media_at = |offset: u64| -> f64 {
            let f = offset.saturating_sub(c.offset) as f64 / c.data.len().max(1) as f64;
            m0 + (m1 - m0) * f.clamp(0.0, 1.0)
        };
        match self.pending.as_mut() {
            Some(p) => p.pieces.push((c.offset, c.data.clone())),
            None => {
                self.start(&c, &media_at);
                return;
            }
        }
        if !c.has_video {
            self.cut_on_time(end, m1, self.target, false);
            return;
        }
        for k in &c.keyframes {
            let Some(p) = self.pending.as_ref() else {
                break;
            };
            let start_offset = p.pieces.first().map_or(u64::MAX, |(o, _)| *o);
            if k.offset <= start_offset {
                continue;
            }
            let elapsed = match (p.start_pts, k.pts) {
                (Some(a), Some(b)) => wrapping_delta(a, b, PTS_WRAP) as f64 / 90_000.0,
                _ => media_at(k.offset) - p.start_media,
            };
            // A hair of slack: a GOP of exactly the target cuts there, not a GOP later.
            if elapsed >= self.target - 0.01 {
                let rest = self.cut(k.offset, elapsed, false);
                self.begin(rest, k.psi.clone(), k.pts, media_at(k.offset));
            }
        }
        self.cut_on_time(end, m1, self.target * FORCED_CUT_FACTOR, true);
    }

    /// Cuts at the chunk's end `end` (media time `m1`) if the segment has reached `limit`
    /// seconds: a stream without video at the target, a video stream with no keyframe in time.
    fn cut_on_time(&mut self, end: u64, m1: f64, limit: f64, forced: bool) {
        let Some(p) = self.pending.as_ref() else {
            return;
        };
        let elapsed = m1 - p.start_media;
        if elapsed >= limit {
            let rest = self.cut(end, elapsed, forced);
            let psi = self.psi.clone().unwrap_or_default();
            self.begin(rest, psi, None, m1);
        }
    }

    /// Starts the first segment (or the first after a gap or a clock jump): on this chunk's
    /// first keyframe, or on its start for a stream without video.
    fn start(&mut self, c: &FedChunk, media_at: &dyn Fn(u64) -> f64) {
        let end = c.offset + c.data.len() as u64;
        if c.has_video {
            let Some(k) = c
                .keyframes
                .iter()
                .find(|k| k.offset >= c.offset && k.offset < end)
            else {
                return;
            };
            let skip = (k.offset - c.offset) as usize;
            let pieces = vec![(k.offset, c.data.slice(skip..))];
            self.begin(pieces, k.psi.clone(), k.pts, media_at(k.offset));
        } else if let Some(psi) = self.psi.clone() {
            self.begin(vec![(c.offset, c.data.clone())], psi, None, c.media.0);
        }
    }

    /// Begins the next segment with `pieces` (from its first byte on).
    fn begin(&mut self, pieces: Vec<(u64, Bytes)>, psi: Bytes, pts: Option<u64>, media: f64) {
        self.pending = Some(Pending {
            pieces,
            psi,
            start_pts: pts,
            start_media: media,
            discontinuity: std::mem::take(&mut self.discontinuity_next),
        });
    }

    /// Finishes the pending segment at stream offset `at` as `elapsed` seconds long; returns
    /// the pieces after `at` (the next segment's start).
    fn cut(&mut self, at: u64, elapsed: f64, forced: bool) -> Vec<(u64, Bytes)> {
        let Some(mut p) = self.pending.take() else {
            return Vec::new();
        };
        let rest = p.split_off(at);
        if p.pieces.is_empty() {
            return rest;
        }
        let mut pieces = Vec::with_capacity(p.pieces.len() + 1);
        if !p.psi.is_empty() {
            pieces.push(p.psi);
        }
        pieces.extend(p.pieces.into_iter().map(|(_, b)| b));
        let len = pieces.iter().map(Bytes::len).sum();
        if forced {
            self.cuts.forced += 1;
        } else {
            self.cuts.keyframe += 1;
        }
        self.segments.push_back(Segment {
            sequence: self.next_sequence,
            duration: elapsed.max(0.0),
            pieces,
            len,
            discontinuity: p.discontinuity,
            forced,
        });
        self.next_sequence += 1;
        // The segment that just left the playlist window: its discontinuity is counted now.
        if let Some(left) = self
            .segments
            .len()
            .checked_sub(self.window + 1)
            .and_then(|i| self.segments.get(i))
        {
            if left.discontinuity {
                self.discontinuity_sequence += 1;
            }
        }
        // The playlist window, plus one more window still fetchable.
        while self.segments.len() > 2 * self.window {
            self.segments.pop_front();
        }
        rest
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests;
