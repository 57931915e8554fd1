//! What the proxy serves itself (named `routes`, not `http`, so it never shadows the `http`
//! crate): `/ace/getstream`, the admin JSON and metrics, and the one JSON error renderer.

pub mod admin;
pub mod check;
pub mod dashboard;
pub mod epg;
pub mod getstream;
pub mod hls;
pub mod hls_dvr;
mod leaving;
pub mod playlist;
mod rewind;
pub mod search;
mod zero_copy;

/// Every route the proxy knows, decided from the path alone. Its label is the `route` label of
/// `acestream_edge_http_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/ace/getstream`.
    GetStream,
    /// `/ace/manifest.m3u8`.
    Manifest,
    /// `/ace/hls/<generation>/<n>.ts`: an HLS segment.
    HlsSegment,
    /// `/proxy/status`.
    ProxyStatus,
    /// `/proxy/sessions`.
    ProxySessions,
    /// `/proxy/sessions/{ace_id}`.
    ProxySession,
    /// `/proxy/engines`.
    ProxyEngines,
    /// `/proxy/cluster`: the fleet as this node sees it.
    ProxyCluster,
    /// `/metrics`.
    Metrics,
    /// `/proxy/token`: mints a signed stream URL.
    ProxyToken,
    /// `/ace/check`: is an id playable (an admin route).
    Check,
    /// `/playlist.m3u` (or `.m3u8`): every channel through the proxy.
    Playlist,
    /// `/proxy/channels`: the channel list and its sources (an admin route).
    ProxyChannels,
    /// `/ace/search`: the engines' search through the proxy.
    Search,
    /// `/epg.xml` (or `/epg.xml.gz`): the channels' guide.
    Epg,
    /// `/`, `/dashboard` and its assets.
    Dashboard,
    /// `/healthz`: readiness for load balancers and container health checks.
    Health,
    /// Engine API paths passed through to an engine (`/webui/*`, `/server/api*`, other `/ace/*`).
    Passthrough,
    /// Anything else.
    NotFound,
}

impl Route {
    /// The route of a request path.
    pub fn of(path: &str) -> Route {
        match path {
            "/ace/getstream" => Route::GetStream,
            "/ace/manifest.m3u8" => Route::Manifest,
            "/metrics" => Route::Metrics,
            "/proxy/status" => Route::ProxyStatus,
            "/proxy/sessions" => Route::ProxySessions,
            "/proxy/engines" => Route::ProxyEngines,
            "/proxy/cluster" => Route::ProxyCluster,
            "/proxy/token" => Route::ProxyToken,
            "/ace/check" => Route::Check,
            "/playlist.m3u" | "/playlist.m3u8" => Route::Playlist,
            "/proxy/channels" => Route::ProxyChannels,
            "/ace/search" => Route::Search,
            "/epg.xml" | "/epg.xml.gz" => Route::Epg,
            "/healthz" => Route::Health,
            p if dashboard::is_dashboard_path(p) => Route::Dashboard,
            p if p.len() > "/proxy/sessions/".len() && p.starts_with("/proxy/sessions/") => {
                Route::ProxySession
            }
            p if p.starts_with("/ace/hls/") => Route::HlsSegment,
            p if p.starts_with("/webui/") || p.starts_with("/server/api") => Route::Passthrough,
            p if p.starts_with("/ace/") => Route::Passthrough,
            _ => Route::NotFound,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Route::GetStream => "getstream",
            Route::Manifest => "manifest",
            Route::HlsSegment => "hls_segment",
            Route::ProxyStatus => "proxy_status",
            Route::ProxySessions => "proxy_sessions",
            Route::ProxySession => "proxy_session",
            Route::ProxyEngines => "proxy_engines",
            Route::ProxyCluster => "proxy_cluster",
            Route::Metrics => "metrics",
            Route::ProxyToken => "proxy_token",
            Route::Check => "check",
            Route::Playlist => "playlist",
            Route::ProxyChannels => "proxy_channels",
            Route::Search => "search",
            Route::Epg => "epg",
            Route::Dashboard => "dashboard",
            Route::Health => "healthz",
            Route::Passthrough => "passthrough",
            Route::NotFound => "not_found",
        }
    }
}

