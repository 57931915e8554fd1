//! Bootstrap: builds the Pingora [`Server`] with the proxy service and the session reaper, and
//! runs it either from `main` (signals) or in-process for tests (`RunningServer`, feature
//! `test-support`).

use crate::cluster::{Cluster, ClusterService};
use crate::config::{Config, LoadedConfig};
use crate::engines::{self, EnginePool};
use crate::metrics::Metrics;
use crate::proxy::EdgeProxy;
use crate::streams::Sessions;
use async_trait::async_trait;
use guard::{ConnectionLimits, GuardedApp};
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::server::configuration::Opt;
use pingora::server::{Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;

pub mod guard;
pub mod logging;
pub mod proxy_protocol;
pub mod reload;
pub mod upgrade;

/// Per-connection read buffer: requests are tiny, and Pingora's 64 KiB default costs 64 MiB per
/// thousand viewers (a downstream connection keeps its read buffer for its whole life).
const DOWNSTREAM_READ_BUFFER: usize = 4096;
/// Grace period when the file sets none. Pingora's own default (300 s) would keep a stopping proxy
/// alive for five minutes; our streams end by themselves when shutdown starts.
const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 1;

/// The shared state of a running proxy.
pub struct Edge {
    /// The sessions registry.
    pub sessions: Arc<Sessions>,
    /// The engine pool.
    pub engines: Arc<EnginePool>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
}

/// Builds the server: Pingora's settings, the proxy service on every `acestream.listen` address,
/// and the background session reaper.
pub fn build(opt: Option<Opt>, loaded: LoadedConfig) -> (Server, Edge) {
    build_process(opt, loaded, ProcessOptions::default())
}

/// What the `acestream-edge` process adds to a server (tests build it without).
#[derive(Debug, Default)]
pub struct ProcessOptions {
    /// The `-c` file, re-read on SIGHUP (see [`reload`]).
    pub reload_from: Option<std::path::PathBuf>,
    /// With `-u`: the relay of the process being replaced (see [`upgrade`]).
    pub predecessor: Option<crate::streams::relay::RelayPeer>,
    /// The server is the whole process: it serves the upgrade relay, and exits once its
    /// sessions ended and sent their stops (after a stop, or after an upgrade's drain).
    pub own_process: bool,
}

/// How long an upgraded process serves its viewers when the file does not say: a match's
/// second half needs no more than a few minutes of overlap, and a process that lingers longer
/// only holds memory.
const DEFAULT_UPGRADE_DRAIN_SECONDS: u64 = 300;

/// [`build`] for the `acestream-edge` process.
pub fn build_process(
    opt: Option<Opt>,
    loaded: LoadedConfig,
    process: ProcessOptions,
) -> (Server, Edge) {
    let LoadedConfig {
        server: mut conf,
        acestream,
        ..
    } = loaded;
    let drain = conf
        .graceful_shutdown_timeout_seconds
        .unwrap_or(DEFAULT_UPGRADE_DRAIN_SECONDS);
    if process.own_process {
        // Pingora keeps serving for the grace period after its listeners closed; the process
        // exits by itself as soon as its sessions are done, so a long grace costs nothing.
        conf.grace_period_seconds.get_or_insert(drain + 2);
    } else {
        conf.grace_period_seconds
            .get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
    }
    let grace = conf
        .grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
    // The drain must end (and the stops go out) before Pingora's grace period ends.
    let drain = std::time::Duration::from_secs(drain.min(grace.saturating_sub(1)));
    let relay_file = crate::streams::relay::relay_file(&conf.upgrade_sock);
    let config = Arc::new(acestream);
    let server = Server::new_with_opt_and_conf(opt, conf);
    build_services(server, config, process, relay_file, drain)
}

fn build_services(
    mut server: Server,
    config: Arc<Config>,
    process: ProcessOptions,
    relay_file: std::path::PathBuf,
    drain: std::time::Duration,
) -> (Server, Edge) {
    let ProcessOptions {
        reload_from,
        predecessor,
        own_process,
    } = process;
    let live = crate::access::LiveSettings::of(&config);
    let (lb, meta) = engines::load_balancer(&config);
    let lb_service = background_service("engine pool", lb);
    let pool = Arc::new(EnginePool::new(lb_service.task(), meta, &config));
    server.add_service(lb_service);
    let metrics = Arc::new(Metrics::new());
    let sessions = Arc::new(Sessions::new(config.clone(), pool.clone(), metrics.clone()));
    if let Some(relay) = predecessor {
        log::info!("upgrade: sessions the running process holds are relayed from it ({relay})");
        sessions.handover().set_predecessor(Some(relay));
    }
    let cluster = config.cluster.clone().map(|c| {
        log::info!(
            "cluster: this node is {}, peers {:?}, mode {}",
            c.self_addr,
            c.peers,
            c.mode.as_str()
        );
        Cluster::new(
            c,
            live.admin_token.clone(),
            pool.clone(),
            metrics.clone(),
            Arc::new(Default::default()),
        )
    });
    if let Some(c) = &cluster {
        server.add_service(background_service(
            "cluster",
            ClusterService { cluster: c.clone() },
        ));
    }
    if own_process {
        server.add_service(background_service(
            "upgrade relay",
            upgrade::RelayService {
                sessions: sessions.clone(),
                file: relay_file,
                cluster: cluster.clone(),
            },
        ));
    }
    let catalogue = crate::proxy::Catalogue {
        channels: crate::channels::Channels::new(config.channels.clone()),
        checker: Arc::new(crate::streams::check::ContentChecker::new(
            pool.clone(),
            config.clone(),
        )),
    };
    server.add_service(background_service(
        "channel checker",
        ChannelChecker {
            channels: catalogue.channels.clone(),
            checker: catalogue.checker.clone(),
            sessions: sessions.clone(),
            metrics: metrics.clone(),
            fleet: cluster.clone(),
        },
    ));
    let channels = catalogue.channels.clone();
    let app = pingora::proxy::http_proxy(
        &server.configuration,
        EdgeProxy::new(
            sessions.clone(),
            pool.clone(),
            metrics.clone(),
            config.clone(),
            cluster,
            live.clone(),
            catalogue,
        ),
    );
    if let Some(path) = reload_from {
        server.add_service(background_service(
            "configuration reload",
            reload::Reloader {
                path,
                sessions: sessions.clone(),
                engines: pool.clone(),
                live,
                channels,
            },
        ));
    }
    let guarded = GuardedApp::new(app, connection_limits(&config.connections), metrics.clone());
    let mut proxy = Service::new("acestream-edge".to_string(), guarded);
    for addr in &config.listen {
        if !addr.ip().is_loopback() {
            log::warn!(
                "listening on {addr}: the network can reach the streams; the admin routes {}",
                if config.admin_token.is_some() {
                    "need the admin token"
                } else {
                    "answer only loopback clients until acestream.admin_token is set"
                }
            );
        }
        let buffers = L4BufferSettings {
            read: Some(DOWNSTREAM_READ_BUFFER),
            write: None,
        };
        let mut socket = TcpSocketOptions::default();
        socket.tcp_snd_buf = Some(config.connections.client_send_buffer).filter(|n| *n > 0);
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .l4_buffer(buffers)
                .tcp_socket_options(socket),
        );
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "dashboard history",
        HistorySampler {
            sessions: sessions.clone(),
        },
    ));
    server.add_service(background_service(
        "buffer budget",
        BudgetKeeper {
            sessions: sessions.clone(),
        },
    ));
    server.add_service(background_service(
        "session reaper",
        Reaper {
            sessions: sessions.clone(),
            drain,
            exit_when_done: own_process,
        },
    ));
    (
        server,
        Edge {
            sessions,
            engines: pool,
            metrics,
        },
    )
}

