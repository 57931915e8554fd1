//! Streams: the sessions (one per content id), their rings, and the clients reading them.
//!
//! [`Sessions`] is the registry. [`Sessions::attach`] finds or creates the session for a content id
//! under one lock, so concurrent first requests create exactly one session and one engine call.
//! A [`ClientHandle`] counts a client in; dropping it counts the client out. The session owns its
//! linger: its upstream task watches the client count and ends the session once nobody watched
//! for `stream_idle_timeout`; a client that arrives before then re-attaches to the warm session
//! without any engine call.

mod hls_viewers;

use hls_viewers::{HlsViewer, HlsViewerKey};

use crate::sync::Lock;
pub mod budget;
pub mod check;
pub mod client;
pub mod dvr;
pub mod hls;
mod ingest;
pub mod pacer;
pub mod pages;
pub mod parked;
pub mod rechunk;
pub mod relay;
pub mod ring;
pub mod sendfile;
pub mod session;
mod start;
pub mod upstream;

use crate::access::ClientAddr;
use crate::config::Config;
use crate::engines::{ContentKey, EnginePool};
use crate::error::EdgeError;
use crate::metrics::Metrics;
pub use client::{ClientHandle, ClientStats, Protocol};
pub use hls_viewers::BlockingHold;
pub(crate) use ingest::record_cuts;
pub use session::{Phase, StopReason, StreamSession, UpstreamFailure};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How [`Sessions::attach_inner`] attaches a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attach {
    /// To the id's session, starting it if there is none.
    OrStart,
    /// Only to a live session that is not read from a successor (the upgrade relay's joins: it
    /// never starts anything).
    ExistingOnly,
}

/// Every live session, keyed by content id.
#[derive(Debug)]
pub struct Sessions {
    config: crate::config::live::Live<Config>,
    engines: Arc<EnginePool>,
    map: Mutex<HashMap<String, Arc<StreamSession>>>,
    /// HLS viewers present, and whether the task that lets them go runs.
    hls_viewers: Mutex<(HashMap<HlsViewerKey, HlsViewer>, bool)>,
    /// HLS requests held open (blocking reloads, awaited parts), per client address.
    hls_holds: hls_viewers::BlockingHolds,
    /// The DVR store (none with `dvr_window: 0` or an unusable `dvr_dir`).
    dvr: Option<Arc<dvr::DvrStore>>,
    /// Spills made so far (names them uniquely).
    spills_made: AtomicU64,
    shutting_down: AtomicBool,
    /// A graceful upgrade is handing the listeners to a new process: clients still join running
    /// sessions here, but a new session is read from the successor, never started on an engine
    /// here (two starts of one id would end each other's engine sessions).
    handing_over: AtomicBool,
    started_total: AtomicU64,
    /// Readers cut to keep `max_buffer_bytes`.
    budget_drops: budget::BudgetDrops,
    metrics: Arc<Metrics>,
    /// Events for the orchestrator about our engine sessions.
    events: crate::engines::events::EventReporter,
    /// Upstream tasks running: a session is done once its task ended (and sent its stop).
    upstreams: Arc<std::sync::atomic::AtomicUsize>,
    /// The relays of a graceful upgrade: this process's, its predecessor's, its successor's.
    handover: relay::Handover,
}

impl Sessions {
    /// An empty registry.
    pub fn new(config: Arc<Config>, engines: Arc<EnginePool>, metrics: Arc<Metrics>) -> Self {
        let events = crate::engines::events::EventReporter::new(
            config.orchestrator.as_ref(),
            crate::engines::events::EVENT_QUEUE,
            metrics.clone(),
        );
        Sessions {
            config: crate::config::live::Live::new((*config).clone()),
            engines,
            map: Mutex::new(HashMap::new()),
            hls_viewers: Mutex::new((HashMap::new(), false)),
            hls_holds: Default::default(),
            dvr: dvr::DvrStore::open(
                &config.dvr,
                config.hls.hls_segment_seconds.as_secs_f64(),
                metrics.clone(),
            ),
            spills_made: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            started_total: AtomicU64::new(0),
            budget_drops: budget::BudgetDrops::default(),
            events,
            metrics,
            upstreams: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            handover: relay::Handover::default(),
        }
    }

    /// What this process knows of the processes around an upgrade (the relays).
    pub fn handover(&self) -> &relay::Handover {
        &self.handover
    }

    /// Sessions whose upstream task still runs (ended sessions may still be sending stops).
    pub fn upstreams_running(&self) -> usize {
        self.upstreams.load(Ordering::Acquire)
    }

    /// Attaches a client to the session of `content` only if it exists, has not ended and is
    /// not itself read from a successor (the relay of an upgrade: it never starts anything).
    pub fn join_existing(
        self: &Arc<Self>,
        content: &ContentKey,
        addr: Option<ClientAddr>,
    ) -> Option<ClientHandle> {
        self.attach_inner(content, addr, Protocol::Ts, Attach::ExistingOnly)
            .ok()
            .flatten()
    }

