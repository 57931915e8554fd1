//! The engine pool: scoring spreads sessions, health checks steer around dead engines, the
//! orchestrator's list is used and survives its outage, failures move to the next engine, and
//! engine API calls pass through.

mod common;

use acestream_edge::server::RunningServer;
use acestream_edge::sim::{Knobs, SimEngine};
use common::*;
use std::time::Duration;

fn slow_knobs() -> Knobs {
    // Many sessions at once: a low bitrate keeps the machine quiet.
    Knobs {
        bitrate_bps: 400_000,
        ..Knobs::default()
    }
}

fn config_yaml(engines: &[(&SimEngine, bool)], extra: &str) -> acestream_edge::config::Config {
    let mut yaml = format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  engines:\n",
        free_port()
    );
    for (e, forwarded) in engines {
        yaml.push_str(&format!(
            "    - {{host: 127.0.0.1, port: {}, forwarded: {forwarded}}}\n",
            e.addr().port()
        ));
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        yaml.push_str(&format!("  {}\n", line.trim()));
    }
    acestream_edge::config::load_str(&yaml).unwrap().acestream
}

async fn start_stream(server: &RunningServer, n: u32) -> u16 {
    let mut r = get(server.addr, &format!("/ace/getstream?id={}", content_id(n))).await;
    read_for(&mut r, Duration::from_secs(5), 188).await;
    r.status
}

async fn active(e: &SimEngine) -> u64 {
    sim_stats(e).await.sessions_active
}

/// 30 sessions of distinct ids: the forwarded engine fills first (up to max_streams_per_engine),
/// then the two regular engines share the rest evenly.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_spread_by_score() {
    let (f, a, b) = (
        sim(slow_knobs()).await,
        sim(slow_knobs()).await,
        sim(slow_knobs()).await,
    );
    let server = start_proxy(config_yaml(
        &[(&f, true), (&a, false), (&b, false)],
        "max_streams_per_engine: 10",
    ));
    for n in 0..10 {
        assert_eq!(start_stream(&server, 100 + n).await, 200);
    }
    assert_eq!(
        (active(&f).await, active(&a).await, active(&b).await),
        (10, 0, 0),
        "forwarded fills first"
    );
    for n in 10..30 {
        assert_eq!(start_stream(&server, 100 + n).await, 200);
    }
    let (na, nb) = (active(&a).await, active(&b).await);
    assert_eq!(active(&f).await, 10);
    assert_eq!(na + nb, 20);
    assert!(na.abs_diff(nb) <= 1, "regular engines uneven: {na} vs {nb}");
    // A 31st session fits nowhere: every engine is at its limit.
    let (status, v) = get_json(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(999)),
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("max_streams_per_engine"),
        "{v}"
    );
}

/// A killed engine turns unhealthy within 2 × health_check_interval and new sessions avoid it;
/// once it answers again it is used again.
#[tokio::test(flavor = "multi_thread")]
async fn dead_engine_is_avoided_and_comes_back() {
    let (a, b) = (sim(slow_knobs()).await, sim(slow_knobs()).await);
    let server = start_proxy(config_yaml(
        &[(&a, false), (&b, false)],
        "health_check_interval: 0.5",
    ));
    let pool = server.edge.engines.clone();
    assert!(
        wait_until(Duration::from_secs(3), || async {
            pool.status().iter().filter(|s| s.healthy).count() == 2
        })
        .await
    );
    let a_addr = a.addr();
    a.shutdown();
    let held = hold_port(a_addr); // refused meanwhile, and never reused by another test
    let unhealthy = wait_until(Duration::from_secs(1), || async {
        pool.status().iter().any(|s| s.addr == a_addr && !s.healthy)
    })
    .await;
    assert!(
        unhealthy,
        "engine not marked unhealthy within 2 × health_check_interval"
    );
    for n in 0..4 {
        assert_eq!(start_stream(&server, 200 + n).await, 200);
    }
    assert_eq!(active(&b).await, 4);
    // It comes back on the same port.
    drop(held);
    let a2 = SimEngine::start(a_addr, slow_knobs()).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || async {
            pool.status().iter().all(|s| s.healthy)
        })
        .await
    );
    assert_eq!(start_stream(&server, 210).await, 200);
    assert_eq!(
        active(&a2).await,
        1,
        "the recovered, idle engine takes the next session"
    );
}

