//! A real browser plays the HLS playlist: headless Chromium (Debian's `chromium`) loads a page
//! with the vendored hls.js, which plays `/ace/manifest.m3u8` from the proxy. The page reports
//! the video's `currentTime` and any fatal hls.js error to a small server in this test; after
//! 15 s of playback the video must be at least 10 s in. Skipped with a message when Chromium is
//! not installed (CI installs it).

mod common;

use acestream_edge::sim::Knobs;
use common::page::{serve_page, Report, Sample};
use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The page: hls.js playing `playlist`, with `lowLatencyMode` as given. With it on, also the
/// catch-up a low-latency page sets (`maxLiveSyncPlaybackRate`: play up to 2× while further
/// behind than the target): a player that starts late (Chromium on a machine busy with seven
/// other tests took up to 12 s) comes back to the live edge instead of staying behind by its
/// start delay. Unloaded, it starts at about 1.9 s and stays there.
fn page(playlist: &str, low_latency: bool) -> String {
    let rate = if low_latency { 2.0 } else { 1.0 };
    format!(
        r#"<!doctype html><html><body><video id="v" muted autoplay playsinline></video>
<script src="/hls.js"></script>
<script>
let fatal = "";
const v = document.getElementById("v");
const hls = new Hls({{ lowLatencyMode: {low_latency}, maxLiveSyncPlaybackRate: {rate} }});
let events = "";
hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) fatal = d.type + ":" + d.details; else events += d.details + "@" + v.currentTime.toFixed(2) + " "; }});
hls.loadSource("{playlist}");
hls.attachMedia(v);
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch(e => fatal = "play:" + e));
let stalls = 0;
v.addEventListener("waiting", () => stalls++);
setInterval(() => fetch("/report?t=" + v.currentTime + "&latency=" + hls.latency + "&target=" + hls.targetLatency + "&stalls=" + stalls + "&events=" + encodeURIComponent(events) + "&fatal=" + encodeURIComponent(fatal)), 500);
</script></body></html>"#
    )
}

/// What a page did: the reports of its `seconds` of playback (from its first advancing
/// `currentTime`), or the fatal hls.js error that ended it.
struct Playback {
    reports: Vec<Sample>,
    fatal: String,
}

/// Plays a fresh id's playlist in Chromium for `seconds`, hls.js with `lowLatencyMode` as given,
/// from a proxy with `proxy_extra` config over an engine with `knobs`. `None` when Chromium is not
/// installed.
async fn play_in_chromium(
    low_latency: bool,
    proxy_extra: &str,
    knobs: Knobs,
    id: u32,
    seconds: u64,
) -> Option<Playback> {
    let profile = tempfile::tempdir().unwrap();
    let Some(mut chromium) = chromium(profile.path()) else {
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return None;
    };
    let e = sim(knobs).await;
    let server = start_proxy(proxy_config(&[&e], proxy_extra));
    let playlist = format!(
        "http://{}/ace/manifest.m3u8?id={}",
        server.addr,
        content_id(id)
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let report: Report = Default::default();
    tokio::spawn(serve_page(
        listener,
        page(&playlist, low_latency),
        report.clone(),
    ));
    let mut browser = chromium
        .arg(&page_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    // Playback starts after the first segment (about a second of stream); then `seconds` of play.
    let start = Instant::now();
    let mut playing_from: Option<usize> = None;
    let mut fatal = String::new();
    while start.elapsed() < Duration::from_secs(seconds + 35) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = report.lock().unwrap().clone();
        if let Some(f) = r.iter().map(|x| &x.fatal).find(|f| !f.is_empty()) {
            fatal = f.clone();
            break;
        }
        if playing_from.is_none() {
            playing_from = r.iter().position(|x| x.t > 0.0);
        }
        // Reports come every half second.
        if playing_from.is_some_and(|p| r.len() - p >= 2 * seconds as usize) {
            break;
        }
    }
    let _ = browser.kill();
    let _ = browser.wait();
    let reports = report.lock().unwrap().split_off(playing_from.unwrap_or(0));
    Some(Playback { reports, fatal })
}

/// hls.js with `lowLatencyMode` off plays the low-latency playlist as a plain one: 15 s of
/// playback take the video at least 10 s in.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_plays_hls_with_hls_js() {
    let Some(p) = play_in_chromium(
        false,
        "hls_segment_seconds: 2\nhls_low_latency: true",
        Knobs::default(),
        2500,
        15,
    )
    .await
    else {
        return;
    };
    assert!(p.fatal.is_empty(), "fatal hls.js error: {}", p.fatal);
    let t = p.reports.last().map_or(0.0, |x| x.t);
    eprintln!("hls.js in Chromium: currentTime {t:.1} s after 15 s of playback");
    assert!(
        p.reports.len() >= 30,
        "reports of 15 s of playback: {}",
        p.reports.len()
    );
    assert!(t >= 10.0, "currentTime {t} after 15 s");
}

