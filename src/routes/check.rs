//! `GET /ace/check?id=<content id>` (an admin route): is this id playable, without keeping an
//! engine busy? For playlist scrapers, which check hundreds of channels. The check itself is
//! [`crate::streams::check`]; at most `max_concurrent_checks` run at once (shared with the
//! channel checker), more get `429`.

use super::getstream::content_id;
use super::{write_error, write_json};
use crate::error::EdgeError;
use crate::streams::check::ContentChecker;
use crate::streams::Sessions;
use pingora::proxy::Session as HttpSession;
use std::time::Duration;

/// A check asked again this soon is told to wait (a scraper retrying at once only adds load).
const CHECK_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Answers a check request (the caller checked the admin rights).
pub async fn serve(
    s: &mut HttpSession,
    checker: &ContentChecker,
    sessions: &Sessions,
    max_concurrent: usize,
) -> pingora::Result<()> {
    let content = match content_id(s.req_header().uri.query()) {
        Ok(c) => c,
        Err(e) => return write_error(s, &e).await,
    };
    let result = match ContentChecker::from_session(sessions, &content) {
        Some(r) => r,
        None => {
            let Some(_slot) = checker.try_slot() else {
                let e = EdgeError::TooManyRequests {
                    message: format!("at most {max_concurrent} checks run at once"),
                    retry_after: CHECK_RETRY_AFTER,
                };
                return write_error(s, &e).await;
            };
            checker.check(&content).await
        }
    };
    write_json(s, 200, serde_json::to_vec(&result).unwrap_or_default()).await
}
