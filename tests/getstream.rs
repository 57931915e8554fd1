//! `/ace/getstream`: one engine session per content id, fanned out to every client.

mod common;

use acestream_edge::http1::GetOptions;
use acestream_edge::server::RunningServer;
use acestream_edge::sim::{Knobs, SimEngine};
use common::*;
use std::time::{Duration, Instant};

fn sessions(server: &RunningServer) -> usize {
    server.edge.sessions.list().len()
}

/// Two clients of one id: one engine session and one reader; from the moment B joined both get
/// identical bytes, and B's stream starts on a packet boundary.
#[tokio::test(flavor = "multi_thread")]
async fn two_clients_share_one_engine_session() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let path = format!("/ace/getstream?id={}", content_id(10));
    let mut a = get(server.addr, &path).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("video/mp2t"));
    // A zero-copy viewer's body is close-delimited: no chunk framing around each `sendfile`.
    assert!(a.header("transfer-encoding").is_none());
    assert_eq!(a.header("connection"), Some("close"));
    assert!(a.header("content-length").is_none());
    let (a_before, _) = read_for(&mut a, Duration::from_secs(5), 300_000).await;
    let mut b = get(server.addr, &path).await;
    assert_eq!(b.status, 200);
    let (a_data, b_data) = tokio::join!(
        read_for(&mut a, Duration::from_secs(2), usize::MAX),
        read_for(&mut b, Duration::from_secs(2), usize::MAX)
    );
    let (a_data, b_data) = (a_data.0, b_data.0);
    let b_whole = &b_data[..b_data.len() / 188 * 188];
    assert!(b_whole.len() > 500_000, "B got {} bytes", b_whole.len());
    assert!(
        ts_aligned(b_whole),
        "B's stream is not on the 188-byte grid"
    );
    // B starts with copies of the PAT and PMT, then a burst from the ring starting on a
    // keyframe, which A already had: find B's start after the PSI in A's stream.
    assert_eq!(
        acestream_edge::ts::pid(b_whole),
        acestream_edge::ts::PAT_PID
    );
    let b_whole = &b_whole[2 * 188..];
    let mut a_all = a_before.to_vec();
    a_all.extend_from_slice(&a_data);
    // 64 packets: long enough to be unique (null packets repeat, video/audio ones do not).
    let probe = &b_whole[..188 * 64];
    let at = a_all
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("B's first bytes appear in A's stream");
    let common_len = (a_all.len() - at).min(b_whole.len());
    assert!(common_len > 400_000);
    assert!(
        a_all[at..at + common_len] == b_whole[..common_len],
        "A and B differ after B joined"
    );
    let s = sim_stats(&e).await;
    assert_eq!(s.getstream_total, 1, "exactly one engine getstream");
    assert_eq!(
        s.playback_requests, 2,
        "one playback URL + its one /content redirect target"
    );
    assert_eq!(
        (
            s.active_readers,
            s.max_active_readers,
            s.second_reader_violations
        ),
        (1, 1, 0)
    );
}

/// 200 concurrent first requests for one id make exactly one engine getstream call.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_requests_make_one_engine_call() {
    let e = sim(Knobs {
        prebuffer: Duration::from_millis(300),
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let path = format!("/ace/getstream?id={}", content_id(11));
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (addr, path, barrier) = (server.addr, path.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut r = get(addr, &path).await;
            let (data, _) = read_for(&mut r, Duration::from_secs(10), 188).await;
            (r.status, data.len())
        }));
    }
    for t in tasks {
        let (status, n) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(n >= 188);
    }
    let s = sim_stats(&e).await;
    assert_eq!(s.getstream_total, 1);
    assert_eq!(s.max_active_readers, 1);
}

