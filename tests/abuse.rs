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

/// GET through a (trusted) front that says it forwarded for `client`.
async fn get_as(addr: SocketAddr, client: &str, path: &str) -> acestream_edge::http1::Response {
    get_with(
        addr,
        path,
        acestream_edge::http1::GetOptions {
            headers: vec![("X-Forwarded-For".into(), client.into())],
            ..Default::default()
        },
    )
    .await
}

/// `session_starts_per_ip_per_minute: 20`: one address asking for 200 ids gets at most 20 engine
/// sessions, then 429 with Retry-After; a second address starts a new id at once. Two different
/// forwarded addresses through a trusted peer count as two; the same header from an untrusted
/// peer is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn session_starts_per_address_are_limited() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(
        &[&e],
        "max_streams_per_engine: 100\nsession_starts_per_ip_per_minute: 20\nmax_sessions_per_ip: 0\nmax_clients_per_ip: 0\ntrusted_proxies: [\"127.0.0.1\"]",
    ));
    let mut ok = 0;
    let mut refused = 0;
    let mut held = Vec::new();
    for i in 0..200 {
        let r = get_as(
            server.addr,
            "198.51.100.7",
            &format!("/ace/getstream?id={}", content_id(1500 + i)),
        )
        .await;
        match r.status {
            200 => {
                ok += 1;
                held.push(r);
            }
            429 => {
                refused += 1;
                let retry: u64 = r
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
            }
            other => panic!("status {other}"),
        }
    }
    assert_eq!((ok, refused), (20, 180));
    assert_eq!(sim_stats(&e).await.sessions_started, 20);
    let r = get_as(
        server.addr,
        "198.51.100.8",
        &format!("/ace/getstream?id={}", content_id(1800)),
    )
    .await;
    assert_eq!(r.status, 200, "another address starts at once");
    assert_eq!(
        server
            .edge
            .metrics
            .limit_rejections
            .with_label_values(&["session_starts_per_ip"])
            .get(),
        180
    );
}

/// `max_clients_per_ip: 4`: the 5th concurrent viewer of one address gets 429, the other 4 stream
/// on; a viewer from an untrusted peer with the same header counts as that peer (loopback,
/// exempt by default).
#[tokio::test(flavor = "multi_thread")]
async fn viewers_per_address_are_limited() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(
        &[&e],
        "max_clients_per_ip: 4\ntrusted_proxies: [\"10.0.0.0/8\"]\nlimit_exempt: []",
    ));
    let path = format!("/ace/getstream?id={}", content_id(1900));
    let mut viewers = Vec::new();
    for _ in 0..4 {
        let r = get(server.addr, &path).await;
        assert_eq!(r.status, 200);
        viewers.push(r);
    }
    let (status, v) = get_json(server.addr, &path).await;
    assert_eq!(status, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at most 4"), "{v}");
    // 127.0.0.1 is not a trusted proxy here: its X-Forwarded-For is ignored, it is still the
    // same (fifth) viewer of 127.0.0.1.
    let r = get_as(server.addr, "198.51.100.7", &path).await;
    assert_eq!(r.status, 429);
    for r in &mut viewers {
        let (data, _) = read_for(r, Duration::from_secs(5), 188 * 100).await;
        assert!(data.len() >= 188 * 100, "the four stream on");
    }
    drop(viewers.pop());
    assert!(
        wait_until(Duration::from_secs(5), || async {
            get(server.addr, &path).await.status == 200
        })
        .await,
        "a place freed"
    );
}

/// With an empty `admin_token`, the admin routes answer loopback clients only: a client a trusted
/// proxy forwarded for gets 403 with a JSON reason, 127.0.0.1 gets 200. With a token set, the
/// token decides.
#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_are_loopback_only_without_a_token() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "trusted_proxies: [\"127.0.0.1\"]"));
    for path in ["/proxy/status", "/proxy/engines", "/metrics", "/proxy/nope"] {
        let mut r = get_as(server.addr, "198.51.100.7", path).await;
        assert_eq!(r.status, 403, "{path}");
        let body = r.read_to_end(1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("admin_token"), "{v}");
    }
    let (status, _) = get_json(server.addr, "/proxy/status").await;
    assert_eq!(status, 200, "loopback");
    let server = start_proxy(proxy_config(
        &[&e],
        "trusted_proxies: [\"127.0.0.1\"]\nadmin_token: s3cret",
    ));
    let r = get_with(
        server.addr,
        "/proxy/status",
        acestream_edge::http1::GetOptions {
            headers: vec![
                ("X-Forwarded-For".into(), "198.51.100.7".into()),
                ("Authorization".into(), "Bearer s3cret".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.status, 200, "a token opens them from anywhere");
}

/// Engine control never passes without the token: `method=stop` on a command path answers 401 (token configured) or 403 (none), the engine sees no stop and the
/// viewer streams on; `..` paths are refused; the open service call still passes.
#[tokio::test(flavor = "multi_thread")]
async fn engine_control_is_not_public() {
    let e = sim(Knobs::default()).await;
    let id = content_id(1950);
    for (extra, status) in [("admin_token: s3cret", 401), ("", 403)] {
        let server = start_proxy(proxy_config(&[&e], extra));
        let mut viewer = get(server.addr, &format!("/ace/getstream?id={id}")).await;
        assert_eq!(viewer.status, 200);
        read_for(&mut viewer, Duration::from_secs(5), 188 * 10).await;
        // Any command path: the simulator counts every `method=stop` that reaches it.
        let cmd = format!("/ace/cmd/{id}/0123456789abcdef0123456789abcdef");
        let stops_before = sim_stats(&e).await.stop_total;
        let (got, v) = get_json(server.addr, &format!("{cmd}?method=stop")).await;
        assert_eq!(got, status, "{v}");
        assert!(v["error"].is_string());
        for p in ["/webui/../ace/cmd/x?method=stop", "/webui/%2e%2e/ace/cmd/x"] {
            let (got, _) = get_json(server.addr, p).await;
            assert_eq!(got, 400, "{p}");
        }
        assert_eq!(
            sim_stats(&e).await.stop_total,
            stops_before,
            "no stop reached the engine"
        );
        let (got, v) = get_json(server.addr, "/webui/api/service?method=get_version").await;
        assert_eq!(
            (got, v["result"]["version"].as_str()),
            (200, Some("3.1.70"))
        );
        let (data, _) = read_for(&mut viewer, Duration::from_secs(3), 188 * 100).await;
        assert!(data.len() >= 188 * 100, "the viewer streams on");
    }
}

/// An engine's error text is not reflected: a 100 KB refusal becomes a short 503 that names no
/// engine address; the status page keeps the whole reason for the operator.
#[tokio::test(flavor = "multi_thread")]
async fn engine_errors_are_not_reflected() {
    let e = sim(Knobs {
        start_error: Some(format!("{} at 127.0.0.1:{}", "x".repeat(100_000), 6878)),
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(1960)),
    )
    .await;
    assert_eq!(r.status, 503);
    let body = r.read_to_end(1 << 20).await.unwrap();
    assert!(body.len() < 300, "{} bytes", body.len());
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(&e.addr().to_string()) && !text.contains("127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
}
