//! Paced ingest: the session reads its engine no faster than the stream's own clock allows.
//!
//! A real engine, once it has prebuffered, dumps its live cache at line speed (about 20 MB) and
//! only then runs at the stream's rate. Players read at playback pace. If the ring took the burst
//! as fast as it came, it would turn over in a fraction of a second and every player would fall
//! off its tail. So each chunk is released into the ring on the stream's clock:
//!
//! ```text
//!   engine ──burst──▶ [ TCP backpressure: the rest waits in the engine ]
//!                          │  read only when the next chunk is due
//!                          ▼
//!   ring edge ≤ wall clock + live_lead (in stream time, from the PCR)
//!   ring tail ≥ stream_buffer_seconds behind the edge  ──▶  players, each at its own pace
//! ```
//!
//! **The model.** A token bucket in stream time. `due` is the wall-clock instant at which the
//! ring's live edge "plays". Releasing a chunk whose PCR advanced `d` seconds moves `due` on by
//! `d`; a chunk may be released once `due + d − live_lead ≤ now`, so the edge never runs more than
//! `live_lead` ahead of real time. When the upstream is late (a stall, a pause), `due` is clamped
//! to now: lateness earns no credit, so a catch-up after a pause also arrives at most `live_lead`
//! at a time, and a clock that runs slow against the wall clock cannot pile up credit that a later
//! burst would spend at line speed. (A clock running *fast* makes the engine's backlog grow; the
//! players, which play on the same clock, could not go faster anyway.)
//!
//! **Re-anchoring.** The clock restarts without charging time when the PCR jumps (backwards, or
//! forwards by more than [`CLOCK_JUMP`]), when a PCR carries the `discontinuity_indicator`, and at
//! a failover splice. Each is counted by its [`Reanchor`] reason.
//!
//! **No clock.** A stream without a usable PCR (none within [`CLOCK_LOST_BYTES`]) is released
//! without a schedule; the upstream task then paces it by its readers instead (never evicting a
//! chunk the most advanced client has not taken).
//!
//! The session's media time (seconds, continuous across re-anchors) comes from here too; the ring
//! stamps each chunk with it, so lag and retention are measured in stream time.
//!
//! The pacer is a pure state machine: time is passed in, so its tests need no clock.

use crate::ts::{wrapping_delta, PcrSample, PCR_HZ, PCR_WRAP};
use std::time::{Duration, Instant};

/// A PCR step larger than this is a jump (a source loop, a splice the muxer did not flag), not
/// elapsed time. Fixed: PCRs must come at least every 100 ms (ISO 13818-1), so even a 64 KB chunk
/// at 100 kbit/s (5 s) stays below it.
pub const CLOCK_JUMP: Duration = Duration::from_secs(10);

/// With no PCR for this many bytes the stream is treated as having no clock. Fixed: ten times the
/// 100 ms PCR interval even at 80 Mbit/s.
pub const CLOCK_LOST_BYTES: u64 = 10 << 20;

/// A stream (or a spliced-in upstream) that shows no PCR in its first this many bytes has no
/// clock; before that, chunks pass unscheduled. Fixed: two 100 ms PCR intervals at 80 Mbit/s,
/// many at usual bitrates, so a real clock is always found first.
pub const CLOCK_FIRST_BYTES: u64 = 2 << 20;

/// Why the clock was restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reanchor {
    /// A PCR carried the `discontinuity_indicator`.
    Discontinuity,
    /// The PCR went backwards or jumped forwards by more than [`CLOCK_JUMP`].
    Jump,
    /// A new upstream was spliced in after a failover.
    Splice,
    /// The upstream was late by more than `live_lead` (a stall or pause); the schedule was moved
    /// up to now.
    Late,
}

impl Reanchor {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reanchor::Discontinuity => "discontinuity",
            Reanchor::Jump => "jump",
            Reanchor::Splice => "splice",
            Reanchor::Late => "late",
        }
    }
}

/// The pacer's decision for one chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    /// When the chunk may enter the ring; `None` when the stream has no clock (reader-paced).
    pub release_at: Option<Instant>,
    /// Media time at the chunk's start, seconds.
    pub media_start: f64,
    /// Media time at its end.
    pub media_end: f64,
    /// Set if the clock was restarted at this chunk.
    pub reanchor: Option<Reanchor>,
}

/// Paces one session's ingest. Owned by the session's upstream task.
#[derive(Debug)]
pub struct Pacer {
    live_lead: Duration,
    /// The last PCR on the clock PID, while the stream has a clock.
    last_pcr: Option<u64>,
    /// Wall-clock instant at which the released edge plays.
    due: Option<Instant>,
    bytes_since_pcr: u64,
    media: f64,
    last_admit: Option<Instant>,
    splice_pending: bool,
    /// No PCR seen yet since the start or a splice, and fewer than [`CLOCK_FIRST_BYTES`].
    first_clock_pending: bool,
}

