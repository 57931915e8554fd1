//! [`RunningServer`]: the proxy on its own thread, started and stopped in-process (tests,
//! benches, embedding). Behind the `test-support` feature: the release server never needs it.

use super::{build, Edge};
use crate::config::{Config, LoadedConfig};
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
fn answers_as_edge(addr: SocketAddr, proxy_protocol: bool) -> bool {
    use std::io::{Read, Write};
    const PROBE: &str = "/__acestream_edge_ready";
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if s.local_addr().ok() == Some(addr) {
        return false; // a self-connect
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut probe = Vec::new();
    if proxy_protocol {
        // A listener behind a front expects the front's PROXY header first.
        if let Ok(local) = s.local_addr() {
            probe = super::proxy_protocol::v1_header(local, addr);
        }
    }
    probe.extend_from_slice(format!("GET {PROBE} HTTP/1.0\r\nHost: probe\r\n\r\n").as_bytes());
    if s.write_all(&probe).is_err() {
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
        let proxy_protocol = config.connections.proxy_protocol;
        let (mut server, edge) = build(
            None,
            LoadedConfig {
                server: conf,
                acestream: config,
                warnings: Vec::new(),
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
        while !answers_as_edge(addr, proxy_protocol) {
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
