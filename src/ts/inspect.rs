//! Follows a stream packet by packet and reports what the proxy needs from it: the program clock
//! (PCR samples on the program's PCR PID) and where decodable pictures start (keyframe marks,
//! each with the PAT and PMT that were current there, so a joiner can be given them first).
//!
//! The [`Inspector`] is owned by the session's upstream task and fed every packet once, in stream
//! order, with the packet's stream offset (bytes since the session's first byte).

use super::keyframe::{classify, AccessUnit, Codec};
use super::psi::{parse_pat, parse_pmt};
use super::{
    discontinuity, payload, payload_unit_start, pcr, pes_header, pid, PACKET_SIZE, PAT_PID,
};
use bytes::{Bytes, BytesMut};

/// A PCR read from the program's PCR PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcrSample {
    /// Stream offset of the packet carrying it.
    pub offset: u64,
    /// The PCR, 27 MHz ticks.
    pub pcr: u64,
    /// The packet's `discontinuity_indicator`: the clock may jump here.
    pub discontinuity: bool,
}

/// A point where a decoder can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyframeMark {
    /// Stream offset of the packet that starts the keyframe's PES packet.
    pub offset: u64,
    /// The PAT and PMT packets current at that point, to send in front of it.
    pub psi: Bytes,
    /// The keyframe's presentation time (90 kHz, 33 bits), if its PES header has one.
    pub pts: Option<u64>,
}

/// What a run of packets held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// The last PCR sample seen.
    pub last_pcr: Option<PcrSample>,
    /// Whether any PCR seen carried the `discontinuity_indicator`.
    pub discontinuity: bool,
    /// Keyframes whose access unit was classified in these packets (their offsets may lie in
    /// earlier packets: an access unit is only told apart once its first slice is seen).
    pub keyframes: Vec<KeyframeMark>,
    /// The PAT and PMT packets, if a PMT was seen in these packets (and a PAT before it).
    pub psi: Option<Bytes>,
    /// With `psi`: whether that PMT names a video stream whose keyframes can be found.
    pub has_video: bool,
}

/// Longest access-unit start examined for its first slice. SEI before the slice can be long:
/// x265 writes its whole option string (about 2 KB) into the first keyframe's SEI.
pub const AU_SCAN_PACKETS: u8 = 32;

#[derive(Debug)]
struct AccessUnitScan {
    offset: u64,
    pts: Option<u64>,
    es: Vec<u8>,
    packets: u8,
}

/// Per-stream inspection state.
#[derive(Debug, Default)]
pub struct Inspector {
    pmt_pid: Option<u16>,
    pcr_pid: Option<u16>,
    video: Option<(u16, Codec)>,
    pat: Option<Bytes>,
    pmt: Option<Bytes>,
    scan: Option<AccessUnitScan>,
}

impl Inspector {
    /// A fresh inspector: nothing known about the stream yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything (a new upstream is spliced in; its PIDs and clock are its own).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// True once a PMT named a video stream whose keyframes can be found.
    pub fn has_video(&self) -> bool {
        self.video.is_some()
    }

    /// The current PAT and PMT packets, one after the other, once both are known.
    pub fn psi(&self) -> Option<Bytes> {
        let (pat, pmt) = (self.pat.as_ref()?, self.pmt.as_ref()?);
        let mut psi = BytesMut::with_capacity(2 * PACKET_SIZE);
        psi.extend_from_slice(pat);
        psi.extend_from_slice(pmt);
        Some(psi.freeze())
    }

    /// Inspects whole packets of `data`, the first at stream offset `offset`.
    pub fn inspect(&mut self, offset: u64, data: &[u8], found: &mut Findings) {
        for (i, p) in data.chunks_exact(PACKET_SIZE).enumerate() {
            self.packet(offset + (i * PACKET_SIZE) as u64, p, found);
        }
    }

