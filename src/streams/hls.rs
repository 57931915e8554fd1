//! HLS from the session's own stream: a segmenter cuts what the upstream task reads into segments
//! at keyframes (and, with low-latency HLS, into parts), and a live media playlist (RFC 8216,
//! version 3; version 6 with RFC 8216bis parts) lists the newest ones.
//!
//! **Who owns what.** A session's [`Hls`] is created on its first HLS request and lives as long as
//! the session. The upstream task feeds it every chunk it reads (with HLS on, read ahead of the
//! paced ring: see [`super::ingest`]), with the chunk's keyframe marks and whether the stream's
//! clock jumped there; routes read segments, parts and playlists. Segments and parts hold the
//! ring's chunks by reference ([`Bytes`] slices): no second copy of the stream exists, only the
//! PAT/PMT packets put in front of each segment.
//!
//! **Cutting** ([`cut`]). A segment starts on a keyframe, with the PAT and PMT current there, and
//! ends where the next segment starts: at the first keyframe at or after `hls_segment_seconds` of
//! stream time (keyframe PTS, 33-bit wrap handled; the session's PCR-based media clock where a
//! PTS is missing). A new session's first segment is cut after `hls_first_segment_seconds`, each
//! next one twice as long up to the target, so a player can start after about a second. With no
//! keyframe by 2.5× the target, the segment is cut anyway at a chunk boundary and the cut is
//! counted. A stream without video is cut at chunk boundaries. The concatenation of the segments
//! is the stream from the first cut on: nothing is lost or repeated between two segments.
//! **Parts** ([`parts`]) are cut every `hls_part_seconds` on a frame's first packet; a segment's
//! parts are its bytes, in order.
//!
//! **Playlist** ([`playlist`]). `#EXT-X-TARGETDURATION` is the longest segment the cutter can make
//! (2.5× the target, rounded up), fixed for the session's life; `#EXT-X-MEDIA-SEQUENCE` only
//! grows; a splice or clock jump puts `#EXT-X-DISCONTINUITY` before the first segment after it,
//! and `#EXT-X-DISCONTINUITY-SEQUENCE` counts the ones that left the window. The playlist shows
//! `hls_window_segments`; segments that left it stay fetchable for one more window. It is served
//! from its first segment on.

mod cut;
mod parts;
mod playlist;

use super::ring::RingSnapshot;
use crate::sync::Lock;
use crate::ts::{wrapping_delta, KeyframeMark, PTS_WRAP};
use bytes::Bytes;
use cut::Pending;
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
    /// How fast the last cuts came, to tell an engine's burst from the live edge.
    pace: Mutex<CutPace>,
}

/// When the segmenter last cut (a segment or a part), and whether cuts are coming faster than
/// the stream plays: an engine's burst being cut. A playlist answered then would name segments
/// that leave its window within milliseconds, so a first playlist waits for the burst to end
/// (see [`Hls::settling`]).
#[derive(Debug, Default)]
struct CutPace {
    /// Wall time and media time (the fed stream's end) of the last cut.
    last: Option<(tokio::time::Instant, f64)>,
    /// While cuts come faster than real time: when the burst counts as over if no cut follows.
    bursting_until: Option<tokio::time::Instant>,
}

/// A burst is over once no cut came for this long. Fixed: a burst read at line speed cuts its
/// segments and parts within a millisecond or two of each other, while the live edge cuts at most
/// every `hls_part_seconds` (at least 0.1 s); a tenth of a second is all a fresh player waits.
pub const BURST_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// How a session's HLS is cut and listed (from the `hls_*` keys when it starts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HlsSettings {
    /// `hls_segment_seconds`.
    pub segment_seconds: f64,
    /// `hls_window_segments`.
    pub window_segments: usize,
    /// `hls_first_segment_seconds` (zero: full length from the start).
    pub first_segment_seconds: f64,
    /// `hls_part_seconds` when `hls_low_latency` is on.
    pub part_seconds: Option<f64>,
}

impl HlsSettings {
    /// The settings the config asks for.
    pub fn of(c: &crate::config::Hls) -> Self {
        HlsSettings {
            segment_seconds: c.hls_segment_seconds.as_secs_f64(),
            window_segments: c.hls_window_segments,
            first_segment_seconds: c.hls_first_segment_seconds.as_secs_f64(),
            part_seconds: c
                .hls_low_latency
                .then_some(c.hls_part_seconds.as_secs_f64()),
        }
    }
}

