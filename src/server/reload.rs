//! SIGHUP: read the configuration file again and apply what can change while streams run.
//!
//! The file is validated exactly as at start; a file with any problem is logged (every problem,
//! with its key path) and ignored, and the running configuration stays. A good file replaces,
//! for new requests, sessions and clients: the engine sources (`engines`, `orchestrator`), the
//! `admin_token`, the viewer limits, `max_streams_per_engine`, and every setting the sessions
//! read when they start or serve a client (timeouts, buffers, HLS, failover). Running sessions
//! and their clients are not touched. Keys that are wired into listeners, the connection guard
//! or background tasks at start ([`RESTART_KEYS`]) keep their running value, with a warning
//! that names them.
//!
//! Owned by the server: the [`Reloader`] background service is the only writer of the
//! [`LiveSettings`] and of the sessions' configuration.

use crate::access::limits::LimitSettings;
use crate::access::LiveSettings;
use crate::config::{self, Config};
use crate::engines::{EnginePool, EngineSources};
use crate::streams::Sessions;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;

/// Declares the keys applied only at start, each once: the field and its YAML key make both
/// [`RESTART_KEYS`] and the merge that keeps their running values.
macro_rules! restart_keys {
    ($($field:ident => $key:literal),* $(,)?) => {
        /// Keys applied only at start: a reload that changes them keeps the running value and
        /// says so. The sections Pingora reads (`threads`, `pid_file`, `upgrade_sock`, …) are
        /// never re-read.
        pub const RESTART_KEYS: &[&str] = &[$($key,)* "orchestrator.report_events"];

        /// Keeps `old`'s value of every restart key in `merged`; pushes the keys that differed.
        fn keep_restart_values(old: &Config, merged: &mut Config, kept: &mut Vec<&'static str>) {
            $(
                if merged.$field != old.$field {
                    kept.push($key);
                    merged.$field = old.$field.clone();
                }
            )*
        }
    };
}

restart_keys!(
    listen => "listen",
    cluster => "cluster",
    trusted_proxies => "trusted_proxies",
    proxy_protocol => "proxy_protocol",
    max_connections => "max_connections",
    request_header_timeout => "request_header_timeout",
    keepalive_timeout => "keepalive_timeout",
    max_request_head_bytes => "max_request_head_bytes",
    client_send_buffer => "client_send_buffer",
    passthrough => "passthrough",
    stream_token_secret => "stream_token_secret",
    health_check_interval => "health_check_interval",
    engine_cache_ttl => "engine_cache_ttl",
    engine_connect_timeout => "engine_connect_timeout",
    max_concurrent_checks => "max_concurrent_checks",
    check_timeout => "check_timeout",
);

/// Takes `new` but keeps `old`'s value of every [`RESTART_KEYS`] entry; returns the merged
/// configuration and the restart keys whose value differed.
pub fn merge(old: &Config, new: Config) -> (Config, Vec<&'static str>) {
    let mut merged = new;
    let mut kept = Vec::new();
    keep_restart_values(old, &mut merged, &mut kept);
    // The event reporter was built for the orchestrator at start: its URL may change (engines
    // are listed from the new one) but whether events are sent may not.
    if let (Some(m), Some(o)) = (merged.orchestrator.as_mut(), old.orchestrator.as_ref()) {
        if m.report_events != o.report_events {
            kept.push("orchestrator.report_events");
            m.report_events = o.report_events;
        }
    }
    (merged, kept)
}

/// Applies a validated configuration to a running proxy; returns the restart keys it kept.
pub fn apply(
    new: Config,
    sessions: &Sessions,
    engines: &EnginePool,
    live: &LiveSettings,
) -> Vec<&'static str> {
    let old = sessions.config();
    let (merged, kept) = merge(&old, new);
    engines.set_sources(EngineSources {
        statics: merged.engines.clone(),
        orchestrator: merged.orchestrator.clone(),
    });
    engines.set_max_streams(merged.max_streams_per_engine);
    live.admin_token.set(merged.admin_token.clone());
    live.limits.set_settings(LimitSettings::of(&merged));
    sessions.set_config(merged);
    kept
}

/// Re-reads `path` on every SIGHUP and applies it.
pub struct Reloader {
    /// The file given with `-c`.
    pub path: PathBuf,
    /// The sessions (their configuration).
    pub sessions: Arc<Sessions>,
    /// The engine pool (its sources and capacity).
    pub engines: Arc<EnginePool>,
    /// The admin token and the limits.
    pub live: LiveSettings,
}

impl Reloader {
    /// One reload: read, validate, apply or keep.
    pub fn reload(&self) {
        let loaded = match config::load_file(&self.path) {
            Ok(l) => l,
            Err(e) => {
                let problems = e.to_string().replace('\n', "; ");
                log::error!(
                    "SIGHUP: {} not reloaded, the running configuration stays: {problems}",
                    self.path.display()
                );
                return;
            }
        };
        let engines = loaded.acestream.engines.len();
        crate::server::logging::set_format(loaded.acestream.log_format);
        let kept = apply(loaded.acestream, &self.sessions, &self.engines, &self.live);
        if !kept.is_empty() {
            log::warn!(
                "SIGHUP: changes to {} need a restart (or `-u` upgrade); their running values stay",
                kept.join(", ")
            );
        }
        log::info!(
            "SIGHUP: {} reloaded ({engines} static engines); new sessions and requests use it, running sessions go on",
            self.path.display()
        );
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch SIGHUP (no configuration reload): {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Restart-only keys keep their running value and are named; live keys take the new one.
    #[test]
    fn merge_keeps_restart_keys() {
        let old = Config::default();
        let new = Config {
            listen: vec!["127.0.0.1:9999".parse().unwrap()],
            admin_token: Some("new".into()),
            max_clients_per_ip: 3,
            ..Config::default()
        };
        let (merged, kept) = merge(&old, new);
        assert_eq!(kept, vec!["listen"]);
        assert_eq!(merged.listen, old.listen);
        assert_eq!(merged.admin_token.as_deref(), Some("new"));
        assert_eq!(merged.max_clients_per_ip, 3);
        for k in kept {
            assert!(RESTART_KEYS.contains(&k));
        }
    }
}
