//! MPEG-TS, the one place that knows its bytes: the 188-byte packet and its header fields, the
//! adaptation field (PCR, `discontinuity_indicator`), the null packet, PES timestamps, PAT/PMT
//! parsing ([`psi`]) and the scan for access units a decoder can start from ([`keyframe`]).
//!
//! Everything else in the crate (the rechunker and splicer, the pacer, joins, the keepalive, the
//! simulator's looped stream, the tests) reads and writes packets only through this module.
//! Functions take a packet slice of at least [`PACKET_SIZE`] bytes; none of them panics on a
//! malformed packet (a field that does not fit reads as absent).

pub mod inspect;
pub mod keyframe;
pub mod psi;

pub use inspect::{Inspector, KeyframeMark, PcrSample};
pub use keyframe::Codec;

/// Size of one TS packet.
pub const PACKET_SIZE: usize = 188;
/// The byte every packet starts with.
pub const SYNC_BYTE: u8 = 0x47;
/// PID of the Program Association Table.
pub const PAT_PID: u16 = 0x0000;
/// PID of null (stuffing) packets, which every demuxer discards.
pub const NULL_PID: u16 = 0x1FFF;
/// PCR ticks per second (27 MHz).
pub const PCR_HZ: u64 = 27_000_000;
/// PCR values wrap at 2^33 × 300 ticks (about 26.5 hours).
pub const PCR_WRAP: u64 = (1 << 33) * 300;
/// PTS/DTS values wrap at 2^33 (90 kHz ticks).
pub const PTS_WRAP: u64 = 1 << 33;

/// A TS null packet (PID 0x1FFF, payload only, stuffing bytes): players discard it, but it keeps
/// their socket busy while no stream byte flows.
pub const NULL_PACKET: [u8; PACKET_SIZE] = {
    let mut p = [0xFFu8; PACKET_SIZE];
    p[0] = SYNC_BYTE;
    p[1] = 0x1F;
    p[2] = 0xFF;
    p[3] = 0x10;
    p
};

/// True if `p` is a whole packet starting with the sync byte.
pub fn is_packet(p: &[u8]) -> bool {
    p.len() >= PACKET_SIZE && p[0] == SYNC_BYTE
}

/// True if every 188-byte packet of `data` starts with the sync byte and nothing is left over.
pub fn is_aligned(data: &[u8]) -> bool {
    data.len() % PACKET_SIZE == 0 && data.chunks(PACKET_SIZE).all(|p| p[0] == SYNC_BYTE)
}

/// The packet's PID.
pub fn pid(p: &[u8]) -> u16 {
    (((p[1] & 0x1F) as u16) << 8) | p[2] as u16
}

/// `payload_unit_start_indicator`: a PES packet or PSI section starts in this packet.
pub fn payload_unit_start(p: &[u8]) -> bool {
    p[1] & 0x40 != 0
}

/// The continuity counter.
pub fn continuity_counter(p: &[u8]) -> u8 {
    p[3] & 0x0F
}

/// Sets the continuity counter.
pub fn set_continuity_counter(p: &mut [u8], cc: u8) {
    p[3] = (p[3] & 0xF0) | (cc & 0x0F);
}

/// True if the packet carries an adaptation field.
pub fn has_adaptation_field(p: &[u8]) -> bool {
    p[3] & 0x20 != 0
}

/// True if the packet carries payload.
pub fn has_payload(p: &[u8]) -> bool {
    p[3] & 0x10 != 0
}

/// Offset of the payload in the packet, if it has one that fits.
pub fn payload_offset(p: &[u8]) -> Option<usize> {
    if !has_payload(p) {
        return None;
    }
    let at = if has_adaptation_field(p) {
        5 + p[4] as usize
    } else {
        4
    };
    (at < PACKET_SIZE).then_some(at)
}

/// The packet's payload, if any.
pub fn payload(p: &[u8]) -> Option<&[u8]> {
    payload_offset(p).map(|at| &p[at..PACKET_SIZE])
}

/// True if the adaptation field has a PCR.
pub fn has_pcr(p: &[u8]) -> bool {
    has_adaptation_field(p) && p[4] >= 7 && p[5] & 0x10 != 0
}

/// The PCR in 27 MHz ticks (base × 300 + extension), if the packet carries one.
pub fn pcr(p: &[u8]) -> Option<u64> {
    has_pcr(p).then(|| {
        let (base, ext) = read_pcr_field(&p[6..12]);
        base * 300 + ext as u64
    })
}

