//! Several edge nodes as one fleet: one engine session per content id fleet-wide.
//!
//! Every node knows the same members (`acestream.cluster.self` and `peers`, names resolved every
//! `health_check_interval`) and health-checks them with `GET /healthz`. The **owner** of a content
//! id is the first healthy member on Pingora's Ketama ring ([`KetamaHashing`]) from the id's
//! hash, so every node agrees on it without talking, and a member that comes or goes moves only
//! its own share of ids.
//!
//! A session is never moved while it has clients: each node also polls its peers' session lists
//! (`/proxy/cluster`), and an id some healthy peer already **holds** goes to that peer, whoever
//! owns it now. Before a node starts an engine session itself it asks its peers afresh, so the
//! decision rests on their state of that moment (that same answer gives the peers' per-engine
//! stream counts to the engine pool, which then counts the whole fleet's load).
//!
//! [`Cluster::place`] answers where a request is served: here, or forwarded to one member. The
//! route then proxies it there through Pingora (`mode: proxy`) or answers `302` (`mode:
//! redirect`). A forwarded request carries the [`VIA_HEADER`] with the members it went through;
//! it is never forwarded to one of them again, and a forwarded request is only ever forwarded once
//! more to a member that holds the session. Owned by the proxy plugin; the background
//! [`ClusterService`] keeps the members, their health and their sessions current.

mod poll;

use poll::MemberDiscovery;
pub use poll::{ClusterService, PollScope};

use crate::access::TrustedPeers;
use crate::config::{ClusterConfig, ClusterMode};
use crate::engines::EnginePool;
use crate::http1::{self, GetOptions};
use crate::metrics::Metrics;
use crate::sync::{Lock, ReadWrite};
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The header a forwarding node adds: the members (as `ip:port`) a request went through.
pub const VIA_HEADER: &str = "x-acestream-edge-via";

/// How many distinct members the ring is walked for an owner: more than any fleet has, so the
/// search ends at the first healthy one and never gives up early.
const OWNER_SEARCH: usize = 1024;

/// Largest session list accepted from a peer (about 40 000 sessions).
const MAX_PEER_STATE_BYTES: usize = 4 << 20;

/// Where a request for a content id is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// By this node.
    Local,
    /// By another member.
    Forward {
        /// The member.
        to: SocketAddr,
        /// Why that member.
        because: Because,
    },
}

/// Why a request goes to another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Because {
    /// It owns the id on the hash ring (and nobody holds a session of it).
    Owner,
    /// It already holds the id's session (sessions are never moved while they have clients).
    Holder,
}

impl Because {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Because::Owner => "owner",
            Because::Holder => "holder",
        }
    }
}

/// One session as a node lists it to its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSession {
    /// The session's key: the content id, or `infohash:<value>`.
    pub id: String,
    /// The engine's address, once one was chosen.
    pub engine: Option<SocketAddr>,
}

/// What a peer last told us.
#[derive(Debug, Clone)]
struct PeerState {
    /// Its sessions: key → engine (looked up on every request for an id not held here).
    sessions: HashMap<String, Option<SocketAddr>>,
    at: Instant,
}

/// `GET /proxy/cluster`: this node's view of the fleet.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node's address, as configured.
    #[serde(rename = "self")]
    pub self_addr: String,
    /// `proxy` or `redirect`.
    pub mode: String,
    /// Every member, this node included.
    pub members: Vec<MemberView>,
    /// The sessions this node holds.
    pub sessions: Vec<HeldSession>,
    /// For `?id=`: the member that owns the id on the ring now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// For `?id=`: the member that would serve a request for it now (a holder wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
}

/// One member in [`ClusterView`].
#[derive(Debug, Serialize, Deserialize)]
pub struct MemberView {
    /// `ip:port`.
    pub address: String,
    /// Passing its health check (this node: serving).
    pub healthy: bool,
    /// This node.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Sessions it held at its last answer (not for this node's own entry).
    pub sessions: Option<usize>,
    /// Age of that answer, in seconds.
    pub state_age_seconds: Option<f64>,
    /// Why it is skipped although it passes its health check (its session list did not come
    /// within `peer_timeout`, or a forwarded request got no answer in time); `null` when not.
    #[serde(default)]
    pub failing: Option<String>,
}

