//! `GET /ace/check?id=<content id>` (an admin route): is this id playable, without keeping an
//! engine busy? For playlist scrapers, which check hundreds of channels.
//!
//! A live session of the id answers from what it knows and starts nothing. Otherwise a short
//! engine session is opened on the best engine (counted against it while it runs): its first
//! stream byte is awaited within `check_timeout`, one stat sample is taken, and the session is
//! stopped, whatever happened. At most `max_concurrent_checks` run at once; more get `429`.

use super::getstream::content_id;
use super::{write_error, write_json};
use crate::config::Config;
use crate::engines::{EnginePool, EngineTimeouts};
use crate::error::EdgeError;
use crate::streams::{Phase, Sessions};
use pingora::proxy::Session as HttpSession;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A check asked again this soon is told to wait (a scraper retrying at once only adds load).
const CHECK_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The answer.
#[derive(Debug, Serialize, Default)]
pub struct CheckResult {
    id: String,
    available: bool,
    /// A live session answered (nothing was started).
    from_session: bool,
    status: Option<String>,
    peers: Option<u64>,
    speed_down: Option<u64>,
    first_byte_ms: Option<u64>,
    /// Why it is not available.
    error: Option<String>,
}

/// The checker: its concurrency limit and what it needs.
pub struct Checker {
    slots: Semaphore,
    engines: Arc<EnginePool>,
    config: Arc<Config>,
}

impl Checker {
    /// A checker with `max_concurrent_checks` slots.
    pub fn new(engines: Arc<EnginePool>, config: Arc<Config>) -> Self {
        Checker {
            slots: Semaphore::new(config.checks.max_concurrent_checks.max(1)),
            engines,
            config,
        }
    }

    /// Answers a check request (the caller checked the admin rights).
    pub async fn serve(&self, s: &mut HttpSession, sessions: &Sessions) -> pingora::Result<()> {
        let content = match content_id(s.req_header().uri.query()) {
            Ok(c) => c,
            Err(e) => return write_error(s, &e).await,
        };
        let result = if let Some(x) = sessions.get(&content.to_string()) {
            let st = x.state();
            let stats = st.engine_stats.as_ref().map(|(s, _)| s.clone());
            CheckResult {
                id: content.value.clone(),
                available: matches!(x.phase(), Phase::Streaming),
                from_session: true,
                status: stats.as_ref().and_then(|s| s.status.clone()),
                peers: stats.as_ref().and_then(|s| s.peers),
                speed_down: stats.as_ref().and_then(|s| s.speed_down),
                first_byte_ms: st.first_byte_ms,
                error: x.error_text(),
            }
        } else {
            let Ok(_slot) = self.slots.try_acquire() else {
                let e = EdgeError::TooManyRequests {
                    message: format!(
                        "at most {} checks run at once",
                        self.config.checks.max_concurrent_checks
                    ),
                    retry_after: CHECK_RETRY_AFTER,
                };
                return write_error(s, &e).await;
            };
            self.check(&content).await
        };
        write_json(s, 200, serde_json::to_vec(&result).unwrap_or_default()).await
    }

    /// Opens a short engine session for `content` and stops it again.
    async fn check(&self, content: &crate::engines::ContentKey) -> CheckResult {
        let mut result = CheckResult {
            id: content.value.clone(),
            ..CheckResult::default()
        };
        let (engine, _lease) = match self.engines.acquire(&[]).await {
            Ok(v) => v,
            Err(e) => {
                result.error = Some(e.public_text());
                return result;
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
                return result;
            }
            Err(_) => {
                result.error = Some("the engine did not answer in time".into());
                return result;
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
        result
    }
}
