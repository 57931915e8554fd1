//! Never-reading clients in their own test binary, so that the process's memory is this test's
//! alone: they are dropped, and memory comes back to where it was.

mod common;

use acestream_edge::sim::Knobs;
use common::*;
use std::time::Duration;

/// Opens `n` clients with a 4 KiB receive buffer that never read their body, and waits (bounded)
/// until the proxy has dropped them all; returns the highest RSS seen meanwhile.
async fn never_readers(
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
    session_clients: impl Fn() -> usize,
) -> u64 {
    let mut held = Vec::new();
    for _ in 0..n {
        let r = get_small_buffer(addr, path, 4096).await;
        assert_eq!(r.status, 200);
        held.push(r);
    }
    let mut peak = rss_kib();
    let dropped = wait_until(Duration::from_secs(40), || {
        peak = peak.max(rss_kib());
        let left = session_clients();
        async move { left == 1 }
    })
    .await;
    assert!(
        dropped,
        "never-reading clients still attached: {}",
        session_clients()
    );
    drop(held);
    peak
}

/// 30 clients that never read, next to one normal client at 4 Mbit/s: every one of them is
/// dropped (the ring holds 3 s of stream, `client_timeout` is 10 s), the drops are counted with
/// their lag, and the process's RSS returns to within 10 % of its level before they came.
#[tokio::test(flavor = "multi_thread")]
async fn never_reading_clients_are_dropped_and_memory_returns() {
    let e = sim(Knobs {
        bitrate_bps: 4_000_000,
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(
        &[&e],
        "stream_buffer_seconds: 3\nclient_timeout: 10",
    ));
    let id = content_id(1400);
    let path = format!("/ace/getstream?id={id}");
    let mut normal = get(server.addr, &path).await;
    let reader = tokio::spawn(async move {
        let pace = Pace {
            prefill: 0,
            rate: 0.0,
            pause: None,
        };
        read_like_player(&mut normal, pace, Duration::from_secs(120)).await
    });
    let session = server.edge.sessions.get(&id).expect("session");
    let clients = || session.client_count();
    // Warm-up: the ring reaches its 3 s, allocator pools reach their working size.
    tokio::time::sleep(Duration::from_secs(4)).await;
    never_readers(server.addr, &path, 10, clients).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib();
    let peak = never_readers(server.addr, &path, 30, clients).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    eprintln!("never-readers RSS: {before} KiB -> peak {peak} KiB -> {after} KiB");
    assert_eq!(server.edge.metrics.slow_client_drops.get(), 40);
    assert_eq!(
        server.edge.metrics.client_lag_at_drop.get_sample_count(),
        40,
        "every drop's lag is observed"
    );
    assert!(
        (after as f64) < before as f64 * 1.10,
        "RSS grew from {before} KiB to {after} KiB"
    );
    reader.abort();
}

/// The global buffer budget (issue 26): 6 ids at 16 Mbit/s, each with a line-speed reader and
/// one that takes 1 KB/s, rings of up to 16 MiB each, `max_buffer_bytes` 48 MiB. The proxy (its
/// own process) never holds more than the budget + 40 MiB above its idle RSS, the slow readers
/// are cut (counted), the line-speed readers never, and 10 s after every session ended its RSS
/// is within 30 MiB of idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_buffer_budget_bounds_memory_and_memory_comes_back() {
    use tokio::io::AsyncReadExt as _;
    let e = sim(Knobs {
        bitrate_bps: 16_000_000,
        ..Knobs::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = dir.path().join("edge.yaml");
    std::fs::write(
        &conf,
        format!(
            "acestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  stream_buffer_max_bytes: 16777216\n  stream_buffer_seconds: 60\n  max_buffer_bytes: 50331648\n  stream_idle_timeout: 1\n  client_timeout: 60\n",
            e.addr().port()
        ),
    )
    .unwrap();
    let proxy = spawn_edge(&conf, false, &dir.path().join("edge.log"));
    assert!(
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    );
    // Idle: one short stream first, so the runtime's and allocator's working set is there.
    let mut warm = get(addr, &format!("/ace/getstream?id={}", content_id(2690))).await;
    read_for(&mut warm, Duration::from_secs(2), 1 << 20).await;
    drop(warm);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get_json(addr, "/proxy/sessions").await.1["sessions"]
                .as_array()
                .is_some_and(|s| s.is_empty())
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib_of(proxy.id());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut line = Vec::new();
    let mut slow = Vec::new();
    for i in 0..6 {
        let path = format!("/ace/getstream?id={}", content_id(2700 + i));
        let mut r = get(addr, &path).await;
        assert_eq!(r.status, 200);
        let stop_line = stop.clone();
        line.push(tokio::spawn(async move {
            let mut total = 0usize;
            while !stop_line.load(std::sync::atomic::Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(5), r.next_chunk()).await {
                    Ok(Ok(Some(b))) => total += b.len(),
                    _ => return (total, false), // ended or silent: dropped
                }
            }
            (total, true)
        }));
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.set_recv_buffer_size(4096).unwrap();
        let mut s = tcp.connect(addr).await.unwrap();
        use tokio::io::AsyncWriteExt as _;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        slow.push(tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }));
    }
    // 20 s of load: the rings want 6 × 16 MiB, the budget allows 48 MiB.
    let mut peak = idle;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < until {
        peak = peak.max(rss_kib_of(proxy.id()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, status) = get_json(addr, "/proxy/status").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (i, t) in line.into_iter().enumerate() {
        let (bytes, kept) = t.await.unwrap();
        assert!(
            kept,
            "line-speed reader {i} was dropped after {bytes} bytes"
        );
        assert!(
            bytes >= 20 * 16_000_000 / 8 * 7 / 10,
            "line-speed reader {i} got {bytes} bytes in 20 s"
        );
    }
    for t in slow {
        t.abort();
    }
    let buffer = &status["buffer"];
    eprintln!("budget: idle {idle} KiB, peak {peak} KiB; {buffer}");
    assert_eq!(buffer["budget_bytes"], 50_331_648, "{status}");
    // Six rings of up to 16 MiB wanted 96 MiB: at least three slow readers had to be cut (the
    // rest may fall off their ring's 16 MiB first, as slow clients).
    assert!(buffer["budget_drops"].as_u64().unwrap() >= 3, "{buffer}");
    assert!(buffer["used_bytes"].as_u64().unwrap() <= 50_331_648 + 16 * 65_536);
    assert!(
        peak <= idle + (48 + 40) * 1024,
        "RSS peaked at {peak} KiB, idle {idle} KiB"
    );
    // Every session ends (stream_idle_timeout 1 s); 10 s later memory is back.
    assert!(
        wait_until(Duration::from_secs(15), || async {
            get_json(addr, "/proxy/sessions").await.1["sessions"]
                .as_array()
                .is_some_and(|s| s.is_empty())
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib_of(proxy.id());
    eprintln!("budget: 10 s after the sessions ended: {after} KiB (idle {idle} KiB)");
    assert!(
        after <= idle + 30 * 1024,
        "RSS {after} KiB 10 s after every session ended, idle {idle} KiB"
    );
}