    /// Holds an HLS request open for `client` (a blocking reload, an awaited part), if it holds
    /// fewer than `hls_max_blocking_requests`; `None` means answer now.
    /// Addresses in `limit_exempt` (loopback by default: a local reverse proxy carries many
    /// viewers on one address) are counted but not bounded, like every per-address limit.
    pub fn hold_hls_request(&self, client: Option<ClientAddr>) -> Option<BlockingHold> {
        let config = self.config();
        let exempt = client
            .is_some_and(|c| crate::config::cidr::any_contains(&config.limits.limit_exempt, c.ip));
        let max = if exempt {
            usize::MAX
        } else {
            config.hls.hls_max_blocking_requests
        };
        let hold = self.hls_holds.try_hold(client, max);
        let outcome = if hold.is_some() { "held" } else { "refused" };
        self.metrics
            .hls_blocking_requests
            .with_label_values(&[outcome])
            .inc();
        hold
    }

    /// A DVR spill for `session` (none with DVR off).
    pub(crate) fn new_spill(&self, session: &StreamSession) -> Option<dvr::Spill> {
        let store = self.dvr.as_ref()?;
        let n = self.spills_made.fetch_add(1, Ordering::Relaxed);
        store.spill(&dvr::spill_name(&session.content_id, n))
    }

    /// The metrics sessions report into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<StreamSession>>> {
        self.map.locked()
    }

    /// The configuration new sessions and clients run with (a session keeps what it read).
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    /// Replaces the configuration for new sessions and clients (a reload).
    pub fn set_config(&self, config: Config) {
        self.config.set(config);
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
        self.attach_as(content, addr, Protocol::Ts)
    }

    /// [`Sessions::attach`] for a client of the given protocol.
    pub fn attach_as(
        self: &Arc<Self>,
        content: &ContentKey,
        addr: Option<ClientAddr>,
        protocol: Protocol,
    ) -> Result<ClientHandle, EdgeError> {
        let attached = self.attach_inner(content, addr, protocol, Attach::OrStart)?;
        attached.ok_or_else(|| EdgeError::Internal("the session could not be created".into()))
    }

    /// Attaches a client as `how` says (`Ok(None)`: [`Attach::ExistingOnly`] found nothing to
    /// join).
    fn attach_inner(
        self: &Arc<Self>,
        content: &ContentKey,
        addr: Option<ClientAddr>,
        protocol: Protocol,
        how: Attach,
    ) -> Result<Option<ClientHandle>, EdgeError> {
        let create = how == Attach::OrStart;
        let content_id = content.to_string();
        let content_id = content_id.as_str();
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(EdgeError::ShuttingDown);
        }
        let (session, created, clients) = {
            let mut map = self.map();
            let (session, created) = match map.get(content_id) {
                Some(s)
                    if !create
                        && (s.fed_by_successor
                            || matches!(s.phase(), Phase::Ended(_) | Phase::Failed(_))) =>
                {
                    return Ok(None)
                }
                Some(s) => (s.clone(), false),
                None if !create => return Ok(None),
                None => {
                    let mut s = StreamSession::new(content.clone(), &self.config());
                    // Handing over: the successor starts it; this process reads it from there.
                    s.fed_by_successor = self.handing_over.load(Ordering::Acquire);
                    let s = Arc::new(s);
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
            let running = UpstreamRunning::new(self.upstreams.clone());
            let sessions = self.clone();
            let session = session.clone();
            // Its edge task wakes the viewers at the live edge (see `ring::edge`).
            tokio::spawn(session.ring.edge_task());
            // Its edge writer sends to the viewers parked at the live edge (see `parked`).
            tokio::spawn(parked::run_edge_writer(
                Arc::downgrade(&session),
                session.ring.subscribe_edge(),
                parked::WriterMetrics {
                    sendfiles: self
                        .metrics
                        .ts_viewer_sends
                        .with_label_values(&["sendfile"]),
                    parked_sends: self.metrics.ts_parked_sends.clone(),
                    downstream_bytes: self.metrics.downstream_bytes.clone(),
                },
            ));
            tokio::spawn(async move {
                upstream::run_upstream(sessions, session).await;
                drop(running);
            });
        }
        session.joins.fetch_add(1, Ordering::Relaxed);
        session
            .peak_clients
            .fetch_max(clients as u64, Ordering::Relaxed);
        log::debug!(
            "client {} joined session {content_id}: clients now {clients}",
            addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
        );
        Ok(Some(ClientHandle::new(
            self.clone(),
            session,
            addr,
            protocol,
        )))
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

    /// Tells the orchestrator (if it wants to know) that `engine` accepted `session`.
    pub(crate) fn report_started(
        &self,
        session: &StreamSession,
        engine: &crate::engines::Engine,
        es: &crate::engines::EngineSession,
    ) {
        self.events
            .report(crate::engines::events::OrchestratorEvent::started(
                engine,
                &session.content,
                es,
            ));
    }

    /// Tells the orchestrator that `session`'s engine session on `engine` ended, and why.
    pub(crate) fn report_ended(
        &self,
        session: &StreamSession,
        engine: &crate::engines::Engine,
        reason: &str,
    ) {
        self.events
            .report(crate::engines::events::OrchestratorEvent::ended(
                engine.container_id.as_deref(),
                &session.content.value,
                reason,
            ));
    }

    /// A graceful upgrade began: from now on a new session is read from the successor.
    pub fn hand_over(&self) {
        self.handing_over.store(true, Ordering::Release);
    }

    /// True once shutdown began (no new session is started).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
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

/// Counts one running upstream task for as long as it lives (dropped with the task, also when
/// its runtime drops it).
struct UpstreamRunning(Arc<std::sync::atomic::AtomicUsize>);

impl UpstreamRunning {
    fn new(count: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        UpstreamRunning(count)
    }
}

impl Drop for UpstreamRunning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
