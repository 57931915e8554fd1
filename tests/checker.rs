//! The channel checker (issue 29): 30 listed channels against the simulator — 20 that play, 5
//! the network does not have (the engine answers `failed to load content`), 5 without peers
//! (the session starts, no byte comes) — one pass finds 20 alive and 10 not with their reasons;
//! a channel a viewer watches is alive from its session; the viewer keeps its rate; checks never
//! hold more than `max_concurrent_checks` engine sessions and every one is stopped; `alive=1`,
//! `/proxy/channels` and the metrics show it.

mod common;

use acestream_edge::sim::Knobs;
use common::*;
use std::time::{Duration, Instant};

/// The body of `GET path` as text.
async fn get_text(addr: std::net::SocketAddr, path: &str) -> String {
    let mut r = get(addr, path).await;
    String::from_utf8(r.read_to_end(4 << 20).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_pass_finds_which_channels_play() {
    let id = |i: u32| content_id(6000 + i);
    let unavailable: Vec<String> = (20..25).map(id).collect();
    let silent: Vec<String> = (25..30).map(id).collect();
    let e = sim(Knobs {
        unavailable_ids: unavailable.clone(),
        silent_ids: silent.clone(),
        ..Knobs::default()
    })
    .await;
    // The watched channel is listed last: the viewer's session is live when the pass gets there.
    let watched = id(19);
    let mut list = Vec::new();
    for i in (0..19).chain(20..30).chain([19]) {
        list.push(format!("{{name: \"C{i}\", id: {}}}", id(i)));
    }
    let server = start_proxy(proxy_config(
        &[&e],
        &format!(
            "check_timeout: 2\nmax_concurrent_checks: 2\nchannels: {{check_interval: 1h, list: [{}]}}",
            list.join(", ")
        ),
    ));
    let addr = server.addr;
    let viewer = Viewer::start(addr, &watched).await;
    assert!(viewer.gets(100_000).await, "the viewer streams");
    let started = Instant::now();
    let from = viewer.bytes();

    // One pass.
    let done = wait_until(Duration::from_secs(60), || async {
        get_json(addr, "/proxy/channels").await.1["check_passes"] == 1
    })
    .await;
    assert!(done, "one pass within 60 s");
    let elapsed = started.elapsed().as_secs_f64();
    let (_, v) = get_json(addr, "/proxy/channels").await;
    let channels = v["channels"].as_array().expect("channels").clone();
    assert_eq!(channels.len(), 30);
    let health = |i: u32| {
        channels
            .iter()
            .find(|c| c["key"] == id(i))
            .map(|c| c["health"].clone())
            .unwrap_or_default()
    };
    for i in 0..19 {
        let h = health(i);
        assert_eq!(h["alive"], true, "channel {i}: {h}");
        assert!(h["first_byte_ms"].as_u64().is_some(), "{h}");
        assert!(h["last_checked"].as_u64().is_some_and(|t| t > 0), "{h}");
        assert_eq!(h["from_session"], false, "{h}");
    }
    let h = health(19);
    assert_eq!(
        (h["alive"].clone(), h["from_session"].clone()),
        (true.into(), true.into()),
        "{h}"
    );
    for i in 20..25 {
        let h = health(i);
        assert_eq!(h["alive"], false, "{h}");
        let reason = h["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("failed to load content"),
            "channel {i}: {h}"
        );
    }
    for i in 25..30 {
        let h = health(i);
        assert_eq!(h["alive"], false, "{h}");
        let reason = h["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("no stream byte within check_timeout"),
            "channel {i}: {h}"
        );
    }

    // The viewer kept its rate (4 Mbit/s: 500 kB/s) while the pass ran.
    let got = viewer.bytes() - from;
    let rate = got as f64 / elapsed;
    eprintln!(
        "pass of 30 channels in {elapsed:.1} s; viewer read {got} bytes ({:.0} kB/s), longest gap {} ms",
        rate / 1000.0,
        viewer.max_gap_ms()
    );
    assert!(rate > 0.8 * 500_000.0, "viewer rate {rate:.0} B/s");
    assert!(!viewer.ended());

    // At the engine: the watched id started once (the viewer's), every other id once; never
    // more than 2 check sessions beside the viewer's; every check session stopped.
    let stats = sim_stats(&e).await;
    assert_eq!(stats.getstream_calls.get(&watched), Some(&1), "{stats:?}");
    for i in (0..19).chain(20..30) {
        assert_eq!(
            stats.getstream_calls.get(&id(i)),
            Some(&1),
            "{i}: {stats:?}"
        );
    }
    assert!(stats.max_sessions_active <= 3, "{stats:?}");
    let stopped = wait_until(Duration::from_secs(10), || async {
        sim_stats(&e).await.sessions_active == 1
    })
    .await;
    let stats = sim_stats(&e).await;
    assert!(stopped, "only the viewer's session is left: {stats:?}");
    for i in (0..19).chain(25..30) {
        assert_eq!(stats.stop_calls.get(&id(i)), Some(&1), "{i}: {stats:?}");
    }

    // alive=1 lists the 20 that play; the metrics count them.
    let mut r = get(addr, "/playlist.m3u?alive=1").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap();
    assert_eq!(text.matches("#EXTINF").count(), 20, "{text}");
    assert!(!text.contains(&id(20)) && !text.contains(&id(25)), "{text}");
    let metrics = get_text(addr, "/metrics").await;
    for line in [
        "acestream_edge_channels{status=\"alive\"} 20",
        "acestream_edge_channels{status=\"dead\"} 10",
        "acestream_edge_channel_checks_total{outcome=\"alive\"} 19",
        "acestream_edge_channel_checks_total{outcome=\"dead\"} 10",
        "acestream_edge_channel_checks_total{outcome=\"from_session\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    drop(viewer);
}

/// A pool with one free stream slot: the checker takes none of it (the channel is recorded as
/// skipped after its patience, not checked), so a viewer who comes meanwhile still gets in.
#[tokio::test(flavor = "multi_thread")]
async fn a_check_never_takes_the_last_engine_slot() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(
        &[&e],
        &format!(
            "max_streams_per_engine: 1\nchannels: {{check_interval: 1h, list: [{{name: A, id: {}}}]}}",
            content_id(6100)
        ),
    ));
    let addr = server.addr;
    // While the pass waits for a spare slot, a viewer takes the only one.
    let viewer = Viewer::start(addr, &content_id(6101)).await;
    assert!(viewer.gets(100_000).await, "the viewer gets the last slot");
    let stats = sim_stats(&e).await;
    assert_eq!(
        stats.getstream_calls.get(&content_id(6100)),
        None,
        "{stats:?}"
    );
    let metrics = get_text(addr, "/metrics").await;
    assert!(
        !metrics.contains("acestream_edge_channel_checks_total{outcome=\"alive\"}"),
        "{metrics}"
    );
    drop(viewer);
}

/// Per-stream metrics within their cardinality bound: 30 listed channels and 100 ad-hoc ids
/// streaming, one viewer each; every per-stream metric has exactly 30 + 20 + 1 series (the
/// channels by name, the 20 busiest others by id, the rest as `other`), and the viewers add up.
#[tokio::test(flavor = "multi_thread")]
async fn per_stream_metrics_stay_within_their_bound() {
    let e = sim(Knobs {
        bitrate_bps: 200_000,
        ..Knobs::default()
    })
    .await;
    let id = |i: u32| content_id(6200 + i);
    let list: Vec<String> = (0..30)
        .map(|i| format!("{{name: \"Channel {i}\", id: {}}}", id(i)))
        .collect();
    let server = start_proxy(proxy_config(
        &[&e],
        &format!(
            "max_streams_per_engine: 500\nmax_clients_per_ip: 0\nmax_sessions_per_ip: 0\nsession_starts_per_ip_per_minute: 0\nchannels: {{check_interval: 0, list: [{}]}}",
            list.join(", ")
        ),
    ));
    let addr = server.addr;
    let mut viewers = Vec::new();
    for i in 0..130 {
        viewers.push(Viewer::start(addr, &id(i)).await);
    }
    for v in &viewers {
        assert!(v.gets(1).await, "every viewer streams");
    }
    let metrics = get_text(addr, "/metrics").await;
    let series = |metric: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("acestream_edge_{metric}{{")))
            .map(str::to_string)
            .collect()
    };
    for metric in [
        "stream_egress_bytes",
        "stream_ingest_bitrate_bps",
        "stream_lag_p95_seconds",
    ] {
        assert_eq!(series(metric).len(), 51, "{metric}: {:?}", series(metric));
    }
    let ts = series("stream_viewers");
    let ts: Vec<&String> = ts
        .iter()
        .filter(|l| l.contains("protocol=\"ts\""))
        .collect();
    assert_eq!(ts.len(), 51, "{ts:?}");
    let viewers_of = |l: &str| -> i64 { l.rsplit(' ').next().unwrap().parse().unwrap() };
    assert_eq!(ts.iter().map(|l| viewers_of(l)).sum::<i64>(), 130);
    for i in 0..30 {
        assert!(
            ts.iter()
                .any(|l| l.contains(&format!("stream=\"Channel {i}\""))),
            "Channel {i}"
        );
    }
    let other = ts
        .iter()
        .find(|l| l.contains("stream=\"other\""))
        .expect("an other series");
    assert_eq!(viewers_of(other), 80, "{other}");
    let by_id = ts.iter().filter(|l| l.contains("stream=\"0000")).count();
    assert_eq!(by_id, 20);
    eprintln!(
        "per-stream metrics of 130 streams: {} lines of acestream_edge_stream_*",
        metrics
            .lines()
            .filter(|l| l.starts_with("acestream_edge_stream_"))
            .count()
    );
    drop(viewers);
}
