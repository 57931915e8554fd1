//! HLS cut from the shared session: playlist rules over reloads, segments that decode on their
//! own, ffmpeg playing the playlist, TS and HLS viewers sharing one engine session, and a
//! failover shown as one discontinuity.

mod common;

use acestream_edge::sim::Knobs;
use acestream_edge::ts::keyframe::{classify, AccessUnit, Codec};
use acestream_edge::ts::{payload, payload_unit_start, pes_header, pid};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A parsed media playlist.
#[derive(Debug, Default)]
struct Playlist {
    version: Option<u64>,
    target: Option<u64>,
    sequence: Option<u64>,
    discontinuity_sequence: Option<u64>,
    /// (duration, uri, discontinuity before it)
    segments: Vec<(f64, String, bool)>,
}

fn parse(text: &str) -> Playlist {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"), "{text}");
    let mut p = Playlist::default();
    let mut duration = None;
    let mut disc = false;
    let num = |l: &str, tag: &str| l.strip_prefix(tag).and_then(|v| v.parse().ok());
    for l in lines {
        if let Some(v) = num(l, "#EXT-X-VERSION:") {
            p.version = Some(v);
        } else if let Some(v) = num(l, "#EXT-X-TARGETDURATION:") {
            p.target = Some(v);
        } else if let Some(v) = num(l, "#EXT-X-MEDIA-SEQUENCE:") {
            p.sequence = Some(v);
        } else if let Some(v) = num(l, "#EXT-X-DISCONTINUITY-SEQUENCE:") {
            p.discontinuity_sequence = Some(v);
        } else if l == "#EXT-X-DISCONTINUITY" {
            disc = true;
        } else if let Some(d) = l.strip_prefix("#EXTINF:") {
            duration = d.trim_end_matches(',').parse().ok();
        } else if !l.starts_with('#') && !l.is_empty() {
            p.segments.push((
                duration.take().expect("EXTINF before a URI"),
                l.to_string(),
                disc,
            ));
            disc = false;
        }
    }
    p
}

async fn playlist(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut r = get(addr, path).await;
    let body = r.read_to_end(1 << 20).await.unwrap();
    (r.status, String::from_utf8_lossy(&body).to_string())
}

/// The segment's sequence number from its URI (`hls/<generation>/<n>.ts?...`).
fn uri_sequence(uri: &str) -> u64 {
    uri.split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".ts")
        .parse()
        .unwrap()
}

async fn fetch(addr: SocketAddr, uri: &str) -> Vec<u8> {
    let mut r = get(addr, &format!("/ace/{uri}")).await;
    assert_eq!(r.status, 200, "{uri}");
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    let body = r.read_to_end(64 << 20).await.unwrap();
    assert_eq!(body.len(), len);
    body
}

