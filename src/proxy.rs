//! The Pingora plugin: [`EdgeProxy`] implements `ProxyHttp` and routes every request.
//!
//! The proxy's own routes are answered in `request_filter` (Pingora's hook for serving a response
//! yourself). Engine API paths it does not intercept (`/webui/*`, `/server/api*`, other `/ace/*`)
//! are proxied to the best engine through `upstream_peer`, so the proxy is a drop-in replacement
//! for an engine's URL.

mod forward;

use crate::access::passthrough::{self, PassthroughRule};
use crate::access::Access;
use crate::cluster::{Cluster, VIA_HEADER};
use crate::config::Config;
use crate::engines::EnginePool;
use crate::error::EdgeError;
use crate::metrics::Metrics;
use crate::routes::admin::{self, Admin};
use crate::routes::{self, getstream, hls, Route};
use crate::streams::Sessions;
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session as HttpSession};
use std::sync::Arc;

/// The acestream-edge plugin for Pingora's HTTP proxy service.
pub struct EdgeProxy {
    sessions: Arc<Sessions>,
    engines: Arc<EnginePool>,
    metrics: Arc<Metrics>,
    admin: Admin,
    access: Access,
    passthrough: Vec<PassthroughRule>,
    /// `keepalive_timeout` in Pingora's unit (whole seconds, at least 1).
    keepalive_secs: u64,
    checker: Arc<crate::streams::check::ContentChecker>,
    /// The fleet, when this node is one of several.
    cluster: Option<Arc<Cluster>>,
    /// The channel lists (`acestream.channels`).
    channels: Arc<crate::channels::Channels>,
    /// The engines' search answers, kept briefly.
    search: crate::routes::search::SearchCache,
    /// The configuration it started with (the playlist's settings).
    config: Arc<Config>,
}

impl EdgeProxy {
    /// A plugin serving from `sessions` and passing engine API calls to `engines`.
    pub fn new(
        sessions: Arc<Sessions>,
        engines: Arc<EnginePool>,
        metrics: Arc<Metrics>,
        config: Arc<Config>,
        cluster: Option<Arc<Cluster>>,
        live: crate::access::LiveSettings,
        catalogue: Catalogue,
    ) -> Self {
        let crate::access::LiveSettings {
            admin_token,
            limits,
        } = live;
        let admin = Admin {
            sessions: sessions.clone(),
            engines: engines.clone(),
            metrics: metrics.clone(),
            token: admin_token,
            status_cache: Default::default(),
            started: std::time::Instant::now(),
            channels: catalogue.channels.clone(),
            top_streams: config.metrics_top_streams,
            tokens: config
                .access
                .stream_token_secret
                .as_deref()
                .map(crate::access::token::StreamTokens::new),
        };
        let mut access = Access::with_limits(&config, metrics.clone(), limits);
        if let Some(c) = &cluster {
            access.peers = c.trusted();
        }
        EdgeProxy {
            access,
            cluster,
            passthrough: config.access.passthrough.clone(),
            keepalive_secs: config.connections.keepalive_timeout.as_secs().max(1),
            checker: catalogue.checker,
            channels: catalogue.channels,
            search: Default::default(),
            config,
            sessions,
            engines,
            metrics,
            admin,
        }
    }
}