/// Engines listed by an orchestrator (both JSON shapes) are used; with the orchestrator down,
/// selection keeps working from the last list. The api_key goes out as a Bearer token.
#[tokio::test(flavor = "multi_thread")]
async fn orchestrator_engines_are_used_and_survive_its_outage() {
    let (a, b) = (sim(slow_knobs()).await, sim(slow_knobs()).await);
    let orch = FakeOrchestrator::start(serde_json::json!([
        {"container_id": "ca", "host": "127.0.0.1", "port": a.addr().port(), "forwarded": true, "health_status": "healthy"}
    ]))
    .await;
    let yaml = format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  orchestrator: {{url: \"http://{}\", api_key: k3y}}\n  engine_cache_ttl: 0.2\n",
        free_port(),
        orch.addr
    );
    let server = start_proxy(acestream_edge::config::load_str(&yaml).unwrap().acestream);
    assert_eq!(start_stream(&server, 300).await, 200);
    assert_eq!(active(&a).await, 1);
    assert!(orch.auth_seen().iter().all(|h| h == "Bearer k3y") && !orch.auth_seen().is_empty());
    // The Go shape, now listing only b.
    orch.set(serde_json::json!({"engines": [{"container_id": "cb", "host": "127.0.0.1", "port": b.addr().port(), "health_status": "healthy"}], "total": 1}));
    let pool = server.edge.engines.clone();
    assert!(
        wait_until(Duration::from_secs(3), || async {
            let s = pool.status();
            s.len() == 1 && s[0].addr == b.addr()
        })
        .await
    );
    assert_eq!(start_stream(&server, 301).await, 200);
    assert_eq!(active(&b).await, 1);
    orch.stop();
    // The signal: the pool has seen the orchestrator fail twice since it went down.
    let failed_before = pool.orchestrator_failures();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            pool.orchestrator_failures() >= failed_before + 2
        })
        .await
    );
    assert_eq!(start_stream(&server, 302).await, 200);
    assert_eq!(active(&b).await, 2, "the last good list is kept");
}

/// An engine that refuses the id: the session starts on the next engine; the client gets a stream.
#[tokio::test(flavor = "multi_thread")]
async fn start_error_moves_to_the_next_engine() {
    let refusing = sim(Knobs {
        start_error: Some("failed to load content".into()),
        ..slow_knobs()
    })
    .await;
    let good = sim(slow_knobs()).await;
    // The refusing engine is forwarded, so it is always tried first.
    let server = start_proxy(config_yaml(&[(&refusing, true), (&good, false)], ""));
    assert_eq!(start_stream(&server, 400).await, 200);
    assert_eq!(sim_stats(&refusing).await.getstream_total, 1);
    assert_eq!(sim_stats(&good).await.getstream_total, 1);
    assert_eq!(active(&good).await, 1);
    // Every engine refusing: 503 with the engine's reason.
    good.set_knobs(|k| k.http_500 = true);
    let (status, v) = get_json(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(401)),
    )
    .await;
    assert_eq!(status, 503);
    assert!(v["error"].as_str().unwrap().contains("500"), "{v}");
}

/// Engine API calls the proxy does not serve itself pass through to an engine.
#[tokio::test(flavor = "multi_thread")]
async fn engine_api_passes_through() {
    let e = sim(slow_knobs()).await;
    let server = start_proxy(config_yaml(&[(&e, false)], ""));
    let (status, v) = get_json(server.addr, "/webui/api/service?method=get_version").await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["version"], "3.1.70");
    let (status, v) = get_json(server.addr, "/server/api?api_version=3&method=get_status").await;
    assert_eq!(
        (status, v["result"]["playlist_loaded"].as_bool()),
        (200, Some(true))
    );
    // No engine: a JSON 503, not Pingora's HTML.
    let server = start_proxy(config_yaml(&[], ""));
    let (status, v) = get_json(server.addr, "/webui/api/service?method=get_version").await;
    assert_eq!(status, 503);
    assert!(v["error"].as_str().unwrap().contains("no engine"), "{v}");
}

