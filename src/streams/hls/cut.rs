//! The cutting: where each segment of a session's HLS starts and ends (keyframes, the target,
//! forced cuts, clock jumps and gaps), holding the ring's chunks by reference.

use super::*;

/// The segment being built.
#[derive(Debug)]
pub(super) struct Pending {
    /// Pieces from the segment's start, with their stream offsets.
    pub(super) pieces: Vec<(u64, Bytes)>,
    /// PAT + PMT to put in front.
    pub(super) psi: Bytes,
    /// Keyframe PTS at the start, if the segment starts on one that has it.
    pub(super) start_pts: Option<u64>,
    /// Media time at the start.
    pub(super) start_media: f64,
    /// `#EXT-X-DISCONTINUITY` goes before it.
    pub(super) discontinuity: bool,
    /// It starts on a keyframe (or the stream has no video).
    pub(super) independent: bool,
    /// Its finished parts (low-latency HLS).
    pub(super) parts: Vec<Part>,
    /// Stream offset and media time where its next part starts.
    pub(super) part_from: (u64, f64),
}

impl Pending {
    /// Splits the pieces at stream offset `at`: keeps those before it, returns the rest.
    pub(super) fn split_off(&mut self, at: u64) -> Vec<(u64, Bytes)> {
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

impl Segmenter {
    /// A segmenter cutting at `target_seconds`, with a playlist of `window` segments.
    pub fn new(target_seconds: f64, window: usize) -> Self {
        Segmenter {
            target: target_seconds,
            window: window.max(MIN_WINDOW_SEGMENTS),
            first: 0.0,
            part_target: None,
            marks: VecDeque::new(),
            fed_end: (0, 0.0),
            parts_cut: 0,
            has_video: false,
            video_pid: None,
            pending: None,
            next_offset: None,
            psi: None,
            segments: VecDeque::new(),
            next_sequence: FIRST_MEDIA_SEQUENCE,
            discontinuity_sequence: 0,
            discontinuity_next: false,
            cuts: Cuts::default(),
        }
    }

    /// Cuts a new session's first segment at `first_seconds`, each next one twice as long, up to
    /// the target (`hls_first_segment_seconds`; zero: full length from the start).
    pub fn with_start(mut self, first_seconds: f64) -> Self {
        self.first = first_seconds;
        self
    }

    /// Cuts parts of `part_seconds` too (low-latency HLS).
    pub fn with_parts(mut self, part_seconds: Option<f64>) -> Self {
        self.part_target = part_seconds.filter(|p| *p > 0.0);
        self
    }

    /// The length the segment being built is cut at: the target, or less for a new session's
    /// first ones.
    fn segment_target(&self) -> f64 {
        if self.first <= 0.0 {
            return self.target;
        }
        let doublings = (self.next_sequence - FIRST_MEDIA_SEQUENCE).min(16) as i32;
        (self.first * 2f64.powi(doublings)).min(self.target)
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
        self.mark(c.offset, m0, end, m1);
        self.has_video = c.has_video;
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
            self.cut_parts(end);
            self.cut_on_time(end, m1, self.segment_target(), false);
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
            if elapsed >= self.segment_target() - 0.01 {
                let rest = self.cut(k.offset, elapsed, false);
                self.begin(rest, k.psi.clone(), k.pts, media_at(k.offset), true);
            }
        }
        // A keyframe is told apart up to this many bytes after its start, so a part ends no
        // later than that before the end of what was fed: no segment is cut inside a part.
        let lookbehind = crate::ts::inspect::AU_SCAN_PACKETS as u64 * crate::ts::PACKET_SIZE as u64;
        self.cut_parts(end.saturating_sub(lookbehind));
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
            // Audio only: every stretch starts on a frame any decoder can start at.
            self.begin(rest, psi, None, m1, !forced);
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
            if let Some(packet) = c.data.get(skip..skip + crate::ts::PACKET_SIZE) {
                self.video_pid = Some(crate::ts::pid(packet));
            }
            let pieces = vec![(k.offset, c.data.slice(skip..))];
            self.begin(pieces, k.psi.clone(), k.pts, media_at(k.offset), true);
        } else if let Some(psi) = self.psi.clone() {
            self.begin(vec![(c.offset, c.data.clone())], psi, None, c.media.0, true);
        }
    }

    /// Begins the next segment with `pieces` (from its first byte on).
    fn begin(
        &mut self,
        pieces: Vec<(u64, Bytes)>,
        psi: Bytes,
        pts: Option<u64>,
        media: f64,
        independent: bool,
    ) {
        let from = pieces.first().map_or(self.fed_end.0, |(o, _)| *o);
        self.pending = Some(Pending {
            pieces,
            psi,
            start_pts: pts,
            start_media: media,
            discontinuity: std::mem::take(&mut self.discontinuity_next),
            independent,
            parts: Vec::new(),
            part_from: (from, media),
        });
    }

    /// Finishes the pending segment at stream offset `at` as `elapsed` seconds long; returns
    /// the pieces after `at` (the next segment's start).
    fn cut(&mut self, at: u64, elapsed: f64, forced: bool) -> Vec<(u64, Bytes)> {
        // Its full parts up to the cut, then what is left as its last part.
        self.cut_parts(at);
        self.close_part(at);
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
            parts: p.parts,
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
