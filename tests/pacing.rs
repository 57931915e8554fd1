//! Live pacing and clean joins: an engine's cache burst never disconnects a player that keeps up,
//! a pause and its catch-up do not either, lag is told in stream seconds, a stream without a
//! clock is paced by its readers, and every joiner starts on a keyframe with the PAT and PMT
//! first.

mod common;

use acestream_edge::sim::Knobs;
use acestream_edge::ts::{self, keyframe, Codec};
use common::*;
use std::time::Duration;

const MB: usize = 1_000_000;

/// The burst case: a 2 Mbit/s stream after a 20 MB burst, one line-speed reader and three
/// players at 1.25× after a 1 MB prefill, for 15 s. Nobody is cut off, every player gets the
/// stream's rate over the last 10 s, the engine saw one session, and the ring never ran more than
/// `live_lead` ahead of real time.
#[tokio::test(flavor = "multi_thread")]
async fn engine_burst_never_disconnects_paced_players() {
    let bitrate = 2_000_000.0;
    let e = sim(Knobs {
        bitrate_bps: bitrate as u64,
        burst_bytes: 20 * MB as u64,
        prebuffer: Duration::from_millis(500),
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let path = format!("/ace/getstream?id={}", content_id(1200));
    let byte_rate = bitrate / 8.0;
    let line = Pace {
        prefill: 0,
        rate: 0.0,
        pause: None,
    };
    let player = Pace {
        prefill: MB,
        rate: 1.25 * byte_rate,
        pause: None,
    };
    let mut readers = Vec::new();
    for pace in [line, player, player, player] {
        let addr = server.addr;
        let path = path.clone();
        readers.push(tokio::spawn(async move {
            let mut r = get_small_buffer(addr, &path, 128 * 1024).await;
            assert_eq!(r.status, 200);
            read_like_player(&mut r, pace, Duration::from_secs(15)).await
        }));
    }
    let mut logs = Vec::new();
    for r in readers {
        logs.push(r.await.unwrap());
    }
    for (i, log) in logs.iter().enumerate() {
        assert!(log.cut_off.is_none(), "reader {i}: {:?}", log.cut_off);
    }
    for (i, log) in logs.iter().enumerate().skip(1) {
        let rate = log.rate_between(Duration::from_secs(5), Duration::from_secs(15));
        eprintln!(
            "player {i}: {rate:.0} B/s over the last 10 s, {} bytes",
            log.total()
        );
        assert!(
            rate >= 0.95 * byte_rate,
            "player {i} got {rate:.0} B/s, the stream is {byte_rate:.0} B/s"
        );
    }
    // The line-speed reader got no more than the stream's clock allows (live_lead 2 s ahead).
    let line_total = logs[0].total() as f64;
    assert!(
        line_total < byte_rate * (15.0 + 2.0 + 1.0),
        "line-speed reader got {line_total} bytes in 15 s: the burst was not paced"
    );
    let s = sim_stats(&e).await;
    assert_eq!((s.getstream_total, s.sessions_started), (1, 1));
    assert_eq!(server.edge.metrics.slow_client_drops.get(), 0);
}

/// A player that stops reading for 10 s (5 MB at 4 Mbit/s; the byte minimum is set to 1 MiB here,
/// so the time rule is what keeps it) and then reads at 1.5× for 12 s is not dropped (the ring keeps what it needs, up to 15 s of stream
/// by default), the lag the status page shows in seconds falls by at least 4 s while it catches
/// up, and the ring shrinks again as it does.
#[tokio::test(flavor = "multi_thread")]
async fn paused_player_catches_up_and_lag_falls() {
    let bitrate = 4_000_000.0;
    let e = sim(Knobs {
        bitrate_bps: bitrate as u64,
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], "stream_buffer_size: 1048576"));
    let id = content_id(1201);
    let path = format!("/ace/getstream?id={id}");
    // A small receive buffer: the pause must show in the proxy, not in kernel buffers.
    let mut r = get_small_buffer(server.addr, &path, 16 * 1024).await;
    assert_eq!(r.status, 200);
    let pace = Pace {
        prefill: 0,
        rate: 1.5 * bitrate / 8.0,
        pause: Some((Duration::from_secs(2), Duration::from_secs(10))),
    };
    let addr = server.addr;
    // (client lag, ring buffer) in seconds
    let lag = move || async move {
        let (_, v) = get_json(addr, &format!("/proxy/sessions/{}", content_id(1201))).await;
        let lag = v["clients"][0]["lag_seconds"]
            .as_f64()
            .expect("lag_seconds");
        (lag, v["buffer_seconds"].as_f64().expect("buffer_seconds"))
    };
    let sampler = tokio::spawn(async move {
        // Right after the pause ends, and at its end 12 s later.
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        let after_pause = lag().await;
        tokio::time::sleep(Duration::from_secs(12)).await;
        (after_pause, lag().await)
    });
    let log = read_like_player(&mut r, pace, Duration::from_secs(22)).await;
    let ((after_pause, buffer_after_pause), (at_end, buffer_at_end)) = sampler.await.unwrap();
    eprintln!(
        "lag after the pause {after_pause:.1} s (ring {buffer_after_pause:.1} s), \
         12 s later {at_end:.1} s (ring {buffer_at_end:.1} s)"
    );
    assert!(log.cut_off.is_none(), "{:?}", log.cut_off);
    assert!(
        after_pause >= 6.0,
        "the pause shows as lag: {after_pause:.1} s"
    );
    assert!(
        after_pause - at_end >= 4.0,
        "lag fell from {after_pause:.1} s to {at_end:.1} s"
    );
    let (_, v) = get_json(server.addr, &format!("/proxy/sessions/{id}")).await;
    let bps = v["bitrate_bps"].as_f64().expect("bitrate_bps");
    assert!((bps - bitrate).abs() / bitrate < 0.1, "bitrate_bps {bps}");
    let lead = v["ingest_lead_seconds"]
        .as_f64()
        .expect("ingest_lead_seconds");
    assert!((0.0..=2.5).contains(&lead), "ingest lead {lead}");
    assert!(
        buffer_after_pause >= after_pause - 0.5,
        "the ring holds what the paused reader needs"
    );
    assert!(
        buffer_at_end < buffer_after_pause,
        "the ring shrinks as the reader catches up"
    );
    assert_eq!(server.edge.metrics.slow_client_drops.get(), 0);
}

/// The engine pauses 5 s mid-stream and then catches up at line speed: clients get keepalive
/// null packets during the pause and are not dropped when the catch-up arrives; the engine
/// session is never restarted.
#[tokio::test(flavor = "multi_thread")]
async fn engine_pause_gets_keepalives_and_drops_nobody() {
    let bitrate = 2_000_000.0;
    let e = sim(Knobs {
        bitrate_bps: bitrate as u64,
        pause_after_bytes: Some(MB as u64),
        pause: Duration::from_secs(5),
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], "upstream_stall_timeout: 10"));
    let path = format!("/ace/getstream?id={}", content_id(1202));
    let mut readers = Vec::new();
    for rate in [0.0, bitrate / 8.0] {
        let (addr, path) = (server.addr, path.clone());
        readers.push(tokio::spawn(async move {
            let mut r = get_small_buffer(addr, &path, 64 * 1024).await;
            let pace = Pace {
                prefill: 300_000,
                rate,
                pause: None,
            };
            read_like_player(&mut r, pace, Duration::from_secs(14)).await
        }));
    }
    for r in readers {
        let log = r.await.unwrap();
        assert!(log.cut_off.is_none(), "{:?}", log.cut_off);
        assert!(
            log.null_packets.len() >= 2,
            "keepalives during the pause: {:?}",
            log.null_packets
        );
    }
    let s = sim_stats(&e).await;
    assert_eq!(
        s.getstream_total, 1,
        "no failover: the pause is not a stall"
    );
    assert_eq!(server.edge.metrics.slow_client_drops.get(), 0);
}

