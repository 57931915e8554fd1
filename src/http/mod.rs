//! What the proxy serves itself: routing, `/ace/getstream`, and JSON responses.

pub mod admin;
pub mod getstream;

use crate::error::EdgeError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Writes a complete JSON response with a Content-Length.
pub async fn write_json(s: &mut Session, status: u16, body: Vec<u8>) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(status, Some(4))?;
    h.insert_header("Content-Type", "application/json")?;
    h.insert_header("Content-Length", body.len().to_string())?;
    h.insert_header("Cache-Control", "no-store")?;
    s.write_response_header(Box::new(h), false).await?;
    s.write_response_body(Some(Bytes::from(body)), true).await
}

/// Writes an [`EdgeError`] as `{"error": "..."}` with its status.
pub async fn write_error(s: &mut Session, e: &EdgeError) -> pingora::Result<()> {
    write_json(s, e.status(), e.json_body()).await
}