/// The connection guard's settings; `max_connections: 0` is derived from the file-descriptor
/// limit, raised to its hard limit first.
fn connection_limits(c: &crate::config::Connections) -> ConnectionLimits {
    let max_connections = if c.max_connections > 0 {
        c.max_connections
    } else {
        let fds = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("cannot read or raise the file-descriptor limit: {e}");
                1024
            }
        };
        // A tenth (at least 256) stays free for engine connections, health probes and logs.
        let reserve = (fds / 10).max(256);
        let n = fds.saturating_sub(reserve).max(64) as usize;
        log::info!("file-descriptor limit {fds}: max_connections {n}");
        n
    };
    ConnectionLimits {
        request_header_timeout: c.request_header_timeout,
        keepalive_timeout: c.keepalive_timeout,
        max_request_head_bytes: c.max_request_head_bytes,
        max_connections,
        proxy_protocol: c.proxy_protocol,
    }
}

/// Samples every session's bitrates for the dashboard every `HISTORY_EVERY`.
struct HistorySampler {
    sessions: Arc<Sessions>,
}

#[async_trait]
impl BackgroundService for HistorySampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(crate::streams::session::HISTORY_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = std::time::Instant::now();
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for x in self.sessions.list() {
                x.sample_history(now, unix_ms);
            }
        }
    }
}

