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

    /// A member this node may send requests to now: healthy, reachable at its last try, not us.
    fn usable(&self, addr: SocketAddr, healthy: bool) -> bool {
        if self.is_me(addr) || !healthy {
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
        self.refresh_states().await;
        holder(Because::Holder).unwrap_or(Placement::Local)
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

    /// Asks every usable peer for its sessions (in parallel, each within `peer_timeout`); when
    /// another task is doing it now, waits for that answer instead.
    pub async fn refresh_states(&self) {
        let seen = *self.refresh.lock().await;
        let mut done = self.refresh.lock().await;
        if *done != seen {
            return; // a poll finished while this one waited
        }
        self.poll_peers().await;
        *done += 1;
    }

    async fn poll_peers(&self) {
        let backends = self.lb.backends();
        let peers: Vec<SocketAddr> = backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                let a = *b.addr.as_inet()?;
                self.usable(a, backends.ready(b)).then_some(a)
            })
            .collect();
        let mut jobs = tokio::task::JoinSet::new();
        for addr in peers {
            let token = (*self.token.get()).clone();
            let timeout = self.config.peer_timeout;
            jobs.spawn(async move { (addr, fetch_sessions(addr, token, timeout).await) });
        }
        let mut answers = Vec::new();
        while let Some(joined) = jobs.join_next().await {
            if let Ok(answer) = joined {
                answers.push(answer);
            }
        }
        let now = Instant::now();
        let mut states = self.states.write_locked();
        for (addr, answer) in answers {
            match answer {
                Ok(sessions) => {
                    let sessions = sessions.into_iter().map(|s| (s.id, s.engine)).collect();
                    states.insert(addr, PeerState { sessions, at: now });
                }
                Err(e) => {
                    log::debug!("cluster member {addr}: no session list: {e}");
                    states.remove(&addr);
                }
            }
        }
        // Members that left the fleet or turned unhealthy hold nothing any more.
        states.retain(|a, _| self.healthy(*a));
        let mut load: HashMap<SocketAddr, usize> = HashMap::new();
        for st in states.values() {
            for engine in st.sessions.values().flatten() {
                *load.entry(*engine).or_default() += 1;
            }
        }
        drop(states);
        self.engines.set_peer_streams(load);
    }

    /// One background pass: resolve the members, check their health, poll their sessions.
    async fn tick(&self) {
        if let Err(e) = self.lb.update().await {
            log::warn!("cluster: resolving the members failed: {e}");
        }
        self.lb.backends().run_health_check(true).await;
        let backends = self.lb.backends();
        let healthy: BTreeSet<SocketAddr> = backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .filter_map(|b| b.addr.as_inet().copied())
            .collect();
        let peers_healthy = healthy.iter().filter(|a| !self.is_me(**a)).count();
        self.metrics.cluster_peers_healthy.set(peers_healthy as i64);
        {
            let mut before = self.healthy_before.locked();
            if let Some(prev) = before.as_ref() {
                if *prev != healthy {
                    self.metrics.cluster_owner_changes.inc();
                    log::info!(
                        "cluster: healthy members now {} (were {}): ownership of some ids moved",
                        list(&healthy),
                        list(prev)
                    );
                }
            }
            *before = Some(healthy);
        }
        self.refresh_states().await;
        self.ready.send_replace(true);
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

fn list(set: &BTreeSet<SocketAddr>) -> String {
    let v: Vec<String> = set.iter().map(|a| a.to_string()).collect();
    format!("[{}]", v.join(", "))
}

/// `GET /proxy/cluster` of a peer, its `sessions`.
async fn fetch_sessions(
    addr: SocketAddr,
    token: Option<String>,
    timeout: Duration,
) -> Result<Vec<HeldSession>, String> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut opts = GetOptions::default();
        if let Some(t) = token {
            opts.headers
                .push(("Authorization".into(), format!("Bearer {t}")));
        }
        let mut resp = http1::get_on(stream, &addr.to_string(), "/proxy/cluster", &opts)
            .await
            .map_err(|e| e.to_string())?;
        let body = resp
            .read_to_end(MAX_PEER_STATE_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!(
                "HTTP {} {}",
                resp.status,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        let view: ClusterView =
            serde_json::from_slice(&body).map_err(|e| format!("bad answer: {e}"))?;
        Ok(view.sessions)
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Resolves `self` and `peers` every pass; a name that fails to resolve keeps its last
/// addresses (a DNS hiccup must not shrink the fleet and move ownership).
struct MemberDiscovery {
    entries: Vec<String>,
    self_entry: String,
    timeout: Duration,
    last: Mutex<HashMap<String, Vec<SocketAddr>>>,
    members: Arc<Members>,
}

#[async_trait]
impl ServiceDiscovery for MemberDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut resolved: Vec<(String, Vec<SocketAddr>)> = Vec::new();
        for entry in &self.entries {
            let found =
                match tokio::time::timeout(self.timeout, tokio::net::lookup_host(entry.as_str()))
                    .await
                {
                    Ok(Ok(addrs)) => Some(addrs.collect::<Vec<_>>()),
                    Ok(Err(e)) => {
                        log::warn!("cluster member {entry}: cannot resolve: {e}");
                        None
                    }
                    Err(_) => {
                        log::warn!(
                            "cluster member {entry}: resolving took over {:?}",
                            self.timeout
                        );
                        None
                    }
                };
            let mut last = self.last.locked();
            let addrs = match found {
                Some(a) if !a.is_empty() => {
                    last.insert(entry.clone(), a.clone());
                    a
                }
                _ => last.get(entry).cloned().unwrap_or_default(),
            };
            resolved.push((entry.clone(), addrs));
        }
        let mut set = BTreeSet::new();
        let mut ips = Vec::new();
        for (entry, addrs) in &resolved {
            if *entry == self.self_entry {
                *self.members.me.write_locked() = addrs.first().copied();
            }
            for a in addrs {
                set.insert(Backend::new(&a.to_string())?);
                ips.push(a.ip().to_canonical());
            }
        }
        self.members.trusted.set(ips);
        Ok((set, HashMap::new()))
    }
}

/// Keeps the fleet current: every `health_check_interval`, resolve, health-check and poll.
pub struct ClusterService {
    /// The fleet.
    pub cluster: Arc<Cluster>,
}

#[async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.cluster.config.health_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = self.cluster.tick() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cluster(me: &str, peers: &[&str]) -> Arc<Cluster> {
        let config = Config::default();
        let (lb, meta) = crate::engines::load_balancer(&config);
        let pool = Arc::new(EnginePool::new(Arc::new(lb), meta, &config));
        Cluster::new(
            ClusterConfig {
                self_addr: me.into(),
                peers: peers.iter().map(|p| p.to_string()).collect(),
                mode: ClusterMode::Proxy,
                health_check_interval: Duration::from_secs(2),
                peer_timeout: Duration::from_secs(1),
            },
            Arc::new(crate::access::AdminToken::new(None)),
            pool,
            Arc::new(Metrics::new()),
            Arc::new(TrustedPeers::default()),
        )
    }

    /// Every node computes the same owner for an id, whichever node it is; ids spread over
    /// all members; a member that leaves moves only its own ids.
    #[tokio::test]
    async fn nodes_agree_on_owners_and_a_leaver_moves_only_its_ids() {
        let members = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
        let nodes: Vec<Arc<Cluster>> = members.iter().map(|m| cluster(m, &members)).collect();
        for n in &nodes {
            n.lb.update().await.unwrap();
        }
        let ids: Vec<String> = (0..300).map(|i| format!("{i:040x}")).collect();
        let owners: Vec<SocketAddr> = ids.iter().map(|id| nodes[0].owner(id).unwrap()).collect();
        for n in &nodes[1..] {
            for (id, o) in ids.iter().zip(&owners) {
                assert_eq!(n.owner(id), Some(*o), "{id}");
            }
        }
        for m in members {
            let share = owners.iter().filter(|o| o.to_string() == m).count();
            assert!(share > 50, "{m} owns {share} of 300");
        }
        // Member 3 becomes unreachable from node 1's point of view: only its ids move.
        let gone: SocketAddr = members[2].parse().unwrap();
        nodes[0].mark_unreachable(gone);
        for (id, o) in ids.iter().zip(&owners) {
            let now = nodes[0].owner(id).unwrap();
            if *o == gone {
                assert_ne!(now, gone);
            } else {
                assert_eq!(now, *o, "{id} moved although its owner stayed");
            }
        }
    }

    /// A member given by name is resolved (every address it stands for is a member), and
    /// its addresses become trusted peers; this node's own entry gives `me`.
    #[tokio::test]
    async fn names_resolve_to_members() {
        let c = cluster("localhost:7001", &["127.0.0.1:7002"]);
        c.lb.update().await.unwrap();
        let members: Vec<SocketAddr> =
            c.lb.backends()
                .get_backend()
                .iter()
                .filter_map(|b| b.addr.as_inet().copied())
                .collect();
        assert!(
            members.contains(&"127.0.0.1:7001".parse().unwrap()),
            "{members:?}"
        );
        assert!(members.contains(&"127.0.0.1:7002".parse().unwrap()));
        assert_eq!(c.me().map(|a| a.port()), Some(7001));
        assert!(c.is_member_ip("127.0.0.1".parse().unwrap()));
        assert!(!c.is_member_ip("10.9.9.9".parse().unwrap()));
    }

    /// The via header is believed only from a member's address.
    #[tokio::test]
    async fn via_only_from_members() {
        let c = cluster("127.0.0.1:7001", &["127.0.0.1:7002"]);
        c.lb.update().await.unwrap();
        let h = Some("127.0.0.1:7002, junk");
        assert_eq!(
            c.via_of(Some("127.0.0.1".parse().unwrap()), h),
            vec!["127.0.0.1:7002".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.via_of(Some("10.0.0.9".parse().unwrap()), h).is_empty());
    }
}
