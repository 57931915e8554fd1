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
/// faster than real time), then, after 5 s for the rest of the backlog, the viewer follows the
/// live edge at the stream's rate for 10 s more; the whole
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
    // What is left of the backlog (the last megabyte, the keyframe's GOP before the 30 s, what
    // the stream added while the backlog was read: more on a busy machine) comes within seconds.
    let (drain, _) = read_for(&mut r, Duration::from_secs(5), usize::MAX).await;
    let (rest, _) = read_for(&mut r, Duration::from_secs(10), usize::MAX).await;
    eprintln!(
        "30 s behind live read in {caught_up_in:?}, {} bytes more in 5 s, then {} bytes in 10 s at the edge",
        drain.len(),
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
    all.extend_from_slice(&drain);
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
    paused_player_continues("", 3030).await;
}

/// The same on the `sendfile` path (`zero_copy: true`): the paused viewer's `sendfile` waits for
/// its socket while the page file releases what it was about to send; it then sends nothing
/// from the released pages (they would read as zeros) and goes on from the spill at that byte.
/// Every byte it got lies on the 188-byte packet grid.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_player_on_the_sendfile_path_continues_from_the_spill() {
    paused_player_continues("\nzero_copy: true", 3031).await;
}

async fn paused_player_continues(extra: &str, id: u32) {
    let e = sim(Knobs::default()).await; // 4 Mbit/s
    let server = start_proxy(proxy_config(
        &[&e],
        &format!("dvr_window: 5m\nstream_buffer_size: 1048576\nstream_buffer_max_bytes: 1048576\nstream_buffer_seconds: 2\nclient_timeout: 120{extra}"),
    ));
    let path = format!("/ace/getstream?id={}", content_id(id));
    let mut r = get_small_buffer(server.addr, &path, 64 * 1024).await;
    assert_eq!(r.status, 200);
    let (mut all, _) = read_for(&mut r, Duration::from_secs(10), 1_000_000).await;
    assert!(all.len() >= 1_000_000);
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
        if all.len() < 20_000_000 {
            all.extend_from_slice(&got);
        }
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
    assert!(
        ts_aligned(&all[..all.len() / 188 * 188]),
        "{} bytes read, not all on the packet grid",
        all.len()
    );
    let (_, v) = get_json(server.addr, "/proxy/sessions").await;
    assert_eq!(v["sessions"][0]["clients"][0]["dvr"], true);
}

/// The page for the HLS DVR test: hls.js plays the `dvr=1` playlist; once playing, it seeks to
/// 120 s behind the end of the seekable range and reports `currentTime` and how far behind that
/// end it plays.
fn dvr_page(playlist: &str) -> String {
    format!(
        r#"<!doctype html><html><body><video id="v" muted autoplay playsinline></video>
<script src="/hls.js"></script>
<script>
let fatal = "", events = "", stalls = 0, seeked = false;
const v = document.getElementById("v");
const hls = new Hls();
hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) fatal = d.type + ":" + d.details; else events += d.details + "@" + v.currentTime.toFixed(2) + " "; }});
hls.loadSource("{playlist}");
hls.attachMedia(v);
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch(e => fatal = "play:" + e));
v.addEventListener("waiting", () => stalls++);
const end = () => v.seekable.length ? v.seekable.end(v.seekable.length - 1) : 0;
setInterval(() => {{
  if (!seeked && v.currentTime > 0 && end() > 130) {{ seeked = true; v.currentTime = end() - 120; }}
  fetch("/report?t=" + (seeked ? v.currentTime : 0) + "&latency=" + (end() - v.currentTime) + "&stalls=" + stalls + "&events=" + encodeURIComponent(events) + "&fatal=" + encodeURIComponent(fatal));
}}, 500);
</script></body></html>"#
    )
}