/// Asserts that a client's stream begins with the PAT, the PMT and then an H.264 IDR picture's
/// PES (keepalive null packets before them are allowed).
fn assert_starts_on_keyframe(data: &[u8]) {
    let packets: Vec<&[u8]> = data
        .chunks(188)
        .skip_while(|p| ts::pid(p) == ts::NULL_PID)
        .collect();
    assert_eq!(ts::pid(packets[0]), ts::PAT_PID, "PAT first");
    let pmt_pid = ts::psi::parse_pat(packets[0]).expect("a PAT");
    assert_eq!(ts::pid(packets[1]), pmt_pid, "then the PMT");
    let pmt = ts::psi::parse_pmt(packets[1]).expect("a PMT");
    let video = pmt.streams[0];
    assert_eq!(
        Codec::from_stream_type(video.stream_type),
        Some(Codec::H264)
    );
    let third = packets[2];
    assert_eq!(ts::pid(third), video.pid, "then the video");
    assert!(ts::payload_unit_start(third), "at a PES start");
    // The access unit's first bytes (up to the next PES start of the video) hold an IDR.
    let payload = ts::payload(third).unwrap();
    let mut es = payload[ts::pes_header(payload).unwrap().data_offset..].to_vec();
    for p in packets[3..]
        .iter()
        .filter(|p| ts::pid(p) == video.pid)
        .take_while(|p| !ts::payload_unit_start(p))
    {
        es.extend_from_slice(ts::payload(p).unwrap_or(&[]));
    }
    assert_eq!(
        keyframe::classify(Codec::H264, &es),
        keyframe::AccessUnit::RandomAccess,
        "an IDR picture"
    );
}