/// True if the adaptation field's `discontinuity_indicator` is set.
pub fn discontinuity(p: &[u8]) -> bool {
    has_adaptation_field(p) && p[4] >= 1 && p[5] & 0x80 != 0
}

/// Sets the `discontinuity_indicator`; false if the packet has no adaptation field to carry it.
pub fn set_discontinuity(p: &mut [u8]) -> bool {
    if !has_adaptation_field(p) || p[4] == 0 {
        return false;
    }
    p[5] |= 0x80;
    true
}

/// Reads the 6-byte PCR field: (33-bit base in 90 kHz, 9-bit extension).
pub fn read_pcr_field(b: &[u8]) -> (u64, u16) {
    let base = (b[0] as u64) << 25
        | (b[1] as u64) << 17
        | (b[2] as u64) << 9
        | (b[3] as u64) << 1
        | (b[4] >> 7) as u64;
    let ext = (((b[4] & 1) as u16) << 8) | b[5] as u16;
    (base, ext)
}

/// Writes the 6-byte PCR field (reserved bits set).
pub fn write_pcr_field(b: &mut [u8], base: u64, ext: u16) {
    b[0] = (base >> 25) as u8;
    b[1] = (base >> 17) as u8;
    b[2] = (base >> 9) as u8;
    b[3] = (base >> 1) as u8;
    b[4] = (((base & 1) as u8) << 7) | 0x7E | ((ext >> 8) as u8 & 1);
    b[5] = ext as u8;
}

/// Adds `delta_90k` to the packet's PCR base (modulo the wrap), if it has one.
pub fn shift_pcr(p: &mut [u8], delta_90k: u64) {
    if has_pcr(p) {
        let (base, ext) = read_pcr_field(&p[6..12]);
        write_pcr_field(&mut p[6..12], (base + delta_90k) % PTS_WRAP, ext);
    }
}

/// Reads a 5-byte PTS/DTS field (90 kHz).
pub fn read_timestamp(b: &[u8]) -> u64 {
    (((b[0] >> 1) & 0x07) as u64) << 30
        | (b[1] as u64) << 22
        | ((b[2] >> 1) as u64) << 15
        | (b[3] as u64) << 7
        | (b[4] >> 1) as u64
}

/// Writes a 5-byte PTS/DTS field, keeping its 4-bit prefix and setting the marker bits.
pub fn write_timestamp(b: &mut [u8], v: u64) {
    b[0] = (b[0] & 0xF1) | (((v >> 30) & 0x07) as u8) << 1;
    b[1] = (v >> 22) as u8;
    b[2] = ((((v >> 15) & 0x7F) as u8) << 1) | 1;
    b[3] = (v >> 7) as u8;
    b[4] = (((v & 0x7F) as u8) << 1) | 1;
}

/// The header of a PES packet that starts in a TS payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PesHeader {
    /// `stream_id` (0xE0.. video, 0xC0.. audio, 0xBD private).
    pub stream_id: u8,
    /// Presentation timestamp, 90 kHz.
    pub pts: Option<u64>,
    /// Decoding timestamp, 90 kHz.
    pub dts: Option<u64>,
    /// Offset of the elementary stream data in the payload.
    pub data_offset: usize,
}

/// Stream ids whose PES packets carry the optional header with timestamps.
fn has_optional_pes_header(stream_id: u8) -> bool {
    stream_id == 0xBD || stream_id >= 0xC0
}

/// Parses the PES header at the start of a payload (a packet with `payload_unit_start`).
pub fn pes_header(payload: &[u8]) -> Option<PesHeader> {
    if payload.len() < 9 || payload[..3] != [0, 0, 1] {
        return None;
    }
    let stream_id = payload[3];
    if !has_optional_pes_header(stream_id) {
        return Some(PesHeader {
            stream_id,
            pts: None,
            dts: None,
            data_offset: 6,
        });
    }
    let flags = payload[7] >> 6;
    let data_offset = 9 + payload[8] as usize;
    let pts = (flags & 0x2 != 0 && payload.len() >= 14).then(|| read_timestamp(&payload[9..14]));
    let dts = (flags == 0x3 && payload.len() >= 19).then(|| read_timestamp(&payload[14..19]));
    Some(PesHeader {
        stream_id,
        pts,
        dts,
        data_offset,
    })
}

