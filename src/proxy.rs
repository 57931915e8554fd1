//! The Pingora plugin: [`EdgeProxy`] implements `ProxyHttp` and routes every request.
//!
//! All routes are answered in `request_filter` (Pingora's hook for serving a response yourself);
//! nothing is proxied through `upstream_peer` yet.

use crate::error::EdgeError;
use crate::http::{self, getstream};
use crate::streams::Sessions;
use async_trait::async_trait;
use pingora::prelude::*;
use std::sync::Arc;

/// The acestream-edge plugin for Pingora's HTTP proxy service.
pub struct EdgeProxy {
    sessions: Arc<Sessions>,
}

impl EdgeProxy {
    /// A plugin serving from `sessions`.
    pub fn new(sessions: Arc<Sessions>) -> Self {
        EdgeProxy { sessions }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    /// Never reached: `request_filter` answers every request.
    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "no upstream route",
        ))
    }

    /// Routes the request and answers it; always `Ok(true)` ("response sent"), so client
    /// disconnects never become error-level "Fail to filter request" logs.
    async fn request_filter(&self, s: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let path = s.req_header().uri.path().to_string();
        let result = match path.as_str() {
            "/ace/getstream" => getstream::serve(s, &self.sessions).await,
            "/ace/manifest.m3u8" => getstream::manifest(s).await,
            _ => {
                let e = EdgeError::NotFound(format!("no route {path}"));
                http::write_error(s, &e).await
            }
        };
        if let Err(e) = result {
            log::debug!("{path}: response not completed: {e}");
        }
        Ok(true)
    }
}
