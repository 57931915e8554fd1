//! The load: streaming HTTP clients against the proxy or the simulator directly, and what each
//! measured (bytes over time, first byte, stalls, disconnects, bytes off the 188-byte grid).

use super::print_row;
use super::procs::{clk_tck, cpu_ticks, rss_sampler};
use acestream_edge::http1::{self, Response};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

// === clients ===

#[derive(Default, Clone)]
pub struct ClientResult {
    pub status: u16,
    pub ttfb: Option<Duration>,
    pub window_bytes: u64,
    pub max_gap: Duration,
    pub misaligned: u64,
    pub disconnected: bool,
    /// A gap longer than this between pieces is a stall (default 2 s; an HLS client gets a
    /// segment every segment duration, so its limit is three of them).
    pub stall_after: Option<Duration>,
}

/// How a client reaches the stream.
#[derive(Clone, Copy)]
pub enum Target {
    /// `GET /ace/getstream?id=` on the proxy.
    Proxy,
    /// The engine API directly: JSON start, then the playback URL and its redirect.
    Direct,
    /// `GET /ace/manifest.m3u8?id=` on the proxy, then its segments, as an HLS player.
    Hls,
    /// The same as a low-latency HLS player: blocking reloads (`_HLS_msn`, `_HLS_part`), then
    /// every new part.
    HlsLowLatency,
    /// msd_lite's `GET /udp/<group>:<port>` (the id is the source).
    Multicast,
}

pub async fn open(target: Target, addr: SocketAddr, id: &str) -> std::io::Result<Response> {
    match target {
        Target::Proxy | Target::Hls | Target::HlsLowLatency => {
            http1::get(
                addr,
                &format!("/ace/getstream?id={id}"),
                Duration::from_secs(10),
            )
            .await
        }
        Target::Multicast => http1::get(addr, &format!("/udp/{id}"), Duration::from_secs(10)).await,
        Target::Direct => {
            let mut r = http1::get(
                addr,
                &format!(
                    "/ace/getstream?format=json&id={id}&pid={}",
                    uuid::Uuid::new_v4()
                ),
                Duration::from_secs(10),
            )
            .await?;
            let body = r.read_to_end(1 << 16).await?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(std::io::Error::other)?;
            let mut path = acestream_edge::engines::client::path_of(
                v["response"]["playback_url"].as_str().unwrap_or(""),
            )
            .ok_or_else(|| std::io::Error::other("no playback_url"))?;
            loop {
                let r = http1::get(addr, &path, Duration::from_secs(10)).await?;
                if r.status == 302 {
                    path = acestream_edge::engines::client::path_of(
                        r.header("location").unwrap_or(""),
                    )
                    .ok_or_else(|| std::io::Error::other("bad location"))?;
                    continue;
                }
                return Ok(r);
            }
        }
    }
}

/// When a client runs: it connects at `start_at`, reads until `end`, and counts the bytes inside
/// [`from`, `end`].
pub struct Window {
    pub start_at: Instant,
    pub from: Instant,
    pub end: Instant,
}

impl ClientResult {
    /// An HLS viewer got a segment or part `body` at `now` (the one before at `prev`; it
    /// started at `t0`): its first byte, the longest gap, its share of the window, packets off
    /// the 188-byte grid.
    fn got_piece(&mut self, body: &[u8], t0: Instant, prev: Instant, now: Instant, w: &Window) {
        if self.ttfb.is_none() {
            self.ttfb = Some(now - t0);
        } else {
            self.max_gap = self.max_gap.max(now - prev);
        }
        self.window_bytes += window_share(body.len(), prev, now, w);
        self.misaligned += body.chunks(188).filter(|p| p[0] != 0x47).count() as u64;
    }
}

/// The part of `len` bytes that arrived in one piece at `now` (the previous piece at `prev`)
/// that counts in the measurement window: spread over the time since the previous piece. An
/// HLS player gets the stream a segment (or a part) at a time, all viewers of a session at the
/// same instants, so counting whole pieces by their arrival made a window hold five 2 s
/// segments or six depending on where it fell (83 % or 100 % of the bitrate for every viewer).
fn window_share(len: usize, prev: Instant, now: Instant, w: &Window) -> u64 {
    let span = now.saturating_duration_since(prev).as_secs_f64();
    if span <= 0.0 {
        return u64::from(now >= w.from && now <= w.end) * len as u64;
    }
    let from = prev.max(w.from);
    let to = now.min(w.end);
    let inside = to.saturating_duration_since(from).as_secs_f64();
    (len as f64 * inside / span) as u64
}

/// How often an HLS client reloads its playlist (a player reloads about once a segment; the
/// bench's segments are 2 s).
const HLS_RELOAD: Duration = Duration::from_secs(1);
/// The bench's HLS segment length (`hls_segment_seconds` in the `hls` scenario).
pub const HLS_SEGMENT: Duration = Duration::from_secs(2);

