//! The process's logger: `env_logger` with `RUST_LOG` (default `info`), plus one correction.
//!
//! Pingora logs "SIGTERM received, gracefully exiting" for every graceful terminate. We shut down
//! gracefully on SIGINT too (sessions must send their engine stops, which Pingora's fast shutdown
//! would skip), so after a SIGINT that line would be false: [`SignalWatch`](super::SignalWatch)
//! logs the real signal and marks it here, and this logger drops Pingora's line.

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

impl EdgeLogger {
    fn is_false_sigterm_line(record: &Record) -> bool {
        SIGINT_RECEIVED.load(Ordering::Relaxed)
            && record.target() == PINGORA_SERVER_TARGET
            && record.args().as_str() == Some(PINGORA_TERM_LINE)
    }
}

impl Log for EdgeLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if self.inner.matches(record) && !Self::is_false_sigterm_line(record) {
            self.inner.log(record);
        }
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
