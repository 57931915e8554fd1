//! Access units a decoder can start from: H.264 IDR pictures (NAL type 5, with SPS 7 / PPS 8
//! before them) and HEVC IRAP pictures (NAL types 16–21, with VPS 32 / SPS 33 / PPS 34).
//!
//! The codec comes from the PMT's `stream_type` (0x1B H.264, 0x24 HEVC), never from guessing at
//! the bytes: the NAL header layouts differ, and a byte that means IDR in one means something else
//! in the other.

/// A video codec whose keyframes can be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 / AVC (`stream_type` 0x1B).
    H264,
    /// H.265 / HEVC (`stream_type` 0x24).
    Hevc,
}

impl Codec {
    /// The codec of a PMT `stream_type`, if it is one we can find keyframes in.
    pub fn from_stream_type(stream_type: u8) -> Option<Codec> {
        match stream_type {
            0x1B => Some(Codec::H264),
            0x24 => Some(Codec::Hevc),
            _ => None,
        }
    }

    /// The NAL unit type from the first byte(s) after a start code.
    pub fn nal_type(self, header: u8) -> u8 {
        match self {
            Codec::H264 => header & 0x1F,
            Codec::Hevc => (header >> 1) & 0x3F,
        }
    }

    /// True if a NAL unit of this type starts a picture a decoder can begin with.
    pub fn is_random_access(self, nal_type: u8) -> bool {
        match self {
            Codec::H264 => nal_type == 5,
            Codec::Hevc => (16..=21).contains(&nal_type),
        }
    }

    /// True if a NAL unit of this type is a picture's coded slice (the scan can stop there: the
    /// access unit's parameter sets and first slice have been seen).
    pub fn is_slice(self, nal_type: u8) -> bool {
        match self {
            Codec::H264 => (1..=5).contains(&nal_type),
            Codec::Hevc => nal_type <= 31,
        }
    }
}

/// What the NAL units of an access unit's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessUnit {
    /// A random-access picture: a decoder can start here.
    RandomAccess,
    /// A picture that needs earlier ones.
    Dependent,
    /// No slice seen yet in these bytes: more are needed to tell.
    Undecided,
}

/// Scans elementary-stream bytes (from the start of an access unit) for NAL start codes and
/// classifies the access unit by its first slice.
pub fn classify(codec: Codec, es: &[u8]) -> AccessUnit {
    let mut i = 0;
    while i + 3 < es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            let t = codec.nal_type(es[i + 3]);
            if codec.is_random_access(t) {
                return AccessUnit::RandomAccess;
            }
            if codec.is_slice(t) {
                return AccessUnit::Dependent;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    AccessUnit::Undecided
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::{payload, payload_unit_start, pes_header, pid, samples, PACKET_SIZE};

    /// Classifies every video access unit of a sample by its first packet's payload.
    fn access_units(data: &[u8], video_pid: u16, codec: Codec) -> Vec<AccessUnit> {
        let mut out = Vec::new();
        let mut es = Vec::new();
        for p in data
            .chunks_exact(PACKET_SIZE)
            .filter(|p| pid(p) == video_pid)
        {
            let Some(pl) = payload(p) else { continue };
            if payload_unit_start(p) {
                if !es.is_empty() {
                    out.push(classify(codec, &es));
                }
                es.clear();
                let h = pes_header(pl).expect("PES header");
                es.extend_from_slice(&pl[h.data_offset..]);
            } else {
                es.extend_from_slice(pl);
            }
        }
        out
    }

    /// The fixture (25 fps, one IDR per second) has about one IDR in every 25 pictures.
    #[test]
    fn h264_fixture_has_an_idr_each_second() {
        let aus = access_units(samples::H264, 0x100, Codec::H264);
        let idr = aus
            .iter()
            .filter(|a| **a == AccessUnit::RandomAccess)
            .count();
        assert!(aus.len() >= 90, "{} access units", aus.len());
        assert!(
            (3..=5).contains(&idr),
            "{idr} IDRs in {} pictures",
            aus.len()
        );
        assert!(!aus.contains(&AccessUnit::Undecided));
    }

    /// The HEVC sample starts with an IRAP picture; read as H.264 the same bytes mean otherwise.
    #[test]
    fn hevc_irap_found_by_codec_from_pmt() {
        let aus = access_units(samples::HEVC, 0x100, Codec::Hevc);
        assert_eq!(aus.first(), Some(&AccessUnit::RandomAccess));
        assert!(aus.iter().filter(|a| **a == AccessUnit::Dependent).count() > 10);
        let as_h264 = access_units(samples::HEVC, 0x100, Codec::H264);
        assert_ne!(aus, as_h264, "the codec decides, not the bytes");
    }

    /// Stream types map to codecs; others are not video we can cut.
    #[test]
    fn stream_types() {
        assert_eq!(Codec::from_stream_type(0x1B), Some(Codec::H264));
        assert_eq!(Codec::from_stream_type(0x24), Some(Codec::Hevc));
        assert_eq!(Codec::from_stream_type(0x0F), None);
    }
}
