//! The dashboard in a real browser: headless Chromium (Debian's `chromium`), driven through the
//! DevTools protocol, loads the page from a running proxy with two sessions and three clients and
//! must show both ids, the client counts, bitrate sparklines with data and engine health; the
//! preview plays; the page logs no error and asks nothing of another origin; with an admin token
//! and none entered, no session data appears. A 1280×800 screenshot is left in
//! `CARGO_TARGET_TMPDIR`. Skipped with a message when Chromium is not installed.

mod common;

use acestream_edge::sim::Knobs;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools page session: commands with ids, events kept.
struct Cdp {
    ws: Ws,
    next: u64,
    events: Vec<serde_json::Value>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("open")
                .expect("message");
            let Message::Text(text) = m else { continue };
            let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    /// Evaluates `expr` in the page; returns its JSON value.
    async fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Collects events for `d`.
    async fn pump(&mut self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout_at(end, self.ws.next()).await
        {
            if let Ok(v) = serde_json::from_str(&text) {
                self.events.push(v);
            }
        }
    }

    fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| {
                (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
                    || e["method"] == "Runtime.exceptionThrown"
                    || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
            })
            .map(|e| e.to_string())
            .collect()
    }

    fn requested(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.requestWillBeSent")
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(str::to_string))
            .collect()
    }
}