/// The proxy starts 0.1 s before its only engine listens, so the engine's first probe fails:
/// the first request after the engine listens still streams (the least-bad engine is tried
/// when none is healthy) and makes it healthy at once. With the engine really down, the answer
/// is a fast 503.
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_that_comes_up_late_is_used_at_once() {
    let (addr, holder) = dead_port();
    let yaml = format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  health_check_interval: 30\n",
        free_port(),
        addr.port()
    );
    let server = start_proxy(acestream_edge::config::load_str(&yaml).unwrap().acestream);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            server.edge.engines.status().iter().all(|e| !e.healthy)
        })
        .await,
        "the first probe found nothing listening"
    );
    // Really down: a fast 503.
    let t = std::time::Instant::now();
    let (status, v) = get_json(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(450)),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    // The engine comes up; its next probe is 30 s away.
    drop(holder);
    let e = acestream_edge::sim::SimEngine::start(addr, Knobs::default())
        .await
        .unwrap();
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(451)),
    )
    .await;
    assert_eq!(r.status, 200, "no 503 window");
    let (data, _) = read_for(&mut r, Duration::from_secs(5), 188 * 100).await;
    assert!(data.len() >= 188 * 100);
    assert!(
        server.edge.engines.status().iter().all(|e| e.healthy),
        "an engine that answered is healthy at once"
    );
    assert_eq!(sim_stats(&e).await.sessions_started, 1);
}

/// The orchestrator hears of every session exactly once when it starts and once when it ends,
/// with the documented fields; with the orchestrator down, sessions start as fast as without
/// one.
#[tokio::test(flavor = "multi_thread")]
async fn the_orchestrator_hears_of_every_session() {
    let e = sim(Knobs::default()).await;
    let orch = FakeOrchestrator::start(serde_json::json!([
        {"host": "127.0.0.1", "port": e.addr().port(), "container_id": "c1", "health_status": "healthy"}
    ]))
    .await;
    let yaml = format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  orchestrator: {{url: \"http://{}\", api_key: k}}\n  stream_idle_timeout: 0.5\n",
        free_port(),
        orch.addr
    );
    let server = start_proxy(acestream_edge::config::load_str(&yaml).unwrap().acestream);
    let id = content_id(460);
    let mut r = get(server.addr, &format!("/ace/getstream?id={id}")).await;
    assert_eq!(r.status, 200);
    read_for(&mut r, Duration::from_secs(5), 188 * 10).await;
    drop(r);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            orch.events("/events/stream_ended").len() == 1
        })
        .await,
        "stream_ended arrived"
    );
    let started = orch.events("/events/stream_started");
    assert_eq!(started.len(), 1, "{started:?}");
    let s = &started[0];
    assert_eq!(s["container_id"], "c1");
    assert_eq!(s["engine"]["port"], e.addr().port());
    assert_eq!(s["stream"]["key_type"], "content_id");
    assert_eq!(s["stream"]["key"], id.as_str());
    assert!(s["session"]["playback_session_id"].is_string());
    assert!(s["session"]["command_url"]
        .as_str()
        .unwrap()
        .contains("/ace/cmd/"));
    assert_eq!(s["session"]["is_live"], 1);
    let ended = orch.events("/events/stream_ended");
    assert_eq!(
        (
            &ended[0]["container_id"],
            &ended[0]["stream_id"],
            &ended[0]["reason"]
        ),
        (
            &serde_json::json!("c1"),
            &serde_json::json!(id),
            &serde_json::json!("idle_timeout")
        )
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        orch.events("/events/stream_started").len(),
        1,
        "exactly once"
    );
    assert_eq!(orch.events("/events/stream_ended").len(), 1, "exactly once");
}