/// HLS over the DVR window (issue 28): after 3 minutes of a session the `dvr=1` playlist lists at
/// least 170 s of segments, each with a strictly later `#EXT-X-PROGRAM-DATE-TIME`, none longer
/// than the target duration, each decoding on its own (ffmpeg); hls.js in headless Chromium seeks
/// to 120 s behind its end and plays 10 s from there without a fatal error. The plain playlist
/// stays a short live window meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn the_hls_dvr_playlist_covers_the_window_and_a_browser_seeks_in_it() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "dvr_window: 5m"));
    let id = content_id(3040);
    let keeper = keep_watching(server.addr, format!("/ace/getstream?id={id}"));
    tokio::time::sleep(Duration::from_secs(180)).await;

    let path = format!("/ace/manifest.m3u8?id={id}&dvr=1");
    let mut r = get(server.addr, &path).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap();
    let target: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .expect("a target duration")
        .parse()
        .unwrap();
    let durations: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .map(|d| d.trim_end_matches(',').parse().unwrap())
        .collect();
    let dates: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .collect();
    let uris: Vec<&str> = text.lines().filter(|l| l.starts_with("hls/dvr/")).collect();
    let total: f64 = durations.iter().sum();
    eprintln!(
        "DVR playlist after 180 s: {} segments, {total:.1} s, target {target}",
        durations.len()
    );
    assert!(total >= 170.0, "{total} s listed:\n{text}");
    assert_eq!(dates.len(), durations.len(), "{text}");
    assert_eq!(uris.len(), durations.len(), "{text}");
    // ISO 8601 times of one format compare as text.
    assert!(dates.windows(2).all(|w| w[0] < w[1]), "{dates:?}");
    assert!(
        durations.iter().all(|d| d.round() <= target),
        "{durations:?}"
    );
    let (_, live) = {
        let mut r = get(server.addr, &format!("/ace/manifest.m3u8?id={id}")).await;
        (
            r.status,
            String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap(),
        )
    };
    let live_segments = live.matches("#EXTINF").count();
    assert!(
        (1..=12).contains(&live_segments) && !live.contains("PROGRAM-DATE-TIME"),
        "the plain playlist stays a short live window:\n{live}"
    );

    // Every segment decodes on its own.
    for uri in &uris {
        let mut r = get(server.addr, &format!("/ace/{uri}")).await;
        assert_eq!(r.status, 200, "{uri}");
        let len: usize = r.header("content-length").unwrap().parse().unwrap();
        let body = r.read_to_end(64 << 20).await.unwrap();
        assert_eq!(body.len(), len, "{uri}");
        let (ok, errors) = tokio::task::spawn_blocking(move || ffmpeg_decode(&body))
            .await
            .unwrap();
        assert!(ok && errors.trim().is_empty(), "{uri}: {errors}");
    }

    // A browser seeks 120 s back and plays on.
    let profile = tempfile::tempdir().unwrap();
    if let Some(mut chromium) = chromium(profile.path()) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let page_url = format!("http://{}/", listener.local_addr().unwrap());
        let report: common::page::Report = Default::default();
        let playlist = format!("http://{}{path}", server.addr);
        tokio::spawn(common::page::serve_page(
            listener,
            dvr_page(&playlist),
            report.clone(),
        ));
        let mut browser = chromium
            .arg(&page_url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium starts");
        let start = Instant::now();
        let mut seen = (f64::NAN, f64::NAN);
        let mut advanced = 0.0;
        let mut fatal = String::new();
        while start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = report.lock().unwrap().clone();
            if let Some(f) = r.iter().map(|x| &x.fatal).find(|f| !f.is_empty()) {
                fatal = f.clone();
                break;
            }
            // From the first report after the seek landed (well back from the end).
            let after: Vec<_> = r.iter().filter(|x| x.t > 0.0 && x.latency > 60.0).collect();
            if let (Some(first), Some(last)) = (after.first(), after.last()) {
                seen = (first.latency, last.latency);
                advanced = last.t - first.t;
                if advanced >= 10.0 {
                    break;
                }
            }
        }
        let _ = browser.kill();
        let _ = browser.wait();
        let last = report.lock().unwrap().last().cloned();
        eprintln!(
            "hls.js over the DVR window: {advanced:.1} s played from {:.1} s behind (now {:.1}); last report {last:?}",
            seen.0, seen.1
        );
        assert!(fatal.is_empty(), "fatal hls.js error: {fatal}");
        assert!(advanced >= 10.0, "played {advanced} s after the seek");
        assert!(
            (105.0..=135.0).contains(&seen.0),
            "it seeked to {} s behind the end",
            seen.0
        );
    } else {
        eprintln!("SKIPPED the browser part: chromium is not installed (apt-get install chromium)");
    }
    keeper.abort();
}