/// A leaves, B keeps receiving; B leaves and with a 0.5 s idle timeout the engine sees exactly
/// one stop within 2 s and the session is gone.
#[tokio::test(flavor = "multi_thread")]
async fn last_client_leaving_stops_after_idle_timeout() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "stream_idle_timeout: 0.5"));
    let path = format!("/ace/getstream?id={}", content_id(12));
    let mut a = get(server.addr, &path).await;
    read_for(&mut a, Duration::from_secs(5), 100_000).await;
    let mut b = get(server.addr, &path).await;
    read_for(&mut b, Duration::from_secs(5), 100_000).await;
    drop(a);
    let t = Instant::now();
    let (after, _) = read_for(&mut b, Duration::from_secs(1), usize::MAX).await;
    let rate = after.len() as f64 / t.elapsed().as_secs_f64();
    assert!(
        rate > 400_000.0,
        "B slowed down after A left: {rate:.0} B/s"
    );
    assert_eq!(sim_stats(&e).await.stop_total, 0, "no stop while B watches");
    drop(b);
    let stopped = wait_until(Duration::from_secs(2), || async {
        sim_stats(&e).await.stop_total == 1
    })
    .await;
    assert!(stopped, "no stop within 2 s of the last client leaving");
    assert!(wait_until(Duration::from_secs(1), || async { sessions(&server) == 0 }).await);
    // No second stop may follow: an absence can only be watched for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = sim_stats(&e).await;
    assert_eq!((s.stop_total, s.getstream_total), (1, 1));
}

/// Within the idle window a new client re-attaches to the warm session: bytes, no engine call.
#[tokio::test(flavor = "multi_thread")]
async fn rejoin_inside_idle_window_reuses_the_session() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], "stream_idle_timeout: 5"));
    let path = format!("/ace/getstream?id={}", content_id(13));
    let mut a = get(server.addr, &path).await;
    read_for(&mut a, Duration::from_secs(5), 100_000).await;
    drop(a);
    // The signal that A has left: the session is idle (lingering), not a guessed sleep.
    let session = server.edge.sessions.get(&content_id(13)).expect("session");
    assert!(
        wait_until(Duration::from_secs(2), || async {
            session.client_count() == 0
        })
        .await
    );
    let t = Instant::now();
    let mut c = get(server.addr, &path).await;
    let (data, _) = read_for(&mut c, Duration::from_secs(5), 188).await;
    assert_eq!(c.status, 200);
    assert!(data.len() >= 188 && data[0] == 0x47);
    assert!(t.elapsed() < Duration::from_secs(2));
    let s = sim_stats(&e).await;
    assert_eq!((s.getstream_total, s.stop_total), (1, 0));
}

