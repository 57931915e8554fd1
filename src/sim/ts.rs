//! An endless, valid MPEG-TS stream made by looping a short fixture.
//!
//! The fixture (`fixture.ts`: 4 s of H.264 + AAC made once with ffmpeg, see the README) is replayed
//! forever. A plain replay would be invalid TS at every loop point: continuity counters would jump
//! and PCR/PTS/DTS would go back in time. So each loop adds a fixed offset to every PCR, PTS and DTS,
//! and continuity counters are renumbered per PID across loops. A player (or ffprobe) sees one
//! continuous live stream.

use bytes::{BufMut, Bytes, BytesMut};

/// The fixture the simulator streams.
pub const FIXTURE: &[u8] = include_bytes!("fixture.ts");
/// MPEG-TS packet size.
pub const PACKET: usize = 188;
const NULL_PID: u16 = 0x1FFF;
const PTS_WRAP: u64 = 1 << 33;

/// Produces the looped stream, packet by packet.
#[derive(Debug, Clone)]
pub struct TsLoop {
    packets: &'static [u8],
    /// One loop's duration in 90 kHz ticks.
    period_90k: u64,
    /// Next packet index in the fixture.
    index: usize,
    /// Completed loops.
    loops: u64,
    /// Last continuity counter emitted per PID (`None` before the first).
    cc: Vec<Option<u8>>,
}

impl Default for TsLoop {
    fn default() -> Self {
        Self::new(FIXTURE)
    }
}

impl TsLoop {
    /// A loop over `data`, which must be whole 188-byte packets.
    pub fn new(data: &'static [u8]) -> Self {
        let whole = data.len() / PACKET * PACKET;
        let packets = &data[..whole];
        TsLoop {
            packets,
            period_90k: loop_period_90k(packets),
            index: 0,
            loops: 0,
            cc: vec![None; 8192],
        }
    }

    /// Appends the next `n` packets to `out`.
    pub fn fill(&mut self, out: &mut BytesMut, n: usize) {
        out.reserve(n * PACKET);
        for _ in 0..n {
            let start = self.index * PACKET;
            let mut pkt = [0u8; PACKET];
            pkt.copy_from_slice(&self.packets[start..start + PACKET]);
            self.rewrite(&mut pkt);
            out.put_slice(&pkt);
            self.index += 1;
            if self.index * PACKET >= self.packets.len() {
                self.index = 0;
                self.loops += 1;
            }
        }
    }

    /// The next `n` packets as one buffer.
    pub fn next_packets(&mut self, n: usize) -> Bytes {
        let mut out = BytesMut::with_capacity(n * PACKET);
        self.fill(&mut out, n);
        out.freeze()
    }

    fn rewrite(&mut self, pkt: &mut [u8; PACKET]) {
        let pid = (((pkt[1] & 0x1F) as u16) << 8) | pkt[2] as u16;
        if pid == NULL_PID {
            return;
        }
        let afc = (pkt[3] >> 4) & 0x3;
        let has_payload = afc & 0x1 != 0;
        let last = self.cc[pid as usize];
        let cc = match (last, has_payload) {
            (None, _) => pkt[3] & 0x0F,
            (Some(c), true) => (c + 1) & 0x0F,
            (Some(c), false) => c,
        };
        self.cc[pid as usize] = Some(cc);
        pkt[3] = (pkt[3] & 0xF0) | cc;
        let offset_90k = self.loops * self.period_90k;
        if offset_90k == 0 {
            return;
        }
        let mut payload_at = 4;
        if afc & 0x2 != 0 {
            let af_len = pkt[4] as usize;
            if af_len > 0 && pkt[5] & 0x10 != 0 && af_len >= 7 {
                let (base, ext) = read_pcr(&pkt[6..12]);
                write_pcr(&mut pkt[6..12], (base + offset_90k) % PTS_WRAP, ext);
            }
            payload_at = 5 + af_len;
        }
        let pusi = pkt[1] & 0x40 != 0;
        if has_payload && pusi && payload_at + 19 <= PACKET {
            let p = &mut pkt[payload_at..];
            let is_pes = p[0] == 0 && p[1] == 0 && p[2] == 1 && (p[3] == 0xBD || p[3] >= 0xC0);
            if is_pes {
                let flags = p[7] >> 6;
                if flags & 0x2 != 0 {
                    let v = read_ts(&p[9..14]);
                    write_ts(&mut p[9..14], (v + offset_90k) % PTS_WRAP);
                }
                if flags == 0x3 {
                    let v = read_ts(&p[14..19]);
                    write_ts(&mut p[14..19], (v + offset_90k) % PTS_WRAP);
                }
            }
        }
    }
}

