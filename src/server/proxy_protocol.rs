//! The PROXY protocol (v1 text and v2 binary, as HAProxy's `send-proxy` / `send-proxy-v2` write
//! it): the header a front proxy puts before the client's bytes to say who the client is.
//!
//! Read exactly the header and nothing after it, so the HTTP request that follows is untouched.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature of a v2 header.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// A v1 line is at most 107 bytes, CRLF included (the spec's own bound).
const V1_MAX: usize = 107;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads a PROXY header; returns the client's address, or `None` when the header says the
/// connection is the front's own (v2 `LOCAL`, v1 `UNKNOWN`): then the socket peer stands.
pub async fn read_header<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> io::Result<Option<SocketAddr>> {
    // Both versions are at least 12 bytes long (v1's shortest line, "PROXY UNKNOWN\r\n", is 15).
    let mut start = [0u8; 12];
    r.read_exact(&mut start).await?;
    if start == V2_SIGNATURE {
        return read_v2(r).await;
    }
    if !start.starts_with(b"PROXY ") {
        return Err(invalid("the connection did not start with a PROXY header"));
    }
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(invalid("PROXY v1 line longer than 107 bytes"));
        }
        line.push(r.read_u8().await?);
    }
    parse_v1(&line[..line.len() - 2])
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>` (without CRLF).
fn parse_v1(line: &[u8]) -> io::Result<Option<SocketAddr>> {
    let text = std::str::from_utf8(line).map_err(|_| invalid("PROXY v1 line is not text"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| invalid(format!("PROXY v1 source '{src}'")))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(invalid("PROXY v1 source does not match its family"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| invalid(format!("PROXY v1 source port '{sport}'")))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(invalid(format!("PROXY v1 line '{text}'"))),
    }
}

async fn read_v2<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> io::Result<Option<SocketAddr>> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    let [ver_cmd, family, len_hi, len_lo] = head;
    let len = u16::from_be_bytes([len_hi, len_lo]) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if ver_cmd >> 4 != 2 {
        return Err(invalid("PROXY v2 header with a version other than 2"));
    }
    match ver_cmd & 0x0F {
        0 => return Ok(None), // LOCAL: the front's own connection (a health check)
        1 => {}
        c => return Err(invalid(format!("PROXY v2 command {c}"))),
    }
    let addr = match family >> 4 {
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]]))
        }
        2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(octets);
            SocketAddr::new(ip.into(), u16::from_be_bytes([body[32], body[33]]))
        }
        0 => return Ok(None), // AF_UNSPEC
        _ => return Err(invalid("PROXY v2 address family or length not supported")),
    };
    Ok(Some(addr))
}

/// A v1 header for `src` (for tests and benches).
pub fn v1_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 `PROXY` header for IPv4 `src` (for tests and benches).
pub fn v2_header(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (io::Result<Option<SocketAddr>>, Vec<u8>) {
        let mut r: &[u8] = bytes;
        let got = read_header(&mut r).await;
        (got, r.to_vec())
    }

    /// v1 and v2 give the source address and leave the request after them untouched.
    #[tokio::test]
    async fn headers_parse_and_leave_the_request() {
        let src: SocketAddr = "198.51.100.7:50000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:8000".parse().unwrap();
        let mut v1 = v1_header(src, dst);
        v1.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (got, rest) = read(&v1).await;
        assert_eq!(got.unwrap(), Some(src));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let (got, _) = read(&v1_header(v6, "[2001:db8::1]:80".parse().unwrap())).await;
        assert_eq!(got.unwrap(), Some(v6));
        let (got, _) = read(b"PROXY UNKNOWN\r\nGET").await;
        assert_eq!(got.unwrap(), None);
        let mut v2 = v2_header(
            "198.51.100.7:50000".parse().unwrap(),
            "10.0.0.1:8000".parse().unwrap(),
        );
        v2.extend_from_slice(b"GET");
        let (got, rest) = read(&v2).await;
        assert_eq!(got.unwrap(), Some(src));
        assert_eq!(rest, b"GET");
    }

    /// No header, a broken one or an overlong one is an error.
    #[tokio::test]
    async fn bad_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 nonsense 1.2.3.4 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert!(
                read(bad).await.0.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(read(long.as_bytes()).await.0.is_err());
    }
}