/// The fleet as this node sees it.
pub struct Cluster {
    config: ClusterConfig,
    lb: Arc<LoadBalancer<KetamaHashing>>,
    members: Arc<Members>,
    states: RwLock<HashMap<SocketAddr, PeerState>>,
    /// Members a forwarded connection could not reach, until when they are skipped (the next
    /// health check may not have run yet).
    unreachable: Mutex<HashMap<SocketAddr, Instant>>,
    /// Members that pass `/healthz` but hang the rest (no session list within `peer_timeout`,
    /// a forwarded request without an answer in time), with why: skipped like an unhealthy
    /// member (the ids they own go to the next one on the ring) until a session-list poll of
    /// theirs answers again.
    failing: Mutex<HashMap<SocketAddr, String>>,
    /// One fresh poll of the peers at a time; the number counts the polls done.
    refresh: tokio::sync::Mutex<u64>,
    token: Arc<crate::access::AdminToken>,
    engines: Arc<EnginePool>,
    metrics: Arc<Metrics>,
    healthy_before: Mutex<Option<BTreeSet<SocketAddr>>>,
    /// True once the first pass resolved and checked the members: until then a node does not
    /// know the owners, and a request waits for it (at most one health interval).
    ready: tokio::sync::watch::Sender<bool>,
}

/// How long a background check waits for the fleet's first member pass. Fixed: the pass is
/// bounded by `peer_timeout` per step and takes seconds at worst; this only guards against a
/// fleet that never forms.
const CHECK_SITE_PATIENCE: Duration = Duration::from_secs(60);

/// How often [`Cluster::wait_formed`] looks at the members' health again (the health pass
/// itself runs every `health_check_interval`).
const FORMED_RECHECK: Duration = Duration::from_millis(250);

/// Where a background check of an id (the channel checker's) belongs in the fleet. Only the
/// id's owner starts an engine session for it: a check on a second node would be a second engine
/// session of the id, and an engine stops the earlier session of an id when it starts again
/// (engine-api.md §9), which could be a peer's viewers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckSite {
    /// This node owns the id and no peer streams it: check it here.
    Here,
    /// A peer streams it now: it plays, and nothing is started.
    HeldBy(SocketAddr),
    /// Another member owns it and checks it; its finding is asked for.
    OwnedBy(SocketAddr),
}

/// The resolved members, shared by the discovery and the cluster.
#[derive(Debug, Default)]
struct Members {
    /// This node's own resolved address.
    me: RwLock<Option<SocketAddr>>,
    /// IP addresses of every member, trusted for `X-Forwarded-For` and the via header.
    trusted: Arc<TrustedPeers>,
}

impl Cluster {
    /// The fleet of `config`; `trusted` is shared with the access rules (peers' forwarded
    /// client addresses are believed).
    pub fn new(
        config: ClusterConfig,
        admin_token: Arc<crate::access::AdminToken>,
        engines: Arc<EnginePool>,
        metrics: Arc<Metrics>,
        trusted: Arc<TrustedPeers>,
    ) -> Arc<Cluster> {
        let members = Arc::new(Members {
            me: RwLock::new(None),
            trusted,
        });
        let mut entries = vec![config.self_addr.clone()];
        for p in &config.peers {
            if !entries.contains(p) {
                entries.push(p.clone());
            }
        }
        let discovery = MemberDiscovery {
            entries,
            self_entry: config.self_addr.clone(),
            timeout: config.peer_timeout,
            last: Mutex::new(HashMap::new()),
            members: members.clone(),
        };
        let mut backends = Backends::new(Box::new(discovery));
        let mut check = HttpHealthCheck::new("acestream-edge", false);
        if let Ok(mut req) =
            pingora::http::RequestHeader::build("GET", b"/healthz", None).map(Box::new)
        {
            let _ = req.append_header("Host", "acestream-edge");
            check.req = *req;
        }
        check.peer_template.options.connection_timeout = Some(config.peer_timeout);
        check.peer_template.options.read_timeout = Some(config.peer_timeout);
        backends.set_health_check(Box::new(check));
        let lb = LoadBalancer::<KetamaHashing>::from_backends(backends);
        Arc::new(Cluster {
            config,
            lb: Arc::new(lb),
            members,
            states: RwLock::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
            refresh: tokio::sync::Mutex::new(0),
            token: admin_token,
            engines,
            metrics,
            healthy_before: Mutex::new(None),
            ready: tokio::sync::watch::channel(false).0,
        })
    }

    /// `proxy` or `redirect`.
    pub fn mode(&self) -> ClusterMode {
        self.config.mode
    }

