//! A page server for browser tests: it serves a test's HTML page, the vendored hls.js, and the
//! `/report` endpoint the page calls every half second with what it sees (the video's
//! `currentTime`, hls.js's latency and target, stalls, errors).

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The vendored hls.js the product's dashboard uses.
pub const HLS_JS: &[u8] = include_bytes!("../../web/vendor/hls.light.min.js");

/// One report of the page, every half second.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The video's `currentTime`, seconds.
    pub t: f64,
    /// How far behind the live edge it plays, seconds (hls.js `latency`, or what the page
    /// measures).
    pub latency: f64,
    /// hls.js `targetLatency`: what it steers to (its start plus 1 s per stall by default).
    pub target: f64,
    /// How often the video waited for data (`waiting` events).
    pub stalls: u32,
    /// hls.js's non-fatal errors so far, each with the `currentTime` it came at.
    pub events: String,
    /// The fatal hls.js error, if any.
    pub fatal: String,
}

/// What the page reported, oldest first.
pub type Report = Arc<Mutex<Vec<Sample>>>;

/// Serves the page, hls.js and the report endpoint.
pub async fn serve_page(listener: tokio::net::TcpListener, html: String, report: Report) {
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
                let mut sample = Sample {
                    t: 0.0,
                    latency: 0.0,
                    target: f64::NAN,
                    stalls: 0,
                    events: String::new(),
                    fatal: String::new(),
                };
                for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                    match &*k {
                        "t" => sample.t = v.parse().unwrap_or(0.0),
                        "latency" => sample.latency = v.parse().unwrap_or(f64::NAN),
                        "target" => sample.target = v.parse().unwrap_or(f64::NAN),
                        "stalls" => sample.stalls = v.parse().unwrap_or(0),
                        "events" => sample.events = v.into_owned(),
                        "fatal" => sample.fatal = v.into_owned(),
                        _ => {}
                    }
                }
                report.lock().unwrap().push(sample);
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
