//! Parts of the segment being built (low-latency HLS, RFC 8216bis §4.4.4.9): cut every
//! `hls_part_seconds` of stream time at a packet boundary, the last one of a segment ending where
//! the segment does. A part holds the segment's bytes by reference; the first one starts with the
//! segment's PAT and PMT, so the parts of a segment are its bytes, in order, exactly.
//!
//! Where a part ends is read from the fed chunks' media times ([`Segmenter::mark`]), interpolated
//! inside a chunk and rounded down to a packet, so no part is longer than `PART-TARGET`.

use super::{Part, Segmenter};
use crate::ts::{payload_unit_start, pid, PACKET_SIZE};
use bytes::Bytes;

impl Segmenter {
    /// Records where a fed chunk starts and ends in stream time, keeping only the marks the
    /// current part still needs.
    pub(super) fn mark(&mut self, offset: u64, m0: f64, end: u64, m1: f64) {
        self.marks.push_back((offset, m0));
        self.fed_end = (end, m1);
        let from = self.pending.as_ref().map_or(offset, |p| p.part_from.0);
        while self.marks.len() > 1 && self.marks.get(1).is_some_and(|(o, _)| *o <= from) {
            self.marks.pop_front();
        }
    }

    /// Media time at stream offset `at`, interpolated between the marks.
    fn media_of(&self, at: u64) -> f64 {
        let mut prev: Option<(u64, f64)> = None;
        for &(o, m) in self.marks.iter().chain(std::iter::once(&self.fed_end)) {
            if o >= at {
                return match prev {
                    Some((po, pm)) if o > po => pm + (m - pm) * (at - po) as f64 / (o - po) as f64,
                    _ => m,
                };
            }
            prev = Some((o, m));
        }
        self.fed_end.1
    }

    /// The last packet boundary at or before media time `t` (the end of what was fed at most).
    fn offset_of(&self, t: f64) -> u64 {
        let mut prev: Option<(u64, f64)> = None;
        for &(o, m) in self.marks.iter().chain(std::iter::once(&self.fed_end)) {
            if m >= t {
                let Some((po, pm)) = prev.filter(|(po, _)| o > *po) else {
                    return o;
                };
                let f = if m > pm { (t - pm) / (m - pm) } else { 1.0 };
                let bytes = ((o - po) as f64 * f.clamp(0.0, 1.0)) as u64;
                return po + bytes / PACKET_SIZE as u64 * PACKET_SIZE as u64;
            }
            prev = Some((o, m));
        }
        self.fed_end.0
    }

    /// Cuts the pending segment's full-length parts that end at or before stream offset
    /// `until`.
    pub(super) fn cut_parts(&mut self, until: u64) {
        let Some(target) = self.part_target else {
            return;
        };
        loop {
            let Some((from, from_media)) = self.pending.as_ref().map(|p| p.part_from) else {
                return;
            };
            let want = from_media + target;
            if self.fed_end.1 < want {
                return;
            }
            let at = self.offset_of(want).max(from + PACKET_SIZE as u64);
            if at > until {
                return;
            }
            // On a frame's first packet, so every part holds whole frames: hls.js finds "no
            // media" in a part that holds only the middle of one.
            let at = self.frame_start_at_or_before(from, at).unwrap_or(at);
            self.add_part(at);
        }
    }

    /// The last packet in `(from, at]` that starts a video PES (a frame), if the video PID is
    /// known.
    fn frame_start_at_or_before(&self, from: u64, at: u64) -> Option<u64> {
        let video = self.video_pid?;
        let p = self.pending.as_ref()?;
        let size = PACKET_SIZE as u64;
        for (o, b) in p.pieces.iter().rev() {
            let end = o + b.len() as u64;
            if end <= from {
                break;
            }
            // Packets of this piece that start in (from, at], newest first.
            let mut start = at.min(end.saturating_sub(size));
            while start > from && start >= *o {
                let i = (start - o) as usize;
                let packet = &b[i..i + PACKET_SIZE];
                if pid(packet) == video && payload_unit_start(packet) {
                    return Some(start);
                }
                start -= size;
            }
        }
        None
    }

    /// Ends the pending segment's current part at `at` (where the segment is cut), if it holds
    /// anything.
    pub(super) fn close_part(&mut self, at: u64) {
        if self.part_target.is_none() {
            return;
        }
        if self.pending.as_ref().is_some_and(|p| at > p.part_from.0) {
            self.add_part(at);
        }
    }

    /// Adds the part from the current part start to `at`.
    fn add_part(&mut self, at: u64) {
        let media = self.media_of(at);
        let has_video = self.has_video;
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        let (from, from_media) = p.part_from;
        let mut pieces = Vec::new();
        let first = p.parts.is_empty();
        if first && !p.psi.is_empty() {
            pieces.push(p.psi.clone());
        }
        pieces.extend(slice_range(&p.pieces, from, at));
        let len = pieces.iter().map(Bytes::len).sum();
        p.parts.push(Part {
            duration: (media - from_media).max(0.0),
            independent: (first && p.independent) || !has_video,
            pieces,
            len,
        });
        p.part_from = (at, media);
        self.parts_cut += 1;
    }

    /// Whether the playlist has segment `msn` (and, with `part`, that part of it): what a blocking
    /// reload (`_HLS_msn`, `_HLS_part`) waits for.
    pub fn has(&self, msn: u64, part: Option<u64>) -> bool {
        if msn < self.next_sequence {
            return true;
        }
        match (part, self.pending.as_ref()) {
            (Some(n), Some(p)) => msn == self.next_sequence && (p.parts.len() as u64) > n,
            _ => false,
        }
    }

    /// The sequence number the segment being built will get.
    pub fn building(&self) -> u64 {
        self.next_sequence
    }

    /// A part of a held segment, or of the one being built.
    pub fn part(&self, sequence: u64, index: usize) -> Option<&Part> {
        if sequence == self.next_sequence {
            return self.pending.as_ref()?.parts.get(index);
        }
        self.segment(sequence)?.parts.get(index)
    }

    /// The parts of the segment being built so far, and whether it follows a discontinuity.
    pub(super) fn building_parts(&self) -> (&[Part], bool) {
        match self.pending.as_ref() {
            Some(p) => (&p.parts, p.discontinuity),
            None => (&[], false),
        }
    }

    /// `PART-TARGET`, with low-latency HLS.
    pub fn part_target(&self) -> Option<f64> {
        self.part_target
    }
}

/// The bytes of `pieces` (each with its stream offset) from offset `from` to `to`, by reference.
pub(super) fn slice_range(pieces: &[(u64, Bytes)], from: u64, to: u64) -> Vec<Bytes> {
    pieces
        .iter()
        .filter_map(|(o, b)| {
            let end = o + b.len() as u64;
            if end <= from || *o >= to {
                return None;
            }
            let a = from.saturating_sub(*o) as usize;
            let z = (to.min(end) - o) as usize;
            Some(b.slice(a..z))
        })
        .collect()
}