/// Adds `delta_90k` to the PTS and DTS of a PES header starting in this packet, if any.
pub fn shift_pes_timestamps(p: &mut [u8], delta_90k: u64) {
    if !payload_unit_start(p) {
        return;
    }
    let Some(at) = payload_offset(p) else { return };
    let Some(h) = pes_header(&p[at..PACKET_SIZE]) else {
        return;
    };
    if let Some(pts) = h.pts {
        write_timestamp(&mut p[at + 9..at + 14], (pts + delta_90k) % PTS_WRAP);
    }
    if let Some(dts) = h.dts {
        write_timestamp(&mut p[at + 14..at + 19], (dts + delta_90k) % PTS_WRAP);
    }
}

/// Ticks from `from` to `to` on a clock that wraps at `wrap`, as a signed distance (the shorter
/// way round), so a small backwards step reads as negative rather than as almost a full wrap.
pub fn wrapping_delta(from: u64, to: u64, wrap: u64) -> i64 {
    let d = (to + wrap - from % wrap) % wrap;
    if d > wrap / 2 {
        d as i64 - wrap as i64
    } else {
        d as i64
    }
}

/// Test packets cut from real streams, shared by the unit tests of this module and its users.
#[cfg(test)]
pub(crate) mod samples {
    /// 4.16 s of H.264 + AAC made with ffmpeg (the simulator's fixture).
    pub const H264: &[u8] = include_bytes!("../sim/fixture.ts");
    /// 1 s of HEVC made with ffmpeg (`tests/data/README.md` has the command).
    pub const HEVC: &[u8] = include_bytes!("../../tests/data/hevc.ts");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_with(data: &[u8], f: impl Fn(&[u8]) -> bool) -> &[u8] {
        data.chunks_exact(PACKET_SIZE)
            .find(|p| f(p))
            .expect("a matching packet")
    }

    /// The fixture is aligned and its first packets are PSI.
    #[test]
    fn real_stream_packet_fields() {
        let data = samples::H264;
        assert!(is_aligned(&data[..data.len() / PACKET_SIZE * PACKET_SIZE]));
        let pat = first_with(data, |p| pid(p) == PAT_PID);
        assert!(payload_unit_start(pat));
        assert_eq!(payload(pat).map(|p| p[0]), Some(0), "pointer field");
        let with_pcr = first_with(data, has_pcr);
        assert!(pcr(with_pcr).is_some());
        assert!(!discontinuity(with_pcr));
    }

    /// PES headers of the fixture's video carry PTS and DTS.
    #[test]
    fn pes_header_of_real_video() {
        let p = first_with(samples::H264, |p| {
            payload_unit_start(p)
                && payload(p)
                    .and_then(pes_header)
                    .is_some_and(|h| h.stream_id == 0xE0)
        });
        let h = pes_header(payload(p).unwrap()).unwrap();
        assert!(h.pts.is_some());
        assert!(h.data_offset >= 9);
    }

    /// PCR and timestamp fields survive a round trip; shifting moves them by exactly the delta.
    #[test]
    fn clock_fields_round_trip_and_shift() {
        let mut b = [0x21u8, 0, 1, 0, 1];
        write_timestamp(&mut b, 0x1_2345_6789);
        assert_eq!(read_timestamp(&b), 0x1_2345_6789);
        let mut f = [0u8; 6];
        write_pcr_field(&mut f, 0x1_0000_0001, 300);
        assert_eq!(read_pcr_field(&f), (0x1_0000_0001, 300));
        let mut p = first_with(samples::H264, has_pcr).to_vec();
        let before = pcr(&p).unwrap();
        shift_pcr(&mut p, 90_000);
        assert_eq!(pcr(&p).unwrap(), before + 90_000 * 300);
        assert!(set_discontinuity(&mut p));
        assert!(discontinuity(&p));
    }

    /// Wrapping distances read short backwards steps as negative.
    #[test]
    fn wrapping_delta_is_signed() {
        assert_eq!(wrapping_delta(10, 20, 100), 10);
        assert_eq!(wrapping_delta(20, 10, 100), -10);
        assert_eq!(wrapping_delta(95, 5, 100), 10);
        assert_eq!(wrapping_delta(5, 95, 100), -10);
    }

    /// The null packet is a valid packet on the null PID.
    #[test]
    fn null_packet_is_null() {
        assert!(is_packet(&NULL_PACKET));
        assert_eq!(pid(&NULL_PACKET), NULL_PID);
        assert!(payload(&NULL_PACKET).is_some());
    }
}
