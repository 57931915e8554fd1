//! Engines: where they are ([`discovery`]), whether they work ([`health`]), which one gets the
//! next session ([`score`]), and how to talk to them ([`client`]).
//!
//! The pool is built on Pingora's load balancing: a `LoadBalancer` runs as a background service,
//! polling [`discovery::EngineDiscovery`] every `engine_cache_ttl` and the health check every
//! `health_check_interval`. Its built-in selectors only rebuild on membership changes, so the live
//! score is computed here at selection time from the LB's health view, the discovery's metadata
//! and this proxy's own stream count per engine, which [`StreamLease`]s keep exact.

mod choose;

pub use choose::StreamLease;

use crate::sync::{Lock, ReadWrite};
pub mod client;
pub mod discovery;
pub mod events;
pub mod health;
pub mod score;
pub mod stat;

use crate::config::Config;
use crate::error::EdgeError;
pub use client::{
    ContentKey, ContentKind, EngineEndpoint, EngineError, EngineSession, EngineStream,
    EngineTimeouts,
};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backends, LoadBalancer};
use score::{Candidate, NoCandidate};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// What is known about one engine besides its health check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineMeta {
    /// Host as configured or listed (may be a name).
    pub host: String,
    /// HTTP API port.
    pub port: u16,
    /// Its P2P port is forwarded.
    pub forwarded: bool,
    /// The orchestrator's container id.
    pub container_id: Option<String>,
    /// The orchestrator's VPN container.
    pub vpn_container: Option<String>,
    /// The orchestrator's view of its health (`None`: no opinion).
    pub orchestrator_healthy: Option<bool>,
    /// Streams the orchestrator counts on it.
    pub orchestrator_streams: Option<usize>,
    /// Listed by the orchestrator (else static only).
    pub from_orchestrator: bool,
    /// The orchestrator drains it (Go rewrite): no new sessions.
    pub draining: bool,
    /// The orchestrator's view of its VPN's health (`None`: no opinion).
    pub vpn_healthy: Option<bool>,
    /// Extra request headers (a configured engine's `headers:`).
    pub headers: crate::config::Headers,
}

impl EngineMeta {
    /// Merges a second listing of the same address (static + orchestrator).
    pub fn merge(&mut self, other: &EngineMeta) {
        self.forwarded |= other.forwarded;
        self.container_id = self
            .container_id
            .take()
            .or_else(|| other.container_id.clone());
        self.vpn_container = self
            .vpn_container
            .take()
            .or_else(|| other.vpn_container.clone());
        self.orchestrator_healthy = other.orchestrator_healthy.or(self.orchestrator_healthy);
        self.orchestrator_streams = other.orchestrator_streams.or(self.orchestrator_streams);
        self.from_orchestrator |= other.from_orchestrator;
        self.draining |= other.draining;
        self.vpn_healthy = other.vpn_healthy.or(self.vpn_healthy);
        if self.headers.pairs().is_empty() {
            self.headers = other.headers.clone();
        }
    }

    /// Why the orchestrator rules it out, if it does.
    pub fn ruled_out(&self) -> Option<&'static str> {
        if self.orchestrator_healthy == Some(false) {
            Some("the orchestrator reports it unhealthy")
        } else if self.vpn_healthy == Some(false) {
            Some("the orchestrator reports its VPN unhealthy")
        } else if self.draining {
            Some("the orchestrator is draining it")
        } else {
            None
        }
    }
}

/// One engine chosen for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// Where it listens (as configured or listed; used for the Host header and logs).
    pub endpoint: EngineEndpoint,
    /// The resolved address dialled.
    pub addr: SocketAddr,
    /// Its P2P port is forwarded.
    pub forwarded: bool,
    /// The orchestrator's container id, if any.
    pub container_id: Option<String>,
    /// Its score when it was chosen.
    pub score: i64,
}