/// Low-latency HLS in hls.js (`lowLatencyMode`, blocking reloads and parts; default 4 s
/// segments, 0.5 s parts): 20 s of a fresh id play, and hls.js's `latency` (how far behind the
/// playlist's live edge it plays) stays at most 4 s over the last 10 s.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_plays_low_latency_hls_within_4_s_of_live() {
    let Some(p) = play_in_chromium(true, "hls_low_latency: true", Knobs::default(), 2510, 20).await
    else {
        return;
    };
    assert!(p.fatal.is_empty(), "fatal hls.js error: {}", p.fatal);
    assert!(
        p.reports.len() >= 40,
        "reports of 20 s of playback: {}",
        p.reports.len()
    );
    let t = p.reports.last().map_or(0.0, |x| x.t);
    assert!(t >= 15.0, "currentTime {t} after 20 s");
    let last_10s = &p.reports[p.reports.len() - 20..];
    let latencies: Vec<f64> = last_10s.iter().map(|x| x.latency).collect();
    let last = p.reports.last().cloned();
    eprintln!(
        "hls.js low-latency: currentTime {t:.1} s; latency over the last 10 s {latencies:?}; \
         last report {last:?}"
    );
    assert!(
        latencies.iter().all(|l| l.is_finite() && *l <= 4.0),
        "latency above 4 s: {latencies:?}"
    );
}

/// Low-latency HLS from an engine that bursts (a 1 s prebuffer, then its 20 MB live cache at line
/// speed, as real engines do): hls.js starts at the live window the burst made and plays on
/// without skipping a hole. Before the first playlist waited for the burst's end, it got the
/// burst's first segments, the window slid past its next one within 25 ms, and hls.js jumped a
/// 4 s gap (a second stall, its target latency raised to 3.5 s).
#[tokio::test(flavor = "multi_thread")]
async fn chromium_plays_low_latency_hls_through_an_engine_burst() {
    let knobs = Knobs {
        prebuffer: Duration::from_secs(1),
        burst_bytes: 20_000_000,
        ..Knobs::default()
    };
    let Some(p) = play_in_chromium(true, "hls_low_latency: true", knobs, 2520, 15).await else {
        return;
    };
    assert!(p.fatal.is_empty(), "fatal hls.js error: {}", p.fatal);
    let last = p.reports.last().cloned().expect("reports");
    eprintln!("hls.js low-latency through a burst: last report {last:?}");
    assert!(last.t >= 10.0, "currentTime {} after 15 s", last.t);
    // hls.js reports a stall at 0.00 before it nudges over the first segment's 21 ms of audio
    // before the keyframe; a hole skipped later is a second stall and a gap event.
    assert!(last.stalls <= 1, "{last:?}");
    assert!(
        !last.events.split_whitespace().any(|e| {
            let (name, at) = e.split_once('@').unwrap_or((e, "0"));
            name == "bufferStalledError" && at.parse::<f64>().unwrap_or(0.0) > 0.5
        }),
        "{last:?}"
    );
    assert!(last.target <= 3.0, "target latency raised: {last:?}");
    assert!(last.latency <= 4.0, "behind the live edge: {last:?}");
}
