//! The engine simulator answers like `spec/engine-api.md`.

mod common;

use acestream_edge::engines::client::path_of;
use acestream_edge::sim::Knobs;
use common::*;
use std::time::{Duration, Instant};

/// `format=json` answers the documented envelope, field names and types, with the engine's own
/// host in every URL and an infohash that differs from the content id.
#[tokio::test(flavor = "multi_thread")]
async fn json_start_has_spec_fields_and_types() {
    let e = sim(Knobs::default()).await;
    let id = content_id(1);
    let (status, v) = get_json(
        e.addr(),
        &format!("/ace/getstream?format=json&id={id}&pid=p1"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(v["error"].is_null());
    let r = &v["response"];
    let host = format!("http://{}/", e.addr());
    for key in ["playback_url", "stat_url", "command_url"] {
        assert!(
            r[key].as_str().unwrap().starts_with(&host),
            "{key}: {}",
            r[key]
        );
    }
    assert!(r["playback_url"].as_str().unwrap().contains("/ace/r/"));
    assert!(r["stat_url"].as_str().unwrap().contains("/ace/stat/"));
    assert!(r["command_url"].as_str().unwrap().contains("/ace/cmd/"));
    let ih = r["infohash"].as_str().unwrap();
    assert_eq!(ih.len(), 40);
    assert_ne!(ih, id);
    assert_eq!(r["playback_session_id"].as_str().unwrap().len(), 40);
    assert_eq!(r["is_live"], 1, "is_live is an integer");
    assert!(r["is_live"].is_i64() && r["is_encrypted"].is_i64() && r["client_session_id"].is_i64());
    assert_eq!(r["client_session_id"], -1);
}

/// Redirect mode answers 302 to the playback URL, which answers 302 to `/content/...`, which streams TS.
#[tokio::test(flavor = "multi_thread")]
async fn redirect_chain_leads_to_the_stream() {
    let e = sim(Knobs::default()).await;
    let r = get(e.addr(), &format!("/ace/getstream?id={}", content_id(2))).await;
    assert_eq!(r.status, 302);
    let playback = path_of(r.header("location").unwrap()).unwrap();
    assert!(playback.starts_with("/ace/r/"));
    let r = get(e.addr(), &playback).await;
    assert_eq!(r.status, 302);
    let content = path_of(r.header("location").unwrap()).unwrap();
    assert!(content.starts_with("/content/"), "{content}");
    let mut r = get(e.addr(), &content).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let (data, _) = read_for(&mut r, Duration::from_secs(3), 188 * 100).await;
    assert!(data.len() >= 188 * 100);
    assert!(ts_aligned(&data[..188 * 100]));
}

async fn start_json(e: &acestream_edge::sim::SimEngine, id: &str) -> serde_json::Value {
    let (_, v) = get_json(
        e.addr(),
        &format!(
            "/ace/getstream?format=json&id={id}&pid={}",
            uuid::Uuid::new_v4()
        ),
    )
    .await;
    v["response"].clone()
}

/// `method=stop` answers `{"response": "ok"}`, ends the reader, and later calls say the session is unknown.
#[tokio::test(flavor = "multi_thread")]
async fn stop_ends_the_reader() {
    let e = sim(Knobs::default()).await;
    let id = content_id(3);
    let r = start_json(&e, &id).await;
    let mut stream = get(
        e.addr(),
        &path_of(r["playback_url"].as_str().unwrap()).unwrap(),
    )
    .await;
    assert_eq!(stream.status, 302);
    let content = path_of(stream.header("location").unwrap()).unwrap();
    stream = get(e.addr(), &content).await;
    let (first, _) = read_for(&mut stream, Duration::from_secs(3), 188).await;
    assert!(!first.is_empty());
    let cmd = path_of(r["command_url"].as_str().unwrap()).unwrap();
    let (status, v) = get_json(e.addr(), &format!("{cmd}?method=stop")).await;
    assert_eq!(
        (status, v["response"].as_str(), v["error"].is_null()),
        (200, Some("ok"), true)
    );
    // The reader ends (EOF, not a hang).
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(_)) = stream.next_chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "reader did not end after stop");
    let (_, v) = get_json(e.addr(), &format!("{cmd}?method=stop")).await;
    assert_eq!(v["error"], "unknown playback session id");
    let stat = path_of(r["stat_url"].as_str().unwrap()).unwrap();
    let (_, v) = get_json(e.addr(), &stat).await;
    assert_eq!(v["error"], "unknown playback session id");
    let s = sim_stats(&e).await;
    assert_eq!(s.stop_calls.get(&id), Some(&1));
    assert_eq!(s.stop_total, 2);
    assert_eq!((s.active_readers, s.sessions_active), (0, 0));
}

