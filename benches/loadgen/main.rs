//! `make bench`: a streaming load generator and the benchmark scenarios, run side by side against
//! the proxy, the simulator serving the same clients directly, and (for fan-out) a minimal
//! `sendfile` fan-out, the floor (`floor.rs`), and the proxy on its copying path.
//!
//! Everything runs on 127.0.0.1 with the release binaries (`ace-engine-sim`, `acestream-edge`) as
//! separate processes, so the CPU and memory of the server under test come from its own
//! `/proc/PID`. Bounded in clients and time. Results: a markdown table on stdout and JSON files in
//! `target/bench/`.
//!
//! Arguments (after `cargo bench --bench loadgen --`): `quick` runs one pass with small N;
//! a scenario name (`fanout`, `sessions`, `start`, `raw`, `slow`, `churn`, `clockless`, `hls`, `dvr`, `fleet`) runs
//! only that one; `fanout10k` (10,000 viewers of 1 Mbit/s, floor and proxy) runs only when named.
//! The fan-out rows add msd_lite when `MSD_LITE_BIN` names its binary (`msd.rs`), and a build of
//! the proxy from before a change when `BENCH_BEFORE_BIN` names one (config keys it knows only).

mod floor;
mod load;
mod msd;
mod procs;
mod scenarios;

use load::Report;
use scenarios::Opts;
use std::sync::Mutex;

fn header() {
    println!("| scenario | target | run | clients | bitrate | aggregate Mbit/s | client min / median Mbit/s | kept up | stalled | disconn. | off-grid | TTFB p50 / p99 ms | CPU % | RSS start / peak / end MiB | note |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

pub fn print_row(r: &Report) {
    println!(
        "| {} | {} | {} | {} | {} | {:.1} | {:.2} / {:.2} | {} | {} | {} | {} | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} / {:.1} | {} |",
        r.scenario,
        r.target,
        r.run,
        r.clients,
        if r.bitrate_bps == 0 { "max".to_string() } else { format!("{:.1}M", r.bitrate_bps as f64 / 1e6) },
        r.aggregate_mbps,
        r.client_min_mbps,
        r.client_median_mbps,
        r.kept_up,
        r.stalled,
        r.disconnected,
        r.misaligned,
        r.ttfb_p50_ms,
        r.ttfb_p99_ms,
        r.cpu_percent,
        r.rss_start_mib,
        r.rss_peak_mib,
        r.rss_end_mib,
        r.note
    );
}

fn main() {
    if floor::run_if_asked() {
        return;
    }
    // `cargo test --all-targets` runs bench binaries too; the load generator only runs under
    // `cargo bench` (which passes `--bench`).
    if !std::env::args().any(|a| a == "--bench") {
        println!("loadgen: run with `make bench` or `cargo bench --bench loadgen`");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let quick = args.iter().any(|a| a == "quick");
    let only: Vec<&String> = args.iter().filter(|a| *a != "quick").collect();
    let want = |name: &str| only.is_empty() || only.iter().any(|a| *a == name);
    let o = Opts {
        quick,
        // BENCH_RUNS=N: every scenario N times (default 2, 1 when quick).
        runs: std::env::var("BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1 } else { 2 }),
    };
    let _ = rlimit::increase_nofile_limit(65536);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::new();
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    header();
    rt.block_on(async {
        if want("attach") {
            scenarios::attach(&mut out).await;
        }
        if want("fanout") {
            scenarios::fanout(&o, &mut out).await;
        }
        if only.iter().any(|a| *a == "fanout10k") {
            scenarios::fanout_10k(&o, &mut out).await;
        }
        if want("sessions") {
            scenarios::many_sessions(&o, &mut out).await;
        }
        if want("start") {
            scenarios::start_times(&o, &mut out).await;
        }
        if want("raw") {
            scenarios::raw(&o, &mut out).await;
        }
        if want("slow") {
            scenarios::slow_clients(&o, &mut out).await;
        }
        if want("churn") {
            scenarios::churn(&o, &mut out).await;
        }
        if want("clockless") {
            scenarios::clockless(&o, &mut out).await;
        }
        if want("hls") {
            scenarios::hls(&o, &mut out).await;
        }
        if want("dvr") {
            scenarios::dvr(&o, &mut out).await;
        }
        if want("fleet") {
            scenarios::fleet(&o, &mut out).await;
        }
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let results = Mutex::new(out);
    let json = serde_json::to_vec_pretty(&*results.lock().unwrap()).unwrap();
    std::fs::write(dir.join("results.json"), json).unwrap();
    println!("\nJSON: {}", dir.join("results.json").display());
}
