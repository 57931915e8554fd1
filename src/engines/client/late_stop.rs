//! A start call the caller may stop waiting for: if it was given up (a deadline, a client that
//! left) and the engine still answers with a session later, that session is stopped, so no
//! engine is left playing for nobody (engines answer a start after their own prebuffer, which
//! may be later than any deadline of ours).

use super::{ContentKey, EngineEndpoint, EngineError, EngineSession, EngineTimeouts};
use crate::error::EdgeError;
use std::time::Duration;

impl EngineEndpoint {
    /// Starts an engine session of `content` (see [`EngineEndpoint::start_session`]). The call
    /// runs in its own task: if this future is dropped before it answers, a session it answers
    /// with later is stopped (within `stop_timeout`).
    pub async fn start_or_stop_later(
        &self,
        content: &ContentKey,
        timeouts: EngineTimeouts,
        stop_timeout: Duration,
    ) -> Result<EngineSession, EdgeError> {
        let endpoint = self.clone();
        let key = content.clone();
        let call = tokio::spawn(async move { endpoint.start_session(&key, timeouts).await });
        let mut pending = StopIfAbandoned {
            call: Some(call),
            endpoint: self.clone(),
            content: content.to_string(),
            stop_timeout,
        };
        let answer = match pending.call.as_mut() {
            Some(call) => call.await,
            None => unreachable!("set just above"),
        };
        pending.call = None;
        match answer {
            Ok(r) => Ok(r?),
            Err(e) => Err(EdgeError::EngineUnreachable {
                engine: self.to_string(),
                reason: format!("start call failed: {e}"),
            }),
        }
    }
}

/// Owns an engine start call its caller may stop waiting for.
struct StopIfAbandoned {
    call: Option<tokio::task::JoinHandle<Result<EngineSession, EngineError>>>,
    endpoint: EngineEndpoint,
    content: String,
    stop_timeout: Duration,
}

impl Drop for StopIfAbandoned {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let (endpoint, id, timeout) = (
            self.endpoint.clone(),
            self.content.clone(),
            self.stop_timeout,
        );
        tokio::spawn(async move {
            let Ok(Ok(es)) = call.await else { return };
            let Some(cmd) = es.command_path else { return };
            log::info!(
                content_id:% = id;
                "{id}: the engine answered after the start was given up; stopping its session"
            );
            if let Err(e) = endpoint.stop(&cmd, timeout).await {
                log::warn!("{id}: stop of the late engine session failed: {e}");
            }
        });
    }
}