/// Ten reloads over 30 s: version 3, a constant target duration that every EXTINF respects, a
/// media sequence that never goes back and matches the URIs, the configured window. Every
/// segment starts with PAT, PMT and a keyframe, and decodes on its own (video and audio).
#[tokio::test(flavor = "multi_thread")]
async fn playlist_rules_and_segments() {
    let e = sim(Knobs {
        bitrate_bps: 2_000_000,
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(
        &[&e],
        "hls_segment_seconds: 1\nhls_window_segments: 5",
    ));
    let path = format!("/ace/manifest.m3u8?id={}", content_id(2100));
    let mut target = None;
    let mut last_sequence = 0;
    let mut last = Playlist::default();
    let start = Instant::now();
    for reload in 0..10 {
        let (status, text) = playlist(server.addr, &path).await;
        assert_eq!(status, 200, "{text}");
        let p = parse(&text);
        assert_eq!(p.version, Some(3));
        let t = p.target.expect("TARGETDURATION");
        assert_eq!(*target.get_or_insert(t), t, "TARGETDURATION changed");
        let seq = p.sequence.expect("MEDIA-SEQUENCE");
        assert!(seq >= last_sequence, "MEDIA-SEQUENCE went back");
        last_sequence = seq;
        assert!(p.discontinuity_sequence.is_some());
        // Served from the first segment on (a quarter second later while it has fewer than
        // three); the window fills up to the configured 5.
        assert!((1..=5).contains(&p.segments.len()), "the window: {text}");
        for (i, (d, uri, _)) in p.segments.iter().enumerate() {
            assert!(d.round() as u64 <= t, "EXTINF {d} > TARGETDURATION {t}");
            assert_eq!(uri_sequence(uri), seq + i as u64, "{text}");
        }
        last = p;
        if reload < 9 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    assert!(start.elapsed() >= Duration::from_secs(27));
    assert!(last_sequence >= 20, "segments kept coming: {last_sequence}");
    assert_eq!(last.segments.len(), 5, "the configured window");
    for (d, uri, _) in &last.segments {
        assert!(
            (d - 1.04).abs() < 0.05,
            "a 1 s target cuts every GOP (1.04 s): {d}"
        );
        let seg = fetch(server.addr, uri).await;
        let packets: Vec<&[u8]> = seg.chunks(188).collect();
        assert!(packets.iter().all(|p| p[0] == 0x47));
        assert_eq!(pid(packets[0]), 0, "PAT first");
        let video = packets[2];
        assert!(payload_unit_start(video));
        let pl = payload(video).unwrap();
        let mut au = pl[pes_header(pl).unwrap().data_offset..].to_vec();
        for p in packets[3..].iter().filter(|p| pid(p) == pid(video)).take(8) {
            au.extend_from_slice(payload(p).unwrap());
        }
        assert_eq!(
            classify(Codec::H264, &au),
            AccessUnit::RandomAccess,
            "{uri}"
        );
        let streams = ffprobe_streams(&seg);
        assert!(
            streams.contains(&"video".into()) && streams.contains(&"audio".into()),
            "{streams:?}"
        );
        let (ok, errors) = ffmpeg_decode(&seg);
        assert!(ok && errors.is_empty(), "{uri}: {errors}");
    }
}

/// `ffmpeg -v error -i <playlist> -t 20 -f null -` exits 0, prints nothing, and decodes at
/// least 19 s.
#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_plays_the_playlist() {
    ffmpeg_plays(Knobs::default(), 2200).await;
}

/// The same with an HEVC source (the simulator's `hevc` knob): segments cut on IRAP pictures.
#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_plays_an_hevc_playlist() {
    ffmpeg_plays(
        Knobs {
            hevc: true,
            bitrate_bps: 1_000_000,
            ..Knobs::default()
        },
        2210,
    )
    .await;
}

async fn ffmpeg_plays(knobs: Knobs, id: u32) {
    let e = sim(knobs).await;
    let server = start_proxy(proxy_config(&[&e], "hls_segment_seconds: 2"));
    let url = format!(
        "http://{}/ace/manifest.m3u8?id={}",
        server.addr,
        content_id(id)
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i", &url, "-t", "20"])
            .args(["-f", "null", "-", "-progress", "pipe:1"])
            .output()
            .expect("ffmpeg must be installed (make test installs it)")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    let decoded_us: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("out_time_us="))
        .filter_map(|v| v.parse().ok())
        .max()
        .unwrap_or(0);
    assert!(decoded_us >= 19_000_000, "decoded {decoded_us} µs");
    assert_eq!(
        server
            .edge
            .metrics
            .hls_segments
            .with_label_values(&["forced"])
            .get(),
        0,
        "every cut on a keyframe"
    );
}

/// One TS client and two HLS viewers of one id share one engine session; the status shows their
/// protocols; when all three leave, the engine gets exactly one stop.
#[tokio::test(flavor = "multi_thread")]
async fn ts_and_hls_viewers_share_one_engine_session() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(
        &[&e],
        "hls_segment_seconds: 1\nstream_idle_timeout: 1",
    ));
    let id = content_id(2300);
    let mut ts = get(server.addr, &format!("/ace/getstream?id={id}")).await;
    assert_eq!(ts.status, 200);
    read_for(&mut ts, Duration::from_secs(5), 188 * 10).await;
    for agent in ["AppleCoreMedia/1.0", "hls.js"] {
        let mut r = get_with(
            server.addr,
            &format!("/ace/manifest.m3u8?id={id}"),
            acestream_edge::http1::GetOptions {
                headers: vec![("User-Agent".into(), agent.into())],
                ..Default::default()
            },
        )
        .await;
        assert_eq!(r.status, 200);
        r.read_to_end(1 << 20).await.unwrap();
    }
    let (_, v) = get_json(server.addr, &format!("/proxy/sessions/{id}")).await;
    assert_eq!(v["client_count"], 3, "{v}");
    let mut protocols: Vec<&str> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["protocol"].as_str().unwrap())
        .collect();
    protocols.sort();
    assert_eq!(protocols, ["hls", "hls", "ts"]);
    assert!(v["hls_bytes"].as_u64().unwrap() > 0);
    assert_eq!(server.edge.metrics.hls_viewers.get(), 2);
    assert_eq!(
        sim_stats(&e).await.sessions_started,
        1,
        "one engine session"
    );
    drop(ts);
    // HLS viewers stay present three target durations (3 × 3 s) after their last request, then
    // the session lingers 1 s.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            sim_stats(&e).await.stop_calls.get(&id) == Some(&1)
        })
        .await,
        "the engine got its stop"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = sim_stats(&e).await;
    assert_eq!((s.stop_total, s.sessions_started), (1, 1));
    assert_eq!(server.edge.metrics.hls_viewers.get(), 0);
}