/// A view of one engine for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    /// Metadata from discovery.
    pub meta: EngineMeta,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Health check and orchestrator agree it works.
    pub healthy: bool,
    /// This proxy's sessions on it.
    pub proxy_streams: usize,
    /// Other cluster members' sessions on it (their last answer).
    pub peer_streams: usize,
    /// The score a selection would give it now.
    pub score: i64,
    /// It failed a live session within `engine_failure_penalty`.
    pub recently_failed: bool,
    /// What the selector sees of it.
    pub candidate: Candidate,
}

/// Engine addresses that hold a mark until a deadline (proven working, recently failed): the
/// one "expiring set" the pool keeps twice.
#[derive(Debug, Default)]
struct ExpiringSet(Mutex<HashMap<SocketAddr, std::time::Instant>>);

impl ExpiringSet {
    /// Marks `addr` until `until` (a later mark replaces an earlier one).
    fn insert(&self, addr: SocketAddr, until: std::time::Instant) {
        self.0.locked().insert(addr, until);
    }

    /// The addresses still marked at `now`; expired marks are dropped.
    fn current(&self, now: std::time::Instant) -> Vec<SocketAddr> {
        let mut map = self.0.locked();
        map.retain(|_, until| *until > now);
        map.keys().copied().collect()
    }
}

/// The engine pool shared by every session.
pub struct EnginePool {
    lb: Arc<LoadBalancer<RoundRobin>>,
    meta: Arc<Discovered>,
    load: Mutex<HashMap<SocketAddr, usize>>,
    rotation: AtomicUsize,
    max_streams: AtomicUsize,
    selection_timeout: Duration,
    failure_penalty: Duration,
    failed_until: ExpiringSet,
    /// Engines that answered a start although their last probe failed: healthy until the next
    /// probe has had time to run.
    proven_until: ExpiringSet,
    health_check_interval: Duration,
    panic_when_all_unhealthy: bool,
    /// When each engine was last given a session (the last tie-break).
    last_assigned: Mutex<HashMap<SocketAddr, std::time::Instant>>,
    /// Sessions other cluster members hold on each engine, at their last answer.
    peer_streams: Mutex<HashMap<SocketAddr, usize>>,
}

impl std::fmt::Debug for EnginePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnginePool")
            .field("max_streams", &self.max_streams)
            .finish()
    }
}

/// What discovery found, shared between it (the writer) and the pool (the reader).
#[derive(Debug, Default)]
pub struct Discovered {
    engines: RwLock<HashMap<SocketAddr, EngineMeta>>,
    /// Where engines come from (a reload may change it).
    sources: crate::config::live::Live<EngineSources>,
    orchestrator_failures: std::sync::atomic::AtomicU64,
}

/// The configured sources of engines: the static list and the orchestrator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSources {
    /// `acestream.engines`.
    pub statics: Vec<crate::config::EngineConfig>,
    /// `acestream.orchestrator`.
    pub orchestrator: Option<crate::config::OrchestratorConfig>,
}

impl Discovered {
    /// The configured sources now.
    pub fn sources(&self) -> Arc<EngineSources> {
        self.sources.get()
    }

    /// The extra request headers of the engine at `addr` (none if it is not known).
    pub fn headers_of(&self, addr: &SocketAddr) -> crate::config::Headers {
        self.engines
            .read_locked()
            .get(addr)
            .map(|m| m.headers.clone())
            .unwrap_or_default()
    }

    /// A snapshot of the engines found, by resolved address.
    pub fn engines(&self) -> HashMap<SocketAddr, EngineMeta> {
        self.engines.read_locked().clone()
    }

    pub(crate) fn set_engines(&self, engines: HashMap<SocketAddr, EngineMeta>) {
        *self.engines.write_locked() = engines;
    }