impl Pacer {
    /// A pacer letting the edge run at most `live_lead` ahead of real time.
    pub fn new(live_lead: Duration) -> Self {
        Pacer {
            live_lead,
            last_pcr: None,
            due: None,
            bytes_since_pcr: 0,
            media: 0.0,
            last_admit: None,
            splice_pending: false,
            first_clock_pending: true,
        }
    }

    /// The next chunk comes from a new upstream: restart the clock there.
    pub fn splice(&mut self) {
        self.last_pcr = None;
        self.splice_pending = true;
        self.first_clock_pending = true;
        self.bytes_since_pcr = 0;
    }

    /// True once the stream showed no clock: its ingest is paced by its readers.
    pub fn clockless(&self) -> bool {
        !self.has_clock() && !self.first_clock_pending
    }

    /// True while the stream has a usable clock.
    pub fn has_clock(&self) -> bool {
        self.last_pcr.is_some()
    }

    /// How far the released edge runs ahead of real time at `now` (zero without a clock).
    pub fn lead(&self, now: Instant) -> Duration {
        self.edge_due()
            .map_or(Duration::ZERO, |due| due.saturating_duration_since(now))
    }

    /// When the edge admitted last plays, while the stream has a clock.
    pub fn edge_due(&self) -> Option<Instant> {
        self.due.filter(|_| self.has_clock())
    }

    /// Decides when a chunk of `len` bytes whose last PCR sample is `pcr` (and whose PCRs
    /// carried a discontinuity flag if `discontinuity`) may be released, at wall time `now`.
    pub fn admit(
        &mut self,
        now: Instant,
        len: usize,
        pcr: Option<PcrSample>,
        discontinuity: bool,
    ) -> Admission {
        let since_last = self
            .last_admit
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        self.last_admit = Some(now);
        let mut reanchor = None;
        let mut step = 0.0;
        match pcr {
            Some(sample) => {
                self.bytes_since_pcr = 0;
                match self.last_pcr {
                    None if self.splice_pending => reanchor = Some(Reanchor::Splice),
                    None => {}
                    Some(_) if discontinuity => reanchor = Some(Reanchor::Discontinuity),
                    Some(last) => {
                        let d = wrapping_delta(last, sample.pcr, PCR_WRAP);
                        let jump = CLOCK_JUMP.as_secs() as i64 * PCR_HZ as i64;
                        if d < 0 || d > jump {
                            reanchor = Some(Reanchor::Jump);
                        } else {
                            step = d as f64 / PCR_HZ as f64;
                        }
                    }
                }
                if self.last_pcr.is_none() {
                    // A (re)started clock: the schedule restarts from now.
                    self.due = None;
                }
                self.splice_pending = false;
                self.first_clock_pending = false;
                self.last_pcr = Some(sample.pcr);
            }
            None => {
                self.bytes_since_pcr += len as u64;
                if self.bytes_since_pcr > CLOCK_LOST_BYTES {
                    self.last_pcr = None;
                    self.due = None;
                }
            }
        }
        let media_start = self.media;
        if !self.has_clock() && self.first_clock_pending {
            if self.bytes_since_pcr <= CLOCK_FIRST_BYTES {
                // Not known yet whether the stream has a clock (its first chunk may hold no
                // PCR): let it through unscheduled.
                return Admission {
                    release_at: Some(now),
                    media_start,
                    media_end: media_start,
                    reanchor,
                };
            }
            self.first_clock_pending = false;
        }
        if !self.has_clock() {
            // No clock: media time follows the wall clock; readers pace the ingest.
            self.media += since_last.as_secs_f64();
            return Admission {
                release_at: None,
                media_start,
                media_end: self.media,
                reanchor,
            };
        }
        let mut due = self.due.unwrap_or(now);
        if due < now {
            if now - due > self.live_lead && reanchor.is_none() {
                reanchor = Some(Reanchor::Late);
            }
            due = now;
        }
        let step_d = Duration::from_secs_f64(step);
        let release_at = (due + step_d)
            .checked_sub(self.live_lead)
            .map_or(now, |t| t.max(now));
        self.due = Some(due + step_d);
        self.media += step;
        Admission {
            release_at: Some(release_at),
            media_start,
            media_end: self.media,
            reanchor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAD: Duration = Duration::from_secs(2);

    fn pcr(seconds: f64) -> Option<PcrSample> {
        Some(PcrSample {
            offset: 0,
            pcr: (seconds * PCR_HZ as f64) as u64 % PCR_WRAP,
            discontinuity: false,
        })
    }

    /// Feeds a burst of 100 ms chunks all available at once; returns each release offset (s).
    fn burst(p: &mut Pacer, t0: Instant, from: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let a = p.admit(t0, 1000, pcr(from + i as f64 * 0.1), false);
                (a.release_at.unwrap() - t0).as_secs_f64()
            })
            .collect()
    }