impl Hls {
    /// HLS cut and listed as `settings` say.
    pub fn new(settings: HlsSettings) -> Self {
        let segmenter = Segmenter::new(settings.segment_seconds, settings.window_segments)
            .with_start(settings.first_segment_seconds)
            .with_parts(settings.part_seconds);
        Hls {
            segmenter: Mutex::new(segmenter),
            produced: watch::channel(0).0,
            pace: Mutex::new(CutPace::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Segmenter> {
        self.segmenter.locked()
    }

    /// Feeds a released chunk; returns the cuts it made.
    pub fn feed(&self, chunk: FedChunk) -> Cuts {
        let mut seg = self.lock();
        let (before, parts_before) = (seg.cuts, seg.parts_cut);
        let media_end = chunk.media.1;
        seg.feed(chunk);
        let (after, parts_after) = (seg.cuts, seg.parts_cut);
        drop(seg);
        let made = Cuts {
            keyframe: after.keyframe - before.keyframe,
            forced: after.forced - before.forced,
        };
        if made.keyframe + made.forced > 0 || parts_after > parts_before {
            self.pace
                .locked()
                .cut(tokio::time::Instant::now(), media_end);
            self.produced
                .send_replace(after.keyframe + after.forced + parts_after);
        }
        made
    }

    /// While an engine's burst is being cut (cuts faster than the stream plays, the last less
    /// than [`BURST_QUIET`] ago): until when a fresh player's playlist waits for it to end.
    pub fn settling(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        self.pace.locked().bursting_until.filter(|t| now < *t)
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

    /// The playlist, once it lists at least [`MIN_PLAYLIST_SEGMENTS`] segments. Segment URIs are
    /// `uri(sequence, None)`, part URIs `uri(sequence, Some(part))`.
    pub fn playlist(&self, uri: impl Fn(u64, Option<usize>) -> String) -> Option<String> {
        let seg = self.lock();
        (seg.playlist_len() >= MIN_PLAYLIST_SEGMENTS).then(|| seg.playlist(uri))
    }

    /// Segments the playlist lists now.
    pub fn listed(&self) -> usize {
        self.lock().playlist_len()
    }

    /// Whether the playlist has segment `msn` (and its part `part`): see [`Segmenter::has`].
    pub fn has(&self, msn: u64, part: Option<u64>) -> bool {
        self.lock().has(msn, part)
    }

    /// The sequence number of the segment being built.
    pub fn building(&self) -> u64 {
        self.lock().building()
    }

    /// A part still held (or of the segment being built).
    pub fn part(&self, sequence: u64, index: usize) -> Option<Part> {
        self.lock().part(sequence, index).cloned()
    }

    /// Whether low-latency parts are cut.
    pub fn low_latency(&self) -> bool {
        self.lock().part_target().is_some()
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

    /// The longest the first playlist can take once stream bytes flow: the first keyframe (a
    /// segment starts on one), then its [`MIN_PLAYLIST_SEGMENTS`] segments, each at most the
    /// forced-cut length, plus a second of slack.
    pub fn first_playlist_within(&self) -> std::time::Duration {
        let target = self.lock().target;
        std::time::Duration::from_secs_f64(
            (MIN_PLAYLIST_SEGMENTS + 1) as f64 * target * FORCED_CUT_FACTOR + 1.0,
        )
    }
}

impl CutPace {
    /// A cut at `now`, the fed stream ending at media time `media`: bursting when the stream
    /// advanced more than twice as much media time as wall time since the last cut.
    fn cut(&mut self, now: tokio::time::Instant, media: f64) {
        if let Some((at, was)) = self.last {
            let played = media - was;
            let wall = now.saturating_duration_since(at).as_secs_f64();
            self.bursting_until = (played > 0.0 && wall < played / 2.0).then(|| now + BURST_QUIET);
        }
        self.last = Some((now, media));
    }
}

/// A forced cut happens when a segment reaches this many targets without a keyframe.
const FORCED_CUT_FACTOR: f64 = 2.5;

/// Segments the playlist must list before it is served. One: with a new session's first
/// segments cut short (`hls_first_segment_seconds`), a player starts after about a second of
/// stream. RFC 8216 §6.3.3 asks a client not to start within three target durations of the end,
/// which on a shorter playlist means at its start; ffmpeg, hls.js and Safari all start there.
pub const MIN_PLAYLIST_SEGMENTS: usize = 1;

/// A session's first segment's media sequence number. One, not zero: hls.js (1.6) asks for a
/// blocking reload (`_HLS_msn`) only once the playlist's last segment number is non-zero, so with
/// a first segment numbered zero it polled a fresh session's playlist on a timer instead, found
/// nothing new on one poll and then waited half of `#EXT-X-TARGETDURATION` (5 s) — a stall at
/// start that also raised its target latency by a second. RFC 8216 lets the first number be
/// any.
pub const FIRST_MEDIA_SEQUENCE: u64 = 1;

/// The playlist window is at least this many segments, so a player that starts three segments
/// from the end (RFC 8216 §6.3.3) has them once the session runs.
pub const MIN_WINDOW_SEGMENTS: usize = 3;

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
    /// Its parts (low-latency HLS; empty without): together the same bytes as `pieces`.
    pub parts: Vec<Part>,
}

/// A part of a segment (low-latency HLS): a stretch of it, by reference.
#[derive(Debug, Clone)]
pub struct Part {
    /// Its duration in seconds (stream time).
    pub duration: f64,
    /// It starts on a keyframe (with PAT and PMT in front), or the stream has no video.
    pub independent: bool,
    /// Its bytes.
    pub pieces: Vec<Bytes>,
    /// Total length.
    pub len: usize,
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
    /// The first segment's target (zero: full length from the start); see [`Self::with_start`].
    first: f64,
    /// Part length, with low-latency HLS.
    part_target: Option<f64>,
    /// Where fed chunks started in stream time, (offset, media), newest last, from the one at
    /// or before the current part's start on: where a part's end lies is read from them.
    marks: VecDeque<(u64, f64)>,
    /// Offset and media time of the end of what was fed.
    fed_end: (u64, f64),
    /// Parts cut so far.
    parts_cut: u64,
    /// The stream has video keyframes to cut on.
    has_video: bool,
    /// The video PID (that of the packets keyframes start in), once a segment started on one.
    video_pid: Option<u16>,
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

#[cfg(all(test, feature = "sim"))]
mod tests;