    pub(crate) fn orchestrator_failed(&self) {
        self.orchestrator_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Builds the load balancer that the server runs as a background service, and the shared state
/// its discovery writes.
pub fn load_balancer(config: &Config) -> (LoadBalancer<RoundRobin>, Arc<Discovered>) {
    let meta = Arc::new(Discovered::default());
    let discovery = discovery::EngineDiscovery::new(
        config.engines.clone(),
        config.orchestrator.clone(),
        config.pool.engine_selection_timeout,
        meta.clone(),
    );
    let mut backends = Backends::new(Box::new(discovery));
    // A probe never outlives its interval; validation keeps both at least 0.2 s.
    let probe_timeout = config
        .probes
        .health_check_interval
        .min(config.probes.engine_connect_timeout);
    backends.set_health_check(Box::new(health::EngineHealthCheck {
        timeout: probe_timeout,
        meta: meta.clone(),
    }));
    let mut lb = LoadBalancer::from_backends(backends);
    lb.update_frequency = Some(config.probes.engine_cache_ttl);
    lb.health_check_frequency = Some(config.probes.health_check_interval);
    lb.parallel_health_check = true;
    (lb, meta)
}

impl EnginePool {
    /// A pool over a (running) load balancer and its discovery's metadata.
    pub fn new(lb: Arc<LoadBalancer<RoundRobin>>, meta: Arc<Discovered>, config: &Config) -> Self {
        EnginePool {
            lb,
            meta,
            load: Mutex::new(HashMap::new()),
            rotation: AtomicUsize::new(0),
            max_streams: AtomicUsize::new(config.pool.max_streams_per_engine),
            selection_timeout: config.pool.engine_selection_timeout,
            failure_penalty: config.pool.engine_failure_penalty,
            failed_until: ExpiringSet::default(),
            proven_until: ExpiringSet::default(),
            health_check_interval: config.probes.health_check_interval,
            panic_when_all_unhealthy: config.pool.panic_when_all_unhealthy,
            last_assigned: Mutex::new(HashMap::new()),
            peer_streams: Mutex::new(HashMap::new()),
        }
    }

    /// An engine just answered a start: it counts as healthy now, whatever its last probe said
    /// (until the next probe has run).
    pub fn mark_working(&self, addr: SocketAddr) {
        let now = std::time::Instant::now();
        self.proven_until
            .insert(addr, now + self.health_check_interval * 2);
    }

    fn proven(&self) -> Vec<SocketAddr> {
        self.proven_until.current(std::time::Instant::now())
    }

    /// Marks an engine as having failed a live session: it scores lower for
    /// `engine_failure_penalty`.
    pub fn penalize(&self, addr: SocketAddr) {
        let now = std::time::Instant::now();
        self.failed_until.insert(addr, now + self.failure_penalty);
    }

    fn recently_failed(&self) -> Vec<SocketAddr> {
        self.failed_until.current(std::time::Instant::now())
    }

    fn lock_load(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, usize>> {
        self.load.locked()
    }

    /// Runs discovery now if it has never produced an engine (bounded by the selection timeout).
    async fn ensure_discovered(&self) {
        if self.lb.backends().get_backend().is_empty() {
            if let Err(_elapsed) =
                tokio::time::timeout(self.selection_timeout, self.lb.update()).await
            {
                log::warn!(
                    "engine discovery did not finish within {:?}",
                    self.selection_timeout
                );
            }
        }
    }

    /// New engine sources (a reload): the next discovery pass, within `engine_cache_ttl`,
    /// adds and removes engines; sessions on a removed engine go on until they end.
    pub fn set_sources(&self, sources: EngineSources) {
        self.meta.sources.set(sources);
    }

    /// `max_streams_per_engine` now.
    pub fn max_streams(&self) -> usize {
        self.max_streams.load(Ordering::Relaxed)
    }

    /// A new `max_streams_per_engine` (a reload).
    pub fn set_max_streams(&self, n: usize) {
        self.max_streams.store(n, Ordering::Relaxed);
    }

    /// The sessions other cluster members hold on each engine (the cluster's poll). They count
    /// in every engine's load unless the orchestrator reports its streams (which include the
    /// whole fleet's).
    pub fn set_peer_streams(&self, streams: HashMap<SocketAddr, usize>) {
        *self.peer_streams.locked() = streams;
    }

    /// Failed orchestrator fetches since start (each keeps the last good list).
    pub fn orchestrator_failures(&self) -> u64 {
        self.meta.orchestrator_failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
