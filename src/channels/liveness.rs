//! Which channels play: a background pass over every listed channel every `check_interval`.
//!
//! **Who owns what.** [`Liveness`] (one per process, inside [`super::Channels`]) owns what the
//! last pass found per channel. The pass ([`run`], a task the server starts) goes through the
//! merged list in order. A channel with a live session is alive from what that session knows
//! (nothing is started). Any other is checked with the `/ace/check` machinery
//! ([`ContentChecker`]): a short engine session, its first byte within `check_timeout`, always
//! stopped. The pass holds at most `max_concurrent_checks` check slots (shared with
//! `/ace/check`), and a check never takes the last free engine stream slot: with one or none
//! left, it waits and tries again, and after `SLOT_PATIENCE` records the channel as skipped.
//!
//! **In a fleet** each channel is checked by one member, its id's owner ([`CheckSite`]): a check
//! on any other node would be a second engine session of the id, and an engine stops the
//! earlier session of an id when the id starts again — a peer's viewers'. A channel a peer
//! streams is alive from that peer's session list. What the owners found is asked of them after
//! the pass (their `/proxy/channels`), so every member lists every channel's health.

use super::Channels;
use crate::cluster::{CheckSite, Cluster};
use crate::engines::ContentKey;
use crate::metrics::Metrics;
use crate::streams::check::{CheckResult, ContentChecker};
use crate::streams::Sessions;
use crate::sync::Lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long a check waits for a spare engine slot before the channel is recorded as skipped
/// this pass: a pool full of viewers is the normal case of a busy evening, and the pass must
/// end (its next run checks again).
const SLOT_PATIENCE: Duration = Duration::from_secs(30);

/// How often a check that found no spare slot looks again.
const SLOT_RETRY: Duration = Duration::from_millis(500);

/// Engine stream slots a check leaves free (the one a new viewer needs).
const SLOTS_KEPT_FOR_VIEWERS: usize = 1;

/// How long the first pass in a fleet waits for every member to be seen healthy: a member down
/// for longer is checked around (its ids go to the next member on the ring).
const FLEET_FORMING_PATIENCE: Duration = Duration::from_secs(30);

/// How long a pass waits for the fleet members that own channels to have checked them (their
/// own pass may still run), asking again every [`MEMBER_RETRY`].
const MEMBER_PATIENCE: Duration = Duration::from_secs(300);
const MEMBER_RETRY: Duration = Duration::from_secs(5);

/// The largest `/proxy/channels` answer taken from a member (about 400 bytes a channel).
const MAX_MEMBER_ANSWER: usize = 64 << 20;

/// What the checker last found for one channel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChannelHealth {
    /// It played (a stream byte came, or a live session streams).
    pub alive: bool,
    /// When (unix seconds).
    pub last_checked: u64,
    /// Time from the engine start to the first stream byte.
    pub first_byte_ms: Option<u64>,
    /// Peers the engine saw.
    pub peers: Option<u64>,
    /// The engine's download speed, KB/s (about the stream's bitrate once it plays).
    pub speed_down: Option<u64>,
    /// A live session answered (nothing was started).
    pub from_session: bool,
    /// Why it is not alive.
    pub reason: Option<String>,
    /// The fleet member whose check or session this is (`null`: this node's).
    #[serde(default)]
    pub checked_by: Option<String>,
}

impl ChannelHealth {
    fn of(r: &CheckResult, now: SystemTime) -> Self {
        ChannelHealth {
            alive: r.available,
            last_checked: super::unix_seconds(now),
            first_byte_ms: r.first_byte_ms,
            peers: r.peers,
            speed_down: r.speed_down,
            from_session: r.from_session,
            reason: if r.available { None } else { r.error.clone() },
            checked_by: None,
        }
    }

    /// Alive because fleet member `peer` streams it now.
    fn held_by(peer: std::net::SocketAddr, now: SystemTime) -> Self {
        ChannelHealth {
            alive: true,
            last_checked: super::unix_seconds(now),
            first_byte_ms: None,
            peers: None,
            speed_down: None,
            from_session: true,
            reason: None,
            checked_by: Some(peer.to_string()),
        }
    }
}

