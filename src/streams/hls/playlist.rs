//! The media playlist text of a segmenter's window (RFC 8216 §4.3), with discontinuities where the
//! session changed engines.

use super::*;

impl Segmenter {
    /// The live media playlist; segment URIs are `uri(sequence)`.
    pub fn playlist(&self, uri: impl Fn(u64) -> String) -> String {
        let listed: Vec<&Segment> = self
            .segments
            .iter()
            .skip(self.segments.len().saturating_sub(self.window))
            .collect();
        let mut out = String::new();
        let first = listed.first().map_or(self.next_sequence, |s| s.sequence);
        let _ = writeln!(out, "#EXTM3U");
        let _ = writeln!(out, "#EXT-X-VERSION:3");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first}");
        let _ = writeln!(
            out,
            "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
            self.discontinuity_sequence
        );
        for s in listed {
            if s.discontinuity {
                let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
            }
            let _ = writeln!(out, "#EXTINF:{:.3},", s.duration);
            let _ = writeln!(out, "{}", uri(s.sequence));
        }
        out
    }
}
