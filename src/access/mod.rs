//! Who a client is, and what it may do: the client address (the socket peer, or what a trusted
//! proxy says it forwarded), the per-address and global viewer limits, and who may read the
//! admin routes.
//!
//! Owned by the proxy plugin ([`crate::proxy::EdgeProxy`]); a route asks it before it starts
//! anything. Nothing here touches a session: a [`limits::ViewerPermit`] is held by the route for
//! as long as its client streams.

pub use crate::config::cidr;
use crate::sync::ReadWrite;
pub mod limits;
pub mod passthrough;
pub mod token;

use crate::config::Config;
use crate::error::EdgeError;
use crate::metrics::Metrics;
use cidr::{any_contains, Cidr};
use limits::{Limits, ViewerPermit};
use pingora::proxy::Session as HttpSession;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// `acestream.admin_token`, as a reload leaves it: who may use the admin routes. Here, where
/// clients are told apart, so that routes, the cluster and reloads all import it from below.
pub type AdminToken = crate::config::live::Live<Option<String>>;
/// The settings a reload replaces that live outside the sessions' configuration.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// `admin_token`.
    pub admin_token: Arc<AdminToken>,
    /// The viewer limits (their settings; what they count stays).
    pub limits: Arc<limits::Limits>,
}

impl LiveSettings {
    /// As `config` sets them.
    pub fn of(config: &Config) -> Self {
        LiveSettings {
            admin_token: Arc::new(AdminToken::new(config.admin_token.clone())),
            limits: Arc::new(limits::Limits::new(config.limits.clone())),
        }
    }
}

/// The IP addresses of a fleet's members (see [`crate::cluster`]): they forward requests, so
/// their `X-Forwarded-For` is believed like a trusted proxy's. Empty without a cluster.
#[derive(Debug, Default)]
pub struct TrustedPeers {
    ips: std::sync::RwLock<Vec<IpAddr>>,
}

impl TrustedPeers {
    /// Whether `ip` is a member's.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ips.read_locked().contains(&ip)
    }

    /// Replaces the set (the cluster's discovery, at each pass).
    pub fn set(&self, mut ips: Vec<IpAddr>) {
        ips.sort();
        ips.dedup();
        *self.ips.write_locked() = ips;
    }
}

/// Client identity and viewer limits, for every route.
#[derive(Debug)]
pub struct Access {
    trusted_proxies: Vec<Cidr>,
    /// The fleet's members, trusted like `trusted_proxies`.
    pub peers: Arc<TrustedPeers>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    /// Set when stream URLs must be signed.
    pub tokens: Option<token::StreamTokens>,
}

impl Access {
    /// Identity and limits as `config` sets them.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        Self::with_limits(
            config,
            metrics,
            Arc::new(Limits::new(config.limits.clone())),
        )
    }

    /// Identity as `config` sets it, counted against `limits` (shared with the reloader).
    pub fn with_limits(config: &Config, metrics: Arc<Metrics>, limits: Arc<Limits>) -> Self {
        Access {
            trusted_proxies: config.connections.trusted_proxies.clone(),
            peers: Arc::new(TrustedPeers::default()),
            limits,
            metrics,
            tokens: config
                .access
                .stream_token_secret
                .as_deref()
                .map(token::StreamTokens::new),
        }
    }

    /// The client of a request: the socket peer, or what a trusted proxy forwarded for
    /// (`None` only for a peer that is not an IP socket, such as a Unix socket).
    pub fn client_of(&self, s: &HttpSession) -> Option<ClientAddr> {
        let peer = *s.client_addr()?.as_inet()?;
        let headers: Vec<&str> = s
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let trusted =
            |ip: IpAddr| any_contains(&self.trusted_proxies, ip) || self.peers.contains(ip);
        Some(client_addr_with(peer, &headers, trusted))
    }

    /// A token opening `id` for `ttl`, when stream URLs are signed.
    pub fn sign_stream(&self, id: &str, ttl: std::time::Duration) -> Option<String> {
        let tokens = self.tokens.as_ref()?;
        Some(tokens.sign(id, token::unix_now() + ttl.as_secs()))
    }

    /// Whether stream URLs are signed (`stream_token_secret` is set).
    pub fn signs_streams(&self) -> bool {
        self.tokens.is_some()
    }

    /// Checks a stream request's `token` for content `id` when stream URLs must be signed.
    pub fn check_stream_token(&self, id: &str, query: Option<&str>) -> Result<(), EdgeError> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let token = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        tokens.check(id, token.as_deref(), token::unix_now())
    }

    /// Admits a viewer of `content` (see [`Limits::admit`]); a refusal is counted, logged at most
    /// once a minute per address, and answered as `429`.
    pub fn admit_viewer(
        &self,
        client: Option<ClientAddr>,
        content: &str,
        starts_session: bool,
        sessions_now: usize,
    ) -> Result<Option<ViewerPermit>, EdgeError> {
        let Some(client) = client else {
            return Ok(None);
        };
        match self
            .limits
            .admit(client.ip, content, starts_session, sessions_now)
        {
            Ok(permit) => Ok(Some(permit)),
            Err(r) => {
                self.metrics
                    .limit_rejections
                    .with_label_values(&[r.limit.label()])
                    .inc();
                let message = r.limit.describe(r.max);
                if self.limits.should_log(client.ip, std::time::Instant::now()) {
                    log::warn!(
                        "client {} refused ({}): {message} (further refusals of this address are not logged for a minute)",
                        client.ip,
                        r.limit.label()
                    );
                }
                Err(EdgeError::TooManyRequests {
                    message,
                    retry_after: r.retry_after,
                })
            }
        }
    }
}