/// The last pass's findings, by channel key (see the module docs).
#[derive(Debug, Default)]
pub struct Liveness {
    found: Mutex<HashMap<String, ChannelHealth>>,
    passes: Mutex<u64>,
    /// Signals a finished pass.
    pass_done: tokio::sync::Notify,
}

impl Liveness {
    /// What was last found for `key`.
    pub fn of(&self, key: &ContentKey) -> Option<ChannelHealth> {
        self.found.locked().get(&key.to_string()).cloned()
    }

    /// Passes finished since the start.
    pub fn passes(&self) -> u64 {
        *self.passes.locked()
    }

    /// Waits until `n` passes have finished.
    pub async fn wait_passes(&self, n: u64) {
        loop {
            let notified = self.pass_done.notified();
            if self.passes() >= n {
                return;
            }
            notified.await;
        }
    }

    fn record(&self, key: &ContentKey, health: ChannelHealth) {
        self.found.locked().insert(key.to_string(), health);
    }
}

/// The checker's task, until the process ends: a pass now, then one every `check_interval`
/// (read anew after each pass and at each reload; zero, or no channel: none until a reload
/// says otherwise).
pub async fn run(
    channels: Arc<Channels>,
    checker: Arc<ContentChecker>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    fleet: Option<Arc<Cluster>>,
) {
    let mut last_pass: Option<tokio::time::Instant> = None;
    if let Some(fleet) = &fleet {
        fleet.wait_formed(FLEET_FORMING_PATIENCE).await;
    }
    loop {
        let reloaded = channels.next_reload();
        let interval = channels.current().config().check_interval;
        let due = match (interval.is_zero() || !channels.configured(), last_pass) {
            (true, _) => None,
            (false, None) => Some(tokio::time::Instant::now()),
            (false, Some(at)) => Some(at + interval),
        };
        match due {
            Some(at) if at <= tokio::time::Instant::now() => {
                last_pass = Some(tokio::time::Instant::now());
                pass(&channels, &checker, &sessions, &metrics, fleet.as_deref()).await;
            }
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = reloaded => {}
                }
            }
            None => reloaded.await,
        }
    }
}

/// One pass over every channel.
async fn pass(
    channels: &Arc<Channels>,
    checker: &Arc<ContentChecker>,
    sessions: &Arc<Sessions>,
    metrics: &Arc<Metrics>,
    fleet: Option<&Cluster>,
) {
    let list = channels.list().await;
    let started = std::time::Instant::now();
    let liveness = channels.liveness().clone();
    let mut running = tokio::task::JoinSet::new();
    let mut elsewhere: HashMap<std::net::SocketAddr, Vec<ContentKey>> = HashMap::new();
    for channel in &list {
        if let Some(r) = ContentChecker::from_session(sessions, &channel.key) {
            metrics
                .channel_checks
                .with_label_values(&["from_session"])
                .inc();
            liveness.record(&channel.key, ChannelHealth::of(&r, SystemTime::now()));
            continue;
        }
        if let Some(fleet) = fleet {
            match fleet.check_site(&channel.key.to_string()).await {
                CheckSite::Here => {}
                CheckSite::HeldBy(peer) => {
                    metrics
                        .channel_checks
                        .with_label_values(&["from_session"])
                        .inc();
                    liveness.record(
                        &channel.key,
                        ChannelHealth::held_by(peer, SystemTime::now()),
                    );
                    continue;
                }
                CheckSite::OwnedBy(owner) => {
                    elsewhere
                        .entry(owner)
                        .or_default()
                        .push(channel.key.clone());
                    continue;
                }
            }
        }
        let Some(slot) = checker.slot_owned().await else {
            return; // the semaphore closed: the process is ending
        };
        let (checker, key, liveness, metrics) = (
            checker.clone(),
            channel.key.clone(),
            liveness.clone(),
            metrics.clone(),
        );
        running.spawn(async move {
            let _slot = slot;
            let deadline = tokio::time::Instant::now() + SLOT_PATIENCE;
            let checked = loop {
                match checker.check_leaving(&key, SLOTS_KEPT_FOR_VIEWERS).await {
                    Some(r) => break Some(r),
                    None if tokio::time::Instant::now() >= deadline => break None,
                    None => tokio::time::sleep(SLOT_RETRY).await,
                }
            };
            let outcome = match &checked {
                None => "skipped",
                Some(r) if r.available => "alive",
                Some(_) => "dead",
            };
            metrics.channel_checks.with_label_values(&[outcome]).inc();
            if let Some(r) = checked {
                liveness.record(&key, ChannelHealth::of(&r, SystemTime::now()));
            }
        });
    }
    while running.join_next().await.is_some() {}
    if let Some(fleet) = fleet {
        take_from_members(fleet, elsewhere, &liveness, metrics).await;
    }
    let (mut alive, mut dead, mut unchecked) = (0, 0, 0);
    for c in &list {
        match liveness.of(&c.key) {
            Some(h) if h.alive => alive += 1,
            Some(_) => dead += 1,
            None => unchecked += 1,
        }
    }
    for (status, n) in [("alive", alive), ("dead", dead), ("unchecked", unchecked)] {
        metrics.channels.with_label_values(&[status]).set(n);
    }
    log::info!(
        "channel check: {} channels in {:.1} s: {alive} alive, {dead} not, {unchecked} unchecked",
        list.len(),
        started.elapsed().as_secs_f64()
    );
    *liveness.passes.locked() += 1;
    liveness.pass_done.notify_waiters();
}

