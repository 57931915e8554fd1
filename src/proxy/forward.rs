//! Serving in a fleet: where a request goes ([`EdgeProxy::place`]), how long a member may take
//! to answer a forwarded one, and what happens when it does not.
//!
//! A member that passes `/healthz` but hangs everything else must not hang the fleet: a
//! forwarded request's response head must come within its deadline (`peer_timeout` plus what
//! the route itself may wait for, see [`first_byte_deadline`]). When it does not, the member is
//! marked failing (see [`Cluster::mark_failing`]) and the request is placed again (Pingora
//! retries it): to the next member, or to this node itself when no other member should serve it,
//! so a viewer waits at most one deadline more than a direct request.

use super::{EdgeProxy, RequestCtx};
use crate::cluster::{Placement, VIA_HEADER};
use crate::config::{ClusterMode, Config};
use crate::error::EdgeError;
use crate::routes::{self, getstream, Route};
use pingora::prelude::*;
use pingora::proxy::Session as HttpSession;
use std::net::SocketAddr;
use std::time::Duration;

/// Where a request is proxied in the fleet.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The member that serves it (this node itself after a failed forward: see the module docs).
    pub to: SocketAddr,
    /// The members it went through before reaching this node.
    pub via: Vec<SocketAddr>,
}

/// How long the response head of a forwarded request of `route` may take: `peer_timeout` plus
/// what the serving member itself may wait before its head (a stream with keepalives answers at
/// once; a playlist waits for its first segments; a check for its first byte). It bounds every
/// later read too (Pingora has one read timeout): a stream's body is never silent for longer
/// than `keepalive_interval` (its keepalive nulls), which leaves `peer_timeout` to spare.
/// `None`: no bound (a stream without keepalives may be silent through a failover).
pub fn first_byte_deadline(
    route: Option<Route>,
    config: &Config,
    peer: Duration,
) -> Option<Duration> {
    let waits = match route {
        Some(Route::GetStream) if config.viewers.keepalive_interval.is_zero() => return None,
        Some(Route::GetStream) => config.viewers.keepalive_interval,
        Some(Route::Manifest) => config.sessions.empty_stream_timeout,
        Some(Route::Check) => config.checks.check_timeout,
        _ => Duration::from_secs(1),
    };
    Some(peer + waits)
}

impl EdgeProxy {
    /// Where a stream request (getstream, playlist, segment) is served in a fleet; `None` when
    /// here. In `redirect` mode the `302` is written here (`Some(None)`).
    pub(super) async fn place(
        &self,
        s: &mut HttpSession,
        ctx: &mut RequestCtx,
    ) -> Option<pingora::Result<()>> {
        let cluster = self.cluster.as_ref()?;
        // A request without a valid id is answered here (with its 400).
        let key = getstream::content_id(s.req_header().uri.query())
            .ok()?
            .to_string();
        let peer_ip = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let via_header = s
            .req_header()
            .headers
            .get(VIA_HEADER)
            .and_then(|v| v.to_str().ok());
        let via = cluster.via_of(peer_ip, via_header);
        let local = self.sessions.get(&key).is_some();
        let Placement::Forward { to, because } = cluster.place(&key, local, &via).await else {
            return None;
        };
        match cluster.mode() {
            ClusterMode::Proxy => {
                log::debug!(
                    "{key}: proxied to cluster member {to} ({})",
                    because.label()
                );
                self.metrics
                    .cluster_forwarded
                    .with_label_values(&[because.label()])
                    .inc();
                ctx.forward = Some(Forward { to, via });
                None
            }
            ClusterMode::Redirect => {
                self.metrics
                    .cluster_redirects
                    .with_label_values(&[because.label()])
                    .inc();
                let target = s
                    .req_header()
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                Some(routes::write_redirect(s, &format!("http://{to}{target}")).await)
            }
        }
    }

    /// `GET /proxy/cluster`: for admins, and for the fleet's members (which poll it).
    pub(super) async fn serve_cluster(&self, s: &mut HttpSession) -> pingora::Result<()> {
        let Some(cluster) = &self.cluster else {
            let e = EdgeError::NotFound(
                "this node is not in a cluster (acestream.cluster is not set)".into(),
            );
            return routes::write_error(s, &e).await;
        };
        let peer_ip = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if !peer_ip.is_some_and(|ip| cluster.is_member_ip(ip)) {
            if let Err(e) = self.admin.admit(s, self.access.client_of(s)) {
                return routes::write_error(s, &e).await;
            }
        }
        let id = s
            .req_header()
            .uri
            .query()
            .and_then(|q| getstream::query_param(q, "id"));
        let key =
            id.map(|v| crate::engines::ContentKey::parse_key(&v).map_or(v, |c| c.to_string()));
        let held = self
            .sessions
            .list()
            .iter()
            .map(|x| crate::cluster::HeldSession {
                id: x.content.to_string(),
                engine: x.state().source.engine().map(|e| e.addr),
            })
            .collect();
        let view = cluster.view(held, key.as_deref());
        let body = serde_json::to_vec_pretty(&view).unwrap_or_default();
        routes::write_json(s, 200, body).await
    }

    /// The forwarded request failed before its response head (`e`): true if it is placed again
    /// and Pingora should retry it (the member is marked failing or unreachable first). Never
    /// after a head went to the client, and never when this node itself did not answer.
    pub(super) fn forward_failed(
        &self,
        s: &HttpSession,
        ctx: &mut RequestCtx,
        e: &pingora::Error,
    ) -> bool {
        let (Some(forward), Some(cluster)) = (&ctx.forward, &self.cluster) else {
            return false;
        };
        if s.response_written().is_some() || cluster.me() == Some(forward.to) {
            return false;
        }
        match e.etype() {
            ErrorType::ReadTimedout => cluster.mark_failing(
                forward.to,
                format!(
                    "no answer to a forwarded {} request in time",
                    ctx.route.map_or("?", Route::label)
                ),
            ),
            _ => cluster.mark_unreachable(forward.to),
        }
        ctx.replace = true;
        true
    }

    /// Places a request again after its forward failed (see [`EdgeProxy::forward_failed`]): to
    /// the member that serves it now, or to this node itself (with the via header naming it, so
    /// it serves the request instead of forwarding it once more).
    pub(super) async fn replace(&self, s: &HttpSession, ctx: &mut RequestCtx) {
        ctx.replace = false;
        let (Some(cluster), Some(old)) = (&self.cluster, ctx.forward.take()) else {
            return;
        };
        let Ok(key) = getstream::content_id(s.req_header().uri.query()) else {
            return;
        };
        let key = key.to_string();
        let local = self.sessions.get(&key).is_some();
        let to = match cluster.place(&key, local, &old.via).await {
            Placement::Forward { to, .. } => Some(to),
            Placement::Local => cluster.me(),
        };
        if let Some(to) = to {
            log::info!(
                "{key}: forwarded to {to} instead of {} (it did not answer)",
                old.to
            );
            ctx.forward = Some(Forward { to, via: old.via });
        }
    }
}
