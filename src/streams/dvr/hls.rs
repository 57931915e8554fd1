//! The DVR's HLS: segments of a spill, decided as it is written, and the playlist that lists the
//! whole window (`/ace/manifest.m3u8?id=…&dvr=1`), so a player shows a seek bar over it.
//!
//! **Cutting.** A segment starts on a keyframe (its PAT and PMT go in front when it is served)
//! and ends where the next one starts: at the first keyframe at least `hls_segment_seconds` of
//! stream time later, or, with no keyframe by [`FORCED_CUT_FACTOR`] times that, at a chunk
//! boundary. A clock jump (a failover's splice, a discontinuity in the stream) ends the segment
//! at the chunk that jumped; the next one starts on the first keyframe after it, with
//! `#EXT-X-DISCONTINUITY`. Segments are decided once, when written, so their sequence numbers
//! and times never change while the window slides.
//!
//! **Times.** `#EXT-X-PROGRAM-DATE-TIME` of the first segment is the wall time its chunk was
//! published; each next one adds the stream time between them (the session's continuous clock),
//! so the times strictly increase and agree with the `#EXTINF` durations.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

/// A segment is cut without a keyframe once it is this many targets long (as the live HLS does).
pub const FORCED_CUT_FACTOR: f64 = 2.5;

/// One DVR segment: a run of the spill's bytes.
#[derive(Debug, Clone)]
pub struct DvrSegment {
    /// Its media sequence number.
    pub serial: u64,
    /// Stream offset of its first byte.
    pub offset: u64,
    /// Stream offset after its last byte, once it is finished.
    pub end: Option<u64>,
    /// Media time (the session's clock) at its start and, once finished, its end.
    pub media: (f64, f64),
    /// Wall time of its start, unix seconds.
    pub pdt: f64,
    /// The PAT + PMT current at its start (served in front of it).
    pub psi: Bytes,
    /// A clock jump came before it: `#EXT-X-DISCONTINUITY`.
    pub discontinuity: bool,
}

/// A keyframe as the segmenter is given it: (stream offset, media time, PAT + PMT).
pub type KeyAt = (u64, f64, Bytes);

/// The segments of one spill.
#[derive(Debug)]
pub struct DvrSegments {
    /// `hls_segment_seconds`.
    seconds: f64,
    list: VecDeque<DvrSegment>,
    next_serial: u64,
    /// `#EXT-X-DISCONTINUITY`s that left the window (`#EXT-X-DISCONTINUITY-SEQUENCE`).
    discontinuities_gone: u64,
    /// The clock jumped since the last segment started: the next one is a discontinuity.
    jumped: bool,
    /// Where the last jump was: no segment starts before it.
    jumped_at: u64,
}

impl DvrSegments {
    /// No segments yet; each about `seconds` long.
    pub fn new(seconds: f64) -> Self {
        DvrSegments {
            seconds: seconds.max(0.1),
            list: VecDeque::new(),
            next_serial: 0,
            discontinuities_gone: 0,
            jumped: false,
            jumped_at: 0,
        }
    }

    /// The segment being written (not finished).
    fn open(&mut self) -> Option<&mut DvrSegment> {
        self.list.back_mut().filter(|s| s.end.is_none())
    }

    /// Ends the open segment at `at` (stream offset, media time).
    fn finish(&mut self, at: (u64, f64)) {
        if let Some(s) = self.open() {
            s.end = Some(at.0);
            s.media.1 = at.1;
        }
    }

    /// Starts a segment at `at` (stream offset, media time), with `psi` in front; `unix` is the
    /// wall time of the chunk it is in.
    fn begin(&mut self, at: (u64, f64), psi: Bytes, unix: f64) {
        self.finish(at);
        let pdt = match self.list.back() {
            Some(prev) if at.1 > prev.media.0 => prev.pdt + (at.1 - prev.media.0),
            _ => unix,
        };
        let discontinuity = self.jumped && !self.list.is_empty();
        self.list.push_back(DvrSegment {
            serial: self.next_serial,
            offset: at.0,
            end: None,
            media: (at.1, at.1),
            pdt,
            psi,
            discontinuity,
        });
        self.next_serial += 1;
        self.jumped = false;
    }

    /// One chunk was written: `offset..end` with media times `media`, published at `unix`;
    /// `jump`: the clock jumped at it; `keys`: the keyframes found in it.
    pub fn chunk(
        &mut self,
        (offset, end): (u64, u64),
        media: (f64, f64),
        unix: f64,
        jump: bool,
        keys: &[KeyAt],
    ) {
        if jump {
            self.finish((offset, media.0));
            self.jumped = true;
            self.jumped_at = offset;
        }
        for (at, key_media, psi) in keys {
            let later = self.list.back().is_none_or(|s| *at > s.offset);
            if !later || *at < self.jumped_at {
                continue;
            }
            let due = match self.list.back() {
                Some(s) if s.end.is_none() => key_media - s.media.0 >= self.seconds,
                _ => true,
            };
            if due {
                self.begin((*at, *key_media), psi.clone(), unix);
            }
        }
        // No keyframe for too long: cut at this chunk's end anyway (the next segment does not
        // start on a keyframe; its PAT and PMT still go in front).
        let forced = self
            .list
            .back()
            .filter(|s| s.end.is_none())
            .filter(|s| media.1 - s.media.0 >= self.seconds * FORCED_CUT_FACTOR)
            .map(|s| s.psi.clone());
        if let Some(psi) = forced {
            self.begin((end, media.1), psi, unix);
        }
        if let Some(s) = self.open() {
            s.media.1 = media.1;
        }
    }