/// The channels and the checks, which the server's channel checker shares with the routes.
pub struct Catalogue {
    /// The channel lists and guides.
    pub channels: Arc<crate::channels::Channels>,
    /// The `/ace/check` machinery and its slots.
    pub checker: Arc<crate::streams::check::ContentChecker>,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct RequestCtx {
    /// `host:port` of the engine a passthrough request goes to (for its Host header).
    engine_host: Option<String>,
    /// The extra request headers of that engine (`headers:`).
    engine_headers: crate::config::Headers,
    /// The route of this request, for the responses metric.
    route: Option<Route>,
    /// The cluster member this request is proxied to, and the members it went through before.
    forward: Option<forward::Forward>,
    /// Its forward failed before an answer: place it again before Pingora's retry.
    replace: bool,
}

impl EdgeProxy {
    /// Whether a passthrough request may reach an engine (see [`crate::access::passthrough`]).
    fn passthrough_allowed(&self, s: &HttpSession) -> std::result::Result<(), EdgeError> {
        let uri = &s.req_header().uri;
        passthrough::check(
            &self.passthrough,
            uri.path(),
            uri.query(),
            match (self.admin.token.get().is_some(), self.admin.authorized(s)) {
                (false, _) => passthrough::Admin::NoToken,
                (true, true) => passthrough::Admin::Authorized,
                (true, false) => passthrough::Admin::Unauthorized,
            },
        )
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    /// Routes the request. Our routes are answered here (`Ok(true)`, also when the client went
    /// away, so disconnects never become error-level logs); engine API paths go upstream.
    async fn request_filter(&self, s: &mut HttpSession, ctx: &mut RequestCtx) -> Result<bool> {
        // The idle time before this connection's next request (streams turn keepalive off).
        s.set_keepalive(Some(self.keepalive_secs));
        // A client that pipelines gets its requests answered in order (RFC 9112 §9.3.2), not the
        // first answered and the rest dropped.
        s.set_pipelining_enabled(true);
        let path = s.req_header().uri.path().to_string();
        let route = Route::of(&path);
        ctx.route = Some(route);
        let own_route = !matches!(route, Route::Passthrough | Route::NotFound);
        let result = if own_route && !routes::method_allowed(s) {
            // Nothing is started for a POST, PUT, DELETE...
            routes::write_method_not_allowed(s).await
        } else {
            // Stream routes, and checks (admitted first), are served where the id lives in a
            // fleet: a check of an id a member holds answers from that session, and one that
            // needs an engine runs on the id's owner, so it never adds an engine session.
            let placed = match route {
                Route::GetStream | Route::Manifest | Route::HlsSegment => self.place(s, ctx).await,
                Route::Check => match self.admin.admit(s, self.access.client_of(s)) {
                    Ok(()) => self.place(s, ctx).await,
                    Err(e) => Some(routes::write_error(s, &e).await),
                },
                _ => None,
            };
            if let Some(written) = placed {
                written
            } else if ctx.forward.is_some() {
                return Ok(false); // proxied to the member that serves it
            } else {
                match route {
                    Route::GetStream => getstream::serve(s, &self.sessions, &self.access).await,
                    Route::Manifest => hls::manifest(s, &self.sessions, &self.access).await,
                    Route::HlsSegment => hls::segment(s, &self.sessions, &self.access, &path).await,
                    Route::Dashboard => routes::dashboard::serve(s, &path).await,
                    Route::Health => {
                        routes::write_health(s, self.sessions.is_shutting_down()).await
                    }
                    // Admitted above, with its placement.
                    Route::Check => {
                        let max = self.config.checks.max_concurrent_checks;
                        routes::check::serve(s, &self.checker, &self.sessions, max).await
                    }
                    Route::Playlist => {
                        let admin_ok = self.admin.token.get().is_some() && self.admin.authorized(s);
                        routes::playlist::serve(
                            s,
                            &self.channels,
                            &self.access,
                            &self.config,
                            admin_ok,
                        )
                        .await
                    }
                    Route::Search => {
                        let admin_ok = self.admin.token.get().is_some() && self.admin.authorized(s);
                        let from = (&*self.engines, &self.search);
                        routes::search::serve(s, from, &self.access, &self.config, admin_ok).await
                    }
                    Route::Epg => {
                        let admin_ok = self.admin.token.get().is_some() && self.admin.authorized(s);
                        let gz_file = path.ends_with(".gz");
                        let (channels, access) = (&self.channels, &self.access);
                        routes::epg::serve(s, channels, access, admin_ok, gz_file).await
                    }
                    Route::ProxyChannels => match self.admin.admit(s, self.access.client_of(s)) {
                        Ok(()) => routes::playlist::channels_json(s, &self.channels).await,
                        Err(e) => routes::write_error(s, &e).await,
                    },
                    Route::Passthrough => match self.passthrough_allowed(s) {
                        Ok(()) => return Ok(false),
                        Err(e) => routes::write_error(s, &e).await,
                    },
                    // Unknown /proxy/* paths are admin paths too: the token is checked before the 404.
                    Route::NotFound if !admin::is_admin_path(&path) => {
                        let e = EdgeError::NotFound(format!("no route {path}"));
                        routes::write_error(s, &e).await
                    }
                    Route::ProxyCluster => self.serve_cluster(s).await,
                    admin_route => {
                        let client = self.access.client_of(s);
                        self.admin.serve(s, admin_route, &path, client).await
                    }
                }
            }
        };
        if let Err(e) = result {
            log::debug!("{path}: response not completed: {e}");
        }
        Ok(true)
    }

    /// The best engine, by the same score as sessions use (nothing is reserved).
    async fn upstream_peer(
        &self,
        s: &mut HttpSession,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.replace {
            self.replace(s, ctx).await;
            if ctx.forward.is_none() {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(502),
                    "the cluster member serving this stream did not answer; retry",
                ));
            }
        }
        if let (Some(f), Some(cluster)) = (&ctx.forward, &self.cluster) {
            let mut peer = HttpPeer::new(f.to, false, String::new());
            peer.options.connection_timeout = Some(cluster.peer_timeout());
            peer.options.read_timeout = forward::first_byte_deadline(
                ctx.route,
                &self.sessions.config(),
                cluster.peer_timeout(),
            );
            return Ok(Box::new(peer));
        }
        let engine = self.engines.best().await.map_err(|e| {
            log::warn!("passthrough: {e}");
            Error::explain(ErrorType::HTTPStatus(e.status()), e.public_text())
        })?;
        ctx.engine_host = Some(engine.endpoint.to_string());
        ctx.engine_headers = engine.endpoint.headers.clone();
        Ok(Box::new(HttpPeer::new(engine.addr, false, String::new())))
    }

