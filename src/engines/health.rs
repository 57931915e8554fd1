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
}

#[async_trait]
impl HealthCheck for EngineHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let addr = *target.addr.as_inet().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "engine address is not inet")
        })?;
        let probe = async {
            let mut r =
                http1::get(addr, "/webui/api/service?method=get_version", self.timeout).await?;
            let body = r.read_to_end(64 * 1024).await?;
            Ok::<_, std::io::Error>((r.status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, probe)
            .await
            .map_err(|_| Error::explain(ErrorType::ConnectTimedout, "health probe timed out"))?
            .map_err(|e| Error::because(ErrorType::ConnectError, "health probe failed", e))?;
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
