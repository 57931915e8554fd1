//! `GET /epg.xml` (and `/epg.xml.gz`): the XMLTV guides of `acestream.channels.epg`, merged
//! and kept to the channels' `tvg-id`s (`?all=1`: whole). `/epg.xml` is gzip-encoded for a client
//! that accepts it (`Content-Encoding: gzip`); `/epg.xml.gz` is the gzip file itself. Answers
//! carry `ETag` and `Last-Modified`, and `If-None-Match` / `If-Modified-Since` get `304`. With
//! signed stream URLs, the guide needs what the playlist needs (the admin token or a token for
//! the id `playlist`). See [`crate::channels::epg`] for loading and limits.

use super::playlist::{Query, PLAYLIST_TOKEN_ID};
use super::write_error;
use crate::access::Access;
use crate::channels::epg::{Guide, GuideError};
use crate::channels::Channels;
use crate::error::EdgeError;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use std::collections::HashSet;
use std::sync::Arc;

/// How the guide is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `application/xml`, as is.
    Xml,
    /// `application/xml` with `Content-Encoding: gzip`.
    XmlGzipEncoded,
    /// `/epg.xml.gz`: the gzip file.
    GzipFile,
}

/// Answers `/epg.xml` (`gz_file`: `/epg.xml.gz`). `admin_ok`: the request carries the admin
/// token.
pub async fn serve(
    s: &mut HttpSession,
    channels: &Arc<Channels>,
    access: &Access,
    admin_ok: bool,
    gz_file: bool,
) -> pingora::Result<()> {
    let query = Query::of(s);
    if access.signs_streams() && !admin_ok {
        if let Err(e) = access.check_stream_token(PLAYLIST_TOKEN_ID, query.text()) {
            return write_error(s, &e).await;
        }
    }
    let all = query.param("all").is_some_and(|v| v != "0");
    let ids: Option<HashSet<String>> = if all {
        None
    } else {
        Some(
            channels
                .list()
                .await
                .iter()
                .filter_map(|c| c.attr("tvg-id"))
                .map(str::to_lowercase)
                .collect(),
        )
    };
    let guide = match channels.guides().guide(ids).await {
        Ok(g) => g,
        Err(e @ GuideError::NotConfigured) => {
            return write_error(s, &EdgeError::NotFound(e.to_string())).await
        }
        Err(e @ GuideError::Unavailable(_)) => {
            return write_error(s, &EdgeError::SourceUnavailable(e.to_string())).await
        }
    };
    let accepts_gzip = s
        .req_header()
        .headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_gzip);
    let body = match (gz_file, accepts_gzip) {
        (true, _) => Body::GzipFile,
        (false, true) => Body::XmlGzipEncoded,
        (false, false) => Body::Xml,
    };
    write_guide(s, &guide, body).await
}

/// Whether an `Accept-Encoding` value takes gzip (listed, and not with `q=0`).
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// Sends `guide` as `body`, or `304` when the request's validators match.
async fn write_guide(s: &mut HttpSession, guide: &Guide, body: Body) -> pingora::Result<()> {
    // The gzip representations are other bytes: their tag says so.
    let etag = match body {
        Body::Xml => guide.etag.clone(),
        _ => guide.etag.replacen('"', "\"gz-", 1),
    };
    let modified = httpdate::fmt_http_date(guide.modified);
    let headers = &s.req_header().headers;
    let header = |name: http::header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let not_modified = match header(http::header::IF_NONE_MATCH) {
        Some(tags) => tags
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*"),
        None => header(http::header::IF_MODIFIED_SINCE)
            .and_then(|v| httpdate::parse_http_date(&v).ok())
            .is_some_and(|since| {
                // HTTP dates have whole seconds.
                crate::channels::unix_seconds(guide.modified)
                    <= crate::channels::unix_seconds(since)
            }),
    };
    let (status, bytes) = if not_modified {
        (304, None)
    } else {
        let bytes = match body {
            Body::Xml => guide.xml.clone(),
            _ => guide.gz.clone(),
        };
        (200, Some(bytes))
    };
    let mut h = ResponseHeader::build(status, Some(8))?;
    let content_type = match body {
        Body::GzipFile => "application/gzip",
        _ => "application/xml; charset=utf-8",
    };
    h.insert_header("Content-Type", content_type)?;
    if body == Body::XmlGzipEncoded {
        h.insert_header("Content-Encoding", "gzip")?;
    }
    if body != Body::GzipFile {
        h.insert_header("Vary", "Accept-Encoding")?;
    }
    h.insert_header("ETag", etag)?;
    h.insert_header("Last-Modified", modified)?;
    h.insert_header("Cache-Control", "no-cache")?;
    h.insert_header("Access-Control-Allow-Origin", "*")?;
    let head_only = s.req_header().method == http::Method::HEAD || bytes.is_none();
    if let Some(b) = &bytes {
        h.insert_header("Content-Length", b.len().to_string())?;
    }
    s.write_response_header(Box::new(h), head_only).await?;
    match bytes {
        Some(b) if !head_only => s.write_response_body(Some(b), true).await,
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_is_taken_unless_refused() {
        assert!(accepts_gzip("gzip, deflate, br"));
        assert!(accepts_gzip("br;q=1.0, GZIP;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip("x-gzip-not"));
    }
}
