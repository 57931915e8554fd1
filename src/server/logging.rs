//! The process's logger: `env_logger` with `RUST_LOG` (default `info`), plus two corrections.
//!
//! - Pingora logs "SIGTERM received, gracefully exiting" for every graceful terminate. We shut
//!   down gracefully on SIGINT too (sessions must send their engine stops, which Pingora's fast
//!   shutdown would skip), so after a SIGINT that line would be false:
//!   [`SignalWatch`](super::SignalWatch) logs the real signal and marks it here, and this logger
//!   drops Pingora's line.
//! - Pingora logs every client that breaks off or botches its request ("Fail to proxy:
//!   Downstream ...": a head cut by `request_header_timeout`, a malformed request) at error
//!   level. Those are the client's doing, and an attacker could fill the log with them, so they
//!   are logged at debug.

use log::{Log, Metadata, Record};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a SIGINT started the shutdown.
static SIGINT_RECEIVED: AtomicBool = AtomicBool::new(false);

/// Pingora's line for a graceful terminate, and the module that logs it.
const PINGORA_TERM_LINE: &str = "SIGTERM received, gracefully exiting";
const PINGORA_SERVER_TARGET: &str = "pingora_core::server";

/// Records that the shutdown in progress came from SIGINT.
pub(crate) fn note_sigint() {
    SIGINT_RECEIVED.store(true, Ordering::Relaxed);
}

struct EdgeLogger {
    inner: env_logger::Logger,
}

/// Pingora's proxy module, and the start of its line for a request a client broke off.
const PINGORA_PROXY_TARGET: &str = "pingora_proxy";
const DOWNSTREAM_FAILURE: &str = "Fail to proxy: Downstream";

impl EdgeLogger {
    fn is_false_sigterm_line(record: &Record) -> bool {
        SIGINT_RECEIVED.load(Ordering::Relaxed)
            && record.target() == PINGORA_SERVER_TARGET
            && record.args().as_str() == Some(PINGORA_TERM_LINE)
    }

    /// A client's failure that Pingora logs as an error: the level it is logged at instead.
    fn is_client_failure(record: &Record) -> bool {
        record.level() == log::Level::Error
            && record.target().starts_with(PINGORA_PROXY_TARGET)
            && record.args().to_string().starts_with(DOWNSTREAM_FAILURE)
    }
}

impl Log for EdgeLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.inner.matches(record) || Self::is_false_sigterm_line(record) {
            return;
        }
        if Self::is_client_failure(record) {
            let demoted = Metadata::builder()
                .level(log::Level::Debug)
                .target(record.target())
                .build();
            if self.inner.enabled(&demoted) {
                self.inner.log(
                    &Record::builder()
                        .metadata(demoted)
                        .args(*record.args())
                        .module_path(record.module_path())
                        .file(record.file())
                        .line(record.line())
                        .build(),
                );
            }
            return;
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger: `RUST_LOG` as `env_logger` reads it, `info` when unset. A second call
/// (a logger already installed) does nothing.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let level = inner.filter();
    if log::set_boxed_logger(Box::new(EdgeLogger { inner })).is_ok() {
        log::set_max_level(level);
    }
}