/// Starts Chromium with remote debugging and opens a DevTools session on its page.
async fn devtools(profile: &std::path::Path) -> Option<(std::process::Child, Cdp)> {
    let mut child = common::chromium(profile)?
        .args([
            "--window-size=1280,800",
            "--remote-debugging-port=0",
            "about:blank",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let Some(stderr) = child.stderr.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    match connect(stderr).await {
        Some(cdp) => Some((child, cdp)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// Reads the DevTools URL Chromium prints and opens a session on its page.
async fn connect(stderr: std::process::ChildStderr) -> Option<Cdp> {
    let ws_url = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.split("DevTools listening on ").nth(1).map(str::to_string));
        // Keep draining so Chromium never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        url
    })
    .await
    .ok()??;
    // The browser's port; its page target from /json/list.
    let port: u16 = ws_url.split(':').nth(2)?.split('/').next()?.parse().ok()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut list = get(addr, "/json/list").await;
    let targets: serde_json::Value =
        serde_json::from_slice(&list.read_to_end(1 << 20).await.ok()?).ok()?;
    let page = targets.as_array()?.iter().find(|t| t["type"] == "page")?;
    let (ws, _) = tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str()?)
        .await
        .ok()?;
    let mut cdp = Cdp {
        ws,
        next: 0,
        events: Vec::new(),
    };
    for m in [
        "Runtime.enable",
        "Log.enable",
        "Page.enable",
        "Network.enable",
    ] {
        cdp.call(m, serde_json::json!({})).await;
    }
    Some(cdp)
}

/// Reads a stream in the background (a viewer).
/// How far the preview played, once it played `seconds` or after 40 s.
async fn preview_played(cdp: &mut Cdp, seconds: f64) -> f64 {
    let mut played = 0.0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(40) && played < seconds {
        cdp.pump(Duration::from_millis(1000)).await;
        played = cdp
            .eval("document.getElementById('preview').currentTime")
            .await
            .as_f64()
            .unwrap_or(0.0);
    }
    played
}

fn viewer(addr: std::net::SocketAddr, id: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut r = get(addr, &format!("/ace/getstream?id={id}")).await;
        while let Ok(Some(_)) = r.next_chunk().await {}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_sessions_and_previews() {
    let profile = tempfile::tempdir().unwrap();
    let Some((mut browser, mut cdp)) = devtools(profile.path()).await else {
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    };
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(
        &[&e],
        "hls_segment_seconds: 1\ndvr_window: 5m",
    ));
    let (a, b) = (content_id(2700), content_id(2701));
    let viewers = [
        viewer(server.addr, a.clone()),
        viewer(server.addr, a.clone()),
        viewer(server.addr, b.clone()),
    ];
    // The viewers play before the page opens (a dashboard opened on a running node).
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let (_, v) = get_json(server.addr, "/proxy/status").await;
            v["sessions"].as_array().is_some_and(|s| {
                s.len() == 2 && s.iter().all(|x| x["bytes_out"].as_u64() > Some(188 * 100))
            })
        })
        .await,
        "the viewers never played"
    );
    let origin = format!("http://{}", server.addr);
    cdp.call(
        "Page.navigate",
        serde_json::json!({"url": format!("{origin}/")}),
    )
    .await;
    // The first render with the sessions on it: its egress figure is already non-zero (issue 27).
    let mut first_egress = serde_json::Value::Null;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        cdp.pump(Duration::from_millis(200)).await;
        let v = cdp
            .eval("({n: document.querySelectorAll('.session').length, egress: document.getElementById('egress').textContent})")
            .await;
        if v["n"].as_u64() == Some(2) {
            first_egress = v["egress"].clone();
            break;
        }
    }
    assert!(
        first_egress
            .as_str()
            .is_some_and(|e| e.ends_with("Mbit/s") && !e.starts_with("0.00")),
        "egress on the first render: {first_egress}"
    );
    // Three polls, and history samples (one every 2 s) for the sparklines.
    let start = Instant::now();
    let mut shown = serde_json::Value::Null;
    while start.elapsed() < Duration::from_secs(20) {
        cdp.pump(Duration::from_millis(1000)).await;
        shown = cdp
            .eval(
                r#"({
                ids: [...document.querySelectorAll('.session')].map(s => s.dataset.id),
                clients: [...document.querySelectorAll('.session .clients')].map(c => c.textContent),
                lags: [...document.querySelectorAll('.session .lag')].map(c => c.textContent),
                dvr: [...document.querySelectorAll('.session .dvr')].map(c => c.textContent),
                points: [...document.querySelectorAll('.session .chart')].map(c => Number(c.dataset.points || 0)),
                canvases: document.querySelectorAll('.session .chart canvas').length,
                health: [...document.querySelectorAll('#engines .health')].map(h => h.textContent),
                total: document.getElementById('clients-count').textContent,
            })"#,
            )
            .await;
        let points_ok = shown["points"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|n| n.as_u64() >= Some(2)));
        if points_ok {
            break;
        }
    }
    eprintln!("dashboard: {shown}");
    let ids: Vec<&str> = shown["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        ids.contains(&a.as_str()) && ids.contains(&b.as_str()),
        "{shown}"
    );
    assert_eq!(
        ids[0], a,
        "the session with the most viewers comes first: {shown}"
    );
    let mut clients: Vec<&str> = shown["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    clients.sort();
    assert_eq!(clients, ["1 client", "2 clients"], "{shown}");
    assert_eq!(shown["total"], "3 / 0");
    assert!(
        shown["lags"].as_array().is_some_and(|l| l.len() == 2
            && l.iter().all(|x| x
                .as_str()
                .is_some_and(|t| t.starts_with("lag ") && t.ends_with(" s")))),
        "each card shows its viewers' lag: {shown}"
    );
    // Each card shows its rewind window (DVR on): "rewind 12 s (6 MB)".
    assert!(
        shown["dvr"].as_array().is_some_and(|d| d.len() == 2
            && d.iter().all(|x| x
                .as_str()
                .is_some_and(|t| t.starts_with("rewind ") && t.ends_with(" MB)")))),
        "each card shows its DVR window: {shown}"
    );
    assert!(
        shown["canvases"].as_u64() >= Some(2),
        "sparklines drawn: {shown}"
    );
    assert!(
        shown["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64() >= Some(2)),
        "{shown}"
    );
    assert_eq!(shown["health"], serde_json::json!(["healthy"]), "{shown}");
    let shot = cdp
        .call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        )
        .await;
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot["data"].as_str().unwrap(),
    )
    .unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-1280x800.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    // The preview opens in view, and plays.
    cdp.eval(&format!("preview('{a}')")).await;
    cdp.pump(Duration::from_millis(500)).await;
    let top = cdp
        .eval("document.getElementById('preview-box').getBoundingClientRect().top")
        .await;
    let height = cdp.eval("window.innerHeight").await;
    assert!(
        top.as_f64().unwrap() >= -1.0 && top.as_f64().unwrap() < height.as_f64().unwrap(),
        "the preview is out of view: top {top}, window {height}"
    );
    let played = preview_played(&mut cdp, 5.0).await;
    assert!(played >= 5.0, "the preview played {played} s");
    // No error in the page, and nothing asked of another origin.
    assert_eq!(cdp.errors(), Vec::<String>::new());
    let foreign: Vec<String> = cdp
        .requested()
        .into_iter()
        .filter(|u| {
            !u.starts_with(&origin)
                && !u.starts_with("blob:")
                && !u.starts_with("data:")
                && u != "about:blank"
        })
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}");
    // With an admin token and none entered: the form, and no session data.
    let locked = start_proxy(proxy_config(&[&e], "admin_token: s3cret"));
    cdp.call(
        "Page.navigate",
        serde_json::json!({"url": format!("http://{}/", locked.addr)}),
    )
    .await;
    cdp.pump(Duration::from_secs(3)).await;
    let gate = cdp
        .eval("({login: !document.getElementById('login').hidden, sessions: document.querySelectorAll('.session').length})")
        .await;
    assert_eq!(
        gate,
        serde_json::json!({"login": true, "sessions": 0}),
        "{gate}"
    );
    let _ = browser.kill();
    let _ = browser.wait();
    for v in viewers {
        v.abort();
    }
}

