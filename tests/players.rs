//! Real players through an engine's 20 MB burst: `ffmpeg -re` and mpv read at playback pace and
//! must play the whole time, with no error. Skipped (with a message) when a player is not on PATH;
//! CI installs both.

mod common;

use acestream_edge::sim::Knobs;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .output()
        .or_else(|_| Command::new(tool).arg("--version").output())
        .is_ok()
}

/// Runs a player command to its end; returns (exit ok, wall time, stdout + stderr).
fn play(cmd: &mut Command) -> (bool, Duration, String) {
    let start = Instant::now();
    let out = cmd.output().expect("player runs");
    (
        out.status.success(),
        start.elapsed(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The players on PATH of `ffmpeg` and `mpv` (a missing one is reported as skipped).
fn players_on_path() -> Vec<&'static str> {
    ["ffmpeg", "mpv"]
        .into_iter()
        .filter(|p| {
            let found = on_path(p);
            if !found {
                eprintln!("SKIPPED for {p}: not on PATH (apt-get install {p})");
            }
            found
        })
        .collect()
}

/// `ffmpeg -re -t 20` and `mpv --length=20` on `url` at once: both play the full 20 s and exit
/// cleanly, ffmpeg with no error output.
async fn players_play_20_s(players: Vec<&'static str>, url: String) {
    let mut runs = Vec::new();
    for p in players {
        let url = url.clone();
        runs.push((
            p,
            tokio::task::spawn_blocking(move || match p {
                "ffmpeg" => play(Command::new("ffmpeg").args([
                    "-nostdin", "-v", "error", "-re", "-i", &url, "-t", "20", "-f", "null", "-",
                ])),
                _ => play(Command::new("mpv").args([
                    "--no-config",
                    "--vo=null",
                    "--ao=null",
                    "--length=20",
                    "--really-quiet",
                    &url,
                ])),
            }),
        ));
    }
    for (p, run) in runs {
        let (ok, wall, output) = run.await.unwrap();
        eprintln!("{p}: exit ok {ok}, wall {wall:.1?}, output {output:?}");
        assert!(ok, "{p} failed: {output}");
        assert!(
            wall >= Duration::from_secs(19),
            "{p} stopped after {wall:.1?}: it did not play 20 s"
        );
        if p == "ffmpeg" {
            assert!(output.trim().is_empty(), "ffmpeg printed errors: {output}");
        }
    }
}

/// An engine like a real one: 3 s prebuffer, a 20 MB burst, 4 Mbit/s.
fn bursting_engine() -> Knobs {
    Knobs {
        bitrate_bps: 4_000_000,
        burst_bytes: 20_000_000,
        prebuffer: Duration::from_secs(3),
        ..Knobs::default()
    }
}

/// `ffmpeg -re` and `mpv --length=20`, each its own client of one session behind a 20 MB burst
/// (3 s prebuffer, 4 Mbit/s): both play the full 20 s, ffmpeg prints no error.
#[tokio::test(flavor = "multi_thread")]
async fn real_players_play_through_a_burst() {
    let players = players_on_path();
    if players.is_empty() {
        return;
    }
    let e = sim(bursting_engine()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let url = format!(
        "http://{}/ace/getstream?id={}",
        server.addr,
        content_id(1300)
    );
    players_play_20_s(players, url).await;
    assert_eq!(server.edge.metrics.slow_client_drops.get(), 0);
    assert_eq!(sim_stats(&e).await.getstream_total, 1);
}

/// Players that do not know low-latency HLS play its playlist as a plain one (issue 27): ffmpeg
/// and mpv, 20 s each of a fresh id behind a burst, with `hls_low_latency` on (the playlist
/// lists parts and a preload hint, which they skip).
#[tokio::test(flavor = "multi_thread")]
async fn real_players_play_the_low_latency_playlist() {
    let players = players_on_path();
    if players.is_empty() {
        return;
    }
    let e = sim(bursting_engine()).await;
    let server = start_proxy(proxy_config(&[&e], "hls_low_latency: true"));
    let path = format!("/ace/manifest.m3u8?id={}", content_id(1310));
    let url = format!("http://{}{path}", server.addr);
    let mut r = get(server.addr, &path).await;
    let text = String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap();
    assert!(
        text.contains("#EXT-X-PART:") && text.contains("#EXT-X-PRELOAD-HINT"),
        "{text}"
    );
    players_play_20_s(players, url).await;
    assert_eq!(sim_stats(&e).await.getstream_total, 1);
}

/// VLC as a non-root user (`runuser -u nobody`; VLC refuses root), when it is installed and this
/// runs as root: `cvlc --run-time=20` on `url`; (exit ok, wall time, output).
fn vlc_play_20_s(url: &str) -> Option<(bool, Duration, String)> {
    if !on_path("cvlc") || !on_path("runuser") {
        eprintln!("SKIPPED for VLC: cvlc or runuser not on PATH (apt-get install vlc)");
        return None;
    }
    Some(play(
        Command::new("runuser")
            .args(["-u", "nobody", "--", "env", "HOME=/tmp", "cvlc"])
            .args([
                "--play-and-exit",
                "--run-time=20",
                "--vout=dummy",
                "--aout=dummy",
                "--no-interact",
                url,
            ]),
    ))
}

/// Sends one mpv IPC command (a JSON array) and returns its answer's `data` (null while mpv's
/// socket is not there yet).
async fn mpv_command(socket: &std::path::Path, command: serde_json::Value) -> serde_json::Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let Ok(stream) = tokio::net::UnixStream::connect(socket).await else {
        return serde_json::Value::Null;
    };
    let (read, mut write) = stream.into_split();
    let line = serde_json::json!({ "command": command, "request_id": 1 }).to_string() + "\n";
    write.write_all(line.as_bytes()).await.unwrap();
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
        if v["request_id"] == 1 {
            return v["data"].clone();
        }
    }
    serde_json::Value::Null
}

/// DVR with real players (issue 28). After 70 s of a session, mpv and VLC (as a non-root user)
/// each play `offset=-60` for 20 s without an error, as rewound viewers of it. Meanwhile an mpv
/// with a small cache (it stops reading while paused) is paused for 90 s, three times
/// `client_timeout`: it is never dropped (it goes on from the spill), and after the pause its
/// playback position moves on without a reconnect (one request of its own in all).
#[tokio::test(flavor = "multi_thread")]
async fn real_players_rewind_and_a_paused_mpv_resumes() {
    if !on_path("mpv") {
        eprintln!("SKIPPED: mpv not on PATH (apt-get install mpv)");
        return;
    }
    let e = sim(Knobs::default()).await; // 4 Mbit/s
    let server = start_proxy(proxy_config(&[&e], "dvr_window: 5m\nclient_timeout: 30"));
    let live = format!(
        "http://{}/ace/getstream?id={}",
        server.addr,
        content_id(1320)
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mpv.sock");
    let mut paused_mpv = std::process::Command::new("mpv")
        .args([
            "--no-config",
            "--vo=null",
            "--ao=null",
            "--really-quiet",
            "--cache=yes",
            "--demuxer-max-bytes=2MiB",
            "--demuxer-max-back-bytes=1MiB",
        ])
        .arg(format!("--input-ipc-server={}", socket.display()))
        .arg(&live)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("mpv starts");
    let m = &server.edge.metrics;
    let position = || async {
        mpv_command(&socket, serde_json::json!(["get_property", "time-pos"]))
            .await
            .as_f64()
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(20), || async { position().await > 3.0 }).await,
        "mpv plays"
    );
    mpv_command(&socket, serde_json::json!(["set_property", "pause", true])).await;
    let paused_at = position().await;
    let pause_started = Instant::now();

    // 70 s into the session: two players rewind 60 s.
    tokio::time::sleep(Duration::from_secs(65)).await;
    let rewound = format!("{live}&offset=-60");
    let url = rewound.clone();
    let mpv = tokio::task::spawn_blocking(move || {
        play(Command::new("mpv").args([
            "--no-config",
            "--vo=null",
            "--ao=null",
            "--length=20",
            "--really-quiet",
            &url,
        ]))
    });
    let url = rewound.clone();
    let vlc = tokio::task::spawn_blocking(move || vlc_play_20_s(&url));
    let (ok, wall, output) = mpv.await.unwrap();
    eprintln!("mpv offset=-60: exit ok {ok}, wall {wall:.1?}, output {output:?}");
    assert!(ok && wall >= Duration::from_secs(19), "mpv: {output}");
    if let Some((ok, wall, output)) = vlc.await.unwrap() {
        let tail: String = output.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        eprintln!("VLC offset=-60: exit ok {ok}, wall {wall:.1?}, last lines {tail}");
        assert!(ok && wall >= Duration::from_secs(19), "VLC: {output}");
        assert!(m.dvr_rewound_viewers.get() >= 2);
    } else {
        assert!(m.dvr_rewound_viewers.get() >= 1);
    }

    // The pause has lasted 90 s: play on.
    let left = Duration::from_secs(90).saturating_sub(pause_started.elapsed());
    tokio::time::sleep(left).await;
    mpv_command(&socket, serde_json::json!(["set_property", "pause", false])).await;
    let resumed = wait_until(Duration::from_secs(20), || async {
        position().await > paused_at + 5.0
    })
    .await;
    let now = position().await;
    mpv_command(&socket, serde_json::json!(["quit"])).await;
    let _ = paused_mpv.wait();
    eprintln!(
        "paused mpv: position {paused_at:.1} s before the pause, {now:.1} s after it; continued from the spill {}",
        m.dvr_continued_viewers.get()
    );
    assert!(
        resumed,
        "mpv played on after the pause: {paused_at} -> {now}"
    );
    assert!(
        m.dvr_continued_viewers.get() >= 1,
        "the paused mpv fell off the ring and went on from the spill"
    );
    assert_eq!(m.slow_client_drops.get(), 0, "nobody was dropped");
    // Its own one request, and the two rewound players' (each one).
    let requests = m
        .http_responses
        .with_label_values(&["getstream", "200"])
        .get();
    let rewinders = if on_path("cvlc") { 2 } else { 1 };
    assert_eq!(requests, 1 + rewinders, "mpv did not reconnect");
    assert_eq!(sim_stats(&e).await.getstream_total, 1, "one engine session");
}