    fn packet(&mut self, offset: u64, p: &[u8], found: &mut Findings) {
        let pid = pid(p);
        if pid == PAT_PID {
            if let Some(pmt_pid) = parse_pat(p) {
                self.pmt_pid = Some(pmt_pid);
                self.pat = Some(Bytes::copy_from_slice(&p[..PACKET_SIZE]));
            }
            return;
        }
        if Some(pid) == self.pmt_pid {
            if let Some(pmt) = parse_pmt(p) {
                self.pcr_pid = Some(pmt.pcr_pid);
                self.video = pmt
                    .streams
                    .iter()
                    .find_map(|s| Codec::from_stream_type(s.stream_type).map(|c| (s.pid, c)));
                self.pmt = Some(Bytes::copy_from_slice(&p[..PACKET_SIZE]));
                found.psi = self.psi();
                found.has_video = self.video.is_some();
            }
            return;
        }
        if let Some(value) = pcr(p) {
            // Before a PMT names the PCR PID, the first PID carrying a PCR is the clock.
            let clock_pid = *self.pcr_pid.get_or_insert(pid);
            if clock_pid == pid {
                let disc = discontinuity(p);
                found.discontinuity |= disc;
                found.last_pcr = Some(PcrSample {
                    offset,
                    pcr: value,
                    discontinuity: disc,
                });
            }
        }
        if let Some((video_pid, codec)) = self.video {
            if pid == video_pid {
                self.video_packet(offset, p, codec, found);
            }
        }
    }

    fn video_packet(&mut self, offset: u64, p: &[u8], codec: Codec, found: &mut Findings) {
        let Some(pl) = payload(p) else { return };
        if payload_unit_start(p) {
            let Some(h) = pes_header(pl) else {
                self.scan = None;
                return;
            };
            self.scan = Some(AccessUnitScan {
                offset,
                pts: h.pts,
                es: pl.get(h.data_offset..).unwrap_or(&[]).to_vec(),
                packets: 1,
            });
        } else if let Some(scan) = self.scan.as_mut() {
            scan.es.extend_from_slice(pl);
            scan.packets += 1;
        } else {
            return;
        }
        let Some(scan) = self.scan.as_ref() else {
            return;
        };
        match classify(codec, &scan.es) {
            AccessUnit::RandomAccess => {
                if let Some(psi) = self.psi() {
                    found.keyframes.push(KeyframeMark {
                        offset: scan.offset,
                        psi,
                        pts: scan.pts,
                    });
                }
                self.scan = None;
            }
            AccessUnit::Dependent => self.scan = None,
            AccessUnit::Undecided if scan.packets >= AU_SCAN_PACKETS => self.scan = None,
            AccessUnit::Undecided => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::{is_packet, samples, PCR_HZ};

    fn whole(data: &[u8]) -> &[u8] {
        &data[..data.len() / PACKET_SIZE * PACKET_SIZE]
    }

    /// The fixture: a PCR sample near the end, and one keyframe per second, each pointing at a
    /// video PES start and carrying a PAT and a PMT.
    #[test]
    fn finds_clock_and_keyframes_in_h264() {
        let data = whole(samples::H264);
        let mut insp = Inspector::new();
        let mut found = Findings::default();
        // Fed in uneven pieces, as reads arrive.
        let mut at = 0;
        for piece in data.chunks(PACKET_SIZE * 37) {
            insp.inspect(at as u64, piece, &mut found);
            at += piece.len();
        }
        assert!(insp.has_video());
        let last = found.last_pcr.expect("a PCR");
        assert!(last.offset > data.len() as u64 * 9 / 10);
        assert!(!found.discontinuity);
        assert!(
            (3..=5).contains(&found.keyframes.len()),
            "{:?}",
            found.keyframes.len()
        );
        for k in &found.keyframes {
            let p = &data[k.offset as usize..k.offset as usize + PACKET_SIZE];
            assert_eq!(pid(p), 0x100);
            assert!(payload_unit_start(p));
            assert_eq!(k.psi.len(), 2 * PACKET_SIZE);
            assert_eq!(pid(&k.psi), PAT_PID);
            assert!(is_packet(&k.psi[PACKET_SIZE..]));
        }
        let gaps: Vec<u64> = found
            .keyframes
            .windows(2)
            .map(|w| w[1].offset - w[0].offset)
            .collect();
        assert!(gaps.iter().all(|g| *g > 10 * PACKET_SIZE as u64));
        let _ = PCR_HZ;
    }

    /// HEVC keyframes are found through the PMT's stream type.
    #[test]
    fn finds_hevc_keyframes() {
        let mut insp = Inspector::new();
        let mut found = Findings::default();
        insp.inspect(0, whole(samples::HEVC), &mut found);
        assert!(!found.keyframes.is_empty());
    }

    /// A stream of null packets has no clock and no keyframes.
    #[test]
    fn null_packets_have_no_clock() {
        let mut insp = Inspector::new();
        let mut found = Findings::default();
        insp.inspect(0, &crate::ts::NULL_PACKET.repeat(100), &mut found);
        assert_eq!(found, Findings::default());
        assert_eq!(insp.psi(), None);
    }
}
