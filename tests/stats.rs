//! The engine's own view of each session: stats polled from `stat_url` shown in the session JSON
//! and in per-engine metrics, and streams the stats call stuck (a frozen live position, a
//! session the engine no longer knows) failed over with the clients kept.

mod common;

use acestream_edge::sim::{Knobs, SimEngine};
use common::*;
use std::time::{Duration, Instant};

/// Two engines, the first preferred (forwarded); fast stat polling and stuck detection.
fn two_engines(
    first: &SimEngine,
    second: &SimEngine,
    extra: &str,
) -> acestream_edge::config::Config {
    let yaml = format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  engines:\n    - {{host: 127.0.0.1, port: {}, forwarded: true}}\n    - {{host: 127.0.0.1, port: {}}}\n  engine_stat_interval: 0.5\n  stuck_stream_timeout: 3\n{extra}",
        free_port(),
        first.addr().port(),
        second.addr().port()
    );
    acestream_edge::config::load_str(&yaml).unwrap().acestream
}

/// The session JSON shows the engine's stats within 2 × `engine_stat_interval` of the first
/// byte, and the metrics sum peers and download speed per engine.
#[tokio::test(flavor = "multi_thread")]
async fn session_json_and_metrics_show_engine_stats() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "engine_stat_interval: 0.5"));
    let id = content_id(2600);
    let mut r = get(server.addr, &format!("/ace/getstream?id={id}")).await;
    read_for(&mut r, Duration::from_secs(5), 188).await;
    let first_byte = Instant::now();
    let mut stats = serde_json::Value::Null;
    while first_byte.elapsed() < Duration::from_secs(1) {
        let (_, v) = get_json(server.addr, &format!("/proxy/sessions/{id}")).await;
        stats = v["engine_stats"].clone();
        if !stats.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!stats.is_null(), "stats within 2 × engine_stat_interval");
    assert_eq!(stats["peers"], 4, "{stats}");
    assert_eq!(stats["speed_down"], 512);
    assert!(stats["sampled_at"].as_str().unwrap().ends_with('Z'));
    let (_, _) = get_json(server.addr, "/proxy/status").await;
    let mut m = get(server.addr, "/metrics").await;
    let text = String::from_utf8(m.read_to_end(1 << 20).await.unwrap()).unwrap();
    let engine = e.addr().to_string();
    assert!(
        text.contains(&format!(
            "acestream_edge_engine_peers{{engine=\"{engine}\"}} 4"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "acestream_edge_engine_speed_down_kbps{{engine=\"{engine}\"}} 512"
    )));
    assert!(sim_stats(&e).await.stat_calls >= 1);
}

/// Reads from `r` for `d`; returns the bytes and whether the response ended.
async fn keep_reading(r: &mut acestream_edge::http1::Response, d: Duration) -> (usize, bool) {
    let end = tokio::time::Instant::now() + d;
    let mut n = 0;
    loop {
        match tokio::time::timeout_at(end, r.next_chunk()).await {
            Err(_) => return (n, false),
            Ok(Ok(Some(b))) => n += b.len(),
            Ok(_) => return (n, true),
        }
    }
}

async fn stuck_case(fault: Knobs, reason: &str, id: u32) {
    let first = sim(fault).await;
    let second = sim(Knobs::default()).await;
    let server = start_proxy(two_engines(&first, &second, ""));
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(id)),
    )
    .await;
    assert_eq!(r.status, 200);
    let t = Instant::now();
    // The client reads on through the failover.
    let reader = tokio::spawn(async move { keep_reading(&mut r, Duration::from_secs(8)).await });
    // Stuck after `stuck_stream_timeout` (3 s) + two polls (1 s) at most.
    let m = server.edge.metrics.clone();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let n = m.failovers.get();
            async move { n == 1 }
        })
        .await,
        "failed over within stuck_stream_timeout + 2 × engine_stat_interval"
    );
    let (bytes, ended) = reader.await.unwrap();
    assert!(!ended, "the client stays connected");
    assert!(bytes > 2_000_000, "only {bytes} bytes in 8 s");
    let failures = server
        .edge
        .metrics
        .upstream_failures
        .with_label_values(&[reason])
        .get();
    assert_eq!(failures, 1, "one {reason} failure");
    assert_eq!(sim_stats(&second).await.sessions_started, 1, "failed over");
    assert_eq!(
        sim_stats(&first).await.stop_calls.get(&content_id(id)),
        Some(&1),
        "the stuck engine got its stop"
    );
    eprintln!("{reason}: failed over within {:?}", t.elapsed());
}

/// A frozen live position fails the session over within `stuck_stream_timeout` + two polls.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_livepos_fails_over() {
    stuck_case(
        Knobs {
            freeze_livepos: true,
            ..Knobs::default()
        },
        "livepos_stuck",
        2610,
    )
    .await;
}

/// An engine that no longer knows the session fails it over at the next poll.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_session_fails_over() {
    stuck_case(
        Knobs {
            stat_unknown: true,
            ..Knobs::default()
        },
        "unknown_session",
        2620,
    )
    .await;
}

/// A healthy stream polled for 60 s is never called stuck.
#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_stream_is_never_called_stuck() {
    let first = sim(Knobs::default()).await;
    let second = sim(Knobs::default()).await;
    let server = start_proxy(two_engines(&first, &second, ""));
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(2630)),
    )
    .await;
    let (bytes, ended) = keep_reading(&mut r, Duration::from_secs(60)).await;
    assert!(!ended && bytes > 25_000_000, "{bytes} bytes");
    let m = &server.edge.metrics;
    for reason in ["livepos_stuck", "unknown_session", "prebuffering"] {
        assert_eq!(m.upstream_failures.with_label_values(&[reason]).get(), 0);
    }
    assert_eq!(m.failovers.get(), 0);
    assert!(
        sim_stats(&first).await.stat_calls >= 100,
        "polled all along"
    );
}