    /// A burst: the first `live_lead` of stream goes in at once, the rest one stream second per
    /// wall second.
    #[test]
    fn burst_is_released_on_the_stream_clock() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        let r = burst(&mut p, t0, 100.0, 101);
        assert!(
            r[..21].iter().all(|x| *x == 0.0),
            "first 2 s at once: {r:?}"
        );
        assert!(
            (r[30] - 1.0).abs() < 1e-6,
            "chunk at 3 s plays at 1 s: {}",
            r[30]
        );
        assert!(
            (r[100] - 8.0).abs() < 1e-6,
            "10 s of stream by 8 s: {}",
            r[100]
        );
        assert!(
            (p.lead(t0 + Duration::from_secs(8)) - LEAD)
                .as_secs_f64()
                .abs()
                < 1e-6
        );
    }

    /// After a pause, lateness earns no credit: the catch-up also comes `live_lead` at a time,
    /// and a long pause counts as a late re-anchor.
    #[test]
    fn lateness_earns_no_credit() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        let _ = burst(&mut p, t0, 0.0, 10); // 0.9 s of stream at t0
        let later = t0 + Duration::from_secs(6); // 5 s pause
        let a = p.admit(later, 1000, pcr(1.0), false);
        assert_eq!(a.reanchor, Some(Reanchor::Late));
        assert_eq!(a.release_at, Some(later));
        let rest: Vec<f64> = (1..60)
            .map(|i| {
                let a = p.admit(later, 1000, pcr(1.0 + i as f64 * 0.1), false);
                (a.release_at.unwrap() - later).as_secs_f64()
            })
            .collect();
        assert!(
            (rest[58] - 4.0).abs() < 1e-6,
            "6.9 s of stream plays 6 s after the pause: {}",
            rest[58]
        );
    }

    /// Jumps and discontinuities restart the clock without charging time; the media time stays
    /// continuous.
    #[test]
    fn jumps_and_discontinuities_reanchor() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        p.admit(t0, 1000, pcr(50.0), false);
        let a = p.admit(t0, 1000, pcr(50.5), false);
        assert_eq!((a.media_start, a.media_end), (0.0, 0.5));
        let back = p.admit(t0, 1000, pcr(3.0), false);
        assert_eq!(back.reanchor, Some(Reanchor::Jump));
        assert_eq!(back.media_end, 0.5);
        let fwd = p.admit(t0, 1000, pcr(3.0 + 60.0), false);
        assert_eq!(fwd.reanchor, Some(Reanchor::Jump));
        let flagged = p.admit(t0, 1000, pcr(63.1), true);
        assert_eq!(flagged.reanchor, Some(Reanchor::Discontinuity));
        let normal = p.admit(t0, 1000, pcr(63.6), false);
        assert_eq!(normal.reanchor, None);
        assert!((normal.media_end - 1.0).abs() < 1e-9);
        p.splice();
        let spliced = p.admit(t0, 1000, pcr(7.0), false);
        assert_eq!(spliced.reanchor, Some(Reanchor::Splice));
        assert!((spliced.media_end - 1.0).abs() < 1e-9);
    }

    /// The PCR wrapping around (every 26.5 h) is elapsed time, not a jump.
    #[test]
    fn pcr_wrap_is_not_a_jump() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        let wrap_s = PCR_WRAP as f64 / PCR_HZ as f64;
        p.admit(t0, 1000, pcr(wrap_s - 0.05), false);
        let a = p.admit(t0, 1000, pcr(0.05), false);
        assert_eq!(a.reanchor, None);
        assert!((a.media_end - 0.1).abs() < 1e-3);
    }

    /// Without PCRs the stream has no clock: no schedule, media time on the wall clock. Its
    /// first chunks pass unscheduled until CLOCK_FIRST_BYTES show no PCR.
    #[test]
    fn no_pcr_means_reader_paced() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        let first = p.admit(t0, 65_424, None, false);
        assert_eq!(first.release_at, Some(t0), "not known yet: unscheduled");
        assert!(!p.clockless());
        let a = p.admit(t0, CLOCK_FIRST_BYTES as usize, None, false);
        assert_eq!(a.release_at, None);
        assert!(p.clockless());
        let b = p.admit(t0 + Duration::from_millis(500), 65_424, None, false);
        assert_eq!(b.release_at, None);
        assert!((b.media_end - 0.5).abs() < 1e-9);
        // A clock that disappears for CLOCK_LOST_BYTES turns into no clock.
        let mut p = Pacer::new(LEAD);
        p.admit(t0, 188, pcr(1.0), false);
        assert!(p.has_clock());
        let mut sent = 0;
        while sent <= CLOCK_LOST_BYTES {
            p.admit(t0, 65_424, None, false);
            sent += 65_424;
        }
        assert!(!p.has_clock());
        assert_eq!(p.admit(t0, 188, None, false).release_at, None);
    }
}
