//! The simulator's behaviour knobs: one vocabulary for the library API (the field names), the
//! flags (the same names with dashes) and `GET /sim/set?name=value`.

use std::time::Duration;

/// Behaviour knobs of one simulated engine; change them live with [`SimEngine::set_knobs`] or
/// `GET /sim/set?name=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// Stream bitrate in bits per second; 0 = as fast as the socket takes it.
    pub bitrate_bps: u64,
    /// Delay between the playback request and the first TS byte.
    pub prebuffer: Duration,
    /// Send the response head at once and then prebuffer (true), or only after prebuffering.
    pub headers_before_prebuffer: bool,
    /// Latency of a successful `format=json` answer.
    pub json_latency: Duration,
    /// Latency of the `failed to load content` answer for ids that are not 40 hex.
    pub unknown_latency: Duration,
    /// If set, every getstream answers HTTP 200 `{"response": null, "error": <this>}`.
    pub start_error: Option<String>,
    /// If true, getstream answers HTTP 500 text/plain.
    pub http_500: bool,
    /// After this many stream bytes, stop sending but keep the socket open.
    pub stall_after_bytes: Option<u64>,
    /// After this many stream bytes, close the connection (no terminating chunk).
    pub drop_after_bytes: Option<u64>,
    /// After this many stream bytes, send non-TS bytes.
    pub garbage_after_bytes: Option<u64>,
    /// `playback_url` answers 302 to `/content/...` (true) or streams directly.
    pub redirect_playback: bool,
    /// Chunked transfer encoding (true) or close-delimited body.
    pub chunked: bool,
    /// `Content-Type` of the stream.
    pub content_type: String,
    /// Host:port written into returned URLs; default: the request's `Host` header.
    pub public_host: Option<String>,
    /// A session with no reader for this long ends by itself (not counted as a stop).
    pub inactivity_timeout: Duration,
    /// Bytes sent at line speed right after the prebuffer (a real engine dumps its live cache,
    /// about 20 MB), before the stream settles at `bitrate_bps`.
    pub burst_bytes: u64,
    /// After this many stream bytes, stop sending for `pause` (peers starving), then catch up at
    /// line speed to where the bitrate says the stream should be. Once per reader.
    pub pause_after_bytes: Option<u64>,
    /// Length of that pause.
    pub pause: Duration,
    /// Stream TS null packets only (a stream without a clock) instead of the looped fixture.
    pub null_stream: bool,
    /// Start each stream this many packets into the fixture (mid-GOP), as a real engine's
    /// stream starts wherever its cache does.
    pub start_packet: usize,
    /// Stream the HEVC fixture (1 s of H.265 video, `tests/data/hevc.ts`) instead of H.264 + AAC.
    pub hevc: bool,
    /// The stat URL's `livepos.live_last` stands still (an engine whose stream froze).
    pub freeze_livepos: bool,
    /// The stat URL answers "unknown playback session id" for live sessions too.
    pub stat_unknown: bool,
    /// Content ids the network does not have: their start answers `failed to load content`
    /// (as any id does on a real engine when no peer knows it).
    pub unavailable_ids: Vec<String>,
    /// Content ids without peers: their session starts, and its stream never sends a byte.
    pub silent_ids: Vec<String>,
}

impl Knobs {
    /// Sets one knob by its field name from text, as `GET /sim/set?name=value` does: numbers for
    /// counts and sizes, `true`/`false` (or 1/0), durations as seconds or with a unit ("500ms",
    /// "5s"), and `none` (or empty) to clear an optional one.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let none = value.is_empty() || value == "none";
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{value:?} is not a number ({e})"))
        };
        let opt_num = || if none { Ok(None) } else { num().map(Some) };
        let flag = || match value {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(format!("{value:?} is not true or false")),
        };
        let duration = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .map_or_else(
                    || humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}")),
                    Ok,
                )
        };
        let opt_text = || (!none).then(|| value.to_string());
        match name {
            "bitrate_bps" => self.bitrate_bps = num()?,
            "prebuffer" => self.prebuffer = duration()?,
            "headers_before_prebuffer" => self.headers_before_prebuffer = flag()?,
            "json_latency" => self.json_latency = duration()?,
            "unknown_latency" => self.unknown_latency = duration()?,
            "start_error" => self.start_error = opt_text(),
            "http_500" => self.http_500 = flag()?,
            "stall_after_bytes" => self.stall_after_bytes = opt_num()?,
            "drop_after_bytes" => self.drop_after_bytes = opt_num()?,
            "garbage_after_bytes" => self.garbage_after_bytes = opt_num()?,
            "redirect_playback" => self.redirect_playback = flag()?,
            "chunked" => self.chunked = flag()?,
            "content_type" => self.content_type = value.to_string(),
            "public_host" => self.public_host = opt_text(),
            "inactivity_timeout" => self.inactivity_timeout = duration()?,
            "burst_bytes" => self.burst_bytes = num()?,
            "pause_after_bytes" => self.pause_after_bytes = opt_num()?,
            "pause" => self.pause = duration()?,
            "null_stream" => self.null_stream = flag()?,
            "start_packet" => self.start_packet = num()? as usize,
            "hevc" => self.hevc = flag()?,
            "freeze_livepos" => self.freeze_livepos = flag()?,
            "stat_unknown" => self.stat_unknown = flag()?,
            "unavailable_ids" => self.unavailable_ids = id_list(value),
            "silent_ids" => self.silent_ids = id_list(value),
            _ => return Err("unknown knob".into()),
        }
        Ok(())
    }
}

/// A comma-separated list of ids, lower-cased (empty or `none`: none).
fn id_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "none")
        .collect()
}

impl Default for Knobs {
    /// Fast defaults for tests; the binary's flags default to the spec's slower engine timings.
    fn default() -> Self {
        Knobs {
            bitrate_bps: 4_000_000,
            prebuffer: Duration::ZERO,
            headers_before_prebuffer: true,
            json_latency: Duration::ZERO,
            unknown_latency: Duration::from_millis(100),
            start_error: None,
            http_500: false,
            stall_after_bytes: None,
            drop_after_bytes: None,
            garbage_after_bytes: None,
            redirect_playback: true,
            chunked: true,
            content_type: "video/mp2t".to_string(),
            public_host: None,
            inactivity_timeout: Duration::from_secs(60),
            burst_bytes: 0,
            pause_after_bytes: None,
            pause: Duration::ZERO,
            null_stream: false,
            start_packet: 0,
            hevc: false,
            freeze_livepos: false,
            stat_unknown: false,
            unavailable_ids: Vec::new(),
            silent_ids: Vec::new(),
        }
    }
}
