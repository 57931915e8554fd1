//! SIGHUP reloads the configuration file (issue 19): a real `acestream-edge` process, two
//! simulated engines, a client that streams through all of it.

mod common;

use acestream_edge::http1::GetOptions;
use acestream_edge::sim::Knobs;
use common::*;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_acestream-edge");

fn yaml(port: u16, engines: &[u16], token: &str) -> String {
    let engines: String = engines
        .iter()
        .map(|p| format!("    - {{host: 127.0.0.1, port: {p}}}\n"))
        .collect();
    format!(
        "version: 1\nthreads: 2\npid_file: /tmp/ace-edge-reload-{port}.pid\nupgrade_sock: /tmp/ace-edge-reload-{port}.sock\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  admin_token: \"{token}\"\n  engines:\n{engines}  max_streams_per_engine: 1\n  engine_cache_ttl: 0.5\n  health_check_interval: 0.5\n"
    )
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
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(conf.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    );
    // A client streams the first id from engine a, and keeps reading; its longest gap between
    // pieces is recorded.
    let mut r = get(addr, &format!("/ace/getstream?id={}", content_id(19_001))).await;
    assert_eq!(r.status, 200);
    let bytes = Arc::new(AtomicUsize::new(0));
    let max_gap_ms = Arc::new(AtomicU64::new(0));
    let (count, gap) = (bytes.clone(), max_gap_ms.clone());
    let reader = tokio::spawn(async move {
        let mut last = Instant::now();
        while let Ok(Some(piece)) = r.next_chunk().await {
            count.fetch_add(piece.len(), Ordering::Relaxed);
            gap.fetch_max(last.elapsed().as_millis() as u64, Ordering::Relaxed);
            last = Instant::now();
        }
    });
    assert!(
        wait_until(Duration::from_secs(5), || async {
            bytes.load(Ordering::Relaxed) > 188 * 100
        })
        .await
    );
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
    let hup = |child: &std::process::Child| {
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
    let before = bytes.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            bytes.load(Ordering::Relaxed) > before + 188 * 100
        })
        .await
    );
    let gap = max_gap_ms.load(Ordering::Relaxed);
    assert!(gap < 1000, "the running client had a {gap} ms gap");
    assert_eq!(a.stats().sessions_started, 1);
    assert!(!reader.is_finished());
    reader.abort();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
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