/// A failover while an HLS viewer plays: the playlist shows one discontinuity at the splice, and
/// ffmpeg decodes across it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_is_one_discontinuity() {
    let first = sim(Knobs {
        drop_after_bytes: Some(2_500_000),
        ..Knobs::default()
    })
    .await;
    let second = sim(Knobs::default()).await;
    let yaml = format!(
        "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  engines:\n    - {{host: 127.0.0.1, port: {}, forwarded: true}}\n    - {{host: 127.0.0.1, port: {}}}\n  upstream_stall_timeout: 1\n  hls_segment_seconds: 1\n  hls_window_segments: 10\n",
        free_port(),
        first.addr().port(),
        second.addr().port()
    );
    let server = start_proxy(acestream_edge::config::load_str(&yaml).unwrap().acestream);
    let id = content_id(2400);
    let path = format!("/ace/manifest.m3u8?id={id}");
    let url = format!("http://{}{path}", server.addr);
    let player = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i", &url, "-t", "12"])
            .args(["-f", "null", "-"])
            .output()
            .expect("ffmpeg")
    });
    // The first engine drops after 2.5 MB (5 s at 4 Mbit/s); watch the playlist until the
    // splice shows.
    let mut seen = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, text) = playlist(server.addr, &path).await;
        if status == 200 && text.contains("#EXT-X-DISCONTINUITY\n") {
            seen = Some(text);
            break;
        }
    }
    let text = seen.expect("a discontinuity in the playlist");
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
    let out = player.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(sim_stats(&second).await.sessions_started, 1, "failed over");
}