    /// This node's resolved address (once resolved).
    pub fn me(&self) -> Option<SocketAddr> {
        *self.members.me.read_locked()
    }

    /// Longest wait for a peer.
    pub fn peer_timeout(&self) -> Duration {
        self.config.peer_timeout
    }

    /// The members' IP addresses, for the access rules.
    pub fn trusted(&self) -> Arc<TrustedPeers> {
        self.members.trusted.clone()
    }

    /// Whether `ip` is a member's (its via header and `X-Forwarded-For` are believed).
    pub fn is_member_ip(&self, ip: std::net::IpAddr) -> bool {
        self.members.trusted.contains(ip)
    }

    fn is_me(&self, addr: SocketAddr) -> bool {
        self.me() == Some(addr)
    }

    /// A member this node may send requests to now: healthy, not failing, reachable at its last
    /// try, not us.
    fn usable(&self, addr: SocketAddr, healthy: bool) -> bool {
        if self.is_me(addr) || !healthy || self.failing.locked().contains_key(&addr) {
            return false;
        }
        let mut unreachable = self.unreachable.locked();
        match unreachable.get(&addr) {
            Some(until) if *until > Instant::now() => false,
            Some(_) => {
                unreachable.remove(&addr);
                true
            }
            None => true,
        }
    }

    fn healthy(&self, addr: SocketAddr) -> bool {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .find(|b| b.addr.as_inet() == Some(&addr))
            .is_some_and(|b| backends.ready(b))
    }

    /// The member that owns `key` on the ring among the healthy ones (this node counts as
    /// healthy while it serves).
    pub fn owner(&self, key: &str) -> Option<SocketAddr> {
        let b = self
            .lb
            .select_with(key.as_bytes(), OWNER_SEARCH, |b, healthy| {
                b.addr
                    .as_inet()
                    .is_some_and(|a| self.is_me(*a) || self.usable(*a, healthy))
            })?;
        b.addr.as_inet().copied()
    }

    /// A usable peer that holds `key`'s session (from the last answers), not one in `via`.
    fn holder(&self, key: &str, via: &[SocketAddr]) -> Option<SocketAddr> {
        let states = self.states.read_locked();
        let mut holders: Vec<SocketAddr> = states
            .iter()
            .filter(|(_, st)| st.sessions.contains_key(key))
            .map(|(addr, _)| *addr)
            .filter(|a| !via.contains(a))
            .collect();
        drop(states);
        holders.retain(|a| self.usable(*a, self.healthy(*a)));
        // Two holders would be a split (only a race of starts makes one): the ring's owner
        // first, else the lowest address, so every node picks the same.
        let owner = self.owner(key);
        holders.sort_by_key(|a| (Some(*a) != owner, *a));
        holders.first().copied()
    }

    /// Where a request for session `key` is served. `local`: this node has the session now;
    /// `via`: the members the request already went through (empty unless a member forwarded it).
    pub async fn place(&self, key: &str, local: bool, via: &[SocketAddr]) -> Placement {
        if local {
            return Placement::Local;
        }
        let mut ready = self.ready.subscribe();
        if !*ready.borrow() {
            let wait = self.config.health_check_interval + self.config.peer_timeout;
            let _ = tokio::time::timeout(wait, ready.wait_for(|r| *r)).await;
        }
        let holder = |because| {
            self.holder(key, via)
                .map(|to| Placement::Forward { to, because })
        };
        if let Some(p) = holder(Because::Holder) {
            return p;
        }
        if via.is_empty() {
            if let Some(owner) = self.owner(key).filter(|o| !self.is_me(*o)) {
                return Placement::Forward {
                    to: owner,
                    because: Because::Owner,
                };
            }
        }
        // This node is about to start the session: ask the peers afresh whether one holds it
        // (their state of this moment, not of the last poll), which also brings the fleet's
        // engine load up to date for the engine choice.
        self.refresh_states(PollScope::Usable).await;
        holder(Because::Holder).unwrap_or(Placement::Local)
    }

    /// Where the channel checker checks `key` (see [`CheckSite`]). Waits for the first member
    /// pass (ownership is unknown before it; a background pass can wait, unlike a request), at
    /// most [`CHECK_SITE_PATIENCE`].
    pub async fn check_site(&self, key: &str) -> CheckSite {
        let mut ready = self.ready.subscribe();
        if !*ready.borrow() {
            let _ = tokio::time::timeout(CHECK_SITE_PATIENCE, ready.wait_for(|r| *r)).await;
        }
        if let Some(peer) = self.holder(key, &[]) {
            return CheckSite::HeldBy(peer);
        }
        match self.owner(key) {
            Some(owner) if !self.is_me(owner) => CheckSite::OwnedBy(owner),
            _ => CheckSite::Here,
        }
    }

