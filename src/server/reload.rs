//! SIGHUP: read the configuration file again and apply what can change while streams run.
//!
//! The file is validated exactly as at start; a file with any problem is logged (every problem,
//! with its key path) and ignored, and the running configuration stays. A good file replaces,
//! for new requests, sessions and clients: the engine sources (`engines`, `orchestrator`), the
//! `admin_token`, the viewer limits, the channel lists and guides (`channels`), `max_streams_per_engine`, and every setting the sessions
//! read when they start or serve a client (timeouts, buffers, HLS, failover). Running sessions
//! and their clients are not touched. Keys that are wired into listeners, the connection guard
//! or background tasks at start ([`restart_keys`]) keep their running value, with a warning
//! that names them.
//!
//! Owned by the server: the [`Reloader`] background service is the only writer of the
//! [`LiveSettings`] and of the sessions' configuration.

use crate::access::LiveSettings;
use crate::config::{self, Config};
use crate::engines::{EnginePool, EngineSources};
use crate::streams::Sessions;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;

/// Keeps `old`'s value of every restart-only section (see [`crate::config::Reload`]) in `merged`;
/// pushes the keys whose value differed. Each restart-only section is named here once; its keys
/// come from its declaration.
fn keep_restart_values(old: &Config, merged: &mut Config, kept: &mut Vec<&'static str>) {
    if merged.listen != old.listen {
        kept.push("listen");
        merged.listen = old.listen.clone();
    }
    if merged.cluster != old.cluster {
        kept.push("cluster");
        merged.cluster = old.cluster.clone();
    }
    kept.extend(merged.connections.differing(&old.connections));
    merged.connections = old.connections.clone();
    kept.extend(merged.access.differing(&old.access));
    merged.access = old.access.clone();
    kept.extend(merged.probes.differing(&old.probes));
    merged.probes = old.probes.clone();
    kept.extend(merged.checks.differing(&old.checks));
    merged.checks = old.checks.clone();
    kept.extend(merged.dvr.differing(&old.dvr));
    merged.dvr = old.dvr.clone();
}

// The sections kept above are the restart-only ones, as they declare themselves.
const _: () = {
    use config::Reload::AtRestartOnly;
    assert!(matches!(config::Connections::RELOAD, AtRestartOnly));
    assert!(matches!(config::AccessRules::RELOAD, AtRestartOnly));
    assert!(matches!(config::Probes::RELOAD, AtRestartOnly));
    assert!(matches!(config::Checks::RELOAD, AtRestartOnly));
    assert!(matches!(config::Dvr::RELOAD, AtRestartOnly));
};

/// Keys applied only at start: a reload that changes them keeps the running value and says so.
/// The sections Pingora reads (`threads`, `pid_file`, `upgrade_sock`, …) are never re-read.
pub fn restart_keys() -> Vec<&'static str> {
    let mut keys = vec!["listen", "cluster", "orchestrator.report_events"];
    keys.extend(config::Connections::KEYS);
    keys.extend(config::AccessRules::KEYS);
    keys.extend(config::Probes::KEYS);
    keys.extend(config::Checks::KEYS);
    keys.extend(config::Dvr::KEYS);
    keys
}

/// Takes `new` but keeps `old`'s value of every [`restart_keys`] entry; returns the merged
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
    engines.set_max_streams(merged.pool.max_streams_per_engine);
    live.admin_token.set(merged.admin_token.clone());
    live.limits.set_settings(merged.limits.clone());
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
    /// The channel lists and guides.
    pub channels: Arc<crate::channels::Channels>,
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
        self.channels
            .reload(self.sessions.config().channels.clone());
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
        let mut new = Config {
            listen: vec!["127.0.0.1:9999".parse().unwrap()],
            admin_token: Some("new".into()),
            ..Config::default()
        };
        new.limits.max_clients_per_ip = std::num::NonZeroUsize::new(3);
        new.probes.engine_cache_ttl = std::time::Duration::from_secs(9);
        let (merged, kept) = merge(&old, new);
        assert_eq!(kept, vec!["listen", "engine_cache_ttl"]);
        assert_eq!(merged.listen, old.listen);
        assert_eq!(merged.admin_token.as_deref(), Some("new"));
        assert_eq!(
            merged.limits.max_clients_per_ip,
            std::num::NonZeroUsize::new(3)
        );
        for k in kept {
            assert!(restart_keys().contains(&k));
        }
    }
}
