//! HLS viewers: they hold no connection, so a viewer is present while it keeps asking, and the
//! session is let go when every viewer has stopped asking.

use super::*;

impl Sessions {
    /// An HLS request of `client` (with its User-Agent `agent`) for `content`: its session,
    /// with the viewer counted in as present. A viewer seen before is only marked present again;
    /// a new one is first admitted by `admit` (told whether its request starts a session and how
    /// many exist; what it returns is held while the viewer is present), and then attached,
    /// starting the session if `start` and there is none (else `404`).
    pub fn hls_viewer(
        self: &Arc<Self>,
        content: &ContentKey,
        client: Option<ClientAddr>,
        agent: &str,
        start: bool,
        admit: impl FnOnce(
            bool,
            usize,
        ) -> Result<Option<Box<dyn std::any::Any + Send + Sync>>, EdgeError>,
    ) -> Result<Arc<StreamSession>, EdgeError> {
        let key = hls_key(content, client, agent);
        let now = std::time::Instant::now();
        let mut viewers = self.lock_hls_viewers();
        if let Some(v) = viewers.0.get_mut(&key) {
            if !v.handle.session().is_ended() {
                v.last_seen = now;
                return Ok(v.handle.session().clone());
            }
        }
        // A new viewer (or one whose session ended meanwhile).
        let stale = viewers.0.remove(&key);
        let exists = self.get(&key.0).is_some();
        if !exists && !start {
            drop(viewers);
            drop(stale);
            return Err(EdgeError::NotFound(format!("no session for {content}")));
        }
        let held = admit(!exists, self.count())?;
        let handle = self.attach_as(content, client, Protocol::Hls)?;
        let session = handle.session().clone();
        viewers.0.insert(
            key,
            HlsViewer {
                last_seen: now,
                served: false,
                handle,
                _held: held,
            },
        );
        self.metrics.hls_viewers.set(viewers.0.len() as i64);
        if !viewers.1 {
            viewers.1 = true;
            tokio::spawn(self.clone().let_hls_viewers_go());
        }
        drop(viewers);
        drop(stale);
        Ok(session)
    }

    /// Marks the HLS viewer as served: a playlist or a segment reached it, so it stays present
    /// while it keeps asking.
    pub fn hls_viewer_served(&self, content: &ContentKey, client: Option<ClientAddr>, agent: &str) {
        if let Some(v) = self
            .lock_hls_viewers()
            .0
            .get_mut(&hls_key(content, client, agent))
        {
            v.served = true;
        }
    }

    /// The request of an HLS viewer went away before anything reached it (a player that gave up
    /// while the session started, a probe): if it was never served, it is counted out now, so
    /// its session lingers `unwatched_linger` like an aborted TS request's, instead of waiting
    /// out the viewer's presence. True if it was counted out.
    pub fn hls_viewer_abandoned(
        &self,
        content: &ContentKey,
        client: Option<ClientAddr>,
        agent: &str,
    ) -> bool {
        let gone = {
            let mut viewers = self.lock_hls_viewers();
            let key = hls_key(content, client, agent);
            let gone = match viewers.0.get(&key) {
                Some(v) if !v.served => viewers.0.remove(&key),
                _ => None,
            };
            self.metrics.hls_viewers.set(viewers.0.len() as i64);
            gone
        };
        gone.is_some() // dropped here, outside the lock: counted out of its session
    }

    fn lock_hls_viewers(&self) -> MutexGuard<'_, (HashMap<HlsViewerKey, HlsViewer>, bool)> {
        self.hls_viewers.locked()
    }

    /// Counts out the HLS viewers that stopped asking (nothing for three target durations) or
    /// whose session ended; runs while any viewer is present.
    async fn let_hls_viewers_go(self: Arc<Self>) {
        // Fixed: presence is measured in target durations (seconds), a second is fine enough.
        const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let now = std::time::Instant::now();
            let gone: Vec<HlsViewer> = {
                let mut viewers = self.lock_hls_viewers();
                let keys: Vec<HlsViewerKey> = viewers
                    .0
                    .iter()
                    .filter(|(_, v)| {
                        let session = v.handle.session();
                        let presence = session
                            .hls()
                            .map_or(30.0, |h| 3.0 * h.target_duration() as f64);
                        session.is_ended()
                            || now.duration_since(v.last_seen).as_secs_f64() > presence
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let gone = keys.iter().filter_map(|k| viewers.0.remove(k)).collect();
                self.metrics.hls_viewers.set(viewers.0.len() as i64);
                if viewers.0.is_empty() {
                    viewers.1 = false;
                    drop(viewers);
                    drop(gone);
                    return;
                }
                gone
            };
            drop(gone); // counted out of their sessions here, outside the lock
        }
    }
}

/// An HLS viewer: it holds no connection, so it is present while it keeps asking.
pub(super) struct HlsViewer {
    last_seen: std::time::Instant,
    /// A playlist or a segment reached it.
    served: bool,
    /// Counts it in its session (dropping it counts it out).
    handle: ClientHandle,
    /// Whatever the route holds for it while it is present (its place under the limits).
    _held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for HlsViewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HlsViewer")
            .field("last_seen", &self.last_seen)
            .field("client", &self.handle.addr())
            .finish_non_exhaustive()
    }
}

/// Who an HLS viewer is: its session, its address and its User-Agent.
pub(super) type HlsViewerKey = (String, Option<std::net::IpAddr>, String);

fn hls_key(content: &ContentKey, client: Option<ClientAddr>, agent: &str) -> HlsViewerKey {
    (content.to_string(), client.map(|c| c.ip), agent.to_string())
}

/// Requests held open per client address (blocking playlist reloads, awaited parts): each is a
/// connection and a task, so one address holds at most `hls_max_blocking_requests` at once.
#[derive(Debug, Default, Clone)]
pub struct BlockingHolds(Arc<Mutex<HashMap<Option<std::net::IpAddr>, usize>>>);

/// One held request; counted out when dropped.
#[derive(Debug)]
pub struct BlockingHold {
    holds: BlockingHolds,
    key: Option<std::net::IpAddr>,
}

impl BlockingHolds {
    /// A hold for `client` if it has fewer than `max` open.
    pub fn try_hold(&self, client: Option<ClientAddr>, max: usize) -> Option<BlockingHold> {
        let key = client.map(|c| c.ip);
        let mut map = self.0.locked();
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(BlockingHold {
            holds: self.clone(),
            key,
        })
    }
}

impl Drop for BlockingHold {
    fn drop(&mut self) {
        let mut map = self.holds.0.locked();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}