/// An HLS viewer's start: waits for its time, then its clock, its result, and its requests
/// (each on a new connection, with the viewer's own User-Agent so each counts as one viewer).
async fn hls_viewer_start(
    addr: SocketAddr,
    agent: String,
    w: &Window,
) -> (Instant, ClientResult, impl Fn(String) -> HlsGet) {
    tokio::time::sleep_until(w.start_at.into()).await;
    let res = ClientResult {
        stall_after: Some(3 * HLS_SEGMENT),
        ..ClientResult::default()
    };
    let opts = http1::GetOptions {
        headers: vec![("User-Agent".into(), agent)],
        ..Default::default()
    };
    let get = move |path: String| {
        let opts = opts.clone();
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            http1::get_on(s, &addr.to_string(), &path, &opts).await
        }) as HlsGet
    };
    (Instant::now(), res, get)
}

/// A playlist's text, or `None` (the viewer counted as disconnected) when the request fails or
/// answers anything but `200`.
async fn playlist_text(
    get: &impl Fn(String) -> HlsGet,
    path: String,
    res: &mut ClientResult,
) -> Option<String> {
    let Ok(mut r) = get(path).await else {
        res.disconnected = true;
        return None;
    };
    res.status = r.status;
    if r.status != 200 {
        res.disconnected = true;
        return None;
    }
    let body = r.read_to_end(1 << 20).await.unwrap_or_default();
    Some(String::from_utf8_lossy(&body).to_string())
}

/// One HLS request of a viewer, in flight.
type HlsGet =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<http1::Response>> + Send>>;

/// One HLS viewer (its own User-Agent, so each counts as one): reloads the playlist, fetches
/// each new segment (starting three from the end, as players do), counts segment bytes.
pub async fn run_hls_client(addr: SocketAddr, id: String, k: usize, w: Window) -> ClientResult {
    let (t0, mut res, get) = hls_viewer_start(addr, format!("loadgen-hls/{k}"), &w).await;
    let mut next_seq: Option<u64> = None;
    let mut last = Instant::now();
    // Until the first piece after the window's end: its share of the window counts too (a
    // player's next segment is in flight when the window closes).
    let hard_end = w.end + 3 * HLS_SEGMENT;
    while last <= w.end && !now_after(hard_end) {
        let Some(text) = playlist_text(&get, format!("/ace/manifest.m3u8?id={id}"), &mut res).await
        else {
            break;
        };
        let uris: Vec<(u64, String)> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let seq = l
                    .split('?')
                    .next()?
                    .rsplit('/')
                    .next()?
                    .trim_end_matches(".ts")
                    .parse()
                    .ok()?;
                Some((seq, l.to_string()))
            })
            .collect();
        let from = *next_seq
            .get_or_insert(uris.len().saturating_sub(3) as u64 + uris.first().map_or(0, |u| u.0));
        for (seq, uri) in uris.into_iter().filter(|(s, _)| *s >= from) {
            let Ok(mut seg) = get(format!("/ace/{uri}")).await else {
                res.disconnected = true;
                return res;
            };
            let body = seg.read_to_end(64 << 20).await.unwrap_or_default();
            let now = Instant::now();
            if seg.status != 200 {
                continue; // left the window meanwhile: a player skips it
            }
            res.got_piece(&body, t0, last, now, &w);
            last = now;
            next_seq = Some(seq + 1);
        }
        tokio::time::sleep(HLS_RELOAD.min(hard_end.saturating_duration_since(Instant::now())))
            .await;
    }
    res
}

/// `(segment, part)` and URI of every `#EXT-X-PART` of a low-latency playlist, in order.
fn parts_of(text: &str) -> Vec<((u64, u64), String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PART:"))
        .filter_map(|attrs| {
            let uri = attrs.split("URI=\"").nth(1)?.split('"').next()?.to_string();
            let name = uri
                .split('?')
                .next()?
                .rsplit('/')
                .next()?
                .trim_end_matches(".ts");
            let (n, p) = name.split_once('.')?;
            Some(((n.parse().ok()?, p.parse().ok()?), uri))
        })
        .collect()
}

