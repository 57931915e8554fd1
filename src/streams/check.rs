//! Is a content id playable? One check, for `/ace/check` and the channel checker: a live
//! session of the id answers from what it knows and starts nothing; otherwise a short engine
//! session is opened on the best engine (counted against it while it runs), its first stream byte
//! awaited within `check_timeout`, one stat sample taken, and the session stopped, whatever
//! happened. [`ContentChecker`] owns the `max_concurrent_checks` slots both share.

use crate::config::Config;
use crate::engines::{ContentKey, EnginePool, EngineTimeouts};
use crate::error::{EdgeError, NoEngine};
use crate::streams::{Phase, Sessions};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// What a check found.
#[derive(Debug, Serialize, Default, Clone)]
pub struct CheckResult {
    /// The id checked.
    pub id: String,
    /// A stream byte came (or a live session streams).
    pub available: bool,
    /// A live session answered (nothing was started).
    pub from_session: bool,
    /// The engine's status word (`dl`, `prebuf`, …).
    pub status: Option<String>,
    /// Peers the engine saw.
    pub peers: Option<u64>,
    /// The engine's download speed, KB/s.
    pub speed_down: Option<u64>,
    /// Time from the start to the first stream byte.
    pub first_byte_ms: Option<u64>,
    /// Why it is not available.
    pub error: Option<String>,
}

/// The checks' slots and what they need.
pub struct ContentChecker {
    slots: Arc<Semaphore>,
    engines: Arc<EnginePool>,
    config: Arc<Config>,
}

impl ContentChecker {
    /// A checker with `max_concurrent_checks` slots.
    pub fn new(engines: Arc<EnginePool>, config: Arc<Config>) -> Self {
        ContentChecker {
            slots: Arc::new(Semaphore::new(config.checks.max_concurrent_checks.max(1))),
            engines,
            config,
        }
    }

    /// A check slot if one is free now.
    pub fn try_slot(&self) -> Option<SemaphorePermit<'_>> {
        self.slots.try_acquire().ok()
    }

    /// A check slot, waiting for one (held by a task of its own).
    pub async fn slot_owned(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// The pool's engines (for a caller that must leave an engine slot free).
    pub fn engines(&self) -> &Arc<EnginePool> {
        &self.engines
    }

    /// What a live session of `content` knows, if there is one (nothing is started).
    pub fn from_session(sessions: &Sessions, content: &ContentKey) -> Option<CheckResult> {
        let x = sessions.get(&content.to_string())?;
        let st = x.state();
        let stats = st.engine_stats.as_ref().map(|(s, _)| s.clone());
        Some(CheckResult {
            id: content.value.clone(),
            available: matches!(x.phase(), Phase::Streaming),
            from_session: true,
            status: stats.as_ref().and_then(|s| s.status.clone()),
            peers: stats.as_ref().and_then(|s| s.peers),
            speed_down: stats.as_ref().and_then(|s| s.speed_down),
            first_byte_ms: st.first_byte_ms,
            error: x.error_text(),
        })
    }

    /// Opens a short engine session for `content` and stops it again (the caller holds a slot).
    pub async fn check(&self, content: &ContentKey) -> CheckResult {
        let checked = self.check_leaving(content, 0).await;
        checked.unwrap_or_else(|| CheckResult {
            id: content.value.clone(),
            ..CheckResult::default()
        })
    }

    /// [`Self::check`], unless the engine session would leave `keep_free` or fewer free engine
    /// stream slots: then `None`, and nothing was started.
    pub async fn check_leaving(
        &self,
        content: &ContentKey,
        keep_free: usize,
    ) -> Option<CheckResult> {
        let mut result = CheckResult {
            id: content.value.clone(),
            ..CheckResult::default()
        };
        let (engine, _lease) = match self.engines.acquire_leaving(&[], keep_free).await {
            Ok(v) => v,
            Err(EdgeError::NoEngine(NoEngine::SlotsKept(_))) => return None,
            Err(e) => {
                result.error = Some(e.public_text());
                return Some(result);
            }
        };
        let t = EngineTimeouts {
            connect: self.config.probes.engine_connect_timeout,
            read: self.config.checks.check_timeout,
        };
        // The start call itself may outlive the check (engines answer it after their prebuffer):
        // it runs on with the engines' own timeout, so that a late session is stopped.
        let start_timeouts = EngineTimeouts {
            read: self
                .config
                .pool
                .engine_read_timeout
                .max(self.config.checks.check_timeout),
            ..t
        };
        let started = Instant::now();
        // A start the check gives up on is stopped when the engine answers after all.
        let es = match tokio::time::timeout(
            self.config.checks.check_timeout,
            engine.endpoint.start_or_stop_later(
                content,
                start_timeouts,
                self.config.pool.engine_stop_timeout,
            ),
        )
        .await
        {
            Ok(Ok(es)) => es,
            Ok(Err(e)) => {
                result.error = Some(e.public_text());
                return Some(result);
            }
            Err(_) => {
                result.error = Some("the engine did not answer in time".into());
                return Some(result);
            }
        };
        // From here on, whatever happens, the engine session is stopped.
        let deadline = started + self.config.checks.check_timeout;
        let first_byte = tokio::time::timeout_at(deadline.into(), async {
            let mut stream = engine.endpoint.open_stream(&es, t).await.ok()?;
            loop {
                match stream.next_chunk().await {
                    Ok(Some(b)) if b.is_empty() => continue,
                    Ok(Some(_)) => return Some(started.elapsed()),
                    _ => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        result.first_byte_ms = first_byte.map(|d| d.as_millis() as u64);
        result.available = first_byte.is_some();
        if let Some(path) = &es.stat_path {
            if let Ok(Some(stat)) = engine.endpoint.stat(path, Duration::from_secs(3)).await {
                result.status = stat.status;
                result.peers = stat.peers;
                result.speed_down = stat.speed_down;
            }
        }
        if !result.available {
            result.error = Some("no stream byte within check_timeout".into());
        }
        if let Some(cmd) = &es.command_path {
            if let Err(e) = engine
                .endpoint
                .stop(cmd, self.config.pool.engine_stop_timeout)
                .await
            {
                log::warn!("check of {content}: stop failed: {e}");
            }
        }
        Some(result)
    }
}
