//! Engine scoring and selection: pure functions of a snapshot, so they are easy to test.
//!
//! The spec's algorithm (`proxy-api.md`, "Engine Selection Algorithm"): only healthy engines are
//! candidates; score = +1000 if forwarded, −10 per active stream, −1000 if unhealthy; the highest
//! score wins. We add two rules a production pool needs: engines at `max_streams_per_engine` are
//! not candidates, and equal scores rotate so that equal engines share load.

use std::net::SocketAddr;

/// Bonus of an engine whose P2P port is forwarded.
pub const FORWARDED_BONUS: i64 = 1000;
/// Cost of each active stream.
pub const STREAM_COST: i64 = 10;
/// Penalty of an unhealthy engine (it is not a candidate anyway; the score is shown).
pub const UNHEALTHY_PENALTY: i64 = 1000;
/// Penalty of an engine that recently failed a live session (see `engine_failure_penalty`).
pub const FAILURE_PENALTY: i64 = 500;

/// One engine as the selector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its address.
    pub addr: SocketAddr,
    /// Its P2P port is forwarded.
    pub forwarded: bool,
    /// The health check (and the orchestrator, if any) say it works.
    pub healthy: bool,
    /// It may be chosen at all (not ruled out by the orchestrator).
    pub eligible: bool,
    /// Streams on it: this proxy's sessions plus what the orchestrator reports.
    pub active_streams: usize,
    /// It failed a live session recently.
    pub recently_failed: bool,
    /// Streams on every engine behind the same VPN (its own streams without a VPN).
    pub node_load: usize,
    /// When this proxy last gave it a session.
    pub last_assigned: Option<std::time::Instant>,
}

/// The spec's score.
pub fn score(c: &Candidate) -> i64 {
    let mut s = -(c.active_streams as i64) * STREAM_COST;
    if c.forwarded {
        s += FORWARDED_BONUS;
    }
    if !c.healthy {
        s -= UNHEALTHY_PENALTY;
    }
    if c.recently_failed {
        s -= FAILURE_PENALTY;
    }
    s
}

/// Why no engine was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCandidate {
    /// The pool is empty.
    #[error("no engines known")]
    Empty,
    /// Every engine is unhealthy.
    #[error("no healthy engine ({0} known)")]
    NoneHealthy(usize),
    /// Every healthy engine is at its stream limit.
    #[error("every healthy engine is at max_streams_per_engine ({0})")]
    AllFull(usize),
}

impl From<NoCandidate> for crate::error::NoEngine {
    fn from(e: NoCandidate) -> Self {
        match e {
            NoCandidate::Empty => crate::error::NoEngine::NoneKnown,
            NoCandidate::NoneHealthy(n) => crate::error::NoEngine::NoneHealthy(n),
            NoCandidate::AllFull(n) => crate::error::NoEngine::AllFull(n),
        }
    }
}