/// One low-latency HLS viewer, as hls.js in `lowLatencyMode` is: each reload blocks
/// (`_HLS_msn`/`_HLS_part`) until the part after the newest it has is listed, then it fetches
/// every new part. Starts at the newest independent part.
pub async fn run_ll_hls_client(addr: SocketAddr, id: String, k: usize, w: Window) -> ClientResult {
    let (t0, mut res, get) = hls_viewer_start(addr, format!("loadgen-llhls/{k}"), &w).await;
    // The newest part fetched, and the next one a reload waits for.
    let mut have: Option<(u64, u64)> = None;
    let mut want: Option<(u64, u64)> = None;
    let mut last = Instant::now();
    // Until the first piece after the window's end: its share of the window counts too (a
    // player's next segment is in flight when the window closes).
    let hard_end = w.end + 3 * HLS_SEGMENT;
    while last <= w.end && !now_after(hard_end) {
        let block = match want {
            Some((n, p)) => format!("&_HLS_msn={n}&_HLS_part={p}"),
            None => String::new(),
        };
        let path = format!("/ace/manifest.m3u8?id={id}{block}");
        let Some(text) = playlist_text(&get, path, &mut res).await else {
            break;
        };
        let parts = parts_of(&text);
        let start = match have {
            Some(h) => parts.iter().position(|(at, _)| *at > h),
            // The newest segment start (its first part is independent).
            None => parts.iter().rposition(|((_, p), _)| *p == 0),
        };
        for (at, uri) in parts.into_iter().skip(start.unwrap_or(usize::MAX)) {
            let Ok(mut part) = get(format!("/ace/{uri}")).await else {
                res.disconnected = true;
                return res;
            };
            let body = part.read_to_end(64 << 20).await.unwrap_or_default();
            let now = Instant::now();
            if part.status != 200 {
                continue;
            }
            res.got_piece(&body, t0, last, now, &w);
            last = now;
            have = Some(at);
        }
        // The next part; a segment that is complete without it goes on with the next segment.
        want = have.map(|(n, p)| {
            let complete = text.contains(&format!("/{n}.ts?"));
            if complete && !text.contains(&format!("/{n}.{}.ts", p + 1)) {
                (n + 1, 0)
            } else {
                (n, p + 1)
            }
        });
    }
    res
}

/// One streaming client, reading at most `read_bps` (0: as fast as it can).
pub async fn run_client(
    target: Target,
    addr: SocketAddr,
    id: String,
    w: Window,
    read_bps: u64,
) -> ClientResult {
    let (start_at, window_from, end) = (w.start_at, w.from, w.end);
    tokio::time::sleep_until(start_at.into()).await;
    let t0 = Instant::now();
    let mut res = ClientResult::default();
    let mut r = match open(target, addr, &id).await {
        Ok(r) => r,
        Err(_) => {
            res.disconnected = true;
            return res;
        }
    };
    res.status = r.status;
    let mut offset: u64 = 0;
    let mut last = Instant::now();
    loop {
        let piece = tokio::time::timeout_at(end.into(), r.next_chunk()).await;
        let now = Instant::now();
        match piece {
            Err(_) => break,
            Ok(Ok(Some(b))) => {
                if res.ttfb.is_none() {
                    res.ttfb = Some(now - t0);
                } else {
                    res.max_gap = res.max_gap.max(now - last);
                }
                last = now;
                // Every byte at a 188 multiple of the body must be the sync byte.
                let first = ((188 - offset % 188) % 188) as usize;
                let mut i = first;
                while i < b.len() {
                    if b[i] != 0x47 {
                        res.misaligned += 1;
                    }
                    i += 188;
                }
                offset += b.len() as u64;
                if now >= window_from {
                    res.window_bytes += b.len() as u64;
                }
                if read_bps > 0 {
                    // A player's pace: a token bucket from the first byte on.
                    let due = t0 + Duration::from_secs_f64(offset as f64 * 8.0 / read_bps as f64);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.min(end).into()).await;
                    }
                }
            }
            Ok(_) => {
                res.disconnected = true;
                break;
            }
        }
    }
    if now_after(end) {
        res.max_gap = res.max_gap.max(Instant::now() - last);
    }
    res
}

pub fn now_after(t: Instant) -> bool {
    Instant::now() >= t
}

#[derive(Serialize, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub run: u32,
    pub clients: usize,
    pub bitrate_bps: u64,
    pub aggregate_mbps: f64,
    pub client_min_mbps: f64,
    pub client_median_mbps: f64,
    pub kept_up: usize,
    pub stalled: usize,
    pub disconnected: usize,
    pub misaligned: u64,
    pub ttfb_p50_ms: f64,
    pub ttfb_p99_ms: f64,
    pub cpu_percent: f64,
    pub rss_start_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
    pub note: String,
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

pub struct Load {
    pub target: Target,
    pub addr: SocketAddr,
    pub pid: u32,
    pub ids: Vec<String>,
    pub per_id: usize,
    pub bitrate: u64,
    pub ramp: Duration,
    pub warmup: Duration,
    pub measure: Duration,
    /// Each client reads at most this many bits per second, like a player at its own pace
    /// (0 = as fast as it can).
    pub read_bps: u64,
    /// More servers under test (a fleet): clients spread over `addr` and these, and the CPU and
    /// RSS columns are the sums over `pid` and `more_pids`.
    pub more_addrs: Vec<SocketAddr>,
    /// Their processes (and a front such as HAProxy is not among them: its CPU goes in the note).
    pub more_pids: Vec<u32>,
}

