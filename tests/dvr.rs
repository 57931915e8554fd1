//! DVR (issue 28): a TS viewer rewound with `offset=-<seconds>` or `start=<unix>` starts where it
//! asked (compared by PTS with a live reader at the same moment, ffmpeg decoding it), reads the
//! spill at line speed up to the live edge as one continuous stream, shows in the status, and
//! the spill is gone when the session ends.

mod common;

use acestream_edge::sim::Knobs;
use acestream_edge::ts::{continuity_counter, has_payload, pid, NULL_PID};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Keeps a live viewer of `path` reading (so the session is watched) until the task is aborted.
fn keep_watching(addr: SocketAddr, path: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut r = get(addr, &path).await;
        while let Ok(Some(_)) = r.next_chunk().await {}
    })
}

/// The first video PTS (seconds) of a TS capture, by ffprobe.
fn first_video_pts(data: &[u8]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cap.ts");
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args([
            "packet=pts_time",
            "-read_intervals",
            "%+#1",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("a video PTS in the capture: {text:?}"))
}

/// The first `n` bytes of `path`.
async fn capture(addr: SocketAddr, path: String, n: usize) -> Vec<u8> {
    let mut r = get(addr, &path).await;
    assert_eq!(r.status, 200, "{path}");
    read_for(&mut r, Duration::from_secs(20), n)
        .await
        .0
        .to_vec()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// After 90 s of a session: `offset=-60` starts 55–65 s behind a live reader (first PTS, read
/// at the same moment), `start=<now − 30>` within a GOP (and the ring's live lead) of 30 s
/// behind; `ffmpeg -v error -i '…&offset=-60' -t 20` decodes cleanly; the status shows the
/// rewound viewer (`dvr: true`, its lag) and the window held; the spill is deleted at the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewound_viewer_starts_where_it_asked() {
    let e = sim(Knobs::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_proxy(proxy_config(
        &[&e],
        &format!(
            "dvr_dir: {}\nstream_idle_timeout: 1\nunwatched_linger: 1",
            dir.path().display()
        ),
    ));
    let id = content_id(3000);
    let live = format!("/ace/getstream?id={id}");
    let keeper = keep_watching(server.addr, live.clone());
    tokio::time::sleep(Duration::from_secs(90)).await;

    let start_at = unix_now() - 30.0;
    let url = format!("http://{}{live}&offset=-60", server.addr);
    let ffmpeg = tokio::spawn(ffmpeg_play(url, 20));
    let (now, back60, back30) = tokio::join!(
        capture(server.addr, live.clone(), 2 << 20),
        capture(server.addr, format!("{live}&offset=-60"), 2 << 20),
        capture(server.addr, format!("{live}&start={start_at:.3}"), 2 << 20),
    );
    let (pts_live, pts_60, pts_30) = (
        first_video_pts(&now),
        first_video_pts(&back60),
        first_video_pts(&back30),
    );
    eprintln!("first PTS: live {pts_live:.2}, offset=-60 {pts_60:.2}, start=now-30 {pts_30:.2}");
    assert!(
        (55.0..=65.0).contains(&(pts_live - pts_60)),
        "{pts_live} vs {pts_60}"
    );
    // `start` is wall time; the ring's edge runs up to `live_lead` (2 s) ahead of it, and a
    // viewer starts on the keyframe at or before (GOP 1.04 s).
    assert!(
        (28.0..=33.5).contains(&(pts_live - pts_30)),
        "{pts_live} vs {pts_30}"
    );

    // While a rewound viewer reads: the status.
    let mut held = get(server.addr, &format!("{live}&offset=-45")).await;
    let _ = read_for(&mut held, Duration::from_secs(5), 1 << 20).await;
    let (_, v) = get_json(server.addr, "/proxy/sessions").await;
    let s = &v["sessions"][0];
    let dvr_seconds = s["dvr_seconds"].as_f64().unwrap();
    assert!((85.0..=100.0).contains(&dvr_seconds), "{s}");
    assert!(s["dvr_bytes"].as_u64().unwrap() > 40_000_000, "{s}");
    let rewound: Vec<&serde_json::Value> = s["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["dvr"] == true)
        .collect();
    assert_eq!(rewound.len(), 1, "{s}");
    let lag = rewound[0]["lag_seconds"].as_f64().unwrap();
    assert!((30.0..=50.0).contains(&lag), "{lag}");

    let (ok, errors) = ffmpeg.await.unwrap();
    assert!(ok && errors.trim().is_empty(), "ffmpeg: {errors}");
    let m = &server.edge.metrics;
    assert!(m.dvr_rewound_viewers.get() >= 4);
    assert!(m.dvr_spill_reads.get() > 0);

    // The session ends: its spill goes.
    drop(held);
    keeper.abort();
    assert!(
        wait_until(Duration::from_secs(15), || async {
            std::fs::read_dir(dir.path()).map_or(0, |d| d.count()) == 0
        })
        .await,
        "the spill is deleted when the session ends"
    );
    assert_eq!(m.dvr_spill_bytes.get(), 0);
}

/// The per-PID continuity counter jumps in a TS capture, after its first `skip` packets (the
/// PAT/PMT a rewound viewer starts with are copies from earlier in the stream).
fn cc_jumps(data: &[u8], skip: usize) -> Vec<(usize, u16, u8, u8)> {
    let mut last: std::collections::HashMap<u16, u8> = Default::default();
    let mut jumps = Vec::new();
    for (i, p) in data.chunks(188).enumerate().skip(skip) {
        let pid = pid(p);
        if pid == NULL_PID || !has_payload(p) {
            continue;
        }
        let cc = continuity_counter(p);
        if let Some(prev) = last.insert(pid, cc) {
            if cc != (prev + 1) % 16 {
                jumps.push((i, pid, prev, cc));
            }
        }
    }
    jumps
}

/// A capture up to its last video PES start: a capture cut at an arbitrary byte ends inside a
/// picture, which a decoder rightly reports as broken.
fn whole_frames(data: &[u8]) -> &[u8] {
    let is_video_start = |p: &[u8]| {
        acestream_edge::ts::payload_unit_start(p)
            && acestream_edge::ts::payload(p).is_some_and(|pl| {
                pl.len() > 3 && pl[..3] == [0, 0, 1] && (0xE0..=0xEF).contains(&pl[3])
            })
    };
    let last = data
        .chunks(188)
        .rposition(is_video_start)
        .expect("a video PES in the capture");
    &data[..last * 188]
}

/// From `offset=-30`, read as fast as it comes: the 30 s behind live arrive at line speed (far
/// faster than real time), then the viewer follows the live edge for 10 s more; the whole
/// capture is one continuous TS (no continuity counter jumps) that ffmpeg decodes without error.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewound_viewer_reaches_live_seamlessly() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "dvr_window: 5m"));
    let id = content_id(3010);
    let live = format!("/ace/getstream?id={id}");
    let keeper = keep_watching(server.addr, live.clone());
    tokio::time::sleep(Duration::from_secs(40)).await;

    let mut r = get(server.addr, &format!("{live}&offset=-30")).await;
    assert_eq!(r.status, 200);
    let t0 = Instant::now();
    // 30 s of a 4 Mbit/s stream is 15 MB: at line speed it comes in a few seconds at most.
    let (fast, _) = read_for(&mut r, Duration::from_secs(10), 14_000_000).await;
    let caught_up_in = t0.elapsed();
    assert!(fast.len() >= 14_000_000, "{} bytes", fast.len());
    let (rest, _) = read_for(&mut r, Duration::from_secs(10), usize::MAX).await;
    eprintln!(
        "30 s behind live read in {caught_up_in:?}, then {} bytes in 10 s at the edge",
        rest.len()
    );
    assert!(caught_up_in < Duration::from_secs(8), "{caught_up_in:?}");
    // At the edge it follows the stream's rate (4 Mbit/s: 5 MB in 10 s), not faster.
    assert!(
        (3_500_000..=7_000_000).contains(&rest.len()),
        "{}",
        rest.len()
    );
    let mut all = fast.to_vec();
    all.extend_from_slice(&rest);
    assert!(ts_aligned(&all));
    assert_eq!(cc_jumps(&all, 2), vec![], "one continuous stream");
    let (ok, errors) = ffmpeg_decode(whole_frames(&all));
    assert!(ok && errors.trim().is_empty(), "{errors}");
    keeper.abort();
}

/// `-t` reports a `dvr_dir` that cannot hold spills; `dvr_window: 0` turns DVR off (a rewind
/// request then plays live).
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_dvr_dir_is_reported_and_dvr_can_be_off() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "acestream:\n  engines: [{{host: 127.0.0.1, port: 6878}}]\n  dvr_dir: {}/sub\n",
        file.path().display()
    );
    let err = acestream_edge::config::load_str(&text).unwrap_err();
    assert!(err.to_string().contains("acestream.dvr_dir"), "{err}");

    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "dvr_window: 0"));
    let path = format!("/ace/getstream?id={}&offset=-30", content_id(3020));
    let mut r = get(server.addr, &path).await;
    assert_eq!(r.status, 200);
    let (data, _) = read_for(&mut r, Duration::from_secs(10), 200_000).await;
    assert!(data.len() >= 200_000, "{} bytes", data.len());
    assert!(ts_aligned(&data[..data.len() / 188 * 188]));
    assert_eq!(server.edge.metrics.dvr_rewound_viewers.get(), 0);
    let (_, v) = get_json(server.addr, "/proxy/sessions").await;
    assert_eq!(v["sessions"][0]["dvr_seconds"], 0.0);
}

