//! An endless, valid MPEG-TS stream made by looping a short fixture.
//!
//! The fixture (`fixture.ts`: 4.16 s of H.264 + AAC, audio and video exactly as long, made once
//! with ffmpeg, see the README) is replayed forever. A plain replay would be invalid TS at every loop point: continuity counters would jump
//! and PCR/PTS/DTS would go back in time. So each loop adds a fixed offset to every PCR, PTS and DTS,
//! and continuity counters are renumbered per PID across loops. A player (or ffprobe) sees one
//! continuous live stream.

use crate::ts::keyframe::Codec;
use crate::ts::psi::{parse_pat, parse_pmt};
use crate::ts::{
    continuity_counter, has_payload, payload, payload_unit_start, pes_header, pid,
    set_continuity_counter, shift_pcr, shift_pes_timestamps, NULL_PACKET, NULL_PID, PACKET_SIZE,
};
use bytes::{BufMut, Bytes, BytesMut};

/// The fixture the simulator streams.
pub const FIXTURE: &[u8] = include_bytes!("fixture.ts");
/// The HEVC fixture (the `hevc` knob): 1 s of H.265 video, one keyframe (`tests/data/README.md`).
pub const HEVC_FIXTURE: &[u8] = include_bytes!("../../tests/data/hevc.ts");
/// MPEG-TS packet size (re-exported for the simulator's writers).
pub const PACKET: usize = PACKET_SIZE;

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
    /// Packets per loop on the wire (fixture packets plus null padding), at least the fixture's.
    slots: usize,
    /// Next output slot in the current loop.
    slot: usize,
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
            slots: whole / PACKET,
            slot: 0,
        }
    }

    /// The fixture padded with null packets to a constant `bitrate_bps` on its own clock, as a
    /// broadcast multiplex is: one second of PCR then takes `bitrate_bps` bits on the wire, so a
    /// reader at that bitrate plays in real time. At or below the fixture's natural rate (about
    /// 1.6 Mbit/s) or with 0 (unlimited), no padding.
    pub fn with_bitrate(bitrate_bps: u64) -> Self {
        Self::of(FIXTURE, bitrate_bps)
    }

    /// [`TsLoop::with_bitrate`] over another fixture.
    pub fn of(data: &'static [u8], bitrate_bps: u64) -> Self {
        let mut ts = Self::new(data);
        let fixture_packets = ts.packets.len() / PACKET;
        let period_s = ts.period_90k as f64 / 90_000.0;
        let wanted = (bitrate_bps as f64 / 8.0 * period_s / PACKET as f64).round() as usize;
        ts.slots = wanted.max(fixture_packets);
        ts
    }

    /// Starts the stream `packets` fixture packets in (mid-GOP, as a real engine's stream starts
    /// wherever its cache does).
    pub fn starting_at(mut self, packets: usize) -> Self {
        let fixture_packets = self.packets.len() / PACKET;
        self.index = packets % fixture_packets;
        self.slot = self.index * self.slots / fixture_packets;
        self
    }

    /// The stream's bitrate on its own clock (bits per second of PCR).
    pub fn bitrate_bps(&self) -> u64 {
        (self.slots * PACKET * 8) as u64 * 90_000 / self.period_90k
    }

    /// Appends the next `n` packets to `out`.
    pub fn fill(&mut self, out: &mut BytesMut, n: usize) {
        out.reserve(n * PACKET);
        let fixture_packets = self.packets.len() / PACKET;
        for _ in 0..n {
            // Bresenham: fixture packet i goes out at slot i * slots / fixture_packets (strictly
            // increasing, as slots >= fixture_packets); null packets fill the slots between.
            let due = self.index < fixture_packets
                && self.index * self.slots / fixture_packets <= self.slot;
            if due {
                let start = self.index * PACKET;
                let mut pkt = [0u8; PACKET];
                pkt.copy_from_slice(&self.packets[start..start + PACKET]);
                self.rewrite(&mut pkt);
                out.put_slice(&pkt);
                self.index += 1;
                if self.index == fixture_packets {
                    // Timestamps of the next loop's packets move on by one period.
                    self.loops += 1;
                }
            } else {
                out.put_slice(&NULL_PACKET);
            }
            self.slot += 1;
            if self.slot == self.slots {
                self.slot = 0;
                self.index = 0;
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
        let pid = pid(pkt);
        if pid == NULL_PID {
            return;
        }
        let last = self.cc[pid as usize];
        let cc = match (last, has_payload(pkt)) {
            (None, _) => continuity_counter(pkt),
            (Some(c), true) => (c + 1) & 0x0F,
            (Some(c), false) => c,
        };
        self.cc[pid as usize] = Some(cc);
        set_continuity_counter(pkt, cc);
        let offset_90k = self.loops * self.period_90k;
        if offset_90k == 0 {
            return;
        }
        shift_pcr(pkt, offset_90k);
        shift_pes_timestamps(pkt, offset_90k);
    }
}

/// The loop period: the video stream's PTS span plus one frame, so the first picture of loop k+1
/// follows the last of loop k by exactly one frame. The video PID comes from the PMT; its PES
/// each carry one picture, so the smallest PTS step is the frame duration. (Audio PES bundle
/// several frames, so their steps say nothing about one frame; the fixture's audio is cut to the
/// same span as its video, which the simulator test checks.) Without video, the longest per-PID
/// span plus its last step.
fn loop_period_90k(packets: &[u8]) -> u64 {
    use std::collections::HashMap;
    let mut pts: HashMap<u16, Vec<u64>> = HashMap::new();
    let mut pmt_pid = None;
    let mut video_pid = None;
    for pkt in packets.chunks_exact(PACKET) {
        if pmt_pid.is_none() {
            pmt_pid = parse_pat(pkt);
        }
        if video_pid.is_none() && Some(pid(pkt)) == pmt_pid {
            video_pid = parse_pmt(pkt).and_then(|pmt| {
                pmt.streams
                    .iter()
                    .find(|s| Codec::from_stream_type(s.stream_type).is_some())
                    .map(|s| s.pid)
            });
        }
        if !payload_unit_start(pkt) {
            continue;
        }
        if let Some(t) = payload(pkt).and_then(pes_header).and_then(|h| h.pts) {
            pts.entry(pid(pkt)).or_default().push(t);
        }
    }
    let span = |v: &mut Vec<u64>, step: fn(&[u64]) -> u64| -> u64 {
        v.sort_unstable();
        v.dedup();
        if v.len() < 2 {
            return 0;
        }
        v[v.len() - 1] - v[0] + step(v)
    };
    let smallest_step = |v: &[u64]| v.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(0);
    let last_step = |v: &[u64]| v[v.len() - 1] - v[v.len() - 2];
    if let Some(v) = video_pid.and_then(|p| pts.get_mut(&p)) {
        let period = span(v, smallest_step);
        if period > 0 {
            return period;
        }
    }
    let longest = pts
        .values_mut()
        .map(|v| span(v, last_step))
        .max()
        .unwrap_or(0);
    // Whole 40 ms (25 fps) frames, so no timestamp of loop k+1 precedes one of loop k.
    let frame = 3600;
    longest.div_ceil(frame).max(1) * frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::{is_aligned, pcr};

    /// Every packet of every loop starts with the sync byte.
    #[test]
    fn looped_stream_keeps_sync() {
        let mut ts = TsLoop::default();
        let n = FIXTURE.len() / PACKET * 3 + 7;
        assert!(is_aligned(&ts.next_packets(n)));
    }

    /// Continuity counters advance by one per payload packet across the loop point.
    #[test]
    fn continuity_counters_continue_across_loops() {
        let mut ts = TsLoop::default();
        let out = ts.next_packets(FIXTURE.len() / PACKET * 2 + 10);
        let mut last = vec![None::<u8>; 8192];
        for p in out.chunks(PACKET) {
            let pid = pid(p) as usize;
            if pid == NULL_PID as usize || !has_payload(p) {
                continue;
            }
            let cc = continuity_counter(p);
            if let Some(prev) = last[pid] {
                assert_eq!(cc, (prev + 1) & 0x0F, "pid {pid:#x}");
            }
            last[pid] = Some(cc);
        }
    }

    /// Padded to a bitrate, the stream carries that many bits per second of its own PCR, and
    /// the fixture's packets all come through, in order, once per loop.
    #[test]
    fn padding_makes_the_clock_match_the_bitrate() {
        let mut ts = TsLoop::with_bitrate(4_000_000);
        assert!(
            (ts.bitrate_bps() as f64 - 4e6).abs() < 4e4,
            "{}",
            ts.bitrate_bps()
        );
        let fixture_packets = FIXTURE.len() / PACKET;
        let out = ts.next_packets(ts.slots * 3);
        let real = out.chunks(PACKET).filter(|p| pid(p) != NULL_PID).count();
        let fixture_real = FIXTURE[..fixture_packets * PACKET]
            .chunks(PACKET)
            .filter(|p| pid(p) != NULL_PID)
            .count();
        assert_eq!(real, 3 * fixture_real);
        // Bytes between the first PCR of loop 1 and of loop 2 span one period of PCR.
        let pcrs: Vec<(usize, u64)> = out
            .chunks(PACKET)
            .enumerate()
            .filter_map(|(i, p)| pcr(p).map(|v| (i, v)))
            .collect();
        let (i0, v0) = pcrs[0];
        let (i1, v1) = *pcrs.last().unwrap();
        let bits = ((i1 - i0) * PACKET * 8) as f64;
        let seconds = (v1 - v0) as f64 / crate::ts::PCR_HZ as f64;
        assert!(
            (bits / seconds - 4e6).abs() / 4e6 < 0.03,
            "{} bit/s",
            bits / seconds
        );
        // At or below the natural rate: no padding.
        assert_eq!(TsLoop::with_bitrate(400_000).slots, fixture_packets);
        assert_eq!(TsLoop::with_bitrate(0).slots, fixture_packets);
    }

    /// PCR never goes backwards across loops.
    #[test]
    fn pcr_is_monotonic_across_loops() {
        let mut ts = TsLoop::default();
        let out = ts.next_packets(FIXTURE.len() / PACKET * 3);
        let mut prev = 0u64;
        let mut seen = 0;
        for value in out.chunks(PACKET).filter_map(pcr) {
            assert!(value >= prev, "pcr went back: {prev} -> {value}");
            prev = value;
            seen += 1;
        }
        assert!(seen > 100);
    }
}
