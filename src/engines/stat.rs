//! A session's statistics from its engine (`GET <stat_url>`), and what they say about a stream
//! that is stuck although bytes may still flow.
//!
//! The poll sends `skip_player_activity=1`: a monitoring poll must not keep alive a session its
//! players left (engine-api.md §4). Field units are the engine's: speeds in KB/s, byte counts in
//! bytes, `livepos` values as numeric text (or numbers, on some versions).

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The engine's answer for an unknown or ended session.
pub const UNKNOWN_SESSION: &str = "unknown playback session id";

/// One stat sample.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct EngineStat {
    /// `prebuf`, `dl`, `idle`, ... (absent in the first, empty answer: `idle`).
    #[serde(default)]
    pub status: Option<String>,
    /// Connected peers.
    #[serde(default)]
    pub peers: Option<u64>,
    /// Download speed, KB/s (`speed_down`, or `speedDown` on some versions).
    #[serde(default, alias = "speedDown")]
    pub speed_down: Option<u64>,
    /// Upload speed, KB/s.
    #[serde(default, alias = "speedUp")]
    pub speed_up: Option<u64>,
    /// Bytes downloaded.
    #[serde(default)]
    pub downloaded: Option<u64>,
    /// Bytes uploaded.
    #[serde(default)]
    pub uploaded: Option<u64>,
    /// The live position's newest piece time (`livepos.live_last`), when the engine reports it.
    #[serde(
        default,
        rename = "livepos",
        deserialize_with = "live_last",
        skip_serializing
    )]
    pub live_last: Option<u64>,
}

/// `livepos.live_last` as a number, whether the engine sent text or a number.
fn live_last<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Option<serde_json::Value> = Option::deserialize(d)?;
    Ok(v.and_then(|l| match l.get("live_last")? {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }))
}

/// Why the stats say a stream is stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    /// `livepos.live_last` did not advance for this long while the status was `dl`.
    Livepos(Duration),
    /// The status stayed `prebuf` this long.
    Prebuffering(Duration),
}

/// Watches the samples of one engine session for a stuck stream. Time is passed in.
#[derive(Debug)]
pub struct StuckDetector {
    stuck_after: Duration,
    prebuf_limit: Duration,
    live: Option<(u64, Instant)>,
    prebuf_since: Option<Instant>,
}

impl StuckDetector {
    /// Stuck when `livepos` stands still `stuck_after` in `dl`, or `prebuf` lasts `prebuf_limit`.
    pub fn new(stuck_after: Duration, prebuf_limit: Duration) -> Self {
        StuckDetector {
            stuck_after,
            prebuf_limit,
            live: None,
            prebuf_since: None,
        }
    }

    /// Looks at a sample taken at `now`.
    pub fn observe(&mut self, now: Instant, s: &EngineStat) -> Option<Stuck> {
        match s.status.as_deref() {
            Some("prebuf") => {
                self.live = None;
                let since = *self.prebuf_since.get_or_insert(now);
                let long = now.duration_since(since);
                (long >= self.prebuf_limit).then_some(Stuck::Prebuffering(long))
            }
            Some("dl") => {
                self.prebuf_since = None;
                let pos = s.live_last?;
                match self.live {
                    Some((last, since)) if last == pos => {
                        let long = now.duration_since(since);
                        (long >= self.stuck_after).then_some(Stuck::Livepos(long))
                    }
                    _ => {
                        self.live = Some((pos, now));
                        None
                    }
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(status: &str, live_last: Option<u64>) -> EngineStat {
        EngineStat {
            status: Some(status.into()),
            live_last,
            ..EngineStat::default()
        }
    }

    #[test]
    fn parses_the_documented_answer() {
        let v: EngineStat = serde_json::from_str(
            r#"{"status": "dl", "peers": 4, "speed_down": 257, "speedUp": 29, "downloaded": 3276800,
                "livepos": {"live_last": "1700000000", "pos": "1700000000"}, "is_live": 1}"#,
        )
        .unwrap();
        assert_eq!(
            (
                v.status.as_deref(),
                v.peers,
                v.speed_down,
                v.speed_up,
                v.live_last
            ),
            (
                Some("dl"),
                Some(4),
                Some(257),
                Some(29),
                Some(1_700_000_000)
            )
        );
        let empty: EngineStat = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, EngineStat::default());
    }

    /// A livepos that stands still in `dl` is stuck after the timeout; one that moves is not; a
    /// long prebuffer is stuck after its own limit.
    #[test]
    fn stuck_streams_are_told_apart() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = StuckDetector::new(Duration::from_secs(30), Duration::from_secs(20));
        for s in 0..100 {
            assert_eq!(
                d.observe(at(s), &stat("dl", Some(1000 + s))),
                None,
                "moving"
            );
        }
        // 1099 was first seen at 99 s: stuck from 129 s on.
        assert_eq!(d.observe(at(100), &stat("dl", Some(1099))), None);
        assert_eq!(d.observe(at(128), &stat("dl", Some(1099))), None);
        assert_eq!(
            d.observe(at(129), &stat("dl", Some(1099))),
            Some(Stuck::Livepos(Duration::from_secs(30)))
        );
        let mut d = StuckDetector::new(Duration::from_secs(30), Duration::from_secs(20));
        assert_eq!(d.observe(at(0), &stat("prebuf", None)), None);
        assert_eq!(d.observe(at(19), &stat("prebuf", None)), None);
        assert_eq!(
            d.observe(at(20), &stat("prebuf", None)),
            Some(Stuck::Prebuffering(Duration::from_secs(20)))
        );
        assert_eq!(
            d.observe(at(21), &stat("dl", None)),
            None,
            "no livepos: nothing to judge"
        );
    }
}