/// A client joining a running session gets the PAT, the PMT and then a keyframe's PES as its
/// first bytes, and so does the first client of an engine whose stream starts mid-GOP; ffmpeg
/// decodes a joiner's stream, and a first client's, without a single error.
#[tokio::test(flavor = "multi_thread")]
async fn joiner_starts_on_a_keyframe_and_decodes_cleanly() {
    // 700 packets in: past the fixture's first IDR, in the middle of its first GOP.
    let e = sim(Knobs {
        start_packet: 700,
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let path = format!("/ace/getstream?id={}", content_id(1203));
    let mut first = get(server.addr, &path).await;
    let (head, _) = read_for(&mut first, Duration::from_secs(5), 1_500_000).await;
    assert_starts_on_keyframe(&head);
    for _ in 0..3 {
        let mut joiner = get(server.addr, &path).await;
        assert_eq!(joiner.status, 200);
        let (data, _) = read_for(&mut joiner, Duration::from_secs(4), 1_200_000).await;
        assert_starts_on_keyframe(&data);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ffmpeg itself joining the running session: not one decode error.
    let url = format!("http://{}{path}", server.addr);
    let (ok, errors) = ffmpeg_play(url, 5).await;
    assert!(
        ok && errors.trim().is_empty(),
        "ffmpeg joining a running session: {errors}"
    );
    drop(first);
    // ffmpeg as the first client of a new session on the mid-GOP engine.
    let url = format!(
        "http://{}/ace/getstream?id={}",
        server.addr,
        content_id(1205)
    );
    let (ok, errors) = ffmpeg_play(url, 3).await;
    assert!(
        ok && errors.trim().is_empty(),
        "ffmpeg as the first client of a mid-GOP start: {errors}"
    );
}

/// A stream without a clock (null packets only) from an unlimited source, and ten equal clients
/// (each reading 5 MB/s): ingest follows the most advanced client, so none of them falls off the
/// ring, although the source could fill it a hundred times over.
#[tokio::test(flavor = "multi_thread")]
async fn clockless_fast_source_is_paced_by_its_readers() {
    let e = sim(Knobs {
        bitrate_bps: 0,
        null_stream: true,
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let path = format!("/ace/getstream?id={}", content_id(1204));
    let rate = 5e6;
    let mut readers = Vec::new();
    for _ in 0..10 {
        let (addr, path) = (server.addr, path.clone());
        readers.push(tokio::spawn(async move {
            let mut r = get_small_buffer(addr, &path, 64 * 1024).await;
            let pace = Pace {
                prefill: 0,
                rate,
                pause: None,
            };
            read_like_player(&mut r, pace, Duration::from_secs(5)).await
        }));
    }
    let mut totals = Vec::new();
    for r in readers {
        let log = r.await.unwrap();
        assert!(log.cut_off.is_none(), "{:?}", log.cut_off);
        totals.push(log.total());
    }
    eprintln!("clockless readers got {totals:?} bytes");
    assert!(
        totals.iter().all(|t| *t as f64 > 0.9 * rate * 5.0),
        "every reader kept its 5 MB/s: {totals:?}"
    );
    assert_eq!(server.edge.metrics.slow_client_drops.get(), 0);
    let s = server.edge.sessions.get(&content_id(1204)).unwrap();
    assert_eq!(s.ingest_lead_seconds(), None, "no clock, no lead");
    // Reader-paced: the engine sent little more than the leading reader took plus the ring.
    assert!(
        s.bytes_in.load(std::sync::atomic::Ordering::Relaxed)
            < (totals.iter().max().unwrap() + (70 << 20)) as u64
    );
}
