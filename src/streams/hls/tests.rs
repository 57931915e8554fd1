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
    let text = seg.playlist(|n, _| format!("hls/{n}.ts"));
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

/// A new session's first segments are short (`hls_first_segment_seconds` 1 s, doubling up to the
/// 4 s target): a GOP (1.04 s), then two, then four, then four on.
#[test]
fn first_segments_grow_to_the_target() {
    let mut seg = Segmenter::new(4.0, 6).with_start(1.0);
    for c in chunks(30.0) {
        seg.feed(c);
    }
    let durations: Vec<f64> = seg.segments.iter().map(|s| s.duration).collect();
    let expected = [1.04, 2.08, 4.16, 4.16, 4.16];
    for (d, e) in durations.iter().zip(expected) {
        assert!((d - e).abs() < 0.01, "{durations:?}");
    }
    assert_eq!(
        seg.target_duration(),
        10,
        "TARGETDURATION stays the full target's"
    );
}

/// Low-latency parts: each at most `PART-TARGET` (0.5 s) long, only a segment's first part is
/// independent and starts with PAT and PMT, and a segment's parts are its bytes exactly.
#[test]
fn parts_are_their_segment_in_order() {
    let mut seg = Segmenter::new(2.0, 6).with_parts(Some(0.5));
    for c in chunks(20.0) {
        seg.feed(c);
    }
    assert!(seg.segments.len() >= 8, "{}", seg.segments.len());
    for s in &seg.segments {
        assert!(
            s.parts.len() >= 4,
            "{} parts in {} s",
            s.parts.len(),
            s.duration
        );
        let mut joined = Vec::new();
        for (i, p) in s.parts.iter().enumerate() {
            assert!(
                p.duration <= 0.5 + 1e-9 && p.duration > 0.0,
                "{}",
                p.duration
            );
            assert_eq!(p.independent, i == 0);
            assert_eq!(p.len, p.pieces.iter().map(|b| b.len()).sum::<usize>());
            assert_eq!(p.len % PACKET_SIZE, 0);
            joined.extend(p.pieces.iter().flat_map(|b| b.iter().copied()));
        }
        assert_eq!(joined, bytes(s), "segment {}", s.sequence);
        let total: f64 = s.parts.iter().map(|p| p.duration).sum();
        assert!(
            (total - s.duration).abs() < 0.05,
            "{total} vs {}",
            s.duration
        );
        // All but the last part are full length (the last ends where the segment does).
        for p in &s.parts[..s.parts.len() - 1] {
            assert!(p.duration > 0.45, "{}", p.duration);
        }
    }
}

/// A session's first segment is numbered one: hls.js asks a blocking reload only once the last
/// segment's number is non-zero.
#[test]
fn the_first_segment_is_numbered_one() {
    let mut seg = Segmenter::new(2.0, 4).with_parts(Some(0.5));
    assert_eq!(seg.building(), FIRST_MEDIA_SEQUENCE);
    for c in chunks(3.0) {
        seg.feed(c);
    }
    let text = seg.playlist(|n: u64, _| format!("{n}.ts"));
    assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:1\n"), "{text}");
    assert!(text.contains("\n1.ts\n"), "{text}");
    assert!(!text.contains("\n0.ts\n"), "{text}");
}

/// The low-latency playlist: server control, part target, parts of the newest segments and of
/// the one being built, a preload hint for the next part; what a blocking reload waits for.
#[test]
fn low_latency_playlist_and_blocking() {
    let mut seg = Segmenter::new(2.0, 4).with_parts(Some(0.5));
    for c in chunks(13.0) {
        seg.feed(c);
    }
    let uri = |n: u64, p: Option<usize>| match p {
        None => format!("{n}.ts"),
        Some(p) => format!("{n}.{p}.ts"),
    };
    let text = seg.playlist(uri);
    assert!(text.contains("#EXT-X-VERSION:6\n"), "{text}");
    assert!(
        text.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500\n"),
        "{text}"
    );
    assert!(
        text.contains("#EXT-X-PART-INF:PART-TARGET=0.500\n"),
        "{text}"
    );
    let building = seg.building();
    let (parts, _) = seg.building_parts();
    let n = parts.len();
    assert!(text.ends_with(&format!(
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{building}.{n}.ts\"\n"
    )));
    // Parts of the last two finished segments and of the one being built are listed.
    let last = building - 1;
    assert!(
        text.contains(&format!("URI=\"{last}.0.ts\",INDEPENDENT=YES")),
        "{text}"
    );
    assert!(
        text.contains(&format!("URI=\"{}.0.ts\"", last - 1)),
        "{text}"
    );
    assert!(
        !text.contains(&format!("URI=\"{}.0.ts\"", last - 2)),
        "{text}"
    );
    assert!(seg.has(last, None) && seg.has(last, Some(9)));
    assert!(!seg.has(building, None));
    assert_eq!(seg.has(building, Some(0)), n > 0);
    assert!(!seg.has(building, Some(n as u64)));
    assert!(seg.part(building, n).is_none());
    assert!(seg.part(last, 0).is_some());
}

/// An engine's burst (the whole fixture fed at once) counts as bursting until [`BURST_QUIET`]
/// after its last cut; the same stream fed at its own pace never does.
#[tokio::test(start_paused = true)]
async fn a_burst_settles_a_quiet_moment_after_its_last_cut_and_live_never_bursts() {
    let settings = HlsSettings {
        segment_seconds: 2.0,
        window_segments: 6,
        first_segment_seconds: 1.0,
        part_seconds: Some(0.5),
    };
    let burst = Hls::new(settings);
    let start = tokio::time::Instant::now();
    assert_eq!(burst.settling(start), None, "nothing cut yet");
    for c in chunks(20.0) {
        burst.feed(c);
    }
    assert!(burst.listed() >= 5, "{} segments", burst.listed());
    let until = burst.settling(start).expect("a burst is settling");
    assert_eq!(until, start + BURST_QUIET);
    assert_eq!(burst.settling(start + BURST_QUIET), None, "over once quiet");

    // The same stream at its own pace: each chunk when it plays.
    let live = Hls::new(settings);
    for c in chunks(10.0) {
        let plays_at = start + std::time::Duration::from_secs_f64(c.media.1);
        tokio::time::sleep_until(plays_at).await;
        let media = c.media;
        live.feed(c);
        assert_eq!(
            live.settling(tokio::time::Instant::now()),
            None,
            "at {media:?}"
        );
    }
    assert!(live.listed() >= 3);
}
