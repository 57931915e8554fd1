//! The media playlist text of a segmenter's window (RFC 8216 §4.3), with discontinuities where the
//! session changed engines; with low-latency HLS (RFC 8216bis §4.4.3.7–4.4.5.3) also the parts of
//! the newest segments, the part being built as a preload hint, and the server's controls.

use super::*;

/// Finished segments whose parts are listed besides the one being built: enough for a player
/// holding `PART-HOLD-BACK` (three parts) behind the end, well inside the three target durations
/// after which RFC 8216bis wants them gone.
const SEGMENTS_WITH_PARTS: usize = 2;

/// `PART-HOLD-BACK` in parts: RFC 8216bis asks for at least three part targets.
const PART_HOLD_BACK_PARTS: f64 = 3.0;

impl Segmenter {
    /// The live media playlist; segment URIs are `uri(sequence, None)`, parts `uri(sequence,
    /// Some(index))`.
    pub fn playlist(&self, uri: impl Fn(u64, Option<usize>) -> String) -> String {
        let listed: Vec<&Segment> = self
            .segments
            .iter()
            .skip(self.segments.len().saturating_sub(self.window))
            .collect();
        let mut out = String::new();
        let first = listed.first().map_or(self.next_sequence, |s| s.sequence);
        let part_target = self.part_target();
        let _ = writeln!(out, "#EXTM3U");
        let _ = writeln!(
            out,
            "#EXT-X-VERSION:{}",
            if part_target.is_some() { 6 } else { 3 }
        );
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        if let Some(pt) = part_target {
            let _ = writeln!(
                out,
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}",
                pt * PART_HOLD_BACK_PARTS
            );
            let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={pt:.3}");
        }
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first}");
        let _ = writeln!(
            out,
            "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
            self.discontinuity_sequence
        );
        let with_parts_from = listed.len().saturating_sub(SEGMENTS_WITH_PARTS);
        for (i, s) in listed.iter().enumerate() {
            if s.discontinuity {
                let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
            }
            if i >= with_parts_from {
                write_parts(&mut out, s.sequence, &s.parts, &uri);
            }
            let _ = writeln!(out, "#EXTINF:{:.3},", s.duration);
            let _ = writeln!(out, "{}", uri(s.sequence, None));
        }
        if part_target.is_some() {
            let (parts, discontinuity) = self.building_parts();
            if discontinuity && !parts.is_empty() {
                let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
            }
            write_parts(&mut out, self.next_sequence, parts, &uri);
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"",
                uri(self.next_sequence, Some(parts.len()))
            );
        }
        out
    }
}

/// `#EXT-X-PART` lines of one segment's parts.
fn write_parts(
    out: &mut String,
    sequence: u64,
    parts: &[Part],
    uri: &impl Fn(u64, Option<usize>) -> String,
) {
    for (n, p) in parts.iter().enumerate() {
        let _ = write!(
            out,
            "#EXT-X-PART:DURATION={:.3},URI=\"{}\"",
            p.duration,
            uri(sequence, Some(n))
        );
        if p.independent {
            let _ = write!(out, ",INDEPENDENT=YES");
        }
        let _ = writeln!(out);
    }
}
