//! Fetching a channel source or guide over `http://` or `https://`: the response head of a
//! `GET`, its body left to read. TLS is rustls with the system's CA certificates (the file
//! `SSL_CERT_FILE` names, else the distribution's store), loaded once per process; a host
//! without CA certificates fails its `https://` fetches with a message that says so.

use crate::config::Headers;
use crate::http1::{self, GetOptions, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a response is read from: a plain socket or a TLS stream over one.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// Whether `location` is a URL this module fetches (else it is a file path).
pub fn is_url(location: &str) -> bool {
    location.starts_with("http://") || location.starts_with("https://")
}

/// The TLS client settings, or why there are none (no CA certificate on this host).
static TLS: once_cell::sync::Lazy<Result<Arc<rustls::ClientConfig>, String>> =
    once_cell::sync::Lazy::new(tls_config);

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no CA certificate on this host to check https:// servers with (install ca-certificates, or set SSL_CERT_FILE){}",
            found
                .errors
                .first()
                .map_or(String::new(), |e| format!(": {e}"))
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `GET url` with `headers`, up to a `200` response's head: connecting (and the TLS handshake)
/// within `timeout`, and the head within `timeout` more; any other status is an error.
pub async fn open(
    url: &str,
    timeout: Duration,
    headers: &Headers,
) -> Result<Response<Box<dyn ByteStream>>, String> {
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(format!("{url:?} is not an http:// or https:// URL")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let uri: http::uri::Authority = authority
        .parse()
        .map_err(|e| format!("{authority:?}: {e}"))?;
    let host = uri.host().trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Box::new(tcp) as Box<dyn ByteStream>);
        }
        let config = TLS.as_ref().map_err(Clone::clone)?.clone();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{authority}: TLS: {e}"))?;
        Ok::<_, String>(Box::new(stream) as Box<dyn ByteStream>)
    };
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| format!("{authority}: connect timed out"))??;
    let opts = GetOptions::with_headers(headers);
    let r = tokio::time::timeout(timeout, http1::get_over(stream, authority, path, &opts))
        .await
        .map_err(|_| format!("{authority}: no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("answered HTTP {}", r.status));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        assert!(is_url("http://lists.example/a.m3u"));
        assert!(is_url("https://lists.example/a.m3u"));
        assert!(!is_url("/etc/acestream-edge/mine.m3u"));
        assert!(!is_url("lists/mine.m3u"));
    }
}
