//! Nobody locks the others out: requests nobody watches free their engine slots fast, a start the
//! engine answers late still gets its stop, per-address and global limits answer 429, and the
//! admin routes and engine control are not public.

mod common;

use acestream_edge::sim::Knobs;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Sends a getstream request head and closes the connection at once, as an aborted request or a
/// probing player does.
async fn abort_request(addr: SocketAddr, id: &str) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET /ace/getstream?id={id} HTTP/1.1\r\nHost: edge\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    drop(s);
}

/// 25 aborted requests for distinct ids start 25 engine sessions; every one is stopped and its
/// slot freed within `unwatched_linger` (5 s) + 1 s, a new id then streams, and a player that
/// probes and reconnects within 2 s reuses its session.
#[tokio::test(flavor = "multi_thread")]
async fn aborted_requests_free_their_engine_slots() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "max_streams_per_engine: 25"));
    for i in 0..25 {
        abort_request(server.addr, &content_id(1400 + i)).await;
    }
    let last_abort = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sim_stats(&e).await.sessions_started == 25
        })
        .await,
        "25 engine sessions started"
    );
    assert!(
        wait_until(Duration::from_secs(8), || async {
            let s = sim_stats(&e).await;
            s.stop_total == 25 && s.sessions_active == 0
        })
        .await,
        "every unwatched session stopped: {:?}",
        sim_stats(&e).await
    );
    let freed_after = last_abort.elapsed();
    eprintln!("25 unwatched sessions freed {freed_after:?} after the last abort");
    assert!(
        freed_after <= Duration::from_secs(6),
        "freed within unwatched_linger + 1 s: {freed_after:?}"
    );
    let (_, engines) = get_json(server.addr, "/proxy/engines").await;
    assert_eq!(engines["engines"][0]["active_streams"], 0, "{engines}");
    // A new id streams.
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(1450)),
    )
    .await;
    assert_eq!(r.status, 200);
    let (data, _) = read_for(&mut r, Duration::from_secs(5), 188 * 100).await;
    assert!(data.len() >= 188 * 100);
    // A player probes (closes before any byte) and reconnects 1.5 s later: the same session.
    let probed = content_id(1451);
    abort_request(server.addr, &probed).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut r = get(server.addr, &format!("/ace/getstream?id={probed}")).await;
    assert_eq!(r.status, 200);
    read_for(&mut r, Duration::from_secs(5), 188 * 10).await;
    assert_eq!(
        sim_stats(&e).await.getstream_calls.get(&probed),
        Some(&1),
        "the reconnect reused the probe's session"
    );
}

/// An engine whose JSON answer comes after `empty_stream_timeout`: the client gets its error at
/// the timeout, and the engine session the late answer created is stopped.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_engine_answer_still_gets_its_stop() {
    let e = sim(Knobs {
        json_latency: Duration::from_secs(2),
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], "empty_stream_timeout: 0.5"));
    let id = content_id(1460);
    let (status, v) = get_json(server.addr, &format!("/ace/getstream?id={id}")).await;
    assert!(status >= 500, "{status} {v}");
    assert!(
        wait_until(Duration::from_secs(6), || async {
            sim_stats(&e).await.stop_calls.get(&id) == Some(&1)
        })
        .await,
        "the late engine session was stopped: {:?}",
        sim_stats(&e).await
    );
    assert_eq!(sim_stats(&e).await.sessions_active, 0);
}