/// Visits every listed channel every `check_interval` (see [`crate::channels::liveness`]).
struct ChannelChecker {
    channels: Arc<crate::channels::Channels>,
    checker: Arc<crate::streams::check::ContentChecker>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    /// The fleet, when in one: only an id's owner checks it.
    fleet: Option<Arc<Cluster>>,
}

#[async_trait]
impl BackgroundService for ChannelChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let run = crate::channels::liveness::run(
            self.channels.clone(),
            self.checker.clone(),
            self.sessions.clone(),
            self.metrics.clone(),
            self.fleet.clone(),
        );
        tokio::select! {
            _ = run => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Keeps all sessions' buffers within `max_buffer_bytes` (see [`crate::streams::budget`]).
struct BudgetKeeper {
    sessions: Arc<Sessions>,
}

#[async_trait]
impl BackgroundService for BudgetKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(crate::streams::budget::CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.sessions.keep_buffer_budget();
        }
    }
}

/// Ends every session when shutdown starts (each sends its stop). Idle sessions end themselves.
struct Reaper {
    sessions: Arc<Sessions>,
    /// After an upgrade, how long sessions may go on serving their viewers.
    drain: std::time::Duration,
    /// Exit the process once every session ended and sent its stop.
    exit_when_done: bool,
}

/// How often the reaper looks whether the sessions are done.
const REAP_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl Reaper {
    /// Waits until no upstream task runs (every session ended and sent its stop), at most `limit`.
    async fn wait_done(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.sessions.upstreams_running() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(REAP_POLL).await;
        }
        true
    }
}

#[async_trait]
impl BackgroundService for Reaper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        if upgrade::is_upgrading() {
            let n = self.sessions.list().len();
            log::info!(
                "upgrade: the new process has the listeners; {n} sessions go on until their viewers leave (at most {:?})",
                self.drain
            );
            if !self.wait_done(self.drain).await {
                log::info!(
                    "upgrade: {} sessions still watched after {:?}: ending them",
                    self.sessions.list().len(),
                    self.drain
                );
            }
        } else {
            log::info!("shutdown: ending {} sessions", self.sessions.list().len());
        }
        self.sessions.shutdown();
        if self.exit_when_done {
            // Each session's stop is bounded by engine_stop_timeout; a margin for the rest.
            let stops = self.sessions.config().pool.engine_stop_timeout * 2 + REAP_POLL * 10;
            self.wait_done(stops).await;
            log::info!("acestream-edge stopped");
            std::process::exit(0);
        }
    }
}

/// SIGTERM and SIGINT both shut down gracefully (sessions send their stops); SIGQUIT hands the
/// listening sockets to a new process (`-u`) first, as in Pingora.
pub struct SignalWatch;

#[async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: graceful shutdown"); ShutdownSignal::GracefulTerminate }
            _ = int.recv() => {
                log::info!("SIGINT: graceful shutdown");
                logging::note_sigint();
                ShutdownSignal::GracefulTerminate
            }
            _ = quit.recv() => {
                log::info!("SIGQUIT: graceful upgrade (the listeners go to the new process; this one serves its viewers until they leave)");
                upgrade::note_upgrade();
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

#[cfg(feature = "test-support")]
mod running;
#[cfg(feature = "test-support")]
pub use running::RunningServer;
