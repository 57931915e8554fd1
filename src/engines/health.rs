//! The engine health probe, plugged into Pingora's load-balancer health checking:
//! `GET /webui/api/service?method=get_version` must answer 200 with a JSON `result`.

use crate::http1;
use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::{Error, ErrorType};
use std::time::Duration;

/// Probes one engine's HTTP API.
pub struct EngineHealthCheck {
    /// Bound on connect plus answer.
    pub timeout: Duration,
    /// The engines found, for each one's extra request headers.
    pub meta: std::sync::Arc<super::Discovered>,
}

/// True for errors of this host, not of the engine: out of file descriptors (`EMFILE`,
/// `ENFILE`), buffers (`ENOBUFS`) or memory (`ENOMEM`).
pub fn is_local_failure(e: &std::io::Error) -> bool {
    // Linux errno values.
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    matches!(e.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE | ENOBUFS))
}

#[async_trait]
impl HealthCheck for EngineHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let addr = *target.addr.as_inet().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "engine address is not inet")
        })?;
        let probe = async {
            let opts = http1::GetOptions::with_headers(&self.meta.headers_of(&addr));
            let path = "/webui/api/service?method=get_version";
            let mut r = http1::get_opts(addr, path, self.timeout, &opts).await?;
            let body = r.read_to_end(64 * 1024).await?;
            Ok::<_, std::io::Error>((r.status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, probe)
            .await
            .map_err(|_| Error::explain(ErrorType::ConnectTimedout, "health probe timed out"))?
        {
            Ok(answer) => answer,
            // Out of file descriptors or buffers here says nothing about the engine: the probe
            // counts as passed (Pingora's health check has no "unknown"), and the log says why.
            Err(e) if is_local_failure(&e) => {
                log::warn!(
                    "health probe of engine {addr} could not run here ({e}); its state is not changed for it"
                );
                return Ok(());
            }
            Err(e) => {
                return Err(Error::because(
                    ErrorType::ConnectError,
                    "health probe failed",
                    e,
                ))
            }
        };
        if status != 200 {
            return Error::e_explain(ErrorType::HTTPStatus(status), "health probe status");
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            Error::because(
                ErrorType::InvalidHTTPHeader,
                "health probe answer is not JSON",
                e,
            )
        })?;
        if json.get("result").is_none_or(|r| r.is_null()) {
            return Error::e_explain(
                ErrorType::InternalError,
                "health probe answer has no result",
            );
        }
        Ok(())
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if healthy {
            log::info!("engine {} is healthy again", target.addr);
        } else {
            log::warn!("engine {} is unhealthy", target.addr);
        }
    }

    /// One result flips the state: a dead engine must stop getting sessions at once, and an engine
    /// that answers again is usable at once.
    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_failures_are_told_apart() {
        assert!(is_local_failure(&std::io::Error::from_raw_os_error(24)));
        assert!(is_local_failure(&std::io::Error::from_raw_os_error(105)));
        assert!(
            !is_local_failure(&std::io::Error::from_raw_os_error(111)),
            "ECONNREFUSED"
        );
        assert!(!is_local_failure(&std::io::Error::other("x")));
    }
}