    /// Forgets the segments that start before stream offset `from` (their bytes were dropped).
    pub fn trim(&mut self, from: u64) {
        while self.list.front().is_some_and(|s| s.offset < from) {
            if let Some(gone) = self.list.pop_front() {
                self.discontinuities_gone += u64::from(gone.discontinuity);
            }
        }
    }

    /// Forgets everything (the spill ended).
    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// The finished segment `serial`.
    pub fn get(&self, serial: u64) -> Option<&DvrSegment> {
        let first = self.list.front()?.serial;
        self.list
            .get(serial.checked_sub(first)? as usize)
            .filter(|s| s.end.is_some())
    }

    /// Finished segments held.
    pub fn finished(&self) -> usize {
        self.list.iter().filter(|s| s.end.is_some()).count()
    }

    /// `#EXT-X-TARGETDURATION`: the longest segment the cutter makes, whole seconds; fixed.
    pub fn target_duration(&self) -> u64 {
        (self.seconds * FORCED_CUT_FACTOR).ceil() as u64
    }

    /// The playlist of every finished segment (`None` before the first); segment URIs are
    /// `uri(serial)`.
    pub fn playlist(&self, uri: impl Fn(u64) -> String) -> Option<String> {
        let finished: Vec<&DvrSegment> = self.list.iter().filter(|s| s.end.is_some()).collect();
        let first = finished.first()?;
        let mut out = String::new();
        let _ = writeln!(out, "#EXTM3U");
        let _ = writeln!(out, "#EXT-X-VERSION:3");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", first.serial);
        let _ = writeln!(
            out,
            "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
            self.discontinuities_gone
        );
        for s in finished {
            if s.discontinuity {
                let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
            }
            let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", date_time(s.pdt));
            let _ = writeln!(out, "#EXTINF:{:.3},", (s.media.1 - s.media.0).max(0.0));
            let _ = writeln!(out, "{}", uri(s.serial));
        }
        Some(out)
    }
}

/// Unix seconds as `#EXT-X-PROGRAM-DATE-TIME` wants them (ISO 8601, milliseconds, UTC).
fn date_time(unix: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(at: u64, media: f64) -> KeyAt {
        (at, media, Bytes::from_static(b"psi"))
    }

    /// 25 chunks of 1 s (1000 bytes each), a keyframe at the start of each: 4 s segments on
    /// keyframes, times that add up, serials that stay as the window slides.
    #[test]
    fn segments_start_on_keyframes_and_keep_their_numbers() {
        let mut s = DvrSegments::new(4.0);
        for i in 0..25u64 {
            let m = i as f64;
            s.chunk(
                (i * 1000, i * 1000 + 1000),
                (m, m + 1.0),
                1000.0 + m,
                false,
                &[key(i * 1000, m)],
            );
        }
        // Segments start at 0, 4, ..., 24; the one at 24 is open.
        assert_eq!(s.finished(), 6);
        let text = s.playlist(|n| format!("d/{n}.ts")).unwrap();
        assert!(text.contains("#EXT-X-TARGETDURATION:10\n"), "{text}");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:0\n"));
        assert_eq!(text.matches("#EXTINF:4.000,").count(), 6, "{text}");
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:16:40.000Z\n"));
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:17:00.000Z\n"));
        let seg = s.get(2).unwrap();
        assert_eq!((seg.offset, seg.end), (8000, Some(12000)));
        assert!(s.get(6).is_none(), "the open segment is not served");
        s.trim(9000);
        assert!(s.get(2).is_none());
        let text = s.playlist(|n| format!("d/{n}.ts")).unwrap();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:3\n"), "{text}");
        assert_eq!(s.get(3).map(|x| x.offset), Some(12000));
    }

    /// A jump ends the segment where it is; the next starts on the next keyframe, marked; the
    /// discontinuity sequence counts the marks that left.
    #[test]
    fn a_jump_is_a_discontinuity() {
        let mut s = DvrSegments::new(2.0);
        s.chunk((0, 1000), (0.0, 1.0), 1.0, false, &[key(0, 0.0)]);
        s.chunk((1000, 2000), (1.0, 2.0), 2.0, false, &[]);
        // The jump at 2000; its keyframe comes a little later, at 2500.
        s.chunk((2000, 3000), (2.0, 3.0), 3.0, true, &[key(2500, 2.5)]);
        s.chunk((3000, 4000), (3.0, 4.0), 4.0, false, &[]);
        s.chunk((4000, 5000), (4.0, 5.0), 5.0, false, &[key(4500, 4.5)]);
        let first = s.get(0).unwrap();
        assert_eq!((first.end, first.media.1), (Some(2000), 2.0));
        let second = s.get(1).unwrap();
        assert!(second.discontinuity);
        assert_eq!(second.offset, 2500);
        let text = s.playlist(|n| format!("{n}")).unwrap();
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"));
        s.trim(2500);
        s.trim(4500);
        let text = s.playlist(|n| format!("{n}"));
        assert!(text.is_none(), "only the open segment is left");
        s.chunk((5000, 6000), (5.0, 7.0), 6.0, false, &[key(5500, 6.5)]);
        let text = s.playlist(|n| format!("{n}")).unwrap();
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
    }

    /// No keyframe for 2.5 targets: a forced cut at a chunk boundary.
    #[test]
    fn long_without_a_keyframe_is_cut_anyway() {
        let mut s = DvrSegments::new(2.0);
        s.chunk((0, 1000), (0.0, 1.0), 1.0, false, &[key(0, 0.0)]);
        for i in 1..6u64 {
            let m = i as f64;
            s.chunk((i * 1000, i * 1000 + 1000), (m, m + 1.0), m, false, &[]);
        }
        let first = s.get(0).unwrap();
        assert_eq!(first.end, Some(5000));
        assert!((first.media.1 - 5.0).abs() < 1e-9);
        assert!(s.target_duration() >= 5);
    }
}
