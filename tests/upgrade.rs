//! A graceful upgrade that keeps viewers (issue 19): `acestream-edge -u` and SIGQUIT to the
//! running process while clients watch, three times in a row, each new process upgraded by the
//! next.

mod common;

use acestream_edge::sim::Knobs;
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn spawn(conf: &Path, upgrade: bool, log: &Path) -> Process {
    spawn_edge(conf, upgrade, log)
}

fn text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// 5 clients on one id and 5 on another; upgrade; all 10 go on without a gap of a second; 5 new
/// clients of the first id reach the new process and stream (read from the old process's
/// session, not from a second engine session); when everyone left, the old process exits and
/// the engine got one stop per session. Three times in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_keeps_viewers_and_one_engine_session_per_id() {
    let e = sim(Knobs::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // A small ring (256 KiB): by the upgrade the stream's start has long left it, so the relay
    // must join at the live edge like a viewer.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let conf = dir.path().join("edge.yaml");
    std::fs::write(
        &conf,
        format!(
            "version: 1\nthreads: 2\npid_file: {}\nupgrade_sock: {}\ngrace_period_seconds: 30\ngraceful_shutdown_timeout_seconds: 20\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  max_streams_per_engine: 100\n  stream_idle_timeout: 0.5\n  stream_buffer_size: 262144\n",
            dir.path().join("edge.pid").display(),
            sock.display(),
            e.addr().port()
        ),
    )
    .unwrap();
    let mut log = dir.path().join("edge-0.log");
    let mut current = spawn(&conf, false, &log);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    );
    for round in 0..3u32 {
        let (a, b) = (
            content_id(19_500 + 2 * round),
            content_id(19_501 + 2 * round),
        );
        let mut old = Vec::new();
        for id in [&a, &b] {
            for _ in 0..5 {
                old.push(Viewer::start(addr, id).await);
            }
        }
        for v in &old {
            assert!(
                v.gets(188 * 50).await,
                "round {round}: a viewer got nothing"
            );
        }
        // The upgrade: a new process with -u, then SIGQUIT to the running one once the new one
        // waits for the listeners (its upgrade socket exists).
        let _ = std::fs::remove_file(&sock);
        let new_log = dir.path().join(format!("edge-{}.log", round + 1));
        let new = spawn(&conf, true, &new_log);
        assert!(
            wait_until(Duration::from_secs(10), || async { sock.exists() }).await,
            "round {round}: the new process never opened {}: {}",
            sock.display(),
            text(&new_log)
        );
        Command::new("kill")
            .args(["-QUIT", &current.id().to_string()])
            .status()
            .unwrap();
        // For Pingora's hand-over time both processes accept. A new id is started by the new
        // process only: the old one reads it from the new one's relay, so the id never gets two
        // engine sessions that would end each other, and no client is refused.
        let c = content_id(19_600 + round);
        let mut fresh = Vec::new();
        for _ in 0..4 {
            fresh.push(Viewer::start(addr, &c).await);
        }
        // The old process stops accepting (Pingora gives the new one 5 s to take over).
        assert!(
            wait_until(Duration::from_secs(15), || async {
                text(&log).contains("upgrade: the new process has the listeners")
            })
            .await,
            "round {round}: the old process never handed over: {}",
            text(&log)
        );
        // New clients of the first id reach the new process and stream.
        let mut joined = Vec::new();
        for _ in 0..5 {
            joined.push(Viewer::start(addr, &a).await);
        }
        for v in joined.iter().chain(&old).chain(&fresh) {
            assert!(v.gets(188 * 200).await, "round {round}: a viewer stalled");
        }
        let (_, sessions) = get_json(addr, "/proxy/sessions").await;
        let on_new = sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["ace_id"] == a.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("round {round}: {a} not on the new process: {sessions}"));
        assert_eq!(on_new["client_count"], 5, "{on_new}");
        assert_eq!(on_new["relayed"], true, "{on_new}");
        // One engine session per id, never a second start.
        let s = e.stats();
        assert_eq!(
            s.getstream_calls.get(&a),
            Some(&1),
            "round {round}: {a} started twice"
        );
        assert_eq!(s.getstream_calls.get(&b), Some(&1));
        assert_eq!(
            s.getstream_calls.get(&c),
            Some(&1),
            "round {round}: {c} started twice"
        );
        assert_eq!(s.read_sessions_by_id.get(&a), Some(&1));
        assert_eq!(s.second_reader_violations, 0);
        for v in &old {
            let gap = v.max_gap_ms();
            assert!(
                gap < 1000,
                "round {round}: an old viewer had a {gap} ms gap"
            );
            assert!(!v.ended(), "round {round}: an old viewer was cut");
        }
        // Everyone leaves: the old process ends its sessions, each with one stop, and exits.
        drop(joined);
        drop(old);
        drop(fresh);
        let exited = tokio::task::spawn_blocking(move || current.wait())
            .await
            .unwrap();
        assert!(
            exited.success(),
            "round {round}: {exited:?}: {}",
            text(&log)
        );
        let stops = wait_until(Duration::from_secs(5), || async {
            let s = e.stats();
            s.stop_calls.get(&a) == Some(&1) && s.stop_calls.get(&b) == Some(&1)
        })
        .await;
        assert!(stops, "round {round}: stops {:?}", e.stats().stop_calls);
        current = new;
        log = new_log;
    }
    Command::new("kill")
        .args(["-TERM", &current.id().to_string()])
        .status()
        .unwrap();
    assert!(current.wait().success());
    let s = e.stats();
    assert_eq!(s.sessions_started, 9);
    assert_eq!(s.stop_calls.values().sum::<u64>(), 9, "{:?}", s.stop_calls);
}