/// A client that never reads is dropped when it falls off the ring, while a normal client of
/// the same session receives the full bitrate the whole time.
#[tokio::test(flavor = "multi_thread")]
async fn slow_client_is_dropped_and_never_slows_others() {
    let bitrate = 16_000_000u64; // 2 MB/s, so the slow client's kernel buffers fill quickly
    let e = sim(Knobs {
        bitrate_bps: bitrate,
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(
        &[&e],
        "stream_buffer_size: 1048576\nstream_buffer_seconds: 0.5\nclient_timeout: 60",
    ));
    let path = format!("/ace/getstream?id={}", content_id(14));
    let mut normal = get(server.addr, &path).await;
    read_for(&mut normal, Duration::from_secs(5), 100_000).await;
    // The slow client: a tiny receive buffer, and it never reads its body.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(server.addr).await.unwrap();
    let slow = acestream_edge::http1::get_on(stream, "x", &path, &GetOptions::default())
        .await
        .unwrap();
    assert_eq!(slow.status, 200);
    let session = server.edge.sessions.get(&content_id(14)).unwrap();
    assert_eq!(session.client_count(), 2);
    // The normal client reads for as long as it takes the slow one to be dropped (bounded).
    let start = Instant::now();
    let mut received = 0usize;
    let mut dropped_after = None;
    while start.elapsed() < Duration::from_secs(20) {
        let (d, _) = read_for(&mut normal, Duration::from_millis(250), usize::MAX).await;
        received += d.len();
        if dropped_after.is_none() && session.client_count() == 1 {
            dropped_after = Some(start.elapsed());
        }
        if dropped_after.is_some_and(|t| start.elapsed() > t + Duration::from_secs(1))
            && start.elapsed() > Duration::from_secs(4)
        {
            break;
        }
    }
    let dropped_after = dropped_after.expect("slow client was not dropped within 20 s");
    let rate = received as f64 / start.elapsed().as_secs_f64();
    let expected = bitrate as f64 / 8.0;
    assert!(
        (rate - expected).abs() / expected < 0.10,
        "normal client got {rate:.0} B/s, source {expected:.0} B/s"
    );
    eprintln!("slow client dropped after {dropped_after:?}; normal client {rate:.0} B/s");
    assert_eq!(
        server.edge.metrics.slow_client_drops.get(),
        1,
        "the drop is counted"
    );
    drop(slow);
}

async fn expect_error(server: &RunningServer, path: &str, status: u16) -> String {
    let (got, v) = get_json(server.addr, path).await;
    assert_eq!(got, status, "{path}: {v}");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no error text in {v}"))
        .to_string()
}

/// Bad ids are 400 naming the parameter; no engine is contacted and no session is left.
#[tokio::test(flavor = "multi_thread")]
async fn bad_ids_are_rejected_without_engine_calls() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let forty = content_id(15);
    for bad in [
        "id=zz".to_string(),
        format!("id={}", &forty[..39]),
        format!("id={forty}0"),
        String::new(),
        "id=../".into(),
        "infohash=xyz".into(),
    ] {
        let text = expect_error(&server, &format!("/ace/getstream?{bad}"), 400).await;
        assert!(
            text.contains("'id'") || text.contains("'infohash'"),
            "{text}"
        );
    }
    assert_eq!(sim_stats(&e).await.getstream_total, 0);
    assert_eq!(sessions(&server), 0);
}

