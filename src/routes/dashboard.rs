//! The dashboard: one page and its assets (`web/`, embedded in the binary), at `/` and
//! `/dashboard`. The files are public and hold no data: the page reads `/proxy/status` and
//! `/proxy/engines` with the admin token the user types in (see `web/app.js`).
//!
//! Every response carries a strict `Content-Security-Policy` (only this origin; `blob:` media for
//! hls.js), an `ETag` (answered with `304` when it matches) and `Cache-Control`: the page is
//! revalidated every time, the assets may be cached for an hour.

use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use std::sync::OnceLock;

/// Only this origin; hls.js feeds the `<video>` through `blob:` URLs (MSE) and may use a worker.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    media-src 'self' blob:; worker-src 'self' blob:; img-src 'self' data:; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// An embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/app.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/vendor/uPlot.min.css"),
    },
    Asset {
        name: "hls.light.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/vendor/hls.light.min.js"),
    },
];

/// True for the dashboard's paths.
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path == "/dashboard" || path.starts_with("/dashboard/")
}

/// FNV-1a, 64 bits: enough to tell versions of a file apart in an `ETag`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn etags() -> &'static Vec<String> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{:016x}\"", fnv1a(a.body)))
            .collect()
    })
}

/// Serves a dashboard path; `404` for an unknown asset.
pub async fn serve(s: &mut HttpSession, path: &str) -> pingora::Result<()> {
    let name = match path {
        "/" | "/dashboard" | "/dashboard/" => "index.html",
        p => p.trim_start_matches("/dashboard/"),
    };
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        let e = crate::error::EdgeError::NotFound(format!("no route {path}"));
        return super::write_error(s, &e).await;
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let matches = s
        .req_header()
        .headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let status = if matches { 304 } else { 200 };
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header("Content-Type", asset.content_type)?;
    h.insert_header("ETag", etag.as_str())?;
    h.insert_header(
        "Cache-Control",
        if asset.name == "index.html" {
            "no-cache"
        } else {
            "public, max-age=3600"
        },
    )?;
    h.insert_header("Content-Security-Policy", CSP)?;
    h.insert_header("X-Content-Type-Options", "nosniff")?;
    h.insert_header("Referrer-Policy", "no-referrer")?;
    let head_only = matches || s.req_header().method == http::Method::HEAD;
    if !matches {
        h.insert_header("Content-Length", asset.body.len().to_string())?;
    }
    s.write_response_header(Box::new(h), head_only).await?;
    if head_only {
        return Ok(());
    }
    s.write_response_body(Some(bytes::Bytes::from_static(asset.body)), true)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_and_paths() {
        assert!(is_dashboard_path("/") && is_dashboard_path("/dashboard/app.js"));
        assert!(!is_dashboard_path("/proxy/status"));
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total < 1 << 20, "the dashboard adds {total} bytes");
        assert_eq!(etags().len(), ASSETS.len());
        assert_ne!(etags()[0], etags()[1]);
    }
}