/// Query text never reaches a playlist unescaped (issue 26): without signed URLs a `token=` is
/// not carried at all (an encoded newline and tag stay out); with them, the token is carried
/// percent-encoded and the segments it names play.
#[tokio::test(flavor = "multi_thread")]
async fn query_text_never_reaches_a_playlist() {
    let e = sim(Knobs::default()).await;
    let plain = start_proxy(proxy_config(&[&e], "hls_segment_seconds: 1"));
    let id = content_id(2600);
    let injected = "%0A%23EXT-X-ENDLIST%0Ahttp%3A%2F%2Fevil.example%2Fx.ts";
    let (status, text) = playlist(
        plain.addr,
        &format!("/ace/manifest.m3u8?id={id}&token={injected}"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("ENDLIST"), "{text}");
    assert!(!text.contains("evil"), "{text}");
    assert!(!text.contains("token"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("hls/"), "a foreign line: {line:?}\n{text}");
    }

    let signed = start_proxy(proxy_config(
        &[&e],
        "hls_segment_seconds: 1\nstream_token_secret: s3cret",
    ));
    let id = content_id(2601);
    let (status, v) = get_json(signed.addr, &format!("/proxy/token?id={id}&ttl=60")).await;
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let (status, text) = playlist(
        signed.addr,
        &format!("/ace/manifest.m3u8?id={id}&token={encoded}"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let uri = text
        .lines()
        .find(|l| l.starts_with("hls/"))
        .unwrap_or_else(|| panic!("no segment: {text}"))
        .to_string();
    assert!(uri.ends_with(&format!("&token={encoded}")), "{uri}");
    assert!(!fetch(signed.addr, &uri).await.is_empty());
}

/// A slow engine is not a false 503 (issue 27): the playlist waits for the first stream byte
/// within `empty_stream_timeout` (4 s here, the prebuffer takes 3 s), then for its segments
/// within what cutting them takes, and answers 200 (before, the 4 s covered both and it
/// answered 503 "no stream data" although data had come).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_engine_start_is_not_a_false_503() {
    let e = sim(Knobs {
        prebuffer: Duration::from_secs(3),
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(
        &[&e],
        "hls_segment_seconds: 1\nempty_stream_timeout: 4",
    ));
    let t = std::time::Instant::now();
    let (status, text) = playlist(
        server.addr,
        &format!("/ace/manifest.m3u8?id={}", content_id(2750)),
    )
    .await;
    eprintln!("first playlist after {:?}", t.elapsed());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("#EXTINF"), "{text}");
    assert!(
        t.elapsed() > Duration::from_secs(4),
        "the prebuffer was not waited for"
    );
}

/// How long after the engine's first byte `ffmpeg -i <playlist>` has its first video frame, for a
/// fresh id of an engine with a 3 s prebuffer (and `burst` bytes of live cache after it), with
/// default settings. Measured from ffmpeg's start (the request that starts the session) to its
/// exit after one frame, less the session's `first_byte_ms`.
async fn first_frame_after_first_byte(knobs: Knobs, id: u32) -> (Duration, Duration) {
    let e = sim(knobs).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let id = content_id(id);
    let url = format!("http://{}/ace/manifest.m3u8?id={id}", server.addr);
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i", &url])
            .args(["-map", "0:v:0", "-frames:v", "1", "-f", "null", "-"])
            .output()
            .expect("ffmpeg must be installed (make test installs it)")
    })
    .await
    .unwrap();
    let first_frame = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    let (_, sessions) = get_json(server.addr, "/proxy/sessions").await;
    let first_byte_ms = sessions["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["stream_id"] == id.as_str()))
        .and_then(|x| x["first_byte_ms"].as_u64())
        .unwrap_or_else(|| panic!("the session's first_byte_ms: {sessions}"));
    let first_byte = Duration::from_millis(first_byte_ms);
    (first_byte, first_frame.saturating_sub(first_byte))
}

/// A fresh id's first frame (issue 27): with the engine's 20 MB burst it comes within 1.5 s of
/// the first byte (the burst is read ahead and cut into segments at once), without a burst within
/// 4.5 s (the first segment is one GOP long), and an engine that takes 20 s to prebuffer gets a
/// playlist too (200, no 503), its first frame as soon after its first byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_playlist_plays_soon_after_the_first_byte() {
    let prebuffer = |s: u64, burst: u64| Knobs {
        prebuffer: Duration::from_secs(s),
        burst_bytes: burst,
        ..Knobs::default()
    };
    // The 20 s one prebuffers while the others run, one after the other (each is measured
    // on a machine busy with nothing of this test's but itself).
    let ((burst, plain), slow) = tokio::join!(
        async {
            let burst = first_frame_after_first_byte(prebuffer(3, 20_000_000), 2800).await;
            (
                burst,
                first_frame_after_first_byte(prebuffer(3, 0), 2801).await,
            )
        },
        first_frame_after_first_byte(prebuffer(20, 20_000_000), 2802),
    );
    for (name, (first_byte, frame)) in [
        ("burst", burst),
        ("no burst", plain),
        ("20 s prebuffer", slow),
    ] {
        eprintln!("{name}: first byte after {first_byte:?}, first frame {frame:?} later");
    }
    assert!(burst.1 <= Duration::from_millis(1500), "{burst:?}");
    assert!(plain.1 <= Duration::from_millis(4500), "{plain:?}");
    assert!(slow.0 >= Duration::from_secs(20), "{slow:?}");
    assert!(slow.1 <= Duration::from_millis(1500), "{slow:?}");
}