impl ClientAddr {
    /// A client a trusted front could not name (`X-Forwarded-For: unknown`, or empty): the
    /// unspecified address, which is never loopback (no admin route without a token) and which
    /// the per-address limits count as one address.
    pub const UNKNOWN: ClientAddr = ClientAddr {
        ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        port: None,
    };
}

/// A client's address as every limit, log line and status field sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    /// The client's IP address.
    pub ip: IpAddr,
    /// Its port, when the address is the socket peer's (a forwarded address has none).
    pub port: Option<u16>,
}

impl From<SocketAddr> for ClientAddr {
    fn from(a: SocketAddr) -> Self {
        ClientAddr {
            ip: a.ip().to_canonical(),
            port: Some(a.port()),
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

/// The client behind a connection from `peer`: the peer itself, or, when the peer is a trusted
/// proxy, the right-most address of `X-Forwarded-For` that is not itself a trusted proxy (the
/// entries left of it were written by the client and prove nothing). An entry that is not an
/// address (`unknown`, empty, garbage) makes the client unknown: [`ClientAddr::UNKNOWN`], never
/// the trusted hop itself (a front on loopback would otherwise pass its clients off as local).
pub fn client_addr(peer: SocketAddr, forwarded_for: &[&str], trusted: &[Cidr]) -> ClientAddr {
    client_addr_with(peer, forwarded_for, |ip| any_contains(trusted, ip))
}

/// [`client_addr`] with the trust decided by `trusted`.
fn client_addr_with(
    peer: SocketAddr,
    forwarded_for: &[&str],
    trusted: impl Fn(IpAddr) -> bool,
) -> ClientAddr {
    let peer = ClientAddr::from(peer);
    if !trusted(peer.ip) {
        return peer;
    }
    let mut client = peer;
    for header in forwarded_for.iter().rev() {
        for entry in header.rsplit(',') {
            let Some(ip) = parse_forwarded_ip(entry) else {
                return ClientAddr::UNKNOWN;
            };
            client = ClientAddr { ip, port: None };
            if !trusted(ip) {
                return client;
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443` or `1.2.3.4:80`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    e.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster member's `X-Forwarded-For` is believed, anyone else's is not.
    #[test]
    fn members_forward_client_addresses() {
        let peers = TrustedPeers::default();
        peers.set(vec!["10.0.0.2".parse().unwrap()]);
        let trusted = |ip: IpAddr| peers.contains(ip);
        let from_member =
            client_addr_with("10.0.0.2:4000".parse().unwrap(), &["203.0.113.9"], trusted);
        assert_eq!(from_member.ip.to_string(), "203.0.113.9");
        let from_other =
            client_addr_with("10.0.0.3:4000".parse().unwrap(), &["203.0.113.9"], trusted);
        assert_eq!(from_other.ip.to_string(), "10.0.0.3");
    }

    fn cidrs(v: &[&str]) -> Vec<Cidr> {
        v.iter().map(|c| c.parse().unwrap()).collect()
    }

    /// Only a trusted peer's header counts, and only up to the first untrusted hop from the right.
    #[test]
    fn forwarded_for_from_trusted_peers_only() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let trusted = cidrs(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_addr(peer, &["198.51.100.7"], &trusted).ip,
            ip("198.51.100.7")
        );
        assert_eq!(client_addr(peer, &["198.51.100.7"], &trusted).port, None);
        // The client wrote the left entry itself: the right-most untrusted one wins.
        assert_eq!(
            client_addr(peer, &["1.1.1.1, 198.51.100.7, 10.0.0.9"], &trusted).ip,
            ip("198.51.100.7")
        );
        assert_eq!(
            client_addr(peer, &["1.1.1.1", "198.51.100.8"], &trusted).ip,
            ip("198.51.100.8"),
            "several headers read as one list"
        );
        // An untrusted peer's header is ignored.
        let outsider: SocketAddr = "203.0.113.1:5000".parse().unwrap();
        assert_eq!(
            client_addr(outsider, &["198.51.100.7"], &trusted),
            ClientAddr::from(outsider)
        );
        // Garbage, `unknown` or an empty entry: the client is unknown, not the trusted hop (a
        // front on loopback must not pass its clients off as local).
        for header in ["nonsense", "unknown", "", "198.51.100.7, ", " "] {
            let c = client_addr(peer, &[header], &trusted);
            assert_eq!(c, ClientAddr::UNKNOWN, "{header:?}");
            assert!(!c.ip.is_loopback());
        }
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let front = cidrs(&["127.0.0.1/32"]);
        assert!(!client_addr(local, &["unknown"], &front).ip.is_loopback());
        // No header at all: the trusted peer is the client (its own request).
        assert_eq!(client_addr(local, &[], &front), ClientAddr::from(local));
        assert_eq!(
            client_addr(peer, &["[2001:db8::1]:443"], &trusted).ip,
            ip("2001:db8::1")
        );
        assert_eq!(ClientAddr::from(peer).to_string(), "10.0.0.5:4000");
    }
}
