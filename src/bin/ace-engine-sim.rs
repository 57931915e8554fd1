//! `ace-engine-sim`: simulated AceStream engines for tests, demos and benchmarks.
//!
//! `ace-engine-sim --listen 127.0.0.1:6878 --listen 127.0.0.1:6879` runs two engines in one process.
//! Every flag is a `Knobs` field with dashes (`--burst-bytes` is `burst_bytes`), and
//! `GET /sim/set?burst_bytes=...` takes the same names.

use acestream_edge::sim::{Knobs, SimEngine};
use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Simulated AceStream engine(s) speaking the engine HTTP API"
)]
struct Args {
    /// Address of an engine; repeat for several engines in one process.
    #[arg(long, default_value = "127.0.0.1:6878")]
    listen: Vec<SocketAddr>,
    /// Stream bitrate in bits per second (0 = unlimited).
    #[arg(long, alias = "bitrate", default_value_t = 4_000_000)]
    bitrate_bps: u64,
    /// Delay before the first TS byte, e.g. "5s", "800ms".
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    prebuffer: Duration,
    /// Send the response head before prebuffering (true) or only after it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    headers_before_prebuffer: bool,
    /// Latency of a successful JSON start answer.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    json_latency: Duration,
    /// Answer every start with this JSON error (HTTP 200).
    #[arg(long)]
    start_error: Option<String>,
    /// Answer every start with HTTP 500.
    #[arg(long)]
    http_500: bool,
    /// Stop sending after this many stream bytes, keeping the socket open.
    #[arg(long)]
    stall_after_bytes: Option<u64>,
    /// Close the stream connection after this many bytes.
    #[arg(long)]
    drop_after_bytes: Option<u64>,
    /// Send non-TS bytes after this many stream bytes.
    #[arg(long)]
    garbage_after_bytes: Option<u64>,
    /// playback_url answers 302 to /content/... (true) or streams directly.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    redirect_playback: bool,
    /// Chunked stream body (true) or close-delimited.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    chunked: bool,
    /// Host:port written into returned URLs (default: the request's Host header).
    #[arg(long)]
    public_host: Option<String>,
    /// Bytes sent at line speed right after the prebuffer, like a real engine's cache dump.
    #[arg(long, default_value_t = 0)]
    burst_bytes: u64,
    /// Pause the stream once, after this many bytes, for `--pause`; then catch up at line speed.
    #[arg(long)]
    pause_after_bytes: Option<u64>,
    /// Length of that pause, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// Stream TS null packets only (no clock) instead of the looped H.264 + AAC fixture.
    #[arg(long)]
    null_stream: bool,
    /// Start each stream this many packets into the fixture (mid-GOP, like a real engine).
    #[arg(long, default_value_t = 0)]
    start_packet: usize,
    /// Stream the HEVC fixture (1 s of H.265 video) instead of H.264 + AAC.
    #[arg(long)]
    hevc: bool,
    /// The stat URL's live position stands still (a frozen stream).
    #[arg(long)]
    freeze_livepos: bool,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let a = Args::parse();
    let knobs = Knobs {
        bitrate_bps: a.bitrate_bps,
        prebuffer: a.prebuffer,
        headers_before_prebuffer: a.headers_before_prebuffer,
        json_latency: a.json_latency,
        unknown_latency: Duration::from_secs(4),
        start_error: a.start_error,
        http_500: a.http_500,
        stall_after_bytes: a.stall_after_bytes,
        drop_after_bytes: a.drop_after_bytes,
        garbage_after_bytes: a.garbage_after_bytes,
        redirect_playback: a.redirect_playback,
        chunked: a.chunked,
        public_host: a.public_host,
        burst_bytes: a.burst_bytes,
        pause_after_bytes: a.pause_after_bytes,
        pause: a.pause,
        null_stream: a.null_stream,
        start_packet: a.start_packet,
        hevc: a.hevc,
        freeze_livepos: a.freeze_livepos,
        ..Knobs::default()
    };
    let mut engines = Vec::new();
    for addr in &a.listen {
        let e = SimEngine::start(*addr, knobs.clone()).await?;
        log::info!(
            "simulated engine on http://{} (stats at /sim/stats)",
            e.addr()
        );
        engines.push(e);
    }
    tokio::signal::ctrl_c().await?;
    for e in &engines {
        e.shutdown();
    }
    Ok(())
}