/// Errors come as HTTP 200 with an `error` string; `http_500` and a missing id are real 500s.
#[tokio::test(flavor = "multi_thread")]
async fn errors_are_http_200_with_error() {
    let e = sim(Knobs {
        start_error: Some("failed to load content".into()),
        ..Knobs::default()
    })
    .await;
    let (status, v) = get_json(
        e.addr(),
        &format!("/ace/getstream?format=json&id={}", content_id(4)),
    )
    .await;
    assert_eq!(status, 200);
    assert!(v["response"].is_null());
    assert_eq!(v["error"], "failed to load content");
    e.set_knobs(|k| {
        k.start_error = None;
        k.http_500 = true;
    });
    let r = get(
        e.addr(),
        &format!("/ace/getstream?format=json&id={}", content_id(4)),
    )
    .await;
    assert_eq!(r.status, 500);
    e.set_knobs(|k| k.http_500 = false);
    assert_eq!(
        get(e.addr(), "/ace/getstream?format=json").await.status,
        500
    );
    let (status, v) = get_json(e.addr(), "/ace/getstream?format=json&id=nothex").await;
    assert_eq!(
        (status, v["error"].as_str()),
        (200, Some("failed to load content"))
    );
}

/// A 2 s read at 4 Mbit/s gives 1 MB ± 10 %, and ffprobe finds video and audio in it.
#[tokio::test(flavor = "multi_thread")]
async fn stream_rate_and_content_are_real() {
    let e = sim(Knobs {
        bitrate_bps: 4_000_000,
        ..Knobs::default()
    })
    .await;
    let r = start_json(&e, &content_id(5)).await;
    let mut stream = get(
        e.addr(),
        &path_of(r["playback_url"].as_str().unwrap()).unwrap(),
    )
    .await;
    let content = path_of(stream.header("location").unwrap()).unwrap();
    stream = get(e.addr(), &content).await;
    let (first, _) = read_for(&mut stream, Duration::from_secs(2), 1).await;
    let start = Instant::now();
    let (rest, _) = read_for(&mut stream, Duration::from_secs(2), usize::MAX).await;
    let secs = start.elapsed().as_secs_f64();
    let rate = rest.len() as f64 / secs;
    assert!(
        (450_000.0..=550_000.0).contains(&rate),
        "rate {rate:.0} B/s over {secs:.2} s, expected 500000 ± 10 %"
    );
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let whole = all.len() / 188 * 188;
    assert!(ts_aligned(&all[..whole]));
    let streams = ffprobe_streams(&all[..whole]);
    assert!(
        streams.contains(&"video".to_string()) && streams.contains(&"audio".to_string()),
        "{streams:?}"
    );
}

/// `/sim/stats` counts exactly what was asked; a second concurrent reader is refused and counted.
#[tokio::test(flavor = "multi_thread")]
async fn stats_count_exactly() {
    let e = sim(Knobs {
        redirect_playback: false,
        ..Knobs::default()
    })
    .await;
    let (a, b) = (content_id(6), content_id(7));
    let ra = start_json(&e, &a).await;
    start_json(&e, &a).await; // the newest start wins: the first session of `a` ends
    start_json(&e, &b).await;
    let s = sim_stats(&e).await;
    assert_eq!(s.getstream_calls.get(&a), Some(&2));
    assert_eq!(s.getstream_calls.get(&b), Some(&1));
    assert_eq!(
        (s.getstream_total, s.sessions_started, s.sessions_active),
        (3, 3, 2)
    );
    // The replaced session's URLs are dead.
    let old = get(
        e.addr(),
        &path_of(ra["playback_url"].as_str().unwrap()).unwrap(),
    )
    .await;
    assert_eq!(old.status, 500);
    let rb = start_json(&e, &b).await;
    let playback = path_of(rb["playback_url"].as_str().unwrap()).unwrap();
    let mut first = get(e.addr(), &playback).await;
    assert_eq!(first.status, 200);
    read_for(&mut first, Duration::from_secs(2), 188).await;
    let s = sim_stats(&e).await;
    assert_eq!((s.active_readers, s.playback_requests), (1, 2));
    // A second reader of the same session: the corrupt answer real engines give, counted.
    let second = tokio::net::TcpStream::connect(e.addr()).await.unwrap();
    let r = acestream_edge::http1::get_on(second, "x", &playback, &Default::default()).await;
    assert!(
        r.is_err(),
        "a second reader must get an unparseable response, got {r:?}"
    );
    let s = sim_stats(&e).await;
    assert_eq!((s.second_reader_violations, s.active_readers), (1, 1));
    drop(first);
    assert!(
        wait_until(Duration::from_secs(3), || async {
            sim_stats(&e).await.active_readers == 0
        })
        .await
    );
}

