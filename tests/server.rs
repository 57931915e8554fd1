//! The server binary and the in-process server: config validation, routing, start and stop.

mod common;

use acestream_edge::sim::Knobs;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_acestream-edge");

fn check(yaml: &str) -> (bool, String, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    let out = Command::new(BIN)
        .arg("-t")
        .arg("-c")
        .arg(f.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `-t` prints `ok` for the shipped example and names the key path of every error.
#[test]
fn test_flag_validates_with_key_paths() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/acestream-edge.yaml"
    ))
    .unwrap();
    let (ok, out, _) = check(&example);
    assert!(ok);
    assert_eq!(out.trim(), "ok");
    let (ok, _, err) = check("acestream: {engines: [{host: 127.0.0.1, port: 99999}]}");
    assert!(!ok);
    assert!(err.contains("acestream.engines[0].port"), "{err}");
    let (ok, _, err) = check("acestream:\n  idle_timeot: 5\n");
    assert!(!ok);
    assert!(err.contains("acestream.idle_timeot"), "{err}");
    let (ok, _, err) = check("acestream: {listen: [], client_timeout: -2}");
    assert!(!ok);
    assert!(err.contains("acestream.client_timeout"), "{err}");
    let out = Command::new(BIN)
        .args(["-t", "-c", "/nonexistent/x.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.yaml"));
}

/// Six different mistakes in one file: `-t` reports all six, each with its key path and its
/// line; an empty file and a file without an engine source fail naming `acestream.engines`; a
/// top-level typo Pingora would ignore is warned about.
#[test]
fn test_flag_reports_every_mistake_with_key_and_line() {
    let yaml = "version: 1
threads: two
acestream:
  listen: [\"localhost:8000\"]
  engines:
    - {host: 127.0.0.1, port: 99999}
  client_timeout: soon
  max_streams_per_engine: -3
  idle_timeot: 5
";
    let (ok, _, err) = check(yaml);
    assert!(!ok);
    let expected = [
        ("threads", 2),
        ("acestream.engines", 6),
        ("acestream.client_timeout", 7),
        ("acestream.max_streams_per_engine", 8),
        ("acestream.idle_timeot", 9),
        ("acestream.listen[0]", 4),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 6, "{err}");
    for (path, line) in expected {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(path) && l.contains(&format!("(line {line})"))),
            "no message for {path} on line {line}: {err}"
        );
    }
    assert!(err.contains("1–65535"), "a port in words: {err}");
    assert!(
        err.contains("127.0.0.1:8000"),
        "a hint for localhost: {err}"
    );
    assert!(
        !err.contains("acestream:\n"),
        "the file is not printed back: {err}"
    );
    for text in ["", "acestream: {listen: [\"127.0.0.1:8000\"]}\n"] {
        let (ok, _, err) = check(text);
        assert!(!ok, "{text:?}");
        assert!(
            err.contains("acestream.engines") && err.contains("orchestrator"),
            "{err}"
        );
    }
    let (ok, _, stderr) =
        check("thread: 2\nacestream: {engines: [{host: 127.0.0.1, port: 6878}]}\n");
    assert!(ok);
    assert!(
        stderr.contains("thread") && stderr.contains("line 1"),
        "{stderr}"
    );
}

/// The example configuration lists every key of the `acestream:` section (the list comes from the
/// loader itself).
#[test]
fn example_config_lists_every_key() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/acestream-edge.yaml"
    ))
    .unwrap();
    let known = acestream_edge::config::acestream_keys();
    assert!(known.len() >= 30, "{known:?}");
    let missing: Vec<&String> = known
        .iter()
        .filter(|k| !example.contains(&format!("  {k}:")) && !example.contains(&format!("# {k}:")))
        .collect();
    assert!(
        missing.is_empty(),
        "conf/acestream-edge.yaml lacks {missing:?}"
    );
}

/// `-t` says which key a typo meant (not the whole list), and prints the top-level warnings with
/// the errors (issue 27).
#[test]
fn check_suggests_keys_and_keeps_warnings_with_errors() {
    let (ok, _, stderr) = check(
        "thread: 2\nacestream:\n  stream_idel_timeout: 3\n  engines: [{host: 127.0.0.1, port: 6878}]\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("did you mean stream_idle_timeout?"),
        "{stderr}"
    );
    assert!(!stderr.contains("expected one of"), "{stderr}");
    assert!(
        stderr.contains("warning: thread (line 1)") && stderr.contains("did you mean threads?"),
        "{stderr}"
    );
}

