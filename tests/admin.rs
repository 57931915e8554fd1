//! Operator endpoints: status JSON with the seed's fields, Prometheus metrics that move with the
//! traffic, the admin token, and JSON errors.

mod common;

use acestream_edge::http1::GetOptions;
use acestream_edge::sim::Knobs;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            // A histogram's count is its +Inf bucket.
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum()
}

async fn scrape(addr: std::net::SocketAddr, token: Option<&str>) -> prometheus_parse::Scrape {
    let mut opts = GetOptions::default();
    if let Some(t) = token {
        opts.headers
            .push(("Authorization".into(), format!("Bearer {t}")));
    }
    let mut r = get_with(addr, "/metrics", opts).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let body = String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap();
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition")
}

fn assert_session_fields(s: &Value) {
    for key in [
        "stream_id",
        "ace_id",
        "engine_host",
        "container_id",
        "playback_session_id",
        "created_at",
        "started_at",
        "ended_at",
        "error",
    ] {
        assert!(s.get(key).is_some(), "missing {key} in {s}");
    }
    assert!(s["stream_id"].is_string() && s["ace_id"].is_string());
    assert!(s["engine_host"].is_string());
    assert!(s["engine_port"].is_u64());
    assert!(s["playback_session_id"].is_string());
    assert!(s["is_live"].is_boolean() && s["is_active"].is_boolean());
    assert!(s["client_count"].is_u64());
    assert!(
        s["created_at"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 UTC: {}",
        s["created_at"]
    );
    assert!(s["started_at"].is_string());
    assert!(s["ended_at"].is_null() && s["error"].is_null());
    assert!(s["idle_seconds"].is_f64());
    assert!(s["bytes_in"].is_u64() && s["bytes_out"].is_u64() && s["first_byte_ms"].is_u64());
    assert!(s["engine_score_at_start"].is_i64());
    assert_eq!(
        s["engine_score"], s["engine_score_at_start"],
        "the old name"
    );
    assert!(s["clients"].is_array());
}

/// Two clients on A and one on B: 2 sessions, 3 clients, every seed field typed; metrics agree;
/// after the idle timer, nothing is left and A's session is 404.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_metrics_follow_the_traffic() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "stream_idle_timeout: 0.5"));
    let (a, b) = (content_id(50), content_id(51));
    let mut clients = Vec::new();
    let mut read_total = 0usize;
    for id in [&a, &a, &b] {
        let mut r = get(server.addr, &format!("/ace/getstream?id={id}")).await;
        let (d, _) = read_for(&mut r, Duration::from_secs(5), 50_000).await;
        read_total += d.len();
        clients.push(r);
    }
    let (status, v) = get_json(server.addr, "/proxy/status").await;
    assert_eq!(status, 200);
    assert_eq!(v["running"], true);
    assert_eq!(v["total_sessions"], 2);
    assert_eq!(v["active_sessions"], 2);
    assert_eq!(v["total_clients"], 3);
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    for s in sessions {
        assert_session_fields(s);
    }
    let (status, s) = get_json(server.addr, &format!("/proxy/sessions/{a}")).await;
    assert_eq!(status, 200);
    assert_session_fields(&s);
    assert_eq!(
        (s["client_count"].as_u64(), s["engine_port"].as_u64()),
        (Some(2), Some(e.addr().port() as u64))
    );
    assert_eq!(s["clients"].as_array().unwrap().len(), 2);
    // A's score is the one it was chosen with (no stream on the engine yet), not the engine's
    // score now (two sessions on it).
    let (_, engines) = get_json(server.addr, "/proxy/engines").await;
    let now = engines["engines"][0]["score"].as_i64().unwrap();
    let at_start = s["engine_score_at_start"].as_i64().unwrap();
    assert!(at_start > now, "at start {at_start}, now {now}");
    assert!(s["clients"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let (_, list) = get_json(server.addr, "/proxy/sessions").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    let (_, engines) = get_json(server.addr, "/proxy/engines").await;
    assert_eq!(engines["engines"][0]["active_streams"], 2);
    assert_eq!(engines["engines"][0]["score"], -20);

    let m = scrape(server.addr, None).await;
    assert_eq!(metric(&m, "acestream_edge_client_joins_total", &[]), 3.0);
    assert_eq!(
        metric(
            &m,
            "acestream_edge_sessions_started_total",
            &[("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(metric(&m, "acestream_edge_sessions_active", &[]), 2.0);
    assert_eq!(metric(&m, "acestream_edge_clients_active", &[]), 3.0);
    assert!(metric(&m, "acestream_edge_downstream_bytes_total", &[]) >= read_total as f64);
    assert!(metric(&m, "acestream_edge_upstream_bytes_total", &[]) > 0.0);
    assert_eq!(
        metric(&m, "acestream_edge_upstream_first_byte_seconds", &[]),
        2.0
    );
    let engine = e.addr().to_string();
    assert_eq!(
        metric(
            &m,
            "acestream_edge_engine_selections_total",
            &[("engine", &engine), ("outcome", "started")]
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "acestream_edge_engine_healthy", &[("engine", &engine)]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "acestream_edge_engine_active_streams",
            &[("engine", &engine)]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "acestream_edge_http_responses_total",
            &[("route", "proxy_status"), ("status", "200")]
        ),
        1.0
    );

    drop(clients);
    let idle = wait_until(Duration::from_secs(5), || async {
        let (_, v) = get_json(server.addr, "/proxy/status").await;
        v["active_sessions"] == 0 && v["sessions"].as_array().unwrap().is_empty()
    })
    .await;
    assert!(idle, "sessions left after the idle timer");
    let (status, v) = get_json(server.addr, &format!("/proxy/sessions/{a}")).await;
    assert_eq!(status, 404);
    assert!(v["error"].is_string());
    let m = scrape(server.addr, None).await;
    assert_eq!(metric(&m, "acestream_edge_client_leaves_total", &[]), 3.0);
    assert_eq!(metric(&m, "acestream_edge_sessions_active", &[]), 0.0);
    assert!(
        metric(
            &m,
            "acestream_edge_http_responses_total",
            &[("route", "getstream"), ("status", "200")]
        ) >= 3.0
    );
}

/// With an admin token: no token and a wrong one get 401, the right one 200; getstream stays open.
#[tokio::test(flavor = "multi_thread")]
async fn admin_token_guards_admin_routes_only() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "admin_token: s3cret"));
    for path in [
        "/proxy/status",
        "/proxy/sessions",
        "/proxy/engines",
        "/metrics",
    ] {
        let (status, v) = get_json(server.addr, path).await;
        assert_eq!(status, 401, "{path}");
        assert!(v["error"].as_str().unwrap().contains("token"));
        let wrong = GetOptions {
            headers: vec![("Authorization".into(), "Bearer s3cres".into())],
            ..Default::default()
        };
        assert_eq!(
            get_with(server.addr, path, wrong).await.status,
            401,
            "{path}"
        );
        let right = GetOptions {
            headers: vec![("Authorization".into(), "Bearer s3cret".into())],
            ..Default::default()
        };
        assert_eq!(
            get_with(server.addr, path, right).await.status,
            200,
            "{path}"
        );
    }
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(52)),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!read_for(&mut r, Duration::from_secs(5), 188)
        .await
        .0
        .is_empty());
}

/// A stream's response is counted when its headers go out, while it is still streaming.
#[tokio::test(flavor = "multi_thread")]
async fn stream_responses_count_when_headers_go_out() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(90)),
    )
    .await;
    assert_eq!(r.status, 200);
    read_for(&mut r, Duration::from_secs(5), 188 * 100).await;
    let m = scrape(server.addr, None).await;
    let counted = metric(
        &m,
        "acestream_edge_http_responses_total",
        &[("route", "getstream"), ("status", "200")],
    );
    assert_eq!(counted, 1.0, "counted while streaming");
    drop(r);
    let sessions = server.edge.sessions.clone();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            sessions.list().iter().all(|s| s.client_count() == 0)
        })
        .await
    );
    let m = scrape(server.addr, None).await;
    assert_eq!(
        metric(
            &m,
            "acestream_edge_http_responses_total",
            &[("route", "getstream"), ("status", "200")]
        ),
        1.0,
        "and not again when it ends"
    );
}