/// The dashboard's channel list (issue 29): 30 channels after one checker pass (20 that play, 5
/// the network does not have, 5 without peers) show with their status; the filters narrow the
/// list; a channel's play button previews it.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_lists_channels_with_their_status_and_previews_one() {
    let profile = tempfile::tempdir().unwrap();
    let Some((mut browser, mut cdp)) = devtools(profile.path()).await else {
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    };
    let id = |i: u32| content_id(6300 + i);
    let e = sim(Knobs {
        unavailable_ids: (20..25).map(id).collect(),
        silent_ids: (25..30).map(id).collect(),
        ..Knobs::default()
    })
    .await;
    let list: Vec<String> = (0..30)
        .map(|i| format!("{{name: \"Ch {i}\", id: {}, group: G{}}}", id(i), i % 3))
        .collect();
    let server = start_proxy(proxy_config(
        &[&e],
        &format!(
            "hls_segment_seconds: 1\ncheck_timeout: 2\nchannels: {{check_interval: 1h, list: [{}]}}",
            list.join(", ")
        ),
    ));
    assert!(
        wait_until(Duration::from_secs(60), || async {
            get_json(server.addr, "/proxy/channels").await.1["check_passes"] == 1
        })
        .await,
        "one checker pass"
    );
    let origin = format!("http://{}", server.addr);
    cdp.call(
        "Page.navigate",
        serde_json::json!({"url": format!("{origin}/")}),
    )
    .await;
    let rows = r#"(() => { const r = [...document.querySelectorAll('#channels tr.channel')];
        return {n: r.length, alive: r.filter(x => x.dataset.status === 'alive').length,
                dead: r.filter(x => x.dataset.status === 'dead').length,
                count: document.getElementById('channels-count').textContent,
                reasons: r.filter(x => x.dataset.status === 'dead').map(x => x.querySelector('.status').textContent)}; })()"#;
    let mut shown = serde_json::Value::Null;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        cdp.pump(Duration::from_millis(500)).await;
        shown = cdp.eval(rows).await;
        if shown["n"] == 30 {
            break;
        }
    }
    assert_eq!(
        (
            shown["n"].clone(),
            shown["alive"].clone(),
            shown["dead"].clone()
        ),
        (30.into(), 20.into(), 10.into()),
        "{shown}"
    );
    let reasons: Vec<String> = serde_json::from_value(shown["reasons"].clone()).unwrap();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("failed to load content"))
            .count(),
        5,
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("no stream byte"))
            .count(),
        5,
        "{reasons:?}"
    );
    assert!(
        shown["count"]
            .as_str()
            .unwrap()
            .contains("30 of 30, 20 alive"),
        "{shown}"
    );
    // Filters: by text (name or group), and by status.
    cdp.eval("(() => { const f = document.getElementById('channels-filter'); f.value = 'g1'; f.dispatchEvent(new Event('input')); })()").await;
    let g1 = cdp.eval(rows).await;
    assert_eq!(g1["n"], 10, "{g1}");
    cdp.eval("(() => { const f = document.getElementById('channels-filter'); f.value = ''; f.dispatchEvent(new Event('input')); const s = document.getElementById('channels-status'); s.value = 'dead'; s.dispatchEvent(new Event('change')); })()").await;
    let dead = cdp.eval(rows).await;
    assert_eq!(
        (dead["n"].clone(), dead["dead"].clone()),
        (10.into(), 10.into()),
        "{dead}"
    );
    cdp.eval("(() => { const s = document.getElementById('channels-status'); s.value = 'alive'; s.dispatchEvent(new Event('change')); })()").await;
    // The first alive channel's play button previews it.
    let key = cdp
        .eval("(() => { const r = document.querySelector('#channels tr.channel'); r.querySelector('button.play').click(); return r.dataset.key; })()")
        .await;
    assert_eq!(key, serde_json::json!(id(0)));
    let played = preview_played(&mut cdp, 3.0).await;
    assert!(played >= 3.0, "the preview played {played} s");
    assert_eq!(cdp.errors(), Vec::<String>::new());
    let stats = sim_stats(&e).await;
    assert_eq!(
        stats.getstream_calls.get(&id(0)),
        Some(&2),
        "one check, then the preview: {stats:?}"
    );
    let _ = browser.kill();
    let _ = browser.wait();
}