/// The loop period: the longest per-PID PTS span plus that PID's frame step, rounded up to whole
/// 40 ms (25 fps) frames, so no timestamp of loop k+1 precedes one of loop k.
fn loop_period_90k(packets: &[u8]) -> u64 {
    use std::collections::HashMap;
    let mut pts: HashMap<u16, Vec<u64>> = HashMap::new();
    for pkt in packets.chunks_exact(PACKET) {
        let pid = (((pkt[1] & 0x1F) as u16) << 8) | pkt[2] as u16;
        let afc = (pkt[3] >> 4) & 0x3;
        let payload_at = if afc & 0x2 != 0 {
            5 + pkt[4] as usize
        } else {
            4
        };
        if afc & 0x1 == 0 || pkt[1] & 0x40 == 0 || payload_at + 14 > PACKET {
            continue;
        }
        let p = &pkt[payload_at..];
        if p[0] == 0 && p[1] == 0 && p[2] == 1 && p[7] & 0x80 != 0 {
            pts.entry(pid).or_default().push(read_ts(&p[9..14]));
        }
    }
    let mut period = 0;
    for (_, mut v) in pts {
        v.sort_unstable();
        v.dedup();
        if v.len() < 2 {
            continue;
        }
        let step = v[v.len() - 1] - v[v.len() - 2];
        period = period.max(v[v.len() - 1] - v[0] + step);
    }
    let frame = 3600;
    period.div_ceil(frame).max(1) * frame
}

fn read_ts(b: &[u8]) -> u64 {
    (((b[0] >> 1) & 0x07) as u64) << 30
        | (b[1] as u64) << 22
        | ((b[2] >> 1) as u64) << 15
        | (b[3] as u64) << 7
        | (b[4] >> 1) as u64
}

fn write_ts(b: &mut [u8], v: u64) {
    b[0] = (b[0] & 0xF1) | (((v >> 30) & 0x07) as u8) << 1;
    b[1] = (v >> 22) as u8;
    b[2] = ((((v >> 15) & 0x7F) as u8) << 1) | 1;
    b[3] = (v >> 7) as u8;
    b[4] = (((v & 0x7F) as u8) << 1) | 1;
}

fn read_pcr(b: &[u8]) -> (u64, u16) {
    let base = (b[0] as u64) << 25
        | (b[1] as u64) << 17
        | (b[2] as u64) << 9
        | (b[3] as u64) << 1
        | (b[4] >> 7) as u64;
    let ext = (((b[4] & 1) as u16) << 8) | b[5] as u16;
    (base, ext)
}

fn write_pcr(b: &mut [u8], base: u64, ext: u16) {
    b[0] = (base >> 25) as u8;
    b[1] = (base >> 17) as u8;
    b[2] = (base >> 9) as u8;
    b[3] = (base >> 1) as u8;
    b[4] = (((base & 1) as u8) << 7) | 0x7E | ((ext >> 8) as u8 & 1);
    b[5] = ext as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packet of every loop starts with the sync byte.
    #[test]
    fn looped_stream_keeps_sync() {
        let mut ts = TsLoop::default();
        let n = FIXTURE.len() / PACKET * 3 + 7;
        let out = ts.next_packets(n);
        assert!(out.chunks(PACKET).all(|p| p[0] == 0x47));
    }

    /// Continuity counters advance by one per payload packet across the loop point.
    #[test]
    fn continuity_counters_continue_across_loops() {
        let mut ts = TsLoop::default();
        let out = ts.next_packets(FIXTURE.len() / PACKET * 2 + 10);
        let mut last = vec![None::<u8>; 8192];
        for p in out.chunks(PACKET) {
            let pid = ((((p[1] & 0x1F) as u16) << 8) | p[2] as u16) as usize;
            if pid == NULL_PID as usize || (p[3] >> 4) & 1 == 0 {
                continue;
            }
            let cc = p[3] & 0x0F;
            if let Some(prev) = last[pid] {
                assert_eq!(cc, (prev + 1) & 0x0F, "pid {pid:#x}");
            }
            last[pid] = Some(cc);
        }
    }

    /// PCR never goes backwards across loops.
    #[test]
    fn pcr_is_monotonic_across_loops() {
        let mut ts = TsLoop::default();
        let out = ts.next_packets(FIXTURE.len() / PACKET * 3);
        let mut prev = 0u64;
        let mut seen = 0;
        for p in out.chunks(PACKET) {
            if (p[3] >> 5) & 1 == 1 && p[4] >= 7 && p[5] & 0x10 != 0 {
                let (base, _) = read_pcr(&p[6..12]);
                assert!(base >= prev, "pcr went back: {prev} -> {base}");
                prev = base;
                seen += 1;
            }
        }
        assert!(seen > 100);
    }

    /// Timestamps survive an encode/decode round trip.
    #[test]
    fn timestamp_codecs_round_trip() {
        let mut b = [0x21u8, 0, 1, 0, 1];
        write_ts(&mut b, 0x1_2345_6789);
        assert_eq!(read_ts(&b), 0x1_2345_6789);
        let mut p = [0u8; 6];
        write_pcr(&mut p, 0x1_0000_0001, 300);
        assert_eq!(read_pcr(&p), (0x1_0000_0001, 300));
    }
}