/// Bytes of the files under `dir` (a spill directory's size on disk, as `du` would add them).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The disk budget (issue 28): `dvr_max_bytes: 60 MB`, three sessions at 4 Mbit/s for three
/// minutes (about 270 MB of stream): the spill directory, sampled every second, never holds more
/// than the budget plus one spill file, and each session keeps some window.
#[tokio::test(flavor = "multi_thread")]
async fn three_sessions_stay_within_the_disk_budget() {
    let e = sim(Knobs::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let budget: u64 = 60_000_000;
    let server = start_proxy(proxy_config(
        &[&e],
        &format!(
            "dvr_dir: {}\ndvr_max_bytes: {budget}\nmax_streams_per_engine: 3",
            dir.path().display()
        ),
    ));
    let mut viewers = Vec::new();
    for n in [3050, 3051, 3052] {
        viewers.push(Viewer::start(server.addr, &content_id(n)).await);
    }
    let started = Instant::now();
    let mut most = 0u64;
    while started.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        most = most.max(dir_bytes(dir.path()));
    }
    let (_, v) = get_json(server.addr, "/proxy/sessions").await;
    let held: Vec<f64> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["dvr_seconds"].as_f64().unwrap_or(0.0))
        .collect();
    let m = &server.edge.metrics;
    eprintln!(
        "disk budget {budget}: at most {most} bytes on disk; windows held {held:?} s; {} files dropped for the budget",
        m.dvr_budget_drops.get()
    );
    assert!(
        most <= budget + (8 << 20),
        "{most} bytes on disk, budget {budget}"
    );
    assert_eq!(held.len(), 3, "{v}");
    assert!(held.iter().all(|s| *s >= 10.0), "{held:?}");
    assert!(m.dvr_budget_drops.get() > 0);
    assert!(
        viewers.iter().all(|v| v.bytes() > 60_000_000),
        "viewers kept streaming"
    );
}

/// Faults (issue 28): the DVR directory goes away under a running proxy (moved aside, a file put
/// in its place). The running session's spill fails at its next file and ends (logged once,
/// `dvr_spills_cut_total{reason="io_error"}`); a session started afterwards gets no spill (the
/// same count); both sessions' live viewers stream throughout without a pause.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_dvr_dir_never_disturbs_live_viewers() {
    let e = sim(Knobs::default()).await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("dvr");
    std::fs::create_dir(&dir).unwrap();
    let server = start_proxy(proxy_config(
        &[&e],
        &format!("dvr_dir: {}\nmax_streams_per_engine: 2", dir.display()),
    ));
    let first = Viewer::start(server.addr, &content_id(3060)).await;
    assert!(first.gets(1_000_000).await);
    std::fs::rename(&dir, root.path().join("moved")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let second = Viewer::start(server.addr, &content_id(3061)).await;
    assert!(second.gets(1_000_000).await);
    let m = &server.edge.metrics;
    let cut = || m.dvr_spills_cut.with_label_values(&["io_error"]).get();
    // The first spill fails when it opens its next 8 MiB file (about 17 s at 4 Mbit/s).
    assert!(
        wait_until(Duration::from_secs(40), || async { cut() == 2 }).await,
        "spills cut: {}",
        cut()
    );
    let (_, v) = get_json(server.addr, "/proxy/sessions").await;
    for s in v["sessions"].as_array().unwrap() {
        assert_eq!(s["dvr_bytes"].as_u64().unwrap_or(0), 0, "{s}");
    }
    let before = (first.bytes(), second.bytes());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(first.bytes() > before.0 + 500_000 && second.bytes() > before.1 + 500_000);
    eprintln!(
        "longest gaps between pieces: {} ms and {} ms",
        first.max_gap_ms(),
        second.max_gap_ms()
    );
    assert!(first.max_gap_ms() < 2_000 && second.max_gap_ms() < 2_000);
    assert_eq!(cut(), 2, "each failure counted once");
    assert_eq!(m.dvr_spill_bytes.get(), 0);
}