/// Index of the engine to use: the highest score among healthy engines below `max_streams`;
/// among equal scores the one on the least loaded VPN node, then the one given a session
/// longest ago, then the `rotation`-th (mod their count), so equal engines take turns. With
/// `panic` and no healthy engine, the eligible unhealthy ones are tried instead (a probe verdict
/// can be stale: an engine that came up a second ago still reads "unhealthy" until its next
/// probe, and answering 503 to everyone meanwhile would be a total outage).
pub fn choose(
    candidates: &[Candidate],
    max_streams: usize,
    rotation: usize,
    panic: bool,
) -> Result<usize, NoCandidate> {
    if candidates.is_empty() {
        return Err(NoCandidate::Empty);
    }
    let eligible = |i: &usize| candidates[*i].eligible;
    let mut healthy: Vec<usize> = (0..candidates.len())
        .filter(eligible)
        .filter(|&i| candidates[i].healthy)
        .collect();
    if healthy.is_empty() && panic {
        healthy = (0..candidates.len()).filter(eligible).collect();
    }
    if healthy.is_empty() {
        return Err(NoCandidate::NoneHealthy(candidates.len()));
    }
    let open: Vec<usize> = healthy
        .into_iter()
        .filter(|&i| candidates[i].active_streams < max_streams)
        .collect();
    let best = open
        .iter()
        .map(|&i| score(&candidates[i]))
        .max()
        .ok_or(NoCandidate::AllFull(max_streams))?;
    // Ties: the less loaded VPN node, then the engine given a session longest ago (as the Go
    // orchestrator does), then take turns.
    let tied: Vec<usize> = open
        .into_iter()
        .filter(|&i| score(&candidates[i]) == best)
        .collect();
    let key = |i: usize| (candidates[i].node_load, candidates[i].last_assigned);
    let first = tied
        .iter()
        .map(|&i| key(i))
        .min()
        .ok_or(NoCandidate::AllFull(max_streams))?;
    let tied: Vec<usize> = tied.into_iter().filter(|&i| key(i) == first).collect();
    Ok(tied[rotation % tied.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(port: u16, forwarded: bool, healthy: bool, active_streams: usize) -> Candidate {
        Candidate {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            forwarded,
            healthy,
            eligible: true,
            active_streams,
            recently_failed: false,
            node_load: active_streams,
            last_assigned: None,
        }
    }

    /// Two idle forwarded engines and one regular: a forwarded one wins, whatever the rotation.
    #[test]
    fn forwarded_engines_win() {
        let pool = [
            c(1, true, true, 0),
            c(2, true, true, 0),
            c(3, false, true, 0),
        ];
        for rotation in 0..4 {
            let i = choose(&pool, 10, rotation, false).unwrap();
            assert!(pool[i].forwarded);
        }
    }

    /// Forwarded with 5 streams against forwarded with 2: the one with 2.
    #[test]
    fn fewer_streams_win() {
        let pool = [c(1, true, true, 5), c(2, true, true, 2)];
        assert_eq!(choose(&pool, 10, 0, false), Ok(1));
        assert_eq!(score(&pool[0]), 950);
        assert_eq!(score(&pool[1]), 980);
    }

    /// Forwarded but unhealthy against regular and healthy: health takes priority.
    #[test]
    fn health_beats_forwarding() {
        let pool = [c(1, true, false, 0), c(2, false, true, 0)];
        assert_eq!(choose(&pool, 10, 0, false), Ok(1));
        assert_eq!(score(&pool[0]), 0);
    }

    /// An engine that just failed a session loses to an equal one that did not.
    #[test]
    fn recent_failure_lowers_the_score() {
        let mut failed = c(1, true, true, 0);
        failed.recently_failed = true;
        let pool = [failed, c(2, true, true, 3)];
        assert_eq!(choose(&pool, 10, 0, false), Ok(1));
    }

    /// Engines at the stream limit are not candidates.
    #[test]
    fn full_engines_are_skipped() {
        let pool = [c(1, true, true, 10), c(2, false, true, 3)];
        assert_eq!(choose(&pool, 10, 0, false), Ok(1));
        assert_eq!(
            choose(&[c(1, true, true, 10)], 10, 0, false),
            Err(NoCandidate::AllFull(10))
        );
    }

    /// Equal engines take turns.
    #[test]
    fn ties_rotate() {
        let pool = [
            c(1, false, true, 1),
            c(2, false, true, 1),
            c(3, false, true, 1),
        ];
        let picks: Vec<usize> = (0..6)
            .map(|r| choose(&pool, 10, r, false).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    /// With panic on and no healthy engine, the least-bad eligible one is tried; an engine the
    /// orchestrator rules out never is.
    #[test]
    fn panic_tries_unhealthy_engines_when_none_is_healthy() {
        let pool = [c(1, false, false, 3), c(2, false, false, 0)];
        assert_eq!(choose(&pool, 10, 0, true), Ok(1), "the least loaded");
        assert_eq!(
            choose(&pool, 10, 0, false),
            Err(NoCandidate::NoneHealthy(2))
        );
        let mut out = c(3, true, false, 0);
        out.eligible = false;
        assert_eq!(
            choose(&[out.clone()], 10, 0, true),
            Err(NoCandidate::NoneHealthy(1))
        );
        let mut pool = vec![out, c(4, false, true, 5)];
        pool[0].healthy = true;
        assert_eq!(
            choose(&pool, 10, 0, true),
            Ok(1),
            "ineligible even when healthy"
        );
    }

    /// Equal scores: the engine on the less loaded VPN node wins, then the one assigned longest
    /// ago.
    #[test]
    fn ties_go_to_the_quieter_vpn_node_then_the_oldest_assignment() {
        let mut a = c(1, false, true, 0);
        let mut b = c(2, false, true, 0);
        a.node_load = 5; // its VPN already carries five streams on other engines
        b.node_load = 1;
        for r in 0..4 {
            assert_eq!(choose(&[a.clone(), b.clone()], 10, r, false), Ok(1));
        }
        a.node_load = 1;
        let now = std::time::Instant::now();
        a.last_assigned = Some(now);
        b.last_assigned = Some(now + std::time::Duration::from_secs(1));
        for r in 0..4 {
            assert_eq!(
                choose(&[a.clone(), b.clone()], 10, r, false),
                Ok(0),
                "a was assigned earlier"
            );
        }
    }

    /// An empty pool and an all-unhealthy pool are typed errors.
    #[test]
    fn no_engine_is_a_typed_error() {
        assert_eq!(choose(&[], 10, 0, false), Err(NoCandidate::Empty));
        assert_eq!(
            choose(&[c(1, true, false, 0)], 10, 0, false),
            Err(NoCandidate::NoneHealthy(1))
        );
    }
}