impl Load {
    /// A streaming load with the standard timings: 2 s ramp, 3 s warm-up, 10 s window.
    pub fn streaming(
        target: Target,
        addr: SocketAddr,
        pid: u32,
        ids: Vec<String>,
        per_id: usize,
        bitrate: u64,
    ) -> Load {
        Load {
            target,
            addr,
            pid,
            ids,
            per_id,
            bitrate,
            ramp: Duration::from_secs(2),
            warmup: Duration::from_secs(3),
            measure: Duration::from_secs(10),
            read_bps: 0,
            more_addrs: Vec::new(),
            more_pids: Vec::new(),
        }
    }
}

/// Prints a row and keeps it for the JSON file.
pub fn record(out: &mut Vec<Report>, r: Report) {
    print_row(&r);
    out.push(r);
}

pub async fn run_load(scenario: &str, run: u32, l: Load) -> Report {
    let n = l.ids.len() * l.per_id;
    let t_start = Instant::now() + Duration::from_millis(200);
    let window_from = t_start + l.ramp + l.warmup;
    let end = window_from + l.measure;
    let pids: Vec<u32> = std::iter::once(l.pid)
        .chain(l.more_pids.iter().copied())
        .collect();
    let addrs: Vec<SocketAddr> = std::iter::once(l.addr)
        .chain(l.more_addrs.iter().copied())
        .collect();
    let (stop, sampler) = rss_sampler(pids.clone());
    let mut tasks = Vec::with_capacity(n);
    let mut k = 0;
    for id in &l.ids {
        for _ in 0..l.per_id {
            let at = t_start + l.ramp.mul_f64(k as f64 / n.max(1) as f64);
            let w = Window {
                start_at: at,
                from: window_from,
                end,
            };
            // A fleet's clients come in through "random" servers: a fixed spread, so that one
            // id's clients use different ones.
            let addr = addrs[(k * 7 + k / l.per_id.max(1)) % addrs.len()];
            tasks.push(match l.target {
                Target::Hls => tokio::spawn(run_hls_client(addr, id.clone(), k, w)),
                Target::HlsLowLatency => tokio::spawn(run_ll_hls_client(addr, id.clone(), k, w)),
                _ => tokio::spawn(run_client(l.target, addr, id.clone(), w, l.read_bps)),
            });
            k += 1;
        }
    }
    tokio::time::sleep_until(window_from.into()).await;
    let cpu0: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let w0 = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    let cpu1: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let secs = w0.elapsed().as_secs_f64();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.unwrap_or_default());
    }
    stop.store(true, Ordering::Relaxed);
    let (rss_start, rss_peak, rss_end) = sampler.join().unwrap();
    let measure = l.measure.as_secs_f64();
    let rates: Vec<f64> = results
        .iter()
        .map(|r| r.window_bytes as f64 * 8.0 / measure / 1e6)
        .collect();
    let aggregate: f64 = rates.iter().sum();
    let need = l.bitrate as f64 * 0.95 / 1e6;
    let kept_up = if l.bitrate == 0 {
        0
    } else {
        rates.iter().filter(|r| **r >= need).count()
    };
    let mut ttfb: Vec<f64> = results
        .iter()
        .filter_map(|r| r.ttfb)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let median = percentile(&mut rates.clone(), 0.5);
    Report {
        scenario: scenario.into(),
        target: match l.target {
            Target::Proxy => "proxy",
            Target::Direct => "direct",
            Target::Hls => "proxy (HLS)",
            Target::HlsLowLatency => "proxy (LL-HLS)",
            Target::Multicast => "msd_lite",
        }
        .into(),
        run,
        clients: n,
        bitrate_bps: l.bitrate,
        aggregate_mbps: aggregate,
        client_min_mbps: rates.iter().cloned().fold(f64::INFINITY, f64::min),
        client_median_mbps: median,
        kept_up,
        stalled: results
            .iter()
            .filter(|r| r.max_gap > r.stall_after.unwrap_or(Duration::from_secs(2)))
            .count(),
        disconnected: results
            .iter()
            .filter(|r| r.disconnected || r.status != 200)
            .count(),
        misaligned: results.iter().map(|r| r.misaligned).sum(),
        ttfb_p50_ms: percentile(&mut ttfb.clone(), 0.5),
        ttfb_p99_ms: percentile(&mut ttfb, 0.99),
        cpu_percent: (cpu1 - cpu0) as f64 / clk_tck() / secs * 100.0,
        rss_start_mib: rss_start,
        rss_peak_mib: rss_peak,
        rss_end_mib: rss_end,
        note: String::new(),
    }
}