use crate::error::EdgeError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;

/// Writes a complete JSON response with a Content-Length.
pub async fn write_json(s: &mut HttpSession, status: u16, body: Vec<u8>) -> pingora::Result<()> {
    write_json_with(s, status, body, &[]).await
}

/// True for the methods the proxy's own routes serve (GET, and HEAD).
pub fn method_allowed(s: &HttpSession) -> bool {
    matches!(
        s.req_header().method,
        http::Method::GET | http::Method::HEAD
    )
}

/// `405` with `Allow: GET, HEAD`, for any other method on the proxy's own routes (nothing is
/// started).
pub async fn write_method_not_allowed(s: &mut HttpSession) -> pingora::Result<()> {
    let method = s.req_header().method.to_string();
    let body = crate::error::error_json(&format!("method {method} not allowed; use GET or HEAD"));
    write_json_with(s, 405, body, &[("Allow", "GET, HEAD".into())]).await
}

async fn write_json_with(
    s: &mut HttpSession,
    status: u16,
    body: Vec<u8>,
    extra: &[(&'static str, String)],
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(status, Some(5))?;
    for (name, value) in extra {
        h.insert_header(*name, value.as_str())?;
    }
    h.insert_header("Content-Type", "application/json")?;
    h.insert_header("Content-Length", body.len().to_string())?;
    h.insert_header("Cache-Control", "no-store")?;
    s.write_response_header(Box::new(h), false).await?;
    s.write_response_body(Some(Bytes::from(body)), true).await
}

/// `302` to `location` (a cluster member that serves the stream), with a JSON body saying so.
pub async fn write_redirect(s: &mut HttpSession, location: &str) -> pingora::Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({ "location": location })).unwrap_or_default();
    write_json_with(s, 302, body, &[("Location", location.to_string())]).await
}

/// `GET /healthz`: `200 {"status": "ok"}` while serving, `503 {"status": "shutting down"}` once
/// shutdown began. Unauthenticated and cheap: for load balancers, HAProxy and container health
/// checks (it starts nothing and counts no client).
pub async fn write_health(s: &mut HttpSession, shutting_down: bool) -> pingora::Result<()> {
    let (status, text) = if shutting_down {
        (503, "shutting down")
    } else {
        (200, "ok")
    };
    let body = serde_json::to_vec(&serde_json::json!({ "status": text })).unwrap_or_default();
    write_json(s, status, body).await
}

/// Writes an [`EdgeError`] as `{"error": "..."}` with its status (and `Retry-After` when the error
/// says when to retry).
pub async fn write_error(s: &mut HttpSession, e: &EdgeError) -> pingora::Result<()> {
    let extra: Vec<(&'static str, String)> = e
        .retry_after()
        .map(|d| ("Retry-After", d.as_secs().max(1).to_string()))
        .into_iter()
        .collect();
    write_json_with(s, e.status(), e.json_body(), &extra).await
}

/// The one JSON error renderer: `{"error": text}` with `status` (also used for Pingora's own
/// failures in `fail_to_proxy`).
pub async fn write_error_text(s: &mut HttpSession, status: u16, text: &str) -> pingora::Result<()> {
    write_json(s, status, crate::error::error_json(text)).await
}

#[cfg(test)]
mod tests {
    use super::Route;

    /// Paths map to routes; unknown `/proxy/*` paths are not found, engine API paths pass.
    #[test]
    fn routes_of_paths() {
        for (path, route) in [
            ("/ace/getstream", Route::GetStream),
            ("/ace/manifest.m3u8", Route::Manifest),
            ("/proxy/sessions/abc", Route::ProxySession),
            ("/proxy/sessions/", Route::NotFound),
            ("/proxy/nope", Route::NotFound),
            ("/webui/api/service", Route::Passthrough),
            ("/server/api", Route::Passthrough),
            ("/ace/r/x/y", Route::Passthrough),
            ("/", Route::Dashboard),
            ("/metrics", Route::Metrics),
        ] {
            assert_eq!(Route::of(path), route, "{path}");
        }
        assert_eq!(Route::ProxyEngines.label(), "proxy_engines");
    }
}
