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
//!
//! With `log_format: json` ([`set_format`]) each line is one JSON object: `ts` (RFC 3339, UTC,
//! milliseconds), `level`, `target`, `msg`, and the fields a line carries (`content_id`,
//! `engine`, `client`, `reason`, as `key = value` pairs of the `log` macros; a line without a
//! `content_id` field that names a 40-hex id gets it from its text). `RUST_LOG` filters either
//! format.

use log::{Log, Metadata, Record};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when lines are JSON objects (`log_format: json`).
static JSON: AtomicBool = AtomicBool::new(false);

pub use crate::config::LogFormat;

/// Switches the format of every line from now on (set from the configuration once it is read;
/// lines before that are text).
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// A record as one JSON line.
pub fn json_line(record: &Record, now: std::time::SystemTime) -> String {
    struct Fields(serde_json::Map<String, serde_json::Value>);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            self.0.insert(
                key.to_string(),
                serde_json::Value::String(value.to_string()),
            );
            Ok(())
        }
    }
    let msg = record.args().to_string();
    let mut fields = Fields(serde_json::Map::new());
    fields.0.insert(
        "ts".into(),
        humantime::format_rfc3339_millis(now).to_string().into(),
    );
    fields.0.insert(
        "level".into(),
        record.level().as_str().to_ascii_lowercase().into(),
    );
    fields.0.insert("target".into(), record.target().into());
    let _ = record.key_values().visit(&mut fields);
    if !fields.0.contains_key("content_id") {
        if let Some(id) = hex_id_in(&msg) {
            fields.0.insert("content_id".into(), id.into());
        }
    }
    fields.0.insert("msg".into(), msg.into());
    serde_json::Value::Object(fields.0).to_string()
}

/// The first 40-hex word of a line (a content id or infohash).
fn hex_id_in(text: &str) -> Option<&str> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 40)
}

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
        if JSON.load(Ordering::Relaxed) {
            if Self::is_client_failure(record) {
                return; // debug-level in JSON too; RUST_LOG=debug shows it as text
            }
            let line = json_line(record, std::time::SystemTime::now());
            let _ = writeln!(std::io::stderr().lock(), "{line}");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON line has the time, level and message, the line's fields, and a content id found
    /// in the text when no field names one.
    #[test]
    fn json_lines_carry_fields() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let kvs: &[(&str, &str)] = &[("engine", "127.0.0.1:6878"), ("reason", "idle")];
        let id = "ab".repeat(20);
        let line = json_line(
            &Record::builder()
                .level(log::Level::Info)
                .target("acestream_edge::streams")
                .args(format_args!("session {id} stopped"))
                .key_values(&kvs)
                .build(),
            now,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["level"], "info");
        assert_eq!(v["engine"], "127.0.0.1:6878");
        assert_eq!(v["reason"], "idle");
        assert_eq!(v["content_id"], "ab".repeat(20));
        assert_eq!(v["msg"], format!("session {} stopped", "ab".repeat(20)));
    }
}
