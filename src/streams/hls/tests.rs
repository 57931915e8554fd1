//! Unit tests of `streams/hls.rs`, beside it so the module file reads as the code.

use super::*;
use crate::sim::ts::TsLoop;
use crate::streams::rechunk::Rechunker;
use crate::ts::keyframe::{classify, AccessUnit, Codec};
use crate::ts::{payload, payload_unit_start, pes_header, pid, PACKET_SIZE};

const BITRATE: u64 = 2_000_000;

/// `seconds` of the simulator's stream as the upstream task would feed it: 64 KiB chunks
/// with their keyframes and media spans (the padded stream's clock runs at its bitrate).
fn chunks(seconds: f64) -> Vec<FedChunk> {
    let mut ts = TsLoop::with_bitrate(BITRATE);
    let total = (seconds * BITRATE as f64 / 8.0) as usize / PACKET_SIZE;
    let data = ts.next_packets(total);
    let mut r = Rechunker::new(64 * 1024 / PACKET_SIZE * PACKET_SIZE);
    r.push(&data);
    let mut out = Vec::new();
    while let Some(c) = r.next_flush() {
        let t = |o: u64| o as f64 * 8.0 / BITRATE as f64;
        out.push(FedChunk {
            media: (t(c.offset), t(c.offset + c.data.len() as u64)),
            offset: c.offset,
            keyframes: c.found.keyframes,
            psi: c.found.psi,
            has_video: true,
            discontinuity: false,
            data: c.data,
        });
    }
    // `has_video` is known once a PMT was seen; the fixture's first packets carry one.
    out
}

fn bytes(s: &Segment) -> Vec<u8> {
    s.pieces.iter().flat_map(|b| b.iter().copied()).collect()
}

/// Segments start with PAT, PMT and a keyframe, last one fixture loop (4 GOPs of 1.04 s =
/// 4.16 s, the first keyframe at or after 4 s), and together are the stream from the first cut
/// on, nothing lost or repeated.
#[test]
fn cuts_on_keyframes_after_the_target() {
    let fed = chunks(40.0);
    let mut seg = Segmenter::new(4.0, 6);
    for c in fed.iter().cloned() {
        seg.feed(c);
    }
    assert_eq!(seg.cuts.forced, 0);
    assert!(seg.cuts.keyframe >= 8, "{:?}", seg.cuts);
    let segs: Vec<&Segment> = seg.segments.iter().collect();
    let mut stream_from_first_cut = Vec::new();
    for s in &segs {
        assert!((s.duration - 4.16).abs() < 0.01, "duration {}", s.duration);
        let b = bytes(s);
        assert_eq!(b.len() % PACKET_SIZE, 0);
        let packets: Vec<&[u8]> = b.chunks(PACKET_SIZE).collect();
        assert_eq!(pid(packets[0]), 0, "PAT first");
        let video = packets[2];
        assert!(payload_unit_start(video), "a PES starts after PAT and PMT");
        let pl = payload(video).unwrap();
        let es = &pl[pes_header(pl).unwrap().data_offset..];
        let mut au = es.to_vec();
        for p in packets[3..].iter().filter(|p| pid(p) == pid(video)).take(8) {
            au.extend_from_slice(payload(p).unwrap());
        }
        assert_eq!(classify(Codec::H264, &au), AccessUnit::RandomAccess);
        stream_from_first_cut.extend_from_slice(&b[2 * PACKET_SIZE..]);
    }
    // The segments' stream (PSI aside) is one contiguous run of the fed stream.
    let all: Vec<u8> = fed.iter().flat_map(|c| c.data.iter().copied()).collect();
    let at = all
        .windows(stream_from_first_cut.len().min(4096))
        .position(|w| w == &stream_from_first_cut[..w.len()])
        .expect("the segments' first bytes are in the stream");
    assert_eq!(
        &all[at..at + stream_from_first_cut.len()],
        &stream_from_first_cut[..]
    );
}

/// The playlist: version 3, a fixed target duration, the window, a growing media sequence,
/// and a discontinuity where the clock jumped, counted once it leaves the window.
#[test]
fn playlist_window_and_discontinuities() {
    let mut seg = Segmenter::new(4.0, 3);
    let mut fed = chunks(60.0);
    let mid = fed.len() / 3;
    fed[mid].discontinuity = true;
    for c in fed {
        seg.feed(c);
    }
    let text = seg.playlist(|n| format!("hls/{n}.ts"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..3],
        &["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:10"]
    );
    assert_eq!(text.matches("#EXTINF").count(), 3, "{text}");
    let first: u64 = lines[3]
        .strip_prefix("#EXT-X-MEDIA-SEQUENCE:")
        .unwrap()
        .parse()
        .unwrap();
    assert!(text.contains(&format!("hls/{first}.ts")), "{text}");
    assert_eq!(seg.segments.len(), 6, "one more window stays fetchable");
    assert!(seg.segment(first - 3).is_some() && seg.segment(first - 4).is_none());
    // The discontinuity was early: it left the window and is counted.
    assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1"), "{text}");
    assert!(!text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
}
