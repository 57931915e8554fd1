//! Where engines come from: the static `acestream.engines` list, merged with the orchestrator's
//! `GET <url>/engines` when one is configured. Implements Pingora's `ServiceDiscovery`, so the load
//! balancer's background service polls it every `engine_cache_ttl`.
//!
//! An orchestrator that is down or answers garbage never empties the pool: the last good list is
//! kept, and the state change is logged once (not on every poll).

use super::EngineMeta;
use crate::config::{EngineConfig, OrchestratorConfig};
use crate::http1::{self, GetOptions};
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The engine list's source, and the writer of the pool's engine metadata.
pub struct EngineDiscovery {
    statics: Vec<EngineConfig>,
    orchestrator: Option<OrchestratorConfig>,
    timeout: Duration,
    meta: Arc<RwLock<HashMap<SocketAddr, EngineMeta>>>,
    last_good: Mutex<Option<Vec<EngineMeta>>>,
    orchestrator_up: Mutex<Option<bool>>,
}

impl EngineDiscovery {
    /// A discovery writing the engines it finds into `meta`.
    pub fn new(
        statics: Vec<EngineConfig>,
        orchestrator: Option<OrchestratorConfig>,
        timeout: Duration,
        meta: Arc<RwLock<HashMap<SocketAddr, EngineMeta>>>,
    ) -> Self {
        EngineDiscovery {
            statics,
            orchestrator,
            timeout,
            meta,
            last_good: Mutex::new(None),
            orchestrator_up: Mutex::new(None),
        }
    }

    async fn orchestrator_engines(&self, o: &OrchestratorConfig) -> Vec<EngineMeta> {
        let fetched = tokio::time::timeout(self.timeout, fetch_orchestrator(o)).await;
        let fetched = match fetched {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        let up = fetched.is_ok();
        {
            let mut state = self
                .orchestrator_up
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if *state != Some(up) {
                match &fetched {
                    Ok(list) => log::info!("orchestrator {}: {} engines", o.url, list.len()),
                    Err(e) => log::warn!(
                        "orchestrator {} unusable, keeping the last good engine list: {e}",
                        o.url
                    ),
                }
                *state = Some(up);
            }
        }
        let mut last = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        match fetched {
            Ok(list) => {
                *last = Some(list.clone());
                list
            }
            Err(_) => last.clone().unwrap_or_default(),
        }
    }
}

#[async_trait]
impl ServiceDiscovery for EngineDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut found: Vec<EngineMeta> = self
            .statics
            .iter()
            .map(|e| EngineMeta {
                host: e.host.clone(),
                port: e.port,
                forwarded: e.forwarded,
                ..EngineMeta::default()
            })
            .collect();
        if let Some(o) = &self.orchestrator {
            found.extend(self.orchestrator_engines(o).await);
        }
        let mut by_addr: HashMap<SocketAddr, EngineMeta> = HashMap::new();
        for meta in found {
            let addr = match tokio::net::lookup_host((meta.host.as_str(), meta.port)).await {
                Ok(mut a) => a.next(),
                Err(e) => {
                    log::debug!("engine {}:{} does not resolve: {e}", meta.host, meta.port);
                    None
                }
            };
            if let Some(addr) = addr {
                // A static entry and an orchestrator entry for the same address merge.
                by_addr
                    .entry(addr)
                    .and_modify(|m| m.merge(&meta))
                    .or_insert(meta);
            }
        }
        let backends = by_addr
            .keys()
            .map(|a| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(*a),
                weight: 1,
                ext: Default::default(),
            })
            .collect();
        *self.meta.write().unwrap_or_else(|p| p.into_inner()) = by_addr;
        Ok((backends, HashMap::new()))
    }
}

/// `GET <url>/engines`, in either shape of `spec/engine-api.md` §12.
async fn fetch_orchestrator(o: &OrchestratorConfig) -> Result<Vec<EngineMeta>, String> {
    let uri: http::Uri = format!("{}/engines", o.url)
        .parse()
        .map_err(|e| format!("bad url: {e}"))?;
    let authority = uri.authority().ok_or("url without host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or("url resolves to nothing")?;
    let mut opts = GetOptions::default();
    if let Some(key) = &o.api_key {
        opts.headers
            .push(("Authorization".into(), format!("Bearer {key}")));
    }
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/engines");
    let mut resp = http1::get_on(stream, authority.as_str(), path, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let body = resp.read_to_end(4 << 20).await.map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("HTTP {}", resp.status));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
    parse_engine_list(&value)
}

/// Both shapes: a bare array (Python era) or `{"engines": [...]}` (Go rewrite).
pub fn parse_engine_list(value: &Value) -> Result<Vec<EngineMeta>, String> {
    let list = match value {
        Value::Array(a) => a,
        Value::Object(o) => o
            .get("engines")
            .and_then(Value::as_array)
            .ok_or("object without an `engines` array")?,
        _ => return Err("neither an array nor an object".into()),
    };
    let mut out = Vec::new();
    for e in list {
        let Some(host) = e
            .get("host")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
        else {
            continue;
        };
        let Some(port) = e
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        let label_forwarded = e
            .pointer("/labels/acestream.forwarded")
            .and_then(Value::as_str)
            .is_some_and(|v| v == "true");
        let streams = e
            .get("stream_count")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .or_else(|| e.get("streams").and_then(Value::as_array).map(Vec::len));
        out.push(EngineMeta {
            host: host.to_string(),
            port,
            forwarded: e.get("forwarded").and_then(Value::as_bool).unwrap_or(false)
                || label_forwarded,
            container_id: e
                .get("container_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            vpn_container: e
                .get("vpn_container")
                .and_then(Value::as_str)
                .map(str::to_string),
            orchestrator_healthy: e
                .get("health_status")
                .and_then(Value::as_str)
                .map(|s| s != "unhealthy"),
            orchestrator_streams: streams,
            from_orchestrator: true,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both list shapes parse; health, forwarding (flag or label) and stream counts are mapped.
    #[test]
    fn both_orchestrator_shapes_parse() {
        let bare = serde_json::json!([
            {"container_id": "c1", "host": "10.0.0.1", "port": 19001, "forwarded": true, "health_status": "healthy", "streams": ["a", "b"]},
            {"container_id": "c2", "host": "10.0.0.2", "port": 19002, "labels": {"acestream.forwarded": "true"}, "health_status": "unhealthy"},
            {"host": "", "port": 1}
        ]);
        let list = parse_engine_list(&bare).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].forwarded && list[1].forwarded);
        assert_eq!(list[0].orchestrator_streams, Some(2));
        assert_eq!(list[1].orchestrator_healthy, Some(false));
        let wrapped = serde_json::json!({"engines": [{"host": "e", "port": 6878, "stream_count": 3, "vpn_container": "gluetun"}], "total": 1});
        let list = parse_engine_list(&wrapped).unwrap();
        assert_eq!(
            (
                list[0].orchestrator_streams,
                list[0].vpn_container.as_deref()
            ),
            (Some(3), Some("gluetun"))
        );
        assert!(parse_engine_list(&serde_json::json!("nope")).is_err());
    }
}