/// An orchestrator that is down (events refused) delays no start: first bytes come as fast as
/// with event reporting off.
#[tokio::test(flavor = "multi_thread")]
async fn a_down_orchestrator_delays_nothing() {
    let e = sim(Knobs::default()).await;
    let (dead, _held) = dead_port();
    let mut ttfb = Vec::new();
    for report in [false, true] {
        // Static engines; the orchestrator URL (down) is only there for its events.
        let yaml = format!(
            "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  orchestrator: {{url: \"http://{dead}\", report_events: {report}}}\n",
            free_port(),
            e.addr().port()
        );
        let server = start_proxy(acestream_edge::config::load_str(&yaml).unwrap().acestream);
        let mut best = Duration::MAX;
        for i in 0..5 {
            let t = std::time::Instant::now();
            let mut r = get(
                server.addr,
                &format!(
                    "/ace/getstream?id={}",
                    content_id(470 + i + 10 * report as u32)
                ),
            )
            .await;
            assert_eq!(r.status, 200);
            read_for(&mut r, Duration::from_secs(5), 188).await;
            best = best.min(t.elapsed());
        }
        ttfb.push(best);
    }
    eprintln!(
        "best TTFB without events {:?}, with a down orchestrator {:?}",
        ttfb[0], ttfb[1]
    );
    assert!(ttfb[1] < ttfb[0] + Duration::from_millis(200), "{ttfb:?}");
}

