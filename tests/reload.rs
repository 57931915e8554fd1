//! Operations (issue 19): SIGHUP reloads the configuration file, and `log_format: json` writes
//! JSON lines; a real `acestream-edge` process, simulated engines, clients streaming through.

mod common;

use acestream_edge::http1::GetOptions;
use acestream_edge::sim::Knobs;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn yaml(port: u16, engines: &[u16], token: &str) -> String {
    let engines: String = engines
        .iter()
        .map(|p| format!("    - {{host: 127.0.0.1, port: {p}}}\n"))
        .collect();
    format!(
        "version: 1\nthreads: 2\npid_file: /tmp/ace-edge-reload-{port}.pid\nupgrade_sock: /tmp/ace-edge-reload-{port}.sock\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  admin_token: \"{token}\"\n  engines:\n{engines}  max_streams_per_engine: 1\n  engine_cache_ttl: 0.5\n  health_check_interval: 0.5\n"
    )
}

/// Starts the real binary on `conf` (its log to `stderr` at `rust_log`) and waits until it
/// listens on `addr`.
async fn start_edge(
    conf: &std::path::Path,
    rust_log: &str,
    stderr: Stdio,
    addr: std::net::SocketAddr,
) -> Process {
    spawn_edge_listening(conf, &[("RUST_LOG", rust_log)], stderr, addr).await
}

async fn status_with(addr: std::net::SocketAddr, token: &str) -> u16 {
    let opts = GetOptions {
        headers: vec![("Authorization".into(), format!("Bearer {token}"))],
        ..Default::default()
    };
    get_with(addr, "/proxy/engines", opts).await.status
}

/// Add an engine and change the admin token by SIGHUP: the new engine takes the next session,
/// the old token is refused and the new one admitted, and the running client never noticed; a
/// broken file is logged and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_engines_and_token_and_keeps_streams() {
    let (a, b) = (sim(Knobs::default()).await, sim(Knobs::default()).await);
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), yaml(port, &[a.addr().port()], "old")).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = start_edge(conf.path(), "info", log.reopen().unwrap().into(), addr).await;
    let log_text = || std::fs::read_to_string(log.path()).unwrap_or_default();
    // A client streams the first id from engine a, and keeps reading; its longest gap between
    // pieces is recorded.
    let first = Viewer::start(addr, &content_id(19_001)).await;
    assert!(first.gets(188 * 100).await);
    assert_eq!(status_with(addr, "old").await, 200);
    // Engine a is full (max_streams_per_engine: 1): a second id has nowhere to go.
    assert_eq!(
        get(addr, &format!("/ace/getstream?id={}", content_id(19_002)))
            .await
            .status,
        503
    );

    // Reload: engine b added, the token changed.
    std::fs::write(
        conf.path(),
        yaml(port, &[a.addr().port(), b.addr().port()], "new"),
    )
    .unwrap();
    let hup = |child: &Process| {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    hup(&child);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            log_text().contains("reloaded")
        })
        .await,
        "no reload line: {}",
        log_text()
    );
    assert_eq!(
        status_with(addr, "old").await,
        401,
        "the old token still works"
    );
    assert_eq!(status_with(addr, "new").await, 200);
    // The new engine takes the next session once discovery and its health check saw it.
    let b_up = wait_until(Duration::from_secs(10), || async {
        let opts = GetOptions {
            headers: vec![("Authorization".into(), "Bearer new".into())],
            ..Default::default()
        };
        let mut resp = get_with(addr, "/proxy/engines", opts).await;
        let v: serde_json::Value =
            serde_json::from_slice(&resp.read_to_end(1 << 20).await.unwrap()).unwrap();
        v["engines"].as_array().is_some_and(|e| {
            e.iter()
                .any(|x| x["port"] == b.addr().port() && x["healthy"] == true)
        })
    })
    .await;
    assert!(b_up, "engine b never joined the pool: {}", log_text());
    let mut second = get(addr, &format!("/ace/getstream?id={}", content_id(19_002))).await;
    assert_eq!(second.status, 200);
    let (data, _) = read_for(&mut second, Duration::from_secs(5), 188 * 20).await;
    assert!(data.len() >= 188 * 20);
    assert_eq!(b.stats().sessions_started, 1);

    // A broken file: one clear line, nothing changes.
    std::fs::write(conf.path(), "acestream:\n  engines: [\n").unwrap();
    hup(&child);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            log_text().contains("not reloaded, the running configuration stays")
        })
        .await,
        "no refusal line: {}",
        log_text()
    );
    assert_eq!(status_with(addr, "new").await, 200);
    assert_eq!(status_with(addr, "old").await, 401);

    // The first client never noticed: no gap of a second, its session never restarted.
    assert!(first.gets(188 * 100).await);
    let gap = first.max_gap_ms();
    assert!(gap < 1000, "the running client had a {gap} ms gap");
    assert_eq!(a.stats().sessions_started, 1);
    assert!(!first.ended());
    drop(first);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().success());
    let text = log_text();
    let refusal = text
        .lines()
        .find(|l| l.contains("not reloaded"))
        .unwrap_or_default();
    assert!(
        refusal.contains("acestream"),
        "the refusal names no key: {refusal}"
    );
}

