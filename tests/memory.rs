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
