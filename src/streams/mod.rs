//! Streams: the sessions (one per content id), their rings, and the clients reading them.
//!
//! [`Sessions`] is the registry. [`Sessions::attach`] finds or creates the session for a content id
//! under one lock, so concurrent first requests create exactly one session and one engine call.
//! A [`ClientHandle`] counts a client in; dropping it counts the client out. The session owns its
//! linger: its upstream task watches the client count and ends the session once nobody watched
//! for `stream_idle_timeout`; a client that arrives before then re-attaches to the warm session
//! without any engine call.

pub mod client;
pub mod hls;
mod ingest;
pub mod pacer;
pub mod rechunk;
pub mod ring;
pub mod session;
mod start;
pub mod upstream;

use crate::access::ClientAddr;
use crate::config::Config;
use crate::engines::{ContentKey, EnginePool};
use crate::error::EdgeError;
use crate::metrics::Metrics;
pub use client::{ClientHandle, ClientStats};
pub use session::{Phase, StopReason, StreamSession, UpstreamFailure};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Every live session, keyed by content id.
#[derive(Debug)]
pub struct Sessions {
    config: Arc<Config>,
    engines: Arc<EnginePool>,
    map: Mutex<HashMap<String, Arc<StreamSession>>>,
    shutting_down: AtomicBool,
    started_total: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Sessions {
    /// An empty registry.
    pub fn new(config: Arc<Config>, engines: Arc<EnginePool>, metrics: Arc<Metrics>) -> Self {
        Sessions {
            config,
            engines,
            map: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            started_total: AtomicU64::new(0),
            metrics,
        }
    }

    /// The metrics sessions report into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<StreamSession>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration sessions run with.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The engines sessions start on.
    pub fn engines(&self) -> &Arc<EnginePool> {
        &self.engines
    }

    /// Attaches a client to the session of `content_id`, creating it (and its upstream task) if
    /// there is none. Must run inside a tokio runtime.
    pub fn attach(
        self: &Arc<Self>,
        content: &ContentKey,
        addr: Option<ClientAddr>,
    ) -> Result<ClientHandle, EdgeError> {
        let content_id = content.to_string();
        let content_id = content_id.as_str();
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(EdgeError::NoEngine("the proxy is shutting down".into()));
        }
        let (session, created, clients) = {
            let mut map = self.map();
            let (session, created) = match map.get(content_id) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(StreamSession::new(content.clone(), &self.config));
                    map.insert(content_id.to_string(), s.clone());
                    (s, true)
                }
            };
            // Counted in under the map lock: an idle expiry (which takes the same lock) either
            // sees this client or has already removed the session.
            let clients = session.count_in();
            (session, created, clients)
        };
        self.metrics.client_joins.inc();
        self.metrics.clients_active.inc();
        if created {
            self.started_total.fetch_add(1, Ordering::Relaxed);
            self.metrics.sessions_active.inc();
            log::info!("session {content_id} created");
            tokio::spawn(upstream::run_upstream(self.clone(), session.clone()));
        }
        session.joins.fetch_add(1, Ordering::Relaxed);
        session
            .peak_clients
            .fetch_max(clients as u64, Ordering::Relaxed);
        log::debug!(
            "client {} joined session {content_id}: clients now {clients}",
            addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
        );
        Ok(ClientHandle::new(self.clone(), session, addr))
    }

    /// Counts a client out; the last one starts the session's linger (its upstream task watches
    /// the count and ends the session after `stream_idle_timeout`).
    fn detach(self: &Arc<Self>, session: &Arc<StreamSession>, addr: Option<ClientAddr>) {
        self.metrics.client_leaves.inc();
        self.metrics.clients_active.dec();
        let clients = session.count_out();
        session.leaves.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "client {} left session {}: clients now {clients}",
            addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            session.content_id
        );
    }

    /// Takes `session` out of the registry if it still has no client; the linger's last check,
    /// under the map lock that attach takes too.
    pub(crate) fn expire_if_idle(&self, session: &Arc<StreamSession>) -> bool {
        let mut map = self.map();
        if session.client_count() != 0 {
            return false;
        }
        Self::unregister(&mut map, session, &self.metrics);
        true
    }

    /// Removes `session` from the registry if it is still the registered one (called once, by the
    /// session's upstream task as it ends).
    fn remove(&self, session: &Arc<StreamSession>) {
        Self::unregister(&mut self.map(), session, &self.metrics);
    }

    /// Takes `session` out of the map if it is still the registered one; the session stops
    /// counting as active at that moment, whoever removes it (idle expiry or its own end).
    fn unregister(
        map: &mut HashMap<String, Arc<StreamSession>>,
        session: &Arc<StreamSession>,
        metrics: &Metrics,
    ) {
        if matches!(map.get(&session.content_id), Some(s) if Arc::ptr_eq(s, session)) {
            map.remove(&session.content_id);
            metrics.sessions_active.dec();
        }
    }

    /// Refuses new sessions and ends every session (each sends its stop).
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let all: Vec<Arc<StreamSession>> = self.map().values().cloned().collect();
        for s in all {
            s.end(StopReason::Shutdown);
        }
    }

    /// A snapshot of the live sessions.
    pub fn list(&self) -> Vec<Arc<StreamSession>> {
        self.map().values().cloned().collect()
    }

    /// How many sessions are live.
    pub fn count(&self) -> usize {
        self.map().len()
    }

    /// The live session of a content id.
    pub fn get(&self, content_id: &str) -> Option<Arc<StreamSession>> {
        self.map().get(content_id).cloned()
    }

    /// The live session of a 40-hex value: as a content id, else as an infohash.
    pub fn find(&self, value: &str) -> Option<Arc<StreamSession>> {
        let map = self.map();
        map.get(value)
            .or_else(|| map.get(&format!("infohash:{value}")))
            .cloned()
    }

    /// Sessions created since start.
    pub fn started_total(&self) -> u64 {
        self.started_total.load(Ordering::Relaxed)
    }
}
