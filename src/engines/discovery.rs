//! Where engines come from: the static `acestream.engines` list, merged with the orchestrator's
//! `GET <url>/engines` when one is configured. Implements Pingora's `ServiceDiscovery`, so the load
//! balancer's background service polls it every `engine_cache_ttl`.
//!
//! An orchestrator that is down or answers garbage never empties the pool: the last good list is
//! kept, and the state change is logged once (not on every poll).

use super::{Discovered, EngineMeta};
use crate::config::{EngineConfig, OrchestratorConfig};
use crate::http1::{self, GetOptions};
use crate::sync::Lock;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The engine list's source, and the writer of the pool's engine metadata.
pub struct EngineDiscovery {
    timeout: Duration,
    meta: Arc<Discovered>,
    last_good: Mutex<Option<Vec<EngineMeta>>>,
    orchestrator_up: Mutex<Option<bool>>,
}

impl EngineDiscovery {
    /// A discovery writing the engines it finds into `meta`.
    pub fn new(
        statics: Vec<EngineConfig>,
        orchestrator: Option<OrchestratorConfig>,
        timeout: Duration,
        meta: Arc<Discovered>,
    ) -> Self {
        meta.sources.set(super::EngineSources {
            statics,
            orchestrator,
        });
        EngineDiscovery {
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
        if !up {
            self.meta.orchestrator_failed();
        }
        {
            let mut state = self.orchestrator_up.locked();
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
        let mut last = self.last_good.locked();
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
        let sources = self.meta.sources();
        let mut found: Vec<EngineMeta> = sources
            .statics
            .iter()
            .map(|e| EngineMeta {
                host: e.host.clone(),
                port: e.port,
                forwarded: e.forwarded,
                headers: e.headers.clone(),
                ..EngineMeta::default()
            })
            .collect();
        if let Some(o) = &sources.orchestrator {
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
        self.meta.set_engines(by_addr);
        Ok((backends, HashMap::new()))
    }
}

/// A request to the orchestrator at `<url><path>` (with the API key as a Bearer token): a GET,
/// or a POST of `json_body`. Returns the status and the body.
pub async fn orchestrator_request(
    o: &OrchestratorConfig,
    path: &str,
    json_body: Option<Vec<u8>>,
) -> Result<(u16, Vec<u8>), String> {
    let uri: http::Uri = format!("{}{path}", o.url)
        .parse()
        .map_err(|e| format!("bad url: {e}"))?;
    let authority = uri.authority().ok_or("url without host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or("url resolves to nothing")?;
    let mut opts = GetOptions {
        json_body,
        ..GetOptions::default()
    };
    opts.headers.extend(o.headers.pairs().iter().cloned());
    if let Some(key) = &o.api_key {
        opts.headers
            .push(("Authorization".into(), format!("Bearer {key}")));
    }
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or(path);
    let mut resp = http1::get_on(stream, authority.as_str(), path, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let body = resp.read_to_end(4 << 20).await.map_err(|e| e.to_string())?;
    Ok((resp.status, body))
}

/// `GET <url>/engines`, in either shape of `docs/engine-api.md` §12.
async fn fetch_orchestrator(o: &OrchestratorConfig) -> Result<Vec<EngineMeta>, String> {
    let (status, body) = orchestrator_request(o, "/engines", None).await?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    parse_engine_list(&body)
}

/// The orchestrator's answer, in either shape: a bare array (Python era) or
/// `{"engines": [...], ...}` (Go rewrite). Entries stay raw here so one malformed entry is
/// skipped instead of failing the whole list.
#[derive(Deserialize)]
#[serde(untagged)]
enum EngineList {
    Bare(Vec<Value>),
    Wrapped { engines: Vec<Value> },
}

/// One orchestrator engine entry; unknown fields are ignored.
#[derive(Deserialize)]
struct OrchestratorEngine {
    host: String,
    port: u16,
    #[serde(default)]
    forwarded: bool,
    #[serde(default)]
    labels: HashMap<String, Value>,
    container_id: Option<String>,
    vpn_container: Option<String>,
    health_status: Option<String>,
    #[serde(default)]
    draining: bool,
    /// VPN health, where the orchestrator reports it (`vpn_health` / `vpn_status`:
    /// `"unhealthy"`, or `vpn_healthy: false`).
    #[serde(alias = "vpn_status")]
    vpn_health: Option<String>,
    vpn_healthy: Option<bool>,
    stream_count: Option<u64>,
    streams: Option<Vec<Value>>,
}

/// Parses `GET <url>/engines`. Entries without a host or with a port outside 1..=65535 are
/// skipped.
pub fn parse_engine_list(body: &[u8]) -> Result<Vec<EngineMeta>, String> {
    let list = match serde_json::from_slice::<EngineList>(body) {
        Ok(EngineList::Bare(list)) | Ok(EngineList::Wrapped { engines: list }) => list,
        Err(e) => {
            return Err(match serde_json::from_slice::<Value>(body) {
                Err(_) => format!("not JSON: {e}"),
                Ok(_) => "neither an array nor an object with an `engines` array".into(),
            })
        }
    };
    Ok(list
        .into_iter()
        .filter_map(|v| serde_json::from_value::<OrchestratorEngine>(v).ok())
        .filter(|e| !e.host.is_empty() && e.port > 0)
        .map(|e| {
            let label_forwarded =
                e.labels.get("acestream.forwarded").and_then(Value::as_str) == Some("true");
            EngineMeta {
                forwarded: e.forwarded || label_forwarded,
                orchestrator_healthy: e.health_status.map(|s| s != "unhealthy"),
                orchestrator_streams: e
                    .stream_count
                    .map(|n| n as usize)
                    .or(e.streams.map(|s| s.len())),
                host: e.host,
                port: e.port,
                container_id: e.container_id,
                vpn_container: e.vpn_container,
                from_orchestrator: true,
                draining: e.draining,
                vpn_healthy: e.vpn_healthy.or(e.vpn_health.map(|s| s != "unhealthy")),
                // A listed engine gets the headers of a configured one at its address (merge).
                headers: Default::default(),
            }
        })
        .collect())
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
        let list = parse_engine_list(bare.to_string().as_bytes()).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].forwarded && list[1].forwarded);
        assert_eq!(list[0].orchestrator_streams, Some(2));
        assert_eq!(list[1].orchestrator_healthy, Some(false));
        let wrapped = serde_json::json!({"engines": [{"host": "e", "port": 6878, "stream_count": 3, "vpn_container": "gluetun"}], "total": 1});
        let list = parse_engine_list(wrapped.to_string().as_bytes()).unwrap();
        assert_eq!(
            (
                list[0].orchestrator_streams,
                list[0].vpn_container.as_deref()
            ),
            (Some(3), Some("gluetun"))
        );
        assert!(parse_engine_list(b"\"nope\"").is_err());
        assert!(parse_engine_list(b"{\"engines\": 3}").is_err());
        assert!(parse_engine_list(b"<html>")
            .unwrap_err()
            .starts_with("not JSON"));
        // A malformed entry is skipped, the rest kept.
        let mixed = serde_json::json!([{"host": "a", "port": 70000}, {"host": "b", "port": "x"}, {"host": "c", "port": 1}]);
        assert_eq!(
            parse_engine_list(mixed.to_string().as_bytes())
                .unwrap()
                .len(),
            1
        );
    }
}
