//! The global buffer budget (`max_buffer_bytes`): all sessions' stream buffers together.
//!
//! Each session's ring keeps what its slowest reader still needs (up to
//! `stream_buffer_max_bytes`), so a few readers that take almost nothing can hold a ring full in
//! every session at once. The [`BudgetKeeper`] task sums what the rings and HLS segmenters hold
//! several times a second; over the budget it **cuts** the readers holding the most buffer behind
//! the live edge, one at a time, until what the rings would then hold fits ([`plan`]). A cut
//! reader no longer holds its ring back (the next publish evicts what only it needed) and leaves
//! at its next step, counted with reason `buffer_budget`. A reader within the ring's minimum
//! (`stream_buffer_size`) of the live edge holds nothing extra and is never cut, nor is the live
//! edge itself ever dropped: what the rings keep for everyone (their minimum, the HLS windows)
//! is the budget's floor.
//!
//! Owned by the server: the keeper is a background service; [`Sessions::buffer_use`] is what
//! `/proxy/status` shows.

use super::client::ClientStats;
use super::{Sessions, StreamSession};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the budget is checked. Fixed: at 20 sessions of 40 Mbit/s the rings grow 100 MB/s
/// together, so a tenth of a second keeps the overshoot near 10 MB; the check itself is a sum
/// over the sessions.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What one session holds, as the planner sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionLoad {
    /// Bytes its ring holds now.
    pub ring: usize,
    /// Bytes held that no reader's cut frees (the HLS window).
    pub fixed: usize,
    /// The ring's minimum (`stream_buffer_size`): kept whoever reads.
    pub ring_min: usize,
    /// Each reader's distance behind the live edge, in bytes.
    pub behind: Vec<u64>,
}

impl SessionLoad {
    /// Bytes the ring would hold if only the readers not in `cut` read it.
    fn ring_without(&self, cut: &[usize]) -> usize {
        let needed = self
            .behind
            .iter()
            .enumerate()
            .filter(|(i, _)| !cut.contains(i))
            .map(|(_, b)| *b as usize)
            .max()
            .unwrap_or(0);
        self.ring.min(needed.max(self.ring_min))
    }
}

/// The readers to cut so that what the sessions hold fits in `budget`, as (session, reader)
/// indexes: the reader furthest behind the live edge first, each cut re-measured (its ring then
/// keeps what its next-slowest reader needs). Readers within their ring's minimum are never
/// chosen; when cutting every other one is not enough, all of those are cut and the rest stays.
pub fn plan(loads: &[SessionLoad], budget: usize) -> Vec<(usize, usize)> {
    let mut cut: Vec<Vec<usize>> = vec![Vec::new(); loads.len()];
    let mut held: Vec<usize> = loads.iter().map(|l| l.ring + l.fixed).collect();
    let mut total: usize = held.iter().sum();
    let mut out = Vec::new();
    while total > budget {
        let worst = loads
            .iter()
            .enumerate()
            .flat_map(|(s, l)| l.behind.iter().enumerate().map(move |(r, b)| (s, r, *b)))
            .filter(|(s, r, b)| !cut[*s].contains(r) && *b as usize > loads[*s].ring_min)
            .max_by_key(|(_, _, b)| *b);
        let Some((s, r, _)) = worst else {
            break;
        };
        cut[s].push(r);
        out.push((s, r));
        let now = loads[s].ring_without(&cut[s]) + loads[s].fixed;
        total = total - held[s] + now;
        held[s] = now;
    }
    out
}

/// The budget and its use, for `/proxy/status`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BufferUse {
    /// `max_buffer_bytes`.
    pub budget_bytes: usize,
    /// What the sessions' rings and HLS segments hold now.
    pub used_bytes: usize,
    /// Readers cut to keep the budget since start.
    pub budget_drops: u64,
}

/// Counts the cuts (shared by the keeper and the status).
#[derive(Debug, Default)]
pub struct BudgetDrops(AtomicU64);

impl BudgetDrops {
    /// Cuts so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the sessions' rings and HLS segments hold together, bytes.
fn held_bytes(sessions: &[Arc<StreamSession>]) -> usize {
    sessions
        .iter()
        .map(|x| x.ring.held_bytes() + x.hls().map_or(0, |h| h.held_bytes()))
        .sum()
}

/// One session's reading clients and its load.
fn load_of(session: &StreamSession, ring_min: usize) -> (SessionLoad, Vec<Arc<ClientStats>>) {
    let edge = session.ring.published_bytes();
    let readers: Vec<Arc<ClientStats>> = session
        .clients()
        .into_iter()
        .filter(|c| c.reading.load(Ordering::Relaxed) && !c.is_cut())
        .collect();
    let held = session.ring.held_bytes();
    let behind: Vec<u64> = readers
        .iter()
        .map(|c| edge.saturating_sub(c.offset.load(Ordering::Relaxed)))
        .collect();
    let ring_min = ring_min.min(held);
    let needed = behind.iter().copied().max().unwrap_or(0) as usize;
    let load = SessionLoad {
        // What the ring holds once it let go of readers cut before (at its next publish): the
        // same reader is never paid for twice.
        ring: held.min(needed.max(ring_min)),
        fixed: session.hls().map_or(0, |h| h.held_bytes()),
        ring_min,
        behind,
    };
    (load, readers)
}

impl Sessions {
    /// The budget, what the sessions hold now and the cuts so far.
    pub fn buffer_use(&self) -> BufferUse {
        let used = held_bytes(&self.list());
        BufferUse {
            budget_bytes: self.config().buffers.max_buffer_bytes,
            used_bytes: used,
            budget_drops: self.budget_drops.get(),
        }
    }

