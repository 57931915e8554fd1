//! Choosing an engine for a new session: every known engine scored from its metadata, health and
//! load ([`score`]), the best candidate leased ([`StreamLease`]), and one log line that says why.

use super::*;

impl EnginePool {
    /// Every known engine with its live score.
    pub fn status(&self) -> Vec<EngineStatus> {
        let meta = self.meta.engines();
        let load = self.lock_load().clone();
        self.snapshot(&meta, &load)
    }

    fn snapshot(
        &self,
        meta: &HashMap<SocketAddr, EngineMeta>,
        load: &HashMap<SocketAddr, usize>,
    ) -> Vec<EngineStatus> {
        let backends = self.lb.backends();
        let failed = self.recently_failed();
        let proven = self.proven();
        let assigned = self.last_assigned.locked().clone();
        let peers = self.peer_streams.locked().clone();
        let mut out: Vec<EngineStatus> = backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                let addr = *b.addr.as_inet()?;
                let m = meta.get(&addr).cloned().unwrap_or_default();
                let probe_ok = backends.ready(b) || proven.contains(&addr);
                let healthy = probe_ok && m.orchestrator_healthy != Some(false);
                let proxy_streams = load.get(&addr).copied().unwrap_or(0);
                let candidate = Candidate {
                    addr,
                    forwarded: m.forwarded,
                    healthy,
                    // The orchestrator's verdict rules an engine out; a failed probe of ours
                    // does not, when every engine failed one (see `panic_when_all_unhealthy`).
                    eligible: m.ruled_out().is_none(),
                    active_streams: proxy_streams
                        + m.orchestrator_streams
                            .unwrap_or_else(|| peers.get(&addr).copied().unwrap_or(0)),
                    recently_failed: failed.contains(&addr),
                    node_load: 0,
                    last_assigned: assigned.get(&addr).copied(),
                };
                Some(EngineStatus {
                    score: score::score(&candidate),
                    meta: m,
                    addr,
                    healthy,
                    proxy_streams,
                    peer_streams: peers.get(&addr).copied().unwrap_or(0),
                    recently_failed: candidate.recently_failed,
                    candidate,
                })
            })
            .collect();
        // The load of each engine's VPN node: the streams of every engine behind the same VPN.
        let mut nodes: HashMap<String, usize> = HashMap::new();
        for s in &out {
            if let Some(vpn) = &s.meta.vpn_container {
                *nodes.entry(vpn.clone()).or_default() += s.candidate.active_streams;
            }
        }
        for s in &mut out {
            s.candidate.node_load = match &s.meta.vpn_container {
                Some(vpn) => nodes.get(vpn).copied().unwrap_or(0),
                None => s.candidate.active_streams,
            };
        }
        out.sort_by_key(|s| s.addr);
        out
    }

    /// Chooses the best engine not in `exclude` and reserves a stream on it (atomically, so
    /// concurrent first requests of different ids spread out). Dropping the lease releases it.
    pub async fn acquire(
        self: &Arc<Self>,
        exclude: &[SocketAddr],
    ) -> Result<(Engine, StreamLease), EdgeError> {
        self.acquire_leaving(exclude, 0).await
    }

    /// [`Self::acquire`], unless it would leave fewer than `keep_free` free stream slots across
    /// the healthy engines (`max_streams_per_engine` less each one's streams), decided under the
    /// same lock as the lease: background work never takes the slot a viewer needs.
    pub async fn acquire_leaving(
        self: &Arc<Self>,
        exclude: &[SocketAddr],
        keep_free: usize,
    ) -> Result<(Engine, StreamLease), EdgeError> {
        self.ensure_discovered().await;
        let meta = self.meta.engines();
        let mut load = self.lock_load();
        if keep_free > 0 {
            let max = self.max_streams();
            let free: usize = self
                .snapshot(&meta, &load)
                .iter()
                .filter(|s| s.healthy && s.candidate.eligible)
                .map(|s| max.saturating_sub(s.candidate.active_streams))
                .sum();
            if free <= keep_free {
                return Err(EdgeError::NoEngine(crate::error::NoEngine::SlotsKept(free)));
            }
        }
        let engine = self.choose(&meta, &load, exclude)?;
        let status = self.snapshot(&meta, &load);
        log::info!("{}", choice_line(&engine, &status, exclude));
        *load.entry(engine.addr).or_default() += 1;
        drop(load);
        self.last_assigned
            .locked()
            .insert(engine.addr, std::time::Instant::now());
        let lease = StreamLease {
            pool: self.clone(),
            addr: engine.addr,
        };
        Ok((engine, lease))
    }

    /// The best engine now, without reserving anything (for passthrough requests).
    pub async fn best(&self) -> Result<Engine, EdgeError> {
        self.ensure_discovered().await;
        let meta = self.meta.engines();
        let load = self.lock_load().clone();
        self.choose(&meta, &load, &[])
    }

    fn choose(
        &self,
        meta: &HashMap<SocketAddr, EngineMeta>,
        load: &HashMap<SocketAddr, usize>,
        exclude: &[SocketAddr],
    ) -> Result<Engine, EdgeError> {
        let status: Vec<EngineStatus> = self
            .snapshot(meta, load)
            .into_iter()
            .filter(|s| !exclude.contains(&s.addr))
            .collect();
        let candidates: Vec<Candidate> = status.iter().map(|s| s.candidate.clone()).collect();
        log::debug!(
            "engine candidates: {}",
            status
                .iter()
                .map(|s| format!(
                    "{}={}{}",
                    s.addr,
                    s.score,
                    if s.healthy { "" } else { "(unhealthy)" }
                ))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        let i = score::choose(
            &candidates,
            self.max_streams(),
            rotation,
            self.panic_when_all_unhealthy,
        )
        .map_err(|e| match e {
            NoCandidate::Empty if !exclude.is_empty() => {
                EdgeError::NoEngine(crate::error::NoEngine::EveryEngineTried)
            }
            e => EdgeError::NoEngine(e.into()),
        })?;
        let s = &status[i];
        log::debug!(
            "engine {} best (score {}, {} streams here)",
            s.addr,
            s.score,
            s.proxy_streams
        );
        Ok(Engine {
            endpoint: EngineEndpoint {
                host: s.meta.host.clone(),
                port: s.meta.port,
                headers: s.meta.headers.clone(),
            },
            addr: s.addr,
            forwarded: s.meta.forwarded,
            container_id: s.meta.container_id.clone(),
            score: s.score,
        })
    }
}