/// Engine failures before the first byte are 503 with the engine's reason; no session is left,
/// and a session that reached the engine gets its stop.
#[tokio::test(flavor = "multi_thread")]
async fn engine_failures_are_503_and_leave_nothing() {
    let e = sim(Knobs {
        start_error: Some("failed to load content".into()),
        ..Knobs::default()
    })
    .await;
    // keepalive 0: the session-tee behaviour (headers wait for the first byte, errors are statuses).
    let server = start_proxy(proxy_config(
        &[&e],
        "empty_stream_timeout: 0.5\nkeepalive_interval: 0",
    ));
    let text = expect_error(
        &server,
        &format!("/ace/getstream?id={}", content_id(16)),
        503,
    )
    .await;
    assert!(text.contains("failed to load content"), "{text}");
    assert_eq!(sessions(&server), 0);

    e.set_knobs(|k| {
        k.start_error = None;
        k.http_500 = true;
    });
    let text = expect_error(
        &server,
        &format!("/ace/getstream?id={}", content_id(17)),
        503,
    )
    .await;
    assert!(text.contains("500"), "{text}");
    assert_eq!(sessions(&server), 0);

    // Stall before the first byte: 503 after empty_stream_timeout, and the engine session stopped.
    e.set_knobs(|k| {
        k.http_500 = false;
        k.prebuffer = Duration::from_secs(10);
    });
    let t = Instant::now();
    let text = expect_error(
        &server,
        &format!("/ace/getstream?id={}", content_id(18)),
        503,
    )
    .await;
    assert!(text.contains("no stream data"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(
        wait_until(Duration::from_secs(3), || async {
            sim_stats(&e).await.stop_calls.get(&content_id(18)) == Some(&1)
        })
        .await
    );
    assert_eq!(sessions(&server), 0);
}

/// No engines configured, or none reachable: 503.
#[tokio::test(flavor = "multi_thread")]
async fn no_engine_is_503() {
    let server = start_proxy(proxy_config(&[], ""));
    let text = expect_error(
        &server,
        &format!("/ace/getstream?id={}", content_id(19)),
        503,
    )
    .await;
    assert!(text.contains("no engine"), "{text}");
    // An engine whose port refuses connections (held, so no parallel test can take it over).
    let (dead_addr, _held) = dead_port();
    let config = acestream_edge::config::load_str(&format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  engines: [{{host: 127.0.0.1, port: {}}}]\n  engine_connect_timeout: 1\n",
        free_port(),
        dead_addr.port()
    ))
    .unwrap()
    .acestream;
    let server = start_proxy(config);
    // Once the health probe has seen it down (the signal: /proxy/engines says so), the answer
    // is exactly one message.
    let addr = server.addr;
    let probed = wait_until(Duration::from_secs(15), || async move {
        let (_, v) = get_json(addr, "/proxy/engines").await;
        v["engines"][0]["healthy"] == false
    })
    .await;
    assert!(probed, "the health probe never marked the dead engine");
    let text = expect_error(
        &server,
        &format!("/ace/getstream?id={}", content_id(19)),
        503,
    )
    .await;
    // No engine is healthy, so the least-bad one was tried anyway (panic_when_all_unhealthy):
    // it refused the connection.
    assert!(text.contains("could not be reached"), "{text}");
    assert_eq!(sessions(&server), 0);
}

/// ffprobe, reading the proxy's stream, finds video and audio; HTTP/1.0 gets a close-delimited body.
#[tokio::test(flavor = "multi_thread")]
async fn proxied_stream_decodes_and_http10_is_close_delimited() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let path = format!("/ace/getstream?id={}", content_id(20));
    let mut r = get_with(
        server.addr,
        &path,
        GetOptions {
            http10: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none());
    let (data, _) = read_for(&mut r, Duration::from_secs(10), 1_000_000).await;
    let whole = &data[..data.len() / 188 * 188];
    let streams = ffprobe_streams(whole);
    assert!(
        streams.contains(&"video".into()) && streams.contains(&"audio".into()),
        "{streams:?}"
    );
}

/// When the engine ends the stream, attached clients' responses end cleanly (no hang), the
/// session is gone, and the engine gets one stop.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_end_finishes_client_responses() {
    let e = sim(Knobs {
        drop_after_bytes: Some(400_000),
        ..Knobs::default()
    })
    .await;
    // No failover: the engine's end is the stream's end.
    let server = start_proxy(proxy_config(&[&e], "max_failovers: 0"));
    let mut r = get(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(21)),
    )
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 0;
        loop {
            match r.next_chunk().await {
                Ok(Some(b)) => n += b.len(),
                Ok(None) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("response did not end");
    let n = ended.expect("response ended with a clean last chunk");
    assert!(n > 300_000 && n <= 400_000, "{n}");
    assert!(wait_until(Duration::from_secs(2), || async { sessions(&server) == 0 }).await);
    assert!(
        wait_until(Duration::from_secs(2), || async {
            sim_stats(&e).await.stop_total == 1
        })
        .await
    );
}

/// HEAD answers the stream's headers without a session or an engine call.
#[tokio::test(flavor = "multi_thread")]
async fn head_probe_starts_nothing() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let r = get_with(
        server.addr,
        &format!("/ace/getstream?id={}", content_id(22)),
        GetOptions {
            head: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    assert_eq!(sim_stats(&e).await.getstream_total, 0);
    assert_eq!(sessions(&server), 0);
    let _: &SimEngine = &e;
}

/// Any method but GET and HEAD on the proxy's own routes is a 405 with `Allow`, and starts
/// nothing at the engine.
#[tokio::test(flavor = "multi_thread")]
async fn other_methods_are_405_and_start_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    for (method, path) in [
        ("POST", format!("/ace/getstream?id={}", content_id(20))),
        ("DELETE", format!("/ace/getstream?id={}", content_id(20))),
        ("PUT", "/proxy/status".to_string()),
    ] {
        let mut sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 405"), "{method} {path}: {text}");
        assert!(text.contains("allow: get, head"), "{text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    assert_eq!(sim_stats(&e).await.getstream_total, 0, "nothing started");
    assert_eq!(sessions(&server), 0);
}

/// `infohash=` is forwarded to the engine as `infohash=` (a different key from a content id), and
/// an infohash and a content id with the same hex never share a session.
#[tokio::test(flavor = "multi_thread")]
async fn infohash_is_its_own_key() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let hex = content_id(21);
    let mut by_id = get(server.addr, &format!("/ace/getstream?id={hex}")).await;
    let mut by_hash = get(server.addr, &format!("/ace/getstream?infohash={hex}")).await;
    assert_eq!((by_id.status, by_hash.status), (200, 200));
    let (a, b) = tokio::join!(
        read_for(&mut by_id, Duration::from_secs(5), 100_000),
        read_for(&mut by_hash, Duration::from_secs(5), 100_000)
    );
    assert!(a.0.len() >= 100_000 && b.0.len() >= 100_000);
    assert_eq!(sessions(&server), 2, "two sessions, not one");
    let s = sim_stats(&e).await;
    assert_eq!(s.getstream_params.get("id"), Some(&1));
    assert_eq!(s.getstream_params.get("infohash"), Some(&1));
    assert_eq!(
        s.sessions_active, 2,
        "neither start ended the other at the engine"
    );
    let (status, v) = get_json(server.addr, &format!("/proxy/sessions/{hex}")).await;
    assert_eq!(status, 200);
    assert_eq!(v["ace_id"], hex.as_str());
}

/// Finds `b`'s stream (after its PAT + PMT lead-in) inside `a` and returns how many bytes from
/// there are equal in both, with the length they could share.
fn common_run(a: &[u8], b: &[u8]) -> (usize, usize) {
    let b_whole = &b[..b.len() / 188 * 188];
    assert!(ts_aligned(b_whole), "not on the 188-byte grid");
    assert_eq!(
        acestream_edge::ts::pid(b_whole),
        acestream_edge::ts::PAT_PID
    );
    let b_whole = &b_whole[2 * 188..];
    let probe = &b_whole[..188 * 64];
    let at = a
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("B's first bytes appear in A's stream");
    let len = (a.len() - at).min(b_whole.len());
    let same = a[at..at + len]
        .iter()
        .zip(&b_whole[..len])
        .take_while(|(x, y)| x == y)
        .count();
    (same, len)
}

/// A viewer served by `sendfile` from the page file, one whose chunks are written (`zero_copy:
/// false`) and one in Pingora's writer (`viewer_takeover: false`), each applied live, receive
/// byte-identical TS from the moment they watch; the first two are close-delimited, the third
/// chunked; the metric counts each path.
#[tokio::test(flavor = "multi_thread")]
async fn sendfile_and_copying_viewers_get_identical_bytes() {
    let e = sim(Knobs::default()).await;
    let config = proxy_config(&[&e], "zero_copy: true");
    let server = start_proxy(config.clone());
    let path = format!("/ace/getstream?id={}", content_id(11));
    let mut a = get(server.addr, &path).await;
    assert_eq!(a.status, 200);
    assert!(
        a.header("transfer-encoding").is_none(),
        "zero copy is close-delimited"
    );
    let (a_before, _) = read_for(&mut a, Duration::from_secs(5), 300_000).await;
    server.edge.sessions.set_config({
        let mut c = config.clone();
        c.viewers.zero_copy = false;
        c
    });
    let mut b = get(server.addr, &path).await;
    assert_eq!(b.status, 200);
    assert!(b.header("transfer-encoding").is_none());
    server.edge.sessions.set_config({
        let mut c = config.clone();
        c.viewers.viewer_takeover = false;
        c
    });
    let mut c = get(server.addr, &path).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.header("transfer-encoding"), Some("chunked"));
    let (a_data, b_data, c_data) = tokio::join!(
        read_for(&mut a, Duration::from_secs(3), usize::MAX),
        read_for(&mut b, Duration::from_secs(3), usize::MAX),
        read_for(&mut c, Duration::from_secs(3), usize::MAX)
    );
    let mut a_all = a_before.to_vec();
    a_all.extend_from_slice(&a_data.0);
    for (name, data) in [("send", &b_data.0), ("Pingora", &c_data.0)] {
        let (same, len) = common_run(&a_all, data);
        assert!(len > 500_000, "{name}: only {len} bytes in common");
        assert_eq!(
            same, len,
            "sendfile and {name} viewers differ after {same} bytes"
        );
    }
    let paths = &server.edge.metrics.ts_viewer_paths;
    assert_eq!(paths.with_label_values(&["sendfile", "-"]).get(), 1);
    assert_eq!(paths.with_label_values(&["copy", "disabled"]).get(), 2);
    let (ok, err) = ffmpeg_decode(&a_all);
    assert!(ok, "the sendfile viewer's stream decodes: {err}");
    drop((a, b, c));
    server.stop();
}

/// Viewers at the live edge of a clocked 4 Mbit/s stream are written in batches (the session
/// wakes them at once every `send_batch_bytes` or `send_batch_delay`), on both the `sendfile`
/// and the copying path: about 100 KB or more per send, where a wake per published chunk made
/// about 50 KB sends, twice as many. Every byte still arrives, on the packet grid.
#[tokio::test(flavor = "multi_thread")]
async fn viewers_at_the_live_edge_are_written_in_batches() {
    let e = sim(Knobs::default()).await;
    let config = proxy_config(&[&e], "zero_copy: true");
    let server = start_proxy(config.clone());
    let path = format!("/ace/getstream?id={}", content_id(12));
    let mut a = get(server.addr, &path).await;
    assert_eq!(a.status, 200);
    server.edge.sessions.set_config({
        let mut c = config.clone();
        c.viewers.zero_copy = false;
        c
    });
    let mut b = get(server.addr, &path).await;
    assert_eq!(b.status, 200);
    // Past the joins' bursts: both at the live edge.
    let (warm_a, warm_b) = tokio::join!(
        read_for(&mut a, Duration::from_secs(2), usize::MAX),
        read_for(&mut b, Duration::from_secs(2), usize::MAX)
    );
    let sends = &server.edge.metrics.ts_viewer_sends;
    let counted = || {
        (
            sends.with_label_values(&["sendfile"]).get(),
            sends.with_label_values(&["send"]).get(),
        )
    };
    let parked = &server.edge.metrics.ts_parked_sends;
    let parked_before = parked.get();
    let before = counted();
    let (a_data, b_data) = tokio::join!(
        read_for(&mut a, Duration::from_secs(4), usize::MAX),
        read_for(&mut b, Duration::from_secs(4), usize::MAX)
    );
    let after = counted();
    for (name, data, sent) in [
        ("sendfile", &a_data.0, after.0 - before.0),
        ("send", &b_data.0, after.1 - before.1),
    ] {
        // 4 s of a 4 Mbit/s stream.
        assert!(data.len() > 1_600_000, "{name}: only {} bytes", data.len());
        assert!(sent > 0, "{name}: no sends counted");
        let per_send = data.len() as u64 / sent;
        assert!(
            per_send >= 75_000,
            "{name}: {sent} sends of {per_send} bytes on average in 4 s"
        );
    }
    // The sendfile viewer parks at the live edge: its session's edge writer makes most of its
    // sends (its own task sends only after a keepalive tick or a short send).
    let by_writer = parked.get() - parked_before;
    let sendfiles = after.0 - before.0;
    assert!(
        by_writer * 2 > sendfiles,
        "{by_writer} of {sendfiles} sendfile sends by the edge writer"
    );
    for (warm, data) in [(&warm_a.0, &a_data.0), (&warm_b.0, &b_data.0)] {
        assert_eq!((warm.len() + data.len()) % 188, 0, "on the packet grid");
    }
    drop((a, b));
    server.stop();
}