/// A session the new process reads from the old one that nobody watches any more (it lingers
/// `stream_idle_timeout`) ends when the old process ends it at its drain limit: the engine gets
/// no second start for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwatched_relayed_session_ends_with_its_relay() {
    let e = sim(Knobs::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let conf = dir.path().join("edge.yaml");
    std::fs::write(
        &conf,
        format!(
            "version: 1\nthreads: 2\npid_file: {}\nupgrade_sock: {}\ngrace_period_seconds: 10\ngraceful_shutdown_timeout_seconds: 2\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  stream_idle_timeout: 60\n",
            dir.path().join("edge.pid").display(),
            sock.display(),
            e.addr().port()
        ),
    )
    .unwrap();
    let (old_log, new_log) = (dir.path().join("old.log"), dir.path().join("new.log"));
    let old = spawn(&conf, false, &old_log);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    );
    let id = content_id(19_700);
    let first = Viewer::start(addr, &id).await;
    assert!(first.gets(188 * 50).await);
    let new = spawn(&conf, true, &new_log);
    assert!(wait_until(Duration::from_secs(10), || async { sock.exists() }).await);
    Command::new("kill")
        .args(["-QUIT", &old.id().to_string()])
        .status()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || async {
            text(&old_log).contains("upgrade: the new process has the listeners")
        })
        .await
    );
    let second = Viewer::start(addr, &id).await;
    assert!(second.gets(188 * 50).await);
    drop(first);
    drop(second);
    // The old process's drain limit (2 s) ends its session, and so the relay.
    let exited = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap();
    assert!(exited.success());
    let gone = wait_until(Duration::from_secs(5), || async {
        get_json(addr, "/proxy/sessions").await.1["sessions"]
            .as_array()
            .is_some_and(|s| s.is_empty())
    })
    .await;
    assert!(
        gone,
        "the relayed session outlived its relay: {}",
        text(&new_log)
    );
    assert_eq!(e.stats().getstream_calls.get(&id), Some(&1));
    drop(new);
}

/// The relay answers only a process of this deployment (issue 26): its file is private (0600)
/// and names a secret; a local client without it (or with a wrong one) gets a 401 and no byte,
/// and the engine is asked for nothing. With the secret a reader is served like a viewer, and a
/// reader that takes nothing is cut after `client_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_serves_only_this_deployment_and_cuts_readers_that_take_nothing() {
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let e = sim(Knobs {
        bitrate_bps: 16_000_000,
        ..Knobs::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sock = dir.path().join("upgrade.sock");
    let conf = dir.path().join("edge.yaml");
    std::fs::write(
        &conf,
        format!(
            "version: 1\nthreads: 2\npid_file: {}\nupgrade_sock: {}\nacestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  client_timeout: 2\n",
            dir.path().join("edge.pid").display(),
            sock.display(),
            e.addr().port()
        ),
    )
    .unwrap();
    let log = dir.path().join("edge.log");
    let _edge = spawn(&conf, false, &log);
    let file = dir.path().join("upgrade.sock.relay");
    assert!(wait_until(Duration::from_secs(20), || async { file.exists() }).await);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the relay file is readable by others");
    let text_of = std::fs::read_to_string(&file).unwrap();
    let mut lines = text_of.lines();
    let relay: SocketAddr = lines.next().unwrap().parse().unwrap();
    let secret = lines.next().unwrap().to_string();
    assert_eq!(secret.len(), 64);

    // Asks the relay for `id` (starting it) with `auth`; the status and what came before EOF or
    // `limit`.
    let ask = |id: String, auth: Option<String>| async move {
        let mut s = tokio::net::TcpStream::connect(relay).await.unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("GET /relay?key={id}&start=1 HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes(),
        )
        .await
        .unwrap();
        s
    };
    let id = content_id(26_100);
    for auth in [None, Some("Bearer wrong".to_string()), Some(secret.clone())] {
        let mut s = ask(id.clone(), auth.clone().filter(|a| a != &secret)).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "no answer to {auth:?}");
        let head = String::from_utf8_lossy(&got);
        assert!(head.starts_with("HTTP/1.1 401"), "{auth:?}: {head}");
        assert!(head.ends_with("\r\n\r\n"), "{auth:?}: a body came: {head}");
    }
    assert_eq!(
        e.stats().getstream_calls.get(&id),
        None,
        "the engine was asked"
    );

    // With the secret: streamed; then not read any more, and cut.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let mut s = tcp.connect(relay).await.unwrap();
    s.write_all(
        format!("GET /relay?key={id}&start=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 188 * 100 {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut first[got..]))
            .await
            .expect("no stream through the relay")
            .unwrap();
        assert!(n > 0, "the relay ended at once");
        got += n;
    }
    assert!(String::from_utf8_lossy(&first[..got]).starts_with("HTTP/1.1 200"));
    assert_eq!(e.stats().getstream_calls.get(&id), Some(&1));
    // Now it takes nothing: cut after client_timeout (2 s) once the kernel buffers are full.
    let cut = wait_until(Duration::from_secs(30), || async {
        text(&log).contains("relay reader took nothing")
    })
    .await;
    assert!(
        cut,
        "a relay reader that takes nothing was never cut: {}",
        text(&log)
    );
    drop(s);
}