/// `log_format: json`: every line the process writes is a JSON object with `ts`, `level` and
/// `msg`; a session's lines carry `content_id` and `engine`, its stop line the `reason`; and
/// `RUST_LOG` still filters (at `warn`, no info line appears).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_carry_fields() {
    let e = sim(Knobs::default()).await;
    for filter in ["info", "warn"] {
        let port = free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            conf.path(),
            yaml(port, &[e.addr().port()], "t")
                + "  log_format: json\n  stream_idle_timeout: 0.2\n",
        )
        .unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = start_edge(conf.path(), filter, log.reopen().unwrap().into(), addr).await;
        let id = content_id(19_100);
        let mut r = get(addr, &format!("/ace/getstream?id={id}")).await;
        assert_eq!(r.status, 200);
        read_for(&mut r, Duration::from_secs(5), 188 * 20).await;
        drop(r);
        let stopped = wait_until(Duration::from_secs(5), || async {
            e.stats().stop_calls.get(&id).copied() == Some(1)
        })
        .await;
        assert!(stopped);
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(child.wait().success());
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}")))
            .collect();
        for l in &lines {
            assert!(
                l["ts"].is_string() && l["level"].is_string() && l["msg"].is_string(),
                "{l}"
            );
        }
        let stop_line = lines.iter().find(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.contains("stopped: reason"))
        });
        if filter == "warn" {
            assert!(
                stop_line.is_none(),
                "RUST_LOG=warn let an info line through"
            );
            assert!(lines
                .iter()
                .all(|l| l["level"] == "warn" || l["level"] == "error"));
            continue;
        }
        let stop_line = stop_line.unwrap_or_else(|| panic!("no stop line in {text}"));
        assert_eq!(stop_line["content_id"], id);
        assert_eq!(stop_line["engine"], e.addr().to_string());
        assert!(
            stop_line["reason"]
                .as_str()
                .is_some_and(|r| r == "idle timeout"),
            "{stop_line}"
        );
        let created = lines
            .iter()
            .find(|l| {
                l["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains("created on engine"))
            })
            .unwrap();
        assert_eq!(created["content_id"], id);
        assert_eq!(created["level"], "info");
    }
}

/// `/proxy/status` of one session: its phase and `linger_seconds` (`None` while the status,
/// which is cached for a moment, does not list it yet).
async fn linger_of(addr: std::net::SocketAddr, id: &str) -> Option<(String, f64)> {
    let opts = GetOptions {
        headers: vec![("Authorization".into(), "Bearer t".into())],
        ..Default::default()
    };
    let mut r = get_with(addr, "/proxy/status", opts).await;
    let v: serde_json::Value =
        serde_json::from_slice(&r.read_to_end(1 << 20).await.unwrap()).unwrap();
    let s = v["sessions"]
        .as_array()?
        .iter()
        .find(|s| s["ace_id"].as_str() == Some(id))?
        .clone();
    Some((
        s["phase"].as_str().unwrap_or("").to_string(),
        s["linger_seconds"].as_f64().unwrap_or(f64::NAN),
    ))
}

/// Waits (bounded) until `/proxy/status` shows session `id` streaming with `linger` seconds.
async fn shows_linger(addr: std::net::SocketAddr, id: &str, linger: f64) -> bool {
    wait_until(Duration::from_secs(10), || async {
        linger_of(addr, id).await == Some(("streaming".into(), linger))
    })
    .await
}

