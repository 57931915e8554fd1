//! Program-specific information: the PAT (program → PMT PID) and the PMT (program → PCR PID and
//! elementary streams with their stream types).
//!
//! Only sections that fit in the packet that starts them are parsed; in practice every PAT and
//! almost every PMT does. A section that does not fit, or fails its checks, reads as absent.

use super::{payload, payload_unit_start};

/// A program's elementary stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementaryStream {
    /// `stream_type` (0x1B H.264, 0x24 HEVC, 0x0F AAC, ...).
    pub stream_type: u8,
    /// Its PID.
    pub pid: u16,
}

/// A parsed PMT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pmt {
    /// The PID carrying the program's PCR.
    pub pcr_pid: u16,
    /// The program's streams in PMT order.
    pub streams: Vec<ElementaryStream>,
}

/// The section starting in this packet (after the pointer field), cut to its `section_length`,
/// if it has the given `table_id` and fits.
fn section(p: &[u8], table_id: u8) -> Option<&[u8]> {
    if !payload_unit_start(p) {
        return None;
    }
    let pl = payload(p)?;
    let pointer = *pl.first()? as usize;
    let s = pl.get(1 + pointer..)?;
    if s.len() < 3 || s[0] != table_id {
        return None;
    }
    let len = (((s[1] & 0x0F) as usize) << 8) | s[2] as usize;
    // The section minus its 4-byte CRC.
    s.get(..3 + len)
        .filter(|_| len >= 9)
        .map(|s| &s[..s.len() - 4])
}

/// The PMT PID of the first program in a PAT packet (program 0 is the network PID, skipped).
pub fn parse_pat(p: &[u8]) -> Option<u16> {
    let s = section(p, 0x00)?;
    s[8..].chunks_exact(4).find_map(|e| {
        let program = u16::from_be_bytes([e[0], e[1]]);
        (program != 0).then_some((((e[2] & 0x1F) as u16) << 8) | e[3] as u16)
    })
}

/// Parses a PMT packet.
pub fn parse_pmt(p: &[u8]) -> Option<Pmt> {
    let s = section(p, 0x02)?;
    let pcr_pid = (((s[8] & 0x1F) as u16) << 8) | s[9] as u16;
    let info_len = (((s[10] & 0x0F) as usize) << 8) | s[11] as usize;
    let mut rest = s.get(12 + info_len..)?;
    let mut streams = Vec::new();
    while rest.len() >= 5 {
        let stream_type = rest[0];
        let pid = (((rest[1] & 0x1F) as u16) << 8) | rest[2] as u16;
        let es_info = (((rest[3] & 0x0F) as usize) << 8) | rest[4] as usize;
        streams.push(ElementaryStream { stream_type, pid });
        rest = rest.get(5 + es_info..).unwrap_or(&[]);
    }
    Some(Pmt { pcr_pid, streams })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::{pid, samples, PACKET_SIZE, PAT_PID};

    fn pmt_of(data: &[u8]) -> Pmt {
        let pmt_pid = data
            .chunks_exact(PACKET_SIZE)
            .filter(|p| pid(p) == PAT_PID)
            .find_map(parse_pat)
            .expect("PAT");
        data.chunks_exact(PACKET_SIZE)
            .filter(|p| pid(p) == pmt_pid)
            .find_map(parse_pmt)
            .expect("PMT")
    }

    /// The fixture's PMT lists H.264 video (0x1B) and AAC audio (0x0F), PCR on the video.
    #[test]
    fn pat_and_pmt_of_h264_fixture() {
        let pmt = pmt_of(samples::H264);
        let types: Vec<u8> = pmt.streams.iter().map(|s| s.stream_type).collect();
        assert_eq!(types, vec![0x1B, 0x0F]);
        assert_eq!(pmt.pcr_pid, pmt.streams[0].pid);
    }

    /// The HEVC sample's PMT says 0x24.
    #[test]
    fn pmt_of_hevc_sample() {
        let pmt = pmt_of(samples::HEVC);
        assert_eq!(pmt.streams[0].stream_type, 0x24);
    }

    /// Packets that are not the table asked for read as absent.
    #[test]
    fn other_packets_are_not_tables() {
        let video = samples::H264
            .chunks_exact(PACKET_SIZE)
            .find(|p| pid(p) == 0x100)
            .expect("video packet");
        assert_eq!(parse_pat(video), None);
        assert_eq!(parse_pmt(video), None);
        assert_eq!(
            parse_pmt(&[0x47, 0x40, 0, 0x10, 0, 2, 0xB0, 0xFF].repeat(24)[..188]),
            None
        );
    }
}