/// A fresh low-latency playlist on an engine that bursts its 20 MB cache (40 s of stream) after
/// its prebuffer: the first answer comes once the burst is cut, so it is the live window, and a
/// reload right after lists the same window (at most the one segment real time cut meanwhile).
/// Before, the first answer came as the burst's first segments were cut (`[1,3]`), the window
/// slid to `[5,10]` within 25 ms, and hls.js, asking for segment 4, skipped a 4 s hole.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_playlist_waits_for_the_burst_and_its_window_holds() {
    let e = sim(Knobs {
        prebuffer: Duration::from_secs(1),
        burst_bytes: 20_000_000,
        ..Knobs::default()
    })
    .await;
    let server = start_proxy(proxy_config(&[&e], "hls_low_latency: true"));
    let path = format!("/ace/manifest.m3u8?id={}", content_id(2850));
    let (status, first) = playlist(server.addr, &path).await;
    assert_eq!(status, 200, "{first}");
    let first = parse(&first);
    let (status, again) = playlist(server.addr, &path).await;
    assert_eq!(status, 200, "{again}");
    let again = parse(&again);
    let (m1, m2) = (first.sequence.unwrap(), again.sequence.unwrap());
    let last = uri_sequence(&first.segments.last().expect("a segment").1);
    eprintln!(
        "first playlist: {m1}..={last}, the next: {m2}..={}",
        uri_sequence(&again.segments.last().unwrap().1)
    );
    assert!(
        m1 > 1,
        "the first playlist is the burst's end, not its start"
    );
    assert!(m2 <= m1 + 1, "the window slid from {m1} to {m2}");
    assert!(m2 <= last, "segment {last} left the window at once");
}

/// The segment and part a low-latency playlist's preload hint names (`hls/<g>/<n>.<p>.ts`).
fn hint(text: &str) -> (u64, u64, String) {
    let uri = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("a preload hint: {text}"))
        .to_string();
    let name = uri.split('?').next().unwrap().rsplit('/').next().unwrap();
    let mut it = name.trim_end_matches(".ts").split('.');
    let n = it.next().unwrap().parse().unwrap();
    let p = it.next().unwrap().parse().unwrap();
    (n, p, uri)
}

/// Blocking reloads (issue 27, `hls_low_latency`): `_HLS_msn` holds a reload until the
/// playlist lists that segment; a second one from the same address while the first is held
/// (`hls_max_blocking_requests: 1`) is answered at once; a segment more than two ahead is
/// `400`; the preload hint's part, asked before it exists, comes once it is cut.
#[tokio::test(flavor = "multi_thread")]
async fn blocking_reloads_wait_for_what_they_name_within_their_bound() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(
        &[&e],
        "hls_low_latency: true\nhls_segment_seconds: 1\nhls_max_blocking_requests: 1\nlimit_exempt: []",
    ));
    let path = format!("/ace/manifest.m3u8?id={}", content_id(2900));
    let (status, text) = playlist(server.addr, &path).await;
    assert_eq!(status, 200, "{text}");
    let (building, _, _) = hint(&text);

    let (status, body) = playlist(server.addr, &format!("{path}&_HLS_msn={}", building + 3)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = playlist(server.addr, &format!("{path}&_HLS_part=1")).await;
    assert_eq!(status, 400, "{body}");

    // Held until segment `building + 1` is listed (after `building` and `building + 1` are cut).
    let next = building + 1;
    let held_path = format!("{path}&_HLS_msn={next}");
    let addr = server.addr;
    let held = tokio::spawn(async move { playlist(addr, &held_path).await });
    let metrics = &server.edge.metrics;
    let outcome = |o: &str| metrics.hls_blocking_requests.with_label_values(&[o]).get();
    assert!(
        wait_until(Duration::from_secs(5), || async { outcome("held") == 1 }).await,
        "the first reload is held"
    );
    let listed = |text: &str, n: u64| text.contains(&format!("/{n}.ts?"));
    let (status, at_once) = playlist(server.addr, &format!("{path}&_HLS_msn={next}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        outcome("refused"),
        1,
        "the second is over the address's bound"
    );
    assert!(!held.is_finished(), "the held reload still waits");
    assert!(
        !listed(&at_once, next),
        "answered before {next} was cut: {at_once}"
    );
    let (status, text) = held.await.unwrap();
    assert_eq!(status, 200);
    assert!(listed(&text, next), "the held reload lists {next}: {text}");

    // The preload hint's part, asked for before it is cut.
    let (n, p, uri) = hint(&text);
    let mut r = get(server.addr, &format!("/ace/{uri}")).await;
    assert_eq!(r.status, 200, "part {n}.{p}");
    let body = r.read_to_end(16 << 20).await.unwrap();
    assert!(
        !body.is_empty() && ts_aligned(&body),
        "{} bytes",
        body.len()
    );
}