/// Ending (issue 28): a session's spill is gone from disk within 1 s of the session's end; a
/// proxy process that was killed (SIGKILL) leaves its spill behind, and the next start removes it.
#[tokio::test(flavor = "multi_thread")]
async fn spills_go_with_their_session_and_a_restart_clears_a_killed_ones() {
    let e = sim(Knobs::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_proxy(proxy_config(
        &[&e],
        &format!(
            "dvr_dir: {}\nstream_idle_timeout: 1\nunwatched_linger: 1",
            dir.path().display()
        ),
    ));
    let viewer = Viewer::start(server.addr, &content_id(3070)).await;
    assert!(viewer.gets(2_000_000).await);
    assert!(dir_bytes(dir.path()) > 0, "the spill is on disk");
    drop(viewer);
    // The session ends a second after its viewer left; the spill must follow within 1 s.
    let mut ended_at = None;
    let mut gone_at = None;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) && gone_at.is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if ended_at.is_none() && server.edge.sessions.count() == 0 {
            ended_at = Some(Instant::now());
        }
        if std::fs::read_dir(dir.path()).map_or(0, |d| d.count()) == 0 {
            gone_at = Some(Instant::now());
        }
    }
    let (ended_at, gone_at) = (
        ended_at.expect("the session ended"),
        gone_at.expect("the spill went"),
    );
    let after = gone_at.saturating_duration_since(ended_at);
    eprintln!("spill gone {after:?} after the session ended");
    assert!(after <= Duration::from_secs(1), "{after:?}");

    // A killed process's spill stays; the next start removes it.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        conf.path(),
        format!(
            "version: 1\nthreads: 2\npid_file: /tmp/ace-edge-dvr-{port}.pid\nupgrade_sock: /tmp/ace-edge-dvr-{port}.sock\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  dvr_dir: {}\n",
            e.addr().port(),
            dir.path().display()
        ),
    )
    .unwrap();
    let start = || {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_acestream-edge"))
            .arg("-c")
            .arg(conf.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Process::new(child)
    };
    let listening = || async {
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    };
    let killed = start();
    assert!(listening().await, "the proxy did not start listening");
    let viewer = Viewer::start(addr, &content_id(3071)).await;
    assert!(viewer.gets(1_000_000).await);
    let pid = killed.id();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = killed.wait();
    drop(viewer);
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        left.iter().any(|n| n.starts_with(&format!("spill-{pid}."))),
        "the killed process left its spill: {left:?}"
    );
    let next = start();
    assert!(listening().await, "the proxy did not start listening");
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 0, "the next start removed the killed process's spill");
    drop(next);
}

/// A read-only `dvr_dir` (issue 28): the real binary runs as an unprivileged user (`nobody`, by
/// `setpriv`, when this test runs as root: root writes anywhere) with a writable directory that
/// is then made read-only (mode 0555). Each new session's spill cannot be made: one warning per
/// session in the log, `dvr_spills_cut_total{reason="io_error"}` counts it, and the sessions'
/// live viewers stream throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_dvr_dir_never_disturbs_live_viewers() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let e = sim(Knobs::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(dir.path(), 0o755);
    let bin = dir.path().join("acestream-edge");
    std::fs::copy(env!("CARGO_BIN_EXE_acestream-edge"), &bin).unwrap();
    mode(&bin, 0o755);
    let dvr = dir.path().join("dvr");
    std::fs::create_dir(&dvr).unwrap();
    if root {
        std::os::unix::fs::chown(&dvr, Some(65534), Some(65534)).unwrap();
    }
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = dir.path().join("edge.yaml");
    std::fs::write(
        &conf,
        format!(
            "version: 1\nthreads: 2\npid_file: /tmp/ace-edge-ro-{port}.pid\nupgrade_sock: /tmp/ace-edge-ro-{port}.sock\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  max_streams_per_engine: 2\n  dvr_dir: {}\n",
            e.addr().port(),
            dvr.display()
        ),
    )
    .unwrap();
    mode(&conf, 0o644);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    let child = cmd
        .arg("-c")
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .map(Process::new)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await,
        "the proxy did not start listening"
    );
    mode(&dvr, 0o555);
    let first = Viewer::start(addr, &content_id(3080)).await;
    let second = Viewer::start(addr, &content_id(3081)).await;
    assert!(first.gets(1_000_000).await && second.gets(1_000_000).await);
    let before = (first.bytes(), second.bytes());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(first.bytes() > before.0 + 500_000 && second.bytes() > before.1 + 500_000);
    assert!(first.max_gap_ms() < 2_000 && second.max_gap_ms() < 2_000);
    let (_, metrics) = {
        let mut r = get(addr, "/metrics").await;
        (
            r.status,
            String::from_utf8(r.read_to_end(4 << 20).await.unwrap()).unwrap(),
        )
    };
    let cut = metrics
        .lines()
        .find(|l| l.starts_with("acestream_edge_dvr_spills_cut_total{reason=\"io_error\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("DVR off for")).collect();
    eprintln!("as root: {root}; spills cut {cut:?}; warnings {warnings:?}");
    assert_eq!(cut, Some(2), "each session's failure counted once");
    assert_eq!(warnings.len(), 2, "one warning per session:\n{text}");
    assert_eq!(std::fs::read_dir(&dvr).unwrap().count(), 0);
    drop(child);
    mode(&dvr, 0o755);
}