/// Selection with the orchestrator's knowledge: of two equal engines on two VPN nodes, the one on
/// the quieter node wins; a draining engine and one behind an unhealthy VPN are never chosen,
/// even forwarded; `/proxy/engines` says why.
#[tokio::test(flavor = "multi_thread")]
async fn selection_knows_vpn_nodes_and_draining() {
    let (a, b, d, v) = (
        sim(Knobs::default()).await,
        sim(Knobs::default()).await,
        sim(Knobs::default()).await,
        sim(Knobs::default()).await,
    );
    let (busy, _held) = dead_port();
    let orch = FakeOrchestrator::start(serde_json::json!({"engines": [
        {"host": "127.0.0.1", "port": a.addr().port(), "container_id": "a", "vpn_container": "vpn1", "health_status": "healthy"},
        {"host": "127.0.0.1", "port": b.addr().port(), "container_id": "b", "vpn_container": "vpn2", "health_status": "healthy"},
        // vpn1 already carries three streams on another engine.
        {"host": "127.0.0.1", "port": busy.port(), "container_id": "c", "vpn_container": "vpn1", "health_status": "healthy", "stream_count": 3},
        {"host": "127.0.0.1", "port": d.addr().port(), "container_id": "d", "forwarded": true, "draining": true, "health_status": "healthy"},
        {"host": "127.0.0.1", "port": v.addr().port(), "container_id": "v", "forwarded": true, "vpn_container": "vpn3", "vpn_health": "unhealthy", "health_status": "healthy"}
    ], "total": 5}))
    .await;
    let yaml = format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  orchestrator: {{url: \"http://{}\", report_events: false}}\n",
        free_port(),
        orch.addr
    );
    let server = start_proxy(acestream_edge::config::load_str(&yaml).unwrap().acestream);
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(480)),
    )
    .await;
    assert_eq!(r.status, 200);
    read_for(&mut r, Duration::from_secs(5), 188).await;
    assert_eq!(
        sim_stats(&b).await.sessions_started,
        1,
        "the quieter VPN node won"
    );
    assert_eq!(sim_stats(&a).await.sessions_started, 0);
    for i in 0..6 {
        let mut r = get(
            server.addr,
            &format!("/ace/getstream?id={}", content_id(481 + i)),
        )
        .await;
        assert_eq!(r.status, 200);
        read_for(&mut r, Duration::from_secs(5), 188).await;
    }
    assert_eq!(
        sim_stats(&d).await.sessions_started,
        0,
        "a draining engine is never chosen"
    );
    assert_eq!(
        sim_stats(&v).await.sessions_started,
        0,
        "nor one behind an unhealthy VPN"
    );
    let (_, engines) = get_json(server.addr, "/proxy/engines").await;
    let why = |port: u16| {
        engines["engines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["port"] == port)
            .map(|e| e["not_candidate"].clone())
            .unwrap()
    };
    assert!(
        why(d.addr().port()).as_str().unwrap().contains("draining"),
        "{engines}"
    );
    assert!(
        why(v.addr().port()).as_str().unwrap().contains("VPN"),
        "{engines}"
    );
    assert!(why(a.addr().port()).is_null(), "{engines}");
    let node = engines["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["port"] == a.addr().port())
        .unwrap()["node_load"]
        .as_u64()
        .unwrap();
    assert!(node >= 3, "vpn1's load counts engine c's streams: {node}");
}

/// `/ace/check`: an available id reports peers and first byte; an id the engine refuses is not
/// available, with the reason; a third concurrent check gets 429; a live session answers without
/// a new engine session; every check's engine session is stopped.
#[tokio::test(flavor = "multi_thread")]
async fn availability_checks() {
    let e = sim(Knobs {
        prebuffer: Duration::from_millis(1500),
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], "check_timeout: 5"));
    let addr = server.addr;
    // Three at once: two run, the third is refused.
    let checks: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(async move {
                get_json(addr, &format!("/ace/check?id={}", content_id(490 + i))).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut available = Vec::new();
    for c in checks {
        let (status, v) = c.await.unwrap();
        statuses.push(status);
        if status == 200 {
            available.push(v);
        } else {
            assert!(v["error"].as_str().unwrap().contains("checks"), "{v}");
        }
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429]);
    for v in &available {
        assert_eq!(v["available"], true, "{v}");
        assert_eq!(v["peers"], 4, "{v}");
        assert!(v["first_byte_ms"].as_u64().unwrap() >= 1500, "{v}");
        assert_eq!(v["from_session"], false);
    }
    // A live session answers without starting anything.
    let id = content_id(495);
    let mut r = get(addr, &format!("/ace/getstream?id={id}")).await;
    // Past the prebuffer's keepalives: the session streams.
    read_for(&mut r, Duration::from_secs(5), 500_000).await;
    let started = sim_stats(&e).await.sessions_started;
    let (_, v) = get_json(addr, &format!("/ace/check?id={id}")).await;
    assert_eq!(
        (v["available"].clone(), v["from_session"].clone()),
        (true.into(), true.into()),
        "{v}"
    );
    assert_eq!(
        sim_stats(&e).await.sessions_started,
        started,
        "nothing started"
    );
    drop(r);
    // An engine that refuses: not available, with its reason.
    e.set_knobs(|k| k.start_error = Some("content not found".into()));
    let (status, v) = get_json(addr, &format!("/ace/check?id={}", content_id(496))).await;
    assert_eq!(status, 200);
    assert_eq!(v["available"], false, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("content not found"),
        "{v}"
    );
    // Every check's engine session was stopped.
    let s = sim_stats(&e).await;
    assert_eq!(
        s.stop_calls.get(&content_id(490)).copied().unwrap_or(0)
            + s.stop_calls.get(&content_id(491)).copied().unwrap_or(0)
            + s.stop_calls.get(&content_id(492)).copied().unwrap_or(0),
        2
    );
    assert_eq!(
        s.sessions_active, 1,
        "only the live session's engine session is left"
    );
}

/// A check that gives up on a slow engine (its start answered after `check_timeout`) still stops
/// the engine session that start created, once the engine answers (issue 26).
#[tokio::test(flavor = "multi_thread")]
async fn a_check_that_gives_up_stops_the_late_engine_session() {
    let e = sim(Knobs {
        json_latency: Duration::from_secs(3),
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], "check_timeout: 1"));
    let id = content_id(2660);
    let (status, v) = get_json(server.addr, &format!("/ace/check?id={id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["available"], false, "{v}");
    let stopped = wait_until(Duration::from_secs(10), || async {
        let s = sim_stats(&e).await;
        s.sessions_started == 1 && s.stop_calls.get(&id) == Some(&1) && s.sessions_active == 0
    })
    .await;
    assert!(
        stopped,
        "the late session was left running: {:?}",
        sim_stats(&e).await
    );
}

/// `headers:` of an engine, the orchestrator and a channel source: every call to each carries
/// them (the engine's start, stream, stat, stop, health probe, search and passthrough, asserted
/// at the simulator; the orchestrator's list; the source's fetch), and no value reaches the log,
/// even at debug level.
#[tokio::test(flavor = "multi_thread")]
async fn configured_headers_reach_every_call_and_never_the_log() {
    const ENGINE_KEY: &str = "Bearer engine-secret-4711";
    const ORCH_KEY: &str = "Bearer orchestrator-secret-1234";
    const LIST_KEY: &str = "list-secret-0815";
    let e = sim(Knobs::default()).await;
    let orchestrator = FakeOrchestrator::start(serde_json::json!([])).await;
    // A channel source; it keeps the request heads it gets.
    let body = format!(
        "#EXTM3U\n#EXTINF:-1,Listed\nacestream://{}\n",
        content_id(7001)
    );
    let source = SourceServer::start(move |_| (200, body.clone().into_bytes())).await;
    let list_addr = source.addr;
    let dir = tempfile::tempdir().unwrap();
    let (conf, addr) = edge_conf(
        dir.path(),
        &format!(
            "  engines: [{{host: 127.0.0.1, port: {}, headers: {{Authorization: \"{ENGINE_KEY}\"}}}}]\n  orchestrator: {{url: \"http://{}\", report_events: false, headers: {{Authorization: \"{ORCH_KEY}\"}}}}\n  health_check_interval: 0.5\n  stream_idle_timeout: 0\n  dvr_window: 0\n  channels: {{check_interval: 0, sources: [{{url: \"http://{list_addr}/l.m3u\", headers: {{X-List-Key: {LIST_KEY}}}}}]}}\n",
            e.addr().port(),
            orchestrator.addr
        ),
    );
    let log = dir.path().join("edge.log");
    let stderr = std::process::Stdio::from(std::fs::File::create(&log).unwrap());
    let proxy = spawn_edge_listening(&conf, &[("RUST_LOG", "debug")], stderr, addr).await;
    // A stream (start, playback, stat, stop), a passthrough call, a search, the playlist.
    let mut r = get(addr, &format!("/ace/getstream?id={}", content_id(7000))).await;
    assert_eq!(r.status, 200);
    let (got, _) = read_for(&mut r, Duration::from_secs(3), 200_000).await;
    assert!(got.len() >= 200_000, "{}", got.len());
    drop(r);
    let (status, _) = get_json(addr, "/webui/api/service?method=get_version").await;
    assert_eq!(status, 200);
    let (status, v) = get_json(addr, "/ace/search?q=sport").await;
    assert_eq!(status, 200, "{v}");
    let mut r = get(addr, "/playlist.m3u").await;
    let text = String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap();
    assert!(text.contains(",Listed\n"), "{text}");
    let stopped = wait_until(Duration::from_secs(10), || async {
        sim_stats(&e).await.stop_total >= 1
    })
    .await;
    assert!(stopped, "the session was stopped");
    let stats = sim_stats(&e).await;
    assert_eq!(
        stats.authorizations.keys().cloned().collect::<Vec<_>>(),
        vec![ENGINE_KEY.to_string()],
        "every request to the engine carried its header: {stats:?}"
    );
    assert!(stats.authorizations[ENGINE_KEY] >= 6, "{stats:?}");
    assert!(
        stats.stat_calls >= 1 && stats.playback_requests >= 1,
        "{stats:?}"
    );
    let auth = orchestrator.auth_seen();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a == ORCH_KEY),
        "{auth:?}"
    );
    let heads = source.heads();
    assert!(
        !heads.is_empty()
            && heads
                .iter()
                .all(|h| h.contains(&format!("x-list-key: {LIST_KEY}"))),
        "{heads:?}"
    );
    drop(proxy);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() > 20, "a debug log was written");
    for secret in ["engine-secret", "orchestrator-secret", LIST_KEY] {
        let line = text.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "{secret} is in the log: {line:?}");
    }
}