    /// Waits until every member is usable as seen from here (healthy and answering), at most
    /// `max`. The channel checker's first pass waits for it: members started together do not
    /// see each other at their first health check, and a member that does not know its peers
    /// yet owns every id and would check them all (a second engine session of each).
    pub async fn wait_formed(&self, max: Duration) {
        let until = tokio::time::Instant::now() + max;
        loop {
            let backends = self.lb.backends();
            let members = backends.get_backend();
            let formed = !members.is_empty()
                && members.iter().all(|b| {
                    b.addr
                        .as_inet()
                        .is_some_and(|a| self.is_me(*a) || self.usable(*a, backends.ready(b)))
                });
            if formed || tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep(FORMED_RECHECK).await;
        }
    }

    /// `GET path` of member `addr`'s admin API, with the fleet's admin token: its body if it
    /// answered `200` within `peer_timeout` and `max_bytes`.
    pub async fn ask_member(
        &self,
        addr: SocketAddr,
        path: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, String> {
        let token = (*self.token.get()).clone();
        poll::peer_get(addr, token, self.config.peer_timeout, path, max_bytes).await
    }

    /// A forwarded connection to `addr` failed: skip it until the next health interval.
    pub fn mark_unreachable(&self, addr: SocketAddr) {
        log::warn!(
            "cluster member {addr} could not be reached; skipped until its next health check"
        );
        self.unreachable
            .locked()
            .insert(addr, Instant::now() + self.config.health_check_interval);
    }

    /// `addr` passes its health check but hangs: skipped until a session-list poll of it answers
    /// (see [`Cluster::failing`]).
    pub fn mark_failing(&self, addr: SocketAddr, why: String) {
        let mut failing = self.failing.locked();
        if !failing.contains_key(&addr) {
            log::warn!(
                "cluster member {addr} is failing ({why}): skipped, its ids go to the next member, until it answers again"
            );
        }
        failing.insert(addr, why);
    }

    /// `addr` answered a session-list poll: no longer failing.
    fn answered(&self, addr: SocketAddr) {
        if self.failing.locked().remove(&addr).is_some() {
            log::info!("cluster member {addr} answers again: back in the fleet");
        }
    }

    /// `GET /proxy/cluster`: members, their health and sessions; for `id`, its owner and the
    /// member that would serve it.
    pub fn view(&self, sessions: Vec<HeldSession>, id: Option<&str>) -> ClusterView {
        let backends = self.lb.backends();
        let states = self.states.read_locked();
        let now = Instant::now();
        let members = backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                let a = *b.addr.as_inet()?;
                let me = self.is_me(a);
                let st = states.get(&a);
                Some(MemberView {
                    address: a.to_string(),
                    healthy: me || backends.ready(b),
                    is_self: me,
                    sessions: if me {
                        Some(sessions.len())
                    } else {
                        st.map(|s| s.sessions.len())
                    },
                    state_age_seconds: st.map(|s| now.duration_since(s.at).as_secs_f64()),
                    failing: self.failing.locked().get(&a).cloned(),
                })
            })
            .collect();
        drop(states);
        let (owner, serving) = match id {
            Some(key) => {
                let owner = self.owner(key);
                let held_here = sessions.iter().any(|s| s.id == key);
                let serving = if held_here {
                    self.me()
                } else {
                    self.holder(key, &[]).or(owner)
                };
                (owner.map(|a| a.to_string()), serving.map(|a| a.to_string()))
            }
            None => (None, None),
        };
        ClusterView {
            self_addr: self.config.self_addr.clone(),
            mode: self.config.mode.as_str().to_string(),
            members,
            sessions,
            owner,
            serving,
        }
    }

    /// The via list of a request, believed only from a member's socket address.
    pub fn via_of(
        &self,
        peer_ip: Option<std::net::IpAddr>,
        header: Option<&str>,
    ) -> Vec<SocketAddr> {
        match (peer_ip, header) {
            (Some(ip), Some(h)) if self.is_member_ip(ip) => {
                h.split(',').filter_map(|a| a.trim().parse().ok()).collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
