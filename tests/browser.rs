//! A real browser plays the HLS playlist: headless Chromium (Debian's `chromium`) loads a page
//! with the vendored hls.js, which plays `/ace/manifest.m3u8` from the proxy. The page reports
//! the video's `currentTime` and any fatal hls.js error to a small server in this test; after
//! 15 s of playback the video must be at least 10 s in. Skipped with a message when Chromium is
//! not installed (CI installs it).

mod common;

use acestream_edge::sim::Knobs;
use common::*;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HLS_JS: &[u8] = include_bytes!("../web/vendor/hls.light.min.js");

/// What the page reported last: (currentTime, fatal error if any).
type Report = Arc<Mutex<Option<(f64, String)>>>;

fn page(playlist: &str) -> String {
    format!(
        r#"<!doctype html><html><body><video id="v" muted autoplay playsinline></video>
<script src="/hls.js"></script>
<script>
let fatal = "";
const v = document.getElementById("v");
const hls = new Hls();
hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) fatal = d.type + ":" + d.details; }});
hls.loadSource("{playlist}");
hls.attachMedia(v);
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch(e => fatal = "play:" + e));
setInterval(() => fetch("/report?t=" + v.currentTime + "&fatal=" + encodeURIComponent(fatal)), 500);
</script></body></html>"#
    )
}

/// Serves the page, hls.js and the report endpoint.
async fn serve_page(listener: tokio::net::TcpListener, html: String, report: Report) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let html = html.clone();
        let report = report.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (ctype, body): (&str, Vec<u8>) = if path == "/hls.js" {
                ("application/javascript", HLS_JS.to_vec())
            } else if let Some(q) = path.strip_prefix("/report?") {
                let mut t = 0.0;
                let mut fatal = String::new();
                for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                    match &*k {
                        "t" => t = v.parse().unwrap_or(0.0),
                        "fatal" => fatal = v.into_owned(),
                        _ => {}
                    }
                }
                *report.lock().unwrap() = Some((t, fatal));
                ("text/plain", b"ok".to_vec())
            } else {
                ("text/html", html.into_bytes())
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_plays_hls_with_hls_js() {
    let profile = tempfile::tempdir().unwrap();
    let Some(mut chromium) = chromium(profile.path()) else {
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    };
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "hls_segment_seconds: 2"));
    let playlist = format!(
        "http://{}/ace/manifest.m3u8?id={}",
        server.addr,
        content_id(2500)
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let report: Report = Default::default();
    tokio::spawn(serve_page(listener, page(&playlist), report.clone()));
    let mut browser = chromium
        .arg(&page_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    // Playback starts once the playlist lists three segments (about 6 s); then 15 s of play.
    let start = Instant::now();
    let mut playing_since: Option<Instant> = None;
    let mut result = None;
    while start.elapsed() < Duration::from_secs(50) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some((t, fatal)) = report.lock().unwrap().clone() else {
            continue;
        };
        if !fatal.is_empty() {
            result = Some((t, fatal));
            break;
        }
        if t > 0.0 && playing_since.is_none() {
            playing_since = Some(Instant::now());
        }
        if playing_since.is_some_and(|p| p.elapsed() >= Duration::from_secs(15)) {
            result = Some((t, fatal));
            break;
        }
    }
    let _ = browser.kill();
    let _ = browser.wait();
    let (t, fatal) = result.expect("the page played for 15 s (reports came in)");
    eprintln!("hls.js in Chromium: currentTime {t:.1} s after 15 s of playback");
    assert!(fatal.is_empty(), "fatal hls.js error: {fatal}");
    assert!(t >= 10.0, "currentTime {t} after 15 s");
}