/// SIGHUP that changes `stream_idle_timeout` and `unwatched_linger`: `/proxy/status` shows the
/// new values at once (it used to keep the values of the start), and a session that ends after
/// the reload lingers the new `stream_idle_timeout` (1 s instead of 300 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_changes_the_linger_shown_and_used() {
    let e = sim(Knobs::default()).await;
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = tempfile::NamedTempFile::new().unwrap();
    let write = |idle: &str, unwatched: &str| {
        let mut y = yaml(port, &[e.addr().port()], "t");
        y.push_str(&format!(
            "  stream_idle_timeout: {idle}\n  unwatched_linger: {unwatched}\n"
        ));
        std::fs::write(conf.path(), y).unwrap();
    };
    write("300", "60");
    let child = start_edge(conf.path(), "warn", Stdio::null(), addr).await;
    let id = content_id(19_100);
    let viewer = Viewer::start(addr, &id).await;
    assert!(viewer.gets(188 * 100).await);
    assert!(
        shows_linger(addr, &id, 300.0).await,
        "{:?}",
        linger_of(addr, &id).await
    );

    write("1", "2");
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        shows_linger(addr, &id, 1.0).await,
        "/proxy/status shows the reloaded stream_idle_timeout: {:?}",
        linger_of(addr, &id).await
    );
    // The session was watched: it lingers the new 1 s once its viewer leaves, not 300 s.
    drop(viewer);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sim_stats(&e).await.stop_total == 1
        })
        .await,
        "the session ended after the reloaded linger"
    );
    // A session started after the reload uses the new values too.
    let fresh = content_id(19_101);
    let viewer = Viewer::start(addr, &fresh).await;
    assert!(viewer.gets(188 * 100).await);
    assert!(
        shows_linger(addr, &fresh, 1.0).await,
        "{:?}",
        linger_of(addr, &fresh).await
    );
    drop(viewer);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sim_stats(&e).await.stop_total == 2
        })
        .await,
        "the new session ended after the reloaded linger"
    );
    drop(child);
}

/// SIGHUP reloads `channels` (issue 29): a new inline entry and a new source appear in the
/// playlist, the channel checker's interval follows (turned on by the reload, it checks the new
/// list), the source that stayed is not fetched again before its refresh, and a broken file
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_channels() {
    let e = sim(Knobs::default()).await;
    // Two list sources; each keeps the requests it got.
    let mut sources = Vec::new();
    for (n, name) in [(19_200u32, "Kept"), (19_201, "Added")] {
        let body = format!(
            "#EXTM3U\n#EXTINF:-1,{name}\nacestream://{}\n",
            content_id(n)
        );
        sources.push(SourceServer::start(move |_| (200, body.clone().into_bytes())).await);
    }
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = tempfile::NamedTempFile::new().unwrap();
    let write = |channels: &str| {
        // Room for checks: they never take an engine's last free slot.
        let mut y = yaml(port, &[e.addr().port()], "t").replace(
            "max_streams_per_engine: 1\n",
            "max_streams_per_engine: 10\n",
        );
        y.push_str(&format!("  dvr_window: 0\n  channels: {channels}\n"));
        std::fs::write(conf.path(), y).unwrap();
    };
    let kept = format!("{{url: \"http://{}/a.m3u\", refresh: 1h}}", sources[0].addr);
    write(&format!(
        "{{check_interval: 0, sources: [{kept}], list: [{{name: Inline, id: {}}}]}}",
        content_id(19_202)
    ));
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = start_edge(
        conf.path(),
        "info",
        Stdio::from(log.reopen().unwrap()),
        addr,
    )
    .await;
    let names = || async {
        let mut r = get(addr, "/playlist.m3u").await;
        let text = String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap();
        text.lines()
            .filter_map(|l| {
                l.strip_prefix("#EXTINF:-1")
                    .map(|l| l.rsplit(',').next().unwrap().to_string())
            })
            .collect::<Vec<String>>()
    };
    assert_eq!(names().await, ["Inline", "Kept"]);
    let (status, _) = get_json(addr, "/playlist.m3u?alive=1").await;
    assert_eq!(status, 400, "the checker is off");

    // Reload: one more inline entry, one more source, the checker on.
    write(&format!(
        "{{check_interval: 1h, sources: [{kept}, \"http://{}/b.m3u\"], list: [{{name: Inline, id: {}}}, {{name: Second, id: {}}}]}}",
        sources[1].addr,
        content_id(19_202),
        content_id(19_203)
    ));
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    hup();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            names().await == ["Inline", "Second", "Kept", "Added"]
        })
        .await,
        "the reloaded list: {:?}",
        names().await
    );
    assert_eq!(
        sources[0].heads().len(),
        1,
        "the source that stayed was not fetched again"
    );
    // The checker, turned on, checks the new list: all four play.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let opts = GetOptions {
                headers: vec![("Authorization".into(), "Bearer t".into())],
                ..Default::default()
            };
            let mut r = get_with(addr, "/proxy/channels", opts).await;
            let body = r.read_to_end(1 << 20).await.unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v["check_passes"] == 1)
        })
        .await,
        "a checker pass after the reload; the log:\n{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    let mut r = get(addr, "/playlist.m3u?alive=1").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap();
    assert_eq!(text.matches("#EXTINF").count(), 4, "{text}");

    // A broken file changes nothing.
    std::fs::write(conf.path(), "acestream: {channels: {sources: 7}}\n").unwrap();
    hup();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(names().await, ["Inline", "Second", "Kept", "Added"]);
    drop(child);
}
