//! Minimal HTTP/1.1 pieces spoken outside Pingora: a request-head reader (for the engine
//! simulator) and a streaming GET client (for engine calls, tests and the load generator).
//!
//! Why not Pingora's connector or hyper: the engine's body is an endless stream that the session
//! reads with a flush deadline, so reads must be cancel-safe (`select!` on a timer). Here the only
//! await point is `read_buf` on the socket, which is cancel-safe, and the decoded body is handed out
//! as zero-copy `Bytes`. Tests also need raw socket control (tiny receive buffers, RST on close).
//! Header parsing is `httparse`, the parser Pingora itself uses.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A parsed request line and headers.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (without `?`), possibly empty.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads one request head from `stream`. `Ok(None)` if the peer closed before sending one.
pub async fn read_request_head(stream: &mut TcpStream) -> io::Result<Option<RequestHead>> {
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                return Ok(Some(RequestHead {
                    method: req.method.unwrap_or("GET").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    minor_version: req.version.unwrap_or(1),
                    headers: collect_headers(req.headers),
                }));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn collect_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect()
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length: n` bytes remain.
    Length(u64),
    /// Until the server closes the connection.
    Close,
    /// No body (HEAD, 204, 304).
    Empty,
}

/// A response whose body is read incrementally, from a plain socket or any other byte stream
/// (`S`, e.g. a TLS stream).
pub struct Response<S = TcpStream> {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// How the body is framed.
    pub framing: Framing,
    stream: S,
    buf: BytesMut,
    chunk: ChunkState,
    done: bool,
}

/// Where the chunked-body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
}

impl<S> std::fmt::Debug for Response<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("framing", &self.framing)
            .finish()
    }
}

/// Request options for [`get_on`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Send `HTTP/1.0` instead of `HTTP/1.1`.
    pub http10: bool,
    /// Send `HEAD` instead of `GET`.
    pub head: bool,
    /// Send `POST` with this JSON body instead of `GET`.
    pub json_body: Option<Vec<u8>>,
}

/// Connects to `addr` within `connect_timeout` and sends `GET path_and_query`.
pub async fn get(
    addr: SocketAddr,
    path_and_query: &str,
    connect_timeout: Duration,
) -> io::Result<Response> {
    get_opts(
        addr,
        path_and_query,
        connect_timeout,
        &GetOptions::default(),
    )
    .await
}

/// [`get`] with options (extra headers, method).
pub async fn get_opts(
    addr: SocketAddr,
    path_and_query: &str,
    connect_timeout: Duration,
    opts: &GetOptions,
) -> io::Result<Response> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    get_on(stream, &addr.to_string(), path_and_query, opts).await
}

impl GetOptions {
    /// Options that send `headers`.
    pub fn with_headers(headers: &crate::config::Headers) -> Self {
        GetOptions {
            headers: headers.pairs().to_vec(),
            ..GetOptions::default()
        }
    }
}

/// Sends a request on an already connected stream and reads the response head.
pub async fn get_on(
    stream: TcpStream,
    host: &str,
    path_and_query: &str,
    opts: &GetOptions,
) -> io::Result<Response> {
    stream.set_nodelay(true)?;
    get_over(stream, host, path_and_query, opts).await
}

/// [`get_on`] over any byte stream (a TLS stream for `https://`).
pub async fn get_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path_and_query: &str,
    opts: &GetOptions,
) -> io::Result<Response<S>> {
    let method = match (&opts.json_body, opts.head) {
        (Some(_), _) => "POST",
        (None, true) => "HEAD",
        (None, false) => "GET",
    };
    let version = if opts.http10 { "1.0" } else { "1.1" };
    let mut req = format!(
        "{method} {path_and_query} HTTP/{version}\r\nHost: {host}\r\nAccept-Encoding: identity\r\nConnection: close\r\n"
    );
    for (k, v) in &opts.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = &opts.json_body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(body) = &opts.json_body {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    read_response_head(stream, opts.head).await
}

async fn read_response_head<S: AsyncRead + Unpin>(
    mut stream: S,
    head_only: bool,
) -> io::Result<Response<S>> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let headers = collect_headers(resp.headers);
                let chunked = header_value(&headers, "transfer-encoding")
                    .map(|v| v.to_ascii_lowercase().contains("chunked"))
                    .unwrap_or(false);
                let length = header_value(&headers, "content-length").and_then(|v| v.parse().ok());
                let framing = if head_only || status == 204 || status == 304 {
                    Framing::Empty
                } else if chunked {
                    Framing::Chunked
                } else if let Some(n) = length {
                    Framing::Length(n)
                } else {
                    Framing::Close
                };
                buf.advance(n);
                return Ok(Response {
                    status,
                    headers,
                    framing,
                    stream,
                    buf,
                    chunk: ChunkState::Size,
                    done: framing == Framing::Empty || framing == Framing::Length(0),
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
    }
}

impl<S: AsyncRead + Unpin> Response<S> {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The next piece of body, `Ok(None)` at its end. Cancel-safe: dropping the future loses no
    /// bytes, because the only await is the socket read into the internal buffer.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(piece) = self.decode()? {
                return Ok(Some(piece));
            }
            if self.done {
                return Ok(None);
            }
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return match self.framing {
                    Framing::Close => {
                        self.done = true;
                        Ok(None)
                    }
                    _ => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside the body",
                    )),
                };
            }
        }
    }

    /// Takes whatever body bytes the buffer holds now, without awaiting.
    fn decode(&mut self) -> io::Result<Option<Bytes>> {
        match self.framing {
            Framing::Empty => {
                self.done = true;
                Ok(None)
            }
            Framing::Close => Ok(if self.buf.is_empty() {
                None
            } else {
                Some(self.buf.split().freeze())
            }),
            Framing::Length(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = (self.buf.len() as u64).min(left) as usize;
                let piece = self.buf.split_to(n).freeze();
                self.framing = Framing::Length(left - n as u64);
                if left == n as u64 {
                    self.done = true;
                }
                Ok(Some(piece))
            }
            Framing::Chunked => self.decode_chunked(),
        }
    }

    fn decode_chunked(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match self.chunk {
                ChunkState::Data(left) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (self.buf.len() as u64).min(left) as usize;
                    let piece = self.buf.split_to(n).freeze();
                    self.chunk = match left - n as u64 {
                        0 => ChunkState::DataEnd,
                        rest => ChunkState::Data(rest),
                    };
                    return Ok(Some(piece));
                }
                ChunkState::DataEnd => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(bad_chunk("missing CRLF after chunk data"));
                    }
                    self.buf.advance(2);
                    self.chunk = ChunkState::Size;
                }
                ChunkState::Size => {
                    let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        if self.buf.len() > 1024 {
                            return Err(bad_chunk("chunk size line too long"));
                        }
                        return Ok(None);
                    };
                    let line =
                        std::str::from_utf8(&self.buf[..eol]).map_err(|_| bad_chunk("size"))?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size =
                        u64::from_str_radix(hex, 16).map_err(|_| bad_chunk("bad chunk size"))?;
                    if size == 0 {
                        // Last chunk; trailers are not used by anything we talk to.
                        self.buf.clear();
                        self.done = true;
                        return Ok(None);
                    }
                    self.buf.advance(eol + 2);
                    self.chunk = ChunkState::Data(size);
                }
            }
        }
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(piece) = self.next_chunk().await? {
            if out.len() + piece.len() > limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    /// The underlying socket, e.g. to close it abruptly in a test.
    pub fn into_stream(self) -> S {
        self.stream
    }
}

fn bad_chunk(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {what}"))
}

#[cfg(test)]
mod tests;