/// Pause (issue 28): with a 1 MiB ring and `dvr_window: 5m`, a player that stops reading for
/// 60 s (its socket full) falls off the ring's tail and goes on from the spill instead of being
/// dropped; reading at twice the stream's rate afterwards, its `lag_seconds` falls back under
/// 5 s. `client_timeout` is 120 s here: a socket that accepts nothing for longer is still cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_player_continues_from_the_spill() {
    let e = sim(Knobs::default()).await; // 4 Mbit/s
    let server = start_proxy(proxy_config(
        &[&e],
        "dvr_window: 5m\nstream_buffer_size: 1048576\nstream_buffer_max_bytes: 1048576\nstream_buffer_seconds: 2\nclient_timeout: 120",
    ));
    let path = format!("/ace/getstream?id={}", content_id(3030));
    let mut r = get_small_buffer(server.addr, &path, 64 * 1024).await;
    assert_eq!(r.status, 200);
    let (first, _) = read_for(&mut r, Duration::from_secs(10), 1_000_000).await;
    assert!(first.len() >= 1_000_000);
    // The pause: nothing read for 60 s.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let m = &server.edge.metrics;
    // Read at 2× the stream's rate (8 Mbit/s: 100 kB every 100 ms) until its lag is under 5 s.
    // Its blocked write completes first (the bytes it was writing are its own); at its next step
    // it has fallen off the ring and goes on from the spill.
    let lag = || async {
        let (_, v) = get_json(server.addr, "/proxy/sessions").await;
        v["sessions"][0]["clients"][0]["lag_seconds"]
            .as_f64()
            .unwrap_or(f64::MAX)
    };
    let t0 = Instant::now();
    let (mut start_lag, mut last_lag) = (0.0f64, f64::MAX);
    while t0.elapsed() < Duration::from_secs(120) {
        let (got, _) = read_for(&mut r, Duration::from_millis(100), 100_000).await;
        assert!(!got.is_empty(), "the stream went on");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t0.elapsed().as_millis() % 2000 < 200 {
            last_lag = lag().await;
            start_lag = start_lag.max(last_lag);
            if start_lag > 50.0 && last_lag < 5.0 {
                break;
            }
        }
    }

    eprintln!(
        "lag {start_lag:.1} s after the pause, {last_lag:.1} s after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        m.dvr_continued_viewers.get(),
        1,
        "it went on from the spill"
    );
    assert!(
        start_lag > 50.0,
        "after the pause it was {start_lag} s behind"
    );
    assert!(last_lag < 5.0, "lag {last_lag}");
    assert_eq!(m.slow_client_drops.get(), 0, "never disconnected");
    let (_, v) = get_json(server.addr, "/proxy/sessions").await;
    assert_eq!(v["sessions"][0]["clients"][0]["dvr"], true);
}
