//! Bootstrap: builds the Pingora [`Server`] with the proxy service and the session reaper, and
//! runs it either from `main` (signals) or in-process for tests ([`RunningServer`]).

use crate::config::{Config, LoadedConfig};
use crate::engines::{self, EnginePool};
use crate::metrics::Metrics;
use crate::proxy::EdgeProxy;
use crate::streams::Sessions;
use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Per-connection read buffer: requests are tiny, and Pingora's 64 KiB default costs 64 MiB per
/// thousand viewers (pingora-notes §9.6).
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
    let LoadedConfig {
        server: mut conf,
        acestream,
    } = loaded;
    conf.grace_period_seconds
        .get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
    let config = Arc::new(acestream);
    let server = Server::new_with_opt_and_conf(opt, conf);
    build_services(server, config)
}

fn build_services(mut server: Server, config: Arc<Config>) -> (Server, Edge) {
    let (lb, meta) = engines::load_balancer(&config);
    let lb_service = background_service("engine pool", lb);
    let pool = Arc::new(EnginePool::new(lb_service.task(), meta, &config));
    server.add_service(lb_service);
    let metrics = Arc::new(Metrics::new());
    let sessions = Arc::new(Sessions::new(config.clone(), pool.clone(), metrics.clone()));
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        EdgeProxy::new(
            sessions.clone(),
            pool.clone(),
            metrics.clone(),
            config.clone(),
        ),
        "acestream-edge",
    );
    for addr in &config.listen {
        let buffers = L4BufferSettings {
            read: Some(DOWNSTREAM_READ_BUFFER),
            write: None,
        };
        let mut socket = TcpSocketOptions::default();
        socket.tcp_snd_buf = Some(config.client_send_buffer).filter(|n| *n > 0);
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .l4_buffer(buffers)
                .tcp_socket_options(socket),
        );
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "session reaper",
        Reaper {
            sessions: sessions.clone(),
            interval: config.session_cleanup_interval,
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

/// Ends idle sessions whose timer was lost, and ends every session when shutdown starts.
struct Reaper {
    sessions: Arc<Sessions>,
    interval: Duration,
}

#[async_trait]
impl BackgroundService for Reaper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    log::info!("shutdown: ending {} sessions", self.sessions.list().len());
                    self.sessions.shutdown();
                    return;
                }
                _ = tokio::time::sleep(self.interval) => {
                    let n = self.sessions.reap();
                    if n > 0 {
                        log::info!("reaper ended {n} idle sessions");
                    }
                }
            }
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
            _ = int.recv() => { log::info!("SIGINT: graceful shutdown"); ShutdownSignal::GracefulTerminate }
            _ = quit.recv() => { log::info!("SIGQUIT: graceful upgrade"); ShutdownSignal::GracefulUpgrade }
        }
    }
}

/// A server running on its own thread, for tests and embedding. Stop it with
/// [`RunningServer::stop`]; nothing here calls `process::exit`.
pub struct RunningServer {
    /// The first listen address.
    pub addr: SocketAddr,
    /// The shared state (sessions).
    pub edge: Arc<Edge>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// True once `addr` answers a probe the way this proxy does. A bare connect is not enough: on
/// loopback a connect to a port nobody listens on can connect to itself, and a port released
/// for us may have been taken by another server.
fn answers_as_edge(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    const PROBE: &str = "/__acestream_edge_ready";
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if s.local_addr().ok() == Some(addr) {
        return false; // a self-connect
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {PROBE} HTTP/1.0\r\nHost: probe\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).contains(&format!("no route {PROBE}"))
}

struct NotifySignal(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for NotifySignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::GracefulTerminate
    }
}

impl RunningServer {
    /// Starts the proxy with `config` (and test-friendly Pingora settings) and returns once it
    /// accepts connections.
    pub fn start(config: Config) -> std::io::Result<RunningServer> {
        let conf = ServerConf {
            threads: 2,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..Default::default()
        };
        let addr = *config
            .listen
            .first()
            .ok_or_else(|| std::io::Error::other("no listen address"))?;
        let (mut server, edge) = build(
            None,
            LoadedConfig {
                server: conf,
                acestream: config,
            },
        );
        let edge = Arc::new(edge);
        server.bootstrap();
        let stop = Arc::new(tokio::sync::Notify::new());
        let signal = NotifySignal(stop.clone());
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            });
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !answers_as_edge(addr) {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "the proxy did not answer on {addr} (not listening, or the port is another server's)"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RunningServer {
            addr,
            edge,
            stop,
            thread: Some(thread),
        })
    }

    /// Graceful shutdown; returns when the server thread has finished.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.notify_one();
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