    /// One check of the budget: cuts the readers [`plan`] names (each logged and counted).
    /// Returns how many were cut.
    pub fn keep_buffer_budget(&self) -> usize {
        let config = self.config();
        let sessions = self.list();
        // The cheap sum first (every 100 ms, whatever the load): the readers are only looked at
        // when it is over the budget.
        let held = held_bytes(&sessions);
        if held <= config.buffers.max_buffer_bytes {
            return 0;
        }
        let (loads, readers): (Vec<SessionLoad>, Vec<Vec<Arc<ClientStats>>>) = sessions
            .iter()
            .map(|x| load_of(x, config.buffers.stream_buffer_size))
            .unzip();
        let total: usize = loads.iter().map(|l| l.ring + l.fixed).sum();
        if total <= config.buffers.max_buffer_bytes {
            return 0; // what is over goes once the rings let go of readers cut before
        }
        let cuts = plan(&loads, config.buffers.max_buffer_bytes);
        for (s, r) in &cuts {
            let (session, client) = (&sessions[*s], &readers[*s][*r]);
            client.cut();
            self.budget_drops.0.fetch_add(1, Ordering::Relaxed);
            self.metrics.buffer_budget_drops.inc();
            log::warn!(
                content_id:% = session.content_id,
                client:% = client.addr.map_or("-".to_string(), |a| a.to_string()),
                reason = "buffer_budget";
                "client of {} cut to keep max_buffer_bytes ({} bytes; the sessions held {held}): it was {} bytes behind the live edge",
                session.content_id,
                config.buffers.max_buffer_bytes,
                loads[*s].behind[*r]
            );
        }
        if cuts.is_empty() {
            log::debug!(
                "buffers hold {total} bytes, over max_buffer_bytes ({}), but no reader holds more than its ring's minimum",
                config.buffers.max_buffer_bytes
            );
        }
        // The rings let go of what only the cut readers needed at their next publish (their
        // slowest reader is otherwise refreshed once a second, see `ingest`).
        let mut touched: Vec<usize> = cuts.iter().map(|(s, _)| *s).collect();
        touched.dedup();
        for s in touched {
            let x = &sessions[s];
            x.ring.needed_from(x.readers().slowest());
            x.ring.wake();
        }
        cuts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(ring: usize, behind: &[u64]) -> SessionLoad {
        SessionLoad {
            ring,
            fixed: 0,
            ring_min: 100,
            behind: behind.to_vec(),
        }
    }

    /// Under the budget nothing is cut; over it the readers furthest behind go first, only as
    /// many as needed, and a reader near the edge never.
    #[test]
    fn cuts_the_furthest_behind_until_it_fits() {
        let loads = vec![load(1000, &[10, 1000]), load(800, &[800, 500, 5])];
        assert!(plan(&loads, 1800).is_empty());
        // Cutting the 1000-behind reader leaves that ring at its minimum (100): 900 in all.
        assert_eq!(plan(&loads, 1000), vec![(0, 1)]);
        // Then 800: the second ring falls to 500 (its next reader); then 500: to its minimum.
        assert_eq!(plan(&loads, 600), vec![(0, 1), (1, 0)]);
        assert_eq!(plan(&loads, 599), vec![(0, 1), (1, 0), (1, 1)]);
        // The readers near the edge (10, 5 bytes) are never cut, even when the rest is not
        // enough.
        assert_eq!(plan(&loads, 0), vec![(0, 1), (1, 0), (1, 1)]);
    }

    /// What a cut frees is what the ring then still needs: a second reader as far behind keeps
    /// the ring, so it is cut too; fixed bytes (HLS) are never freed.
    #[test]
    fn a_cut_frees_only_what_no_other_reader_needs() {
        let mut a = load(1000, &[1000, 990]);
        a.fixed = 300;
        assert_eq!(plan(&[a.clone()], 1295), vec![(0, 0)]);
        assert_eq!(plan(&[a.clone()], 1289), vec![(0, 0), (0, 1)]);
        assert_eq!(plan(&[a.clone()], 1000), vec![(0, 0), (0, 1)]);
        assert_eq!(plan(&[a], 100), vec![(0, 0), (0, 1)]);
    }
}
