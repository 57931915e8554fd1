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