/// The log line of a choice: the winner's score and its parts, and what the others scored.
pub(super) fn choice_line(
    engine: &Engine,
    status: &[EngineStatus],
    exclude: &[SocketAddr],
) -> String {
    let parts = |s: &EngineStatus| {
        let c = &s.candidate;
        let mut p = Vec::new();
        if c.forwarded {
            p.push(format!("forwarded +{}", score::FORWARDED_BONUS));
        }
        p.push(format!(
            "{} streams −{}",
            c.active_streams,
            c.active_streams as i64 * score::STREAM_COST
        ));
        if !c.healthy {
            p.push(format!("unhealthy −{}", score::UNHEALTHY_PENALTY));
        }
        if c.recently_failed {
            p.push(format!("recently failed −{}", score::FAILURE_PENALTY));
        }
        p.join(", ")
    };
    let winner = status
        .iter()
        .find(|s| s.addr == engine.addr)
        .map(parts)
        .unwrap_or_default();
    let others: Vec<String> = status
        .iter()
        .filter(|s| s.addr != engine.addr)
        .map(|s| {
            let note = if exclude.contains(&s.addr) {
                " (already tried)"
            } else if !s.healthy {
                " (unhealthy)"
            } else {
                ""
            };
            format!("{} {}{note}", s.addr, s.score)
        })
        .collect();
    format!(
        "engine {} chosen for a session: score {} ({winner}); others: {}",
        engine.addr,
        engine.score,
        if others.is_empty() {
            "none".to_string()
        } else {
            others.join(", ")
        }
    )
}

/// One stream reserved on an engine; counts towards its score until dropped.
#[derive(Debug)]
pub struct StreamLease {
    pool: Arc<EnginePool>,
    addr: SocketAddr,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        let mut load = self.pool.lock_load();
        if let Some(n) = load.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                load.remove(&self.addr);
            }
        }
    }
}