/// What a member's `/proxy/channels` says of the channels it checks.
#[derive(serde::Deserialize)]
struct MemberChannels {
    check_passes: u64,
    channels: Vec<MemberChannel>,
}

#[derive(serde::Deserialize)]
struct MemberChannel {
    key: String,
    health: Option<ChannelHealth>,
}

/// Takes what the owners in `elsewhere` found for their channels. A member that has not found
/// some of them yet is asked again while the pass it was running at the first answer goes on
/// (its `check_passes` unchanged), at most [`MEMBER_PATIENCE`]; once that pass is over, what it
/// still lacks (skipped: no engine slot to spare) waits for the next pass. A member that does
/// not answer leaves its channels as they were.
async fn take_from_members(
    fleet: &Cluster,
    mut elsewhere: HashMap<std::net::SocketAddr, Vec<ContentKey>>,
    liveness: &Liveness,
    metrics: &Metrics,
) {
    let give_up = tokio::time::Instant::now() + MEMBER_PATIENCE;
    let mut first_passes: HashMap<std::net::SocketAddr, u64> = HashMap::new();
    loop {
        for (member, keys) in elsewhere.iter_mut() {
            let answer = fleet
                .ask_member(*member, "/proxy/channels", MAX_MEMBER_ANSWER)
                .await
                .and_then(|b| {
                    serde_json::from_slice::<MemberChannels>(&b).map_err(|e| e.to_string())
                });
            let (found, pass_over): (HashMap<String, ChannelHealth>, bool) = match answer {
                Ok(a) => {
                    let first = *first_passes.entry(*member).or_insert(a.check_passes);
                    let found = a
                        .channels
                        .into_iter()
                        .filter_map(|c| Some((c.key, c.health?)))
                        .collect();
                    (found, a.check_passes > first)
                }
                Err(e) => {
                    log::warn!("channel check: member {member} did not say what it found: {e}");
                    keys.clear();
                    continue;
                }
            };
            keys.retain(|key| match found.get(&key.to_string()) {
                Some(h) => {
                    let mut h = h.clone();
                    h.checked_by.get_or_insert_with(|| member.to_string());
                    liveness.record(key, h);
                    metrics
                        .channel_checks
                        .with_label_values(&["from_member"])
                        .inc();
                    false
                }
                None => !pass_over,
            });
        }
        elsewhere.retain(|_, keys| !keys.is_empty());
        if elsewhere.is_empty() || tokio::time::Instant::now() + MEMBER_RETRY > give_up {
            return;
        }
        tokio::time::sleep(MEMBER_RETRY).await;
    }
}
