//! The background half of the fleet: resolving members, health checks, and polling peers' session
//! lists (which also tell the engine pool the fleet's per-engine load).

use super::*;

/// Which peers a poll of session lists asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollScope {
    /// The usable ones: a request is waiting (a failing member is not waited for).
    Usable,
    /// Every healthy one, failing ones included: the background pass, which is how a failing
    /// member is found and how it comes back.
    Healthy,
}

impl Cluster {
    /// Asks the peers of `scope` for their sessions (in parallel, each within `peer_timeout`, so
    /// the whole poll takes at most that); when another task is doing it now, waits for that
    /// answer instead.
    pub async fn refresh_states(&self, scope: PollScope) {
        let seen = *self.refresh.lock().await;
        let mut done = self.refresh.lock().await;
        if *done != seen {
            return; // a poll finished while this one waited
        }
        self.poll_peers(scope).await;
        *done += 1;
    }

    async fn poll_peers(&self, scope: PollScope) {
        let backends = self.lb.backends();
        let peers: Vec<SocketAddr> = backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                let a = *b.addr.as_inet()?;
                let asked = match scope {
                    PollScope::Usable => self.usable(a, backends.ready(b)),
                    PollScope::Healthy => !self.is_me(a) && backends.ready(b),
                };
                asked.then_some(a)
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
                    self.answered(addr);
                }
                Err(e) => {
                    log::debug!("cluster member {addr}: no session list: {e}");
                    states.remove(&addr);
                    self.mark_failing(addr, format!("no session list: {e}"));
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
        let peers_healthy = healthy
            .iter()
            .filter(|a| !self.is_me(**a) && !self.failing.locked().contains_key(*a))
            .count();
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
        self.refresh_states(PollScope::Healthy).await;
        self.ready.send_replace(true);
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
    let body = peer_get(addr, token, timeout, "/proxy/cluster", MAX_PEER_STATE_BYTES).await?;
    let view: ClusterView =
        serde_json::from_slice(&body).map_err(|e| format!("bad answer: {e}"))?;
    Ok(view.sessions)
}

/// `GET path` of a peer's admin API (with the fleet's admin token), its body if `200`, within
/// `timeout` and `max_bytes`.
pub(super) async fn peer_get(
    addr: SocketAddr,
    token: Option<String>,
    timeout: Duration,
    path: &str,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut opts = GetOptions::default();
        if let Some(t) = token {
            opts.headers
                .push(("Authorization".into(), format!("Bearer {t}")));
        }
        let mut resp = http1::get_on(stream, &addr.to_string(), path, &opts)
            .await
            .map_err(|e| e.to_string())?;
        let body = resp
            .read_to_end(max_bytes)
            .await
            .map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!(
                "HTTP {} {}",
                resp.status,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Resolves `self` and `peers` every pass; a name that fails to resolve keeps its last
/// addresses (a DNS hiccup must not shrink the fleet and move ownership).
pub(super) struct MemberDiscovery {
    pub(super) entries: Vec<String>,
    pub(super) self_entry: String,
    pub(super) timeout: Duration,
    pub(super) last: Mutex<HashMap<String, Vec<SocketAddr>>>,
    pub(super) members: Arc<Members>,
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
