//! Telling the orchestrator about our sessions: `POST /events/stream_started` once an engine
//! accepted a session, `POST /events/stream_ended` when that engine session ends (shapes in
//! `docs/engine-api.md` §12), so its dashboard, autoscaler and stream counts see them.
//!
//! Fire and forget: events go into a bounded queue that one task drains, each sent with a short
//! timeout and a few retries. An orchestrator that is down or slow never delays or fails a
//! session; when the queue is full, the newest event is dropped and counted.

use crate::config::OrchestratorConfig;
use crate::metrics::Metrics;
use crate::sync::Lock;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events waiting at most: at a few events per session, a thousand is minutes of an
/// orchestrator outage on a busy proxy, and a few hundred kilobytes.
pub const EVENT_QUEUE: usize = 1024;

/// Attempts per event, and the wait before each retry.
const ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// One attempt waits at most this long.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// An event for the orchestrator: its path and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestratorEvent {
    /// `/events/stream_started` or `/events/stream_ended`.
    pub path: &'static str,
    /// The body.
    pub body: serde_json::Value,
}

impl OrchestratorEvent {
    /// `stream_started`: `engine` accepted `session` for `content`.
    pub fn started(
        engine: &super::Engine,
        content: &super::ContentKey,
        session: &super::EngineSession,
    ) -> Self {
        let key_type = match content.kind {
            super::ContentKind::ContentId => "content_id",
            super::ContentKind::Infohash => "infohash",
        };
        let url = |path: &Option<String>| {
            path.as_ref()
                .map(|p| format!("http://{}{p}", engine.endpoint))
        };
        OrchestratorEvent {
            path: "/events/stream_started",
            body: serde_json::json!({
                "container_id": engine.container_id,
                "engine": {"host": engine.endpoint.host, "port": engine.endpoint.port},
                "stream": {"key_type": key_type, "key": content.value},
                "session": {
                    "playback_session_id": session.playback_session_id,
                    "stat_url": url(&session.stat_path),
                    "command_url": url(&session.command_path),
                    "is_live": session.is_live as u8,
                },
                "labels": {},
            }),
        }
    }

    /// `stream_ended`: that engine session ended, and why.
    pub fn ended(container_id: Option<&str>, stream_id: &str, reason: &str) -> Self {
        OrchestratorEvent {
            path: "/events/stream_ended",
            body: serde_json::json!({
                "container_id": container_id,
                "stream_id": stream_id,
                "reason": reason,
            }),
        }
    }
}

/// The queue of events to the orchestrator (a no-op without one, or with `report_events` off).
#[derive(Debug)]
pub struct EventReporter {
    tx: Option<mpsc::Sender<OrchestratorEvent>>,
    /// The receiving end until the sending task starts (on the first event, inside the runtime).
    rx: Mutex<Option<(mpsc::Receiver<OrchestratorEvent>, OrchestratorConfig)>>,
    metrics: Arc<Metrics>,
}

impl EventReporter {
    /// A reporter to `orchestrator` (if set and `report_events`), with a queue of `capacity`.
    pub fn new(
        orchestrator: Option<&OrchestratorConfig>,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        match orchestrator.filter(|o| o.report_events) {
            Some(o) => {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                EventReporter {
                    tx: Some(tx),
                    rx: Mutex::new(Some((rx, o.clone()))),
                    metrics,
                }
            }
            None => EventReporter {
                tx: None,
                rx: Mutex::new(None),
                metrics,
            },
        }
    }

    /// Queues an event; never waits. Must run inside a tokio runtime.
    pub fn report(&self, event: OrchestratorEvent) {
        let Some(tx) = &self.tx else {
            return;
        };
        if let Some((rx, o)) = self.rx.locked().take() {
            tokio::spawn(send_events(rx, o, self.metrics.clone()));
        }
        if tx.try_send(event).is_err() {
            self.metrics
                .orchestrator_events
                .with_label_values(&["dropped"])
                .inc();
        }
    }
}

/// Sends queued events one after another, each with its retries.
async fn send_events(
    mut rx: mpsc::Receiver<OrchestratorEvent>,
    o: OrchestratorConfig,
    metrics: Arc<Metrics>,
) {
    while let Some(event) = rx.recv().await {
        let body = serde_json::to_vec(&event.body).unwrap_or_default();
        let mut outcome = "failed";
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RETRY_AFTER * attempt).await;
            }
            let sent = tokio::time::timeout(
                SEND_TIMEOUT,
                super::discovery::orchestrator_request(&o, event.path, Some(body.clone())),
            )
            .await;
            match sent {
                Ok(Ok((status, _))) if status < 300 => {
                    outcome = "sent";
                    break;
                }
                Ok(Ok((status, _))) => log::debug!("orchestrator {}: HTTP {status}", event.path),
                Ok(Err(e)) => log::debug!("orchestrator {}: {e}", event.path),
                Err(_) => log::debug!("orchestrator {}: timed out", event.path),
            }
        }
        metrics
            .orchestrator_events
            .with_label_values(&[outcome])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the orchestrator unreachable, reporting never waits, and a full queue drops (and
    /// counts) what does not fit.
    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let o = OrchestratorConfig {
            url: "http://127.0.0.1:9".into(),
            api_key: None,
            report_events: true,
            headers: Default::default(),
        };
        let r = EventReporter::new(Some(&o), 4, metrics.clone());
        let t = std::time::Instant::now();
        for i in 0..20 {
            r.report(OrchestratorEvent::ended(
                None,
                &format!("{i}"),
                "idle_timeout",
            ));
        }
        assert!(t.elapsed() < Duration::from_millis(100), "never waits");
        let dropped = metrics
            .orchestrator_events
            .with_label_values(&["dropped"])
            .get();
        assert!((15..=16).contains(&dropped), "dropped {dropped}");
        let off = EventReporter::new(None, 4, metrics.clone());
        off.report(OrchestratorEvent::ended(None, "x", "y"));
        assert_eq!(
            metrics
                .orchestrator_events
                .with_label_values(&["dropped"])
                .get(),
            dropped,
            "no orchestrator: nothing queued"
        );
    }
}