/// The library API and `/sim/set` change knobs live.
#[tokio::test(flavor = "multi_thread")]
async fn knobs_change_live_over_http() {
    let e = sim(Knobs::default()).await;
    let (status, _) = get_json(e.addr(), "/sim/set?start_error=busy&drop_after_bytes=1000").await;
    assert_eq!(status, 200);
    assert_eq!(e.knobs().start_error.as_deref(), Some("busy"));
    assert_eq!(e.knobs().drop_after_bytes, Some(1000));
    let (status, v) = get_json(e.addr(), "/sim/set?no_such_knob=1").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("no_such_knob"));
    // One vocabulary: the knobs' own field names, durations with units, and bad values refused.
    let (status, _) = get_json(
        e.addr(),
        "/sim/set?prebuffer=1.5&pause=500ms&burst_bytes=20000000&chunked=false",
    )
    .await;
    assert_eq!(status, 200);
    let k = e.knobs();
    assert_eq!(k.prebuffer, Duration::from_millis(1500));
    assert_eq!(k.pause, Duration::from_millis(500));
    assert_eq!((k.burst_bytes, k.chunked), (20_000_000, false));
    let (status, v) = get_json(e.addr(), "/sim/set?bitrate_bps=fast").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("bitrate_bps"), "{v}");
    assert_eq!(
        e.knobs().bitrate_bps,
        Knobs::default().bitrate_bps,
        "nothing half-applied"
    );
}

/// Service endpoints answer with the `result` envelope.
#[tokio::test(flavor = "multi_thread")]
async fn service_endpoints() {
    let e = sim(Knobs::default()).await;
    let (_, v) = get_json(e.addr(), "/webui/api/service?method=get_version").await;
    assert_eq!(v["result"]["version"], "3.1.70");
    assert_eq!(v["result"]["code"], 3017000);
    let (_, v) = get_json(e.addr(), "/server/api?api_version=3&method=get_status").await;
    assert_eq!(v["result"]["playlist_loaded"], true);
}

/// Three loops of the simulator's stream are one seamless stream: in ffprobe's packet list every
/// audio and video timestamp follows the one before by exactly one frame (no gap, no overlap at
/// the loop points), ffmpeg decodes it with no error, and mpv (when on PATH) reports no invalid
/// timestamps.
#[test]
fn looped_fixture_is_seamless_for_audio_and_video() {
    use acestream_edge::sim::ts::{TsLoop, FIXTURE, PACKET};
    let data = TsLoop::default().next_packets(FIXTURE.len() / PACKET * 3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loops.ts");
    std::fs::write(&path, &data).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=stream_index,pts,duration",
        ])
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe must be installed (make test installs ffmpeg)");
    assert!(out.status.success());
    let mut per_stream: std::collections::BTreeMap<u32, (Vec<i64>, i64)> = Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(s), Some(pts), Some(dur)) = (
            f.first().and_then(|v| v.parse().ok()),
            f.get(1).and_then(|v| v.parse().ok()),
            f.get(2).and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        let e = per_stream.entry(s).or_default();
        e.0.push(pts);
        e.1 = dur;
    }
    assert_eq!(per_stream.len(), 2, "video and audio");
    for (stream, (mut pts, frame)) in per_stream {
        pts.sort_unstable();
        assert!(pts.len() > 150, "stream {stream}: {} packets", pts.len());
        let steps: Vec<(i64, i64)> = pts
            .windows(2)
            .map(|w| (w[0], w[1] - w[0]))
            .filter(|&(_, d)| d != frame)
            .collect();
        assert!(
            steps.is_empty(),
            "stream {stream} (frame {frame}): uneven steps (pts, step) {steps:?}"
        );
    }
    let (ok, errors) = ffmpeg_decode(&data);
    assert!(ok && errors.is_empty(), "{errors}");
    let mpv = std::process::Command::new("mpv")
        .args([
            "--no-config",
            "--vo=null",
            "--ao=null",
            "--ao-null-untimed",
            "--untimed",
        ])
        .arg("--msg-level=all=warn")
        .arg(&path)
        .output();
    match mpv {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            assert!(!text.contains("Invalid"), "{text}");
        }
        Err(_) => eprintln!("SKIPPED mpv: not on PATH (apt-get install mpv)"),
    }
}