    /// Engines see their own address as Host, as if called directly.
    async fn upstream_request_filter(
        &self,
        s: &mut HttpSession,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(host) = &ctx.engine_host {
            upstream_request.insert_header("Host", host.as_str())?;
        }
        if let (Some(forward::Forward { via, .. }), Some(cluster)) = (&ctx.forward, &self.cluster) {
            // The member that serves it sees the real client, and where the request has been.
            if let Some(ip) = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
                upstream_request.append_header("X-Forwarded-For", ip.to_string())?;
            }
            let mut hops: Vec<String> = via.iter().map(|a| a.to_string()).collect();
            hops.extend(cluster.me().map(|a| a.to_string()));
            upstream_request.insert_header(VIA_HEADER, hops.join(", "))?;
            return Ok(());
        }
        // The client's credentials are for this proxy, never for an engine; the engine's own
        // configured headers (`headers:`) go instead.
        upstream_request.remove_header(&http::header::AUTHORIZATION);
        upstream_request.remove_header(&http::header::COOKIE);
        for (name, value) in ctx.engine_headers.pairs() {
            // Sensitive: Pingora's debug log of the upstream request shows it as `Sensitive`.
            let mut value = http::HeaderValue::from_str(value)
                .map_err(|e| Error::because(ErrorType::InternalError, "engine header", e))?;
            value.set_sensitive(true);
            upstream_request.insert_header(name.clone(), value)?;
        }
        Ok(())
    }

    /// A cluster member that cannot be reached is skipped until its next health check, so the
    /// client's retry goes elsewhere at once.
    fn fail_to_connect(
        &self,
        s: &mut HttpSession,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if self.forward_failed(s, ctx, &e) {
            e.set_retry(true);
        }
        e
    }

    /// A forwarded request whose member gave no answer in time is placed again and retried
    /// (see [`forward`]); everything else keeps Pingora's policy (idempotent requests retried on
    /// a reused connection).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        s: &mut HttpSession,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if self.forward_failed(s, ctx, &e) {
            e.set_retry(true);
        } else if !s.req_header().method.is_idempotent() || s.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Counts every response by route and status.
    async fn logging(&self, s: &mut HttpSession, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = s.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        if ctx.route == Some(Route::GetStream) && status == 200 && ctx.forward.is_none() {
            // Counted when its headers went out (a stream's response ends much later).
            return;
        }
        let route = ctx.route.map_or("unknown", Route::label);
        self.metrics
            .http_responses
            .with_label_values(&[route, &status.to_string()])
            .inc();
    }

    /// Proxy failures answer `{"error": ...}` like every other error of ours.
    async fn fail_to_proxy(
        &self,
        s: &mut HttpSession,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => 0, // the client is gone or broke the protocol
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            // Our own errors carry their public text; Pingora's upstream errors name the engine's
            // address, which clients are not told (the log has it).
            let text = match e.etype() {
                ErrorType::HTTPStatus(_) => e
                    .context
                    .as_ref()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_else(|| e.etype().as_str().to_string()),
                _ => {
                    log::warn!("passthrough failed: {e}");
                    if code == 502 && ctx.forward.is_some() {
                        "the cluster member serving this stream could not be reached; retry"
                            .to_string()
                    } else if code == 502 {
                        "the engine could not be reached".to_string()
                    } else {
                        "internal error (see the proxy's log)".to_string()
                    }
                }
            };
            if let Err(err) = routes::write_error_text(s, code, &text).await {
                log::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