/// Our own `--help` (what acestream-edge is and its flags) and `--version` (with the commit).
#[test]
fn help_and_version_are_our_own() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "acestream-edge",
        "AceStream engines",
        "-c, --conf",
        "-t, --test",
        "-d, --daemon",
        "-u, --upgrade",
        "README",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}: {help}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("acestream-edge {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains("commit "), "{version}");
    let out = Command::new(BIN).arg("-t").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("built-in defaults"));
}

/// The in-process server starts, answers unknown routes with a JSON 404, and stops cleanly
/// (its thread returns; nothing calls process::exit).
#[tokio::test(flavor = "multi_thread")]
async fn server_starts_routes_and_stops() {
    let config = proxy_config(&[], "");
    let server = start_proxy(config);
    let addr = server.addr;
    let (status, v) = get_json(addr, "/no/such/route").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], "no route /no/such/route");
    let (status, v) = get_json(
        addr,
        "/ace/manifest.m3u8?id=0123456789abcdef0123456789abcdef01234567",
    )
    .await;
    // No engine: HLS answers like getstream.
    assert_eq!(status, 503);
    assert!(v["error"].as_str().unwrap().contains("no engine"), "{v}");
    let (status, _) = get_json(addr, "/ace/manifest.m3u8").await;
    assert_eq!(status, 400);
    let (status, v) = get_json(addr, "/healthz").await;
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    let stopping = Instant::now();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(10));
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "still listening after stop"
    );
}

/// The real binary: serves a stream from a simulated engine, and on SIGTERM ends the stream,
/// sends the engine its stop and exits 0 within the configured timeouts.
#[tokio::test(flavor = "multi_thread")]
async fn binary_serves_and_shuts_down_on_sigterm() {
    serve_then_signal("TERM").await;
}

/// The same on SIGINT (Ctrl-C): a graceful shutdown too, and the log names SIGINT, never SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn binary_shuts_down_gracefully_on_sigint() {
    serve_then_signal("INT").await;
}

async fn serve_then_signal(signal: &str) {
    let e = sim(Knobs::default()).await;
    let port = free_port();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        "version: 1\nthreads: 2\npid_file: /tmp/ace-edge-test-{port}.pid\nupgrade_sock: /tmp/ace-edge-test-{port}.sock\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 2\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  request_header_timeout: 1\n",
        e.addr().port()
    )
    .unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(f.path())
        .env("RUST_LOG", "info,acestream_edge::streams=debug")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    );
    let mut r = get(addr, &format!("/ace/getstream?id={}", content_id(9))).await;
    assert_eq!(r.status, 200);
    let (data, _) = read_for(&mut r, Duration::from_secs(5), 188 * 50).await;
    assert!(data.len() >= 188 * 50);
    // A second client watches a little and closes its connection, as a player does.
    let mut other = get(addr, &format!("/ace/getstream?id={}", content_id(9))).await;
    read_for(&mut other, Duration::from_secs(5), 188 * 10).await;
    let other_addr = other.into_stream().local_addr().unwrap();
    let left = format!("client {other_addr} left session");
    let log_path = log.path().to_path_buf();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let found = text.contains(&left);
            async move { found }
        })
        .await,
        "no '{left}' line in the log"
    );
    // A client that never finishes its request head is cut at request_header_timeout; that is
    // the client's doing, not an error line.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /proxy/status HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut answer)).await;
        assert!(closed.is_ok(), "the unfinished head was cut");
    }
    let t0 = Instant::now();
    Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    // The stream ends (the proxy finishes the response) ...
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = r.next_chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "stream did not end on SIG{signal}");
    // ... the process exits 0 within grace + shutdown timeout ...
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    // ... and the engine got exactly one stop for the session.
    let s = sim_stats(&e).await;
    assert_eq!(s.stop_calls.get(&content_id(9)), Some(&1));
    // The log reads right: the closing client left (not dropped), no `Some(` around addresses,
    // and Pingora's false warning about the ignored configuration path is gone.
    let text = std::fs::read_to_string(log.path()).unwrap();
    let line = text.lines().find(|l| l.contains(&left)).unwrap();
    assert!(!line.contains("dropped"), "{line}");
    assert!(!text.contains("Some("), "{text}");
    assert!(!text.contains("Ignoring command line argument"), "{text}");
    // The signal is named right (Pingora's own line says SIGTERM for any graceful terminate).
    assert!(
        text.contains(&format!("SIG{signal}: graceful shutdown")),
        "{text}"
    );
    assert!(!text.contains("Fail to proxy"), "{text}");
    // Per-client lines are debug; the session's summary at info counts them.
    assert!(text.contains("clients_peak=2 joins=2"), "{text}");
    let other = if signal == "INT" { "SIGTERM" } else { "SIGINT" };
    assert!(!text.contains(other), "{text}");
}
