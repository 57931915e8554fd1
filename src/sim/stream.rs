//! The playback side of the simulated engine: `/ace/r/...` → 302 → `/content/...`, one reader per
//! session (a second one gets the corrupt double status line real engines send), and the stream
//! itself: prebuffer, the burst, the bitrate, a pause, and the fault knobs.

use super::engine::{lock, random_hex, respond, spawn_inactivity_timer, token_of, Shared};
use super::ts::{TsLoop, FIXTURE, HEVC_FIXTURE, PACKET};
use super::Knobs;
use crate::http1::RequestHead;
use bytes::{BufMut, Bytes, BytesMut};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub(super) enum PlaybackKind {
    Session,
    Content,
}

pub(super) async fn playback(
    shared: &Arc<Shared>,
    mut sock: TcpStream,
    req: &RequestHead,
    host: &str,
    kind: PlaybackKind,
) -> io::Result<()> {
    let knobs = lock(&shared.knobs).clone();
    let token = {
        let mut st = lock(&shared.state);
        st.stats.playback_requests += 1;
        match kind {
            PlaybackKind::Session => token_of(&req.path),
            PlaybackKind::Content => st.content_paths.get(&req.path).cloned(),
        }
        .filter(|t| st.sessions.contains_key(t))
    };
    let Some(token) = token else {
        // After stop, old playback URLs answer 500 (`docs/engine-api.md` §3).
        return respond(
            &mut sock,
            500,
            "text/plain",
            b"Internal Server Error, unknown playback session",
        )
        .await;
    };
    if matches!(kind, PlaybackKind::Session) && knobs.redirect_playback {
        let infohash = lock(&shared.state)
            .sessions
            .get(&token)
            .map(|s| s.infohash.clone())
            .unwrap_or_default();
        let path = format!(
            "/content/{infohash}/0.{}",
            &random_hex(10)
                .bytes()
                .map(|b| (b % 10 + b'0') as char)
                .collect::<String>()
        );
        {
            let mut st = lock(&shared.state);
            if let Some(s) = st.sessions.get_mut(&token) {
                s.content_paths.push(path.clone());
            }
            st.content_paths.insert(path.clone(), token);
        }
        let head = format!("HTTP/1.1 302 Found\r\nLocation: http://{host}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        sock.write_all(head.as_bytes()).await?;
        return sock.shutdown().await;
    }
    // Register the reader; a second concurrent reader gets the corrupt answer real engines send.
    enum Admit {
        Gone,
        Second,
        Reader(watch::Receiver<bool>),
    }
    let admit = {
        let mut st = lock(&shared.state);
        let state = &mut *st;
        match state.sessions.get_mut(&token) {
            None => Admit::Gone,
            Some(s) if s.readers > 0 => {
                state.stats.second_reader_violations += 1;
                Admit::Second
            }
            Some(s) => {
                s.readers += 1;
                s.reader_epoch += 1;
                state.stats.active_readers += 1;
                state.stats.max_active_readers = state
                    .stats
                    .max_active_readers
                    .max(state.stats.active_readers);
                Admit::Reader(s.ended.subscribe())
            }
        }
    };
    let ended = match admit {
        Admit::Gone => {
            return respond(&mut sock, 500, "text/plain", b"Internal Server Error").await
        }
        Admit::Second => {
            sock.write_all(b"HTTP/1.1 200 OK\r\nHTTP/1.1 200 OK\r\n\r\n")
                .await?;
            return sock.shutdown().await;
        }
        Admit::Reader(rx) => rx,
    };
    let result = stream_ts(shared, &mut sock, &token, &knobs, ended).await;
    let idle_epoch = {
        let mut st = lock(&shared.state);
        st.stats.active_readers -= 1;
        st.sessions.get_mut(&token).and_then(|s| {
            s.readers -= 1;
            (s.readers == 0).then_some(s.reader_epoch)
        })
    };
    if let Some(epoch) = idle_epoch {
        spawn_inactivity_timer(shared.clone(), token, epoch, knobs.inactivity_timeout);
    }
    result
}

/// Largest single write of stream data (5577 packets, about 1 MiB).
const MAX_PACKETS_PER_WRITE: usize = 5577;

/// What the stream loop does next, decided by the fault knobs.
enum Next {
    Send(Bytes),
    Stall,
    Drop(Bytes),
}

async fn stream_ts(
    shared: &Arc<Shared>,
    sock: &mut TcpStream,
    token: &str,
    knobs: &Knobs,
    mut ended: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut shutdown = shared.shutdown.subscribe();
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: BaseHTTP/0.3 Python/2.7.18 (ace-engine-sim)\r\nContent-Type: {}\r\n{}Connection: close\r\n\r\n",
        knobs.content_type,
        if knobs.chunked { "Transfer-Encoding: chunked\r\n" } else { "" }
    );
    let wait_or_end =
        |d: Duration, ended: &mut watch::Receiver<bool>, shutdown: &mut watch::Receiver<bool>| {
            let (mut e, mut s) = (ended.clone(), shutdown.clone());
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => false,
                    _ = e.wait_for(|v| *v) => true,
                    _ = s.wait_for(|v| *v) => true,
                }
            }
        };
    if knobs.headers_before_prebuffer {
        sock.write_all(head.as_bytes()).await?;
    }
    if wait_or_end(knobs.prebuffer, &mut ended, &mut shutdown).await {
        return Ok(());
    }
    if !knobs.headers_before_prebuffer {
        sock.write_all(head.as_bytes()).await?;
    }
    let fixture = if knobs.hevc { HEVC_FIXTURE } else { FIXTURE };
    let mut ts = TsLoop::of(fixture, knobs.bitrate_bps).starting_at(knobs.start_packet);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut paused = false;
    let tick = Duration::from_millis(20);
    let mut garbage_seed: u32 = 0x1234_5678;
    // An id without peers: the session is there, and its stream never sends a byte.
    let silent = lock(&shared.state)
        .sessions
        .get(token)
        .is_some_and(|s| knobs.silent_ids.contains(&s.content_id));
    loop {
        let mut live = lock(&shared.knobs).clone();
        if silent {
            live.stall_after_bytes = Some(0);
        }
        if !paused && live.pause_after_bytes.is_some_and(|at| sent >= at) {
            paused = true;
            if wait_or_end(live.pause, &mut ended, &mut shutdown).await {
                break;
            }
        }
        let due = if live.bitrate_bps == 0 {
            sent + 64 * 1024
        } else {
            live.burst_bytes
                + (start.elapsed().as_secs_f64() * live.bitrate_bps as f64 / 8.0) as u64
        };
        // At most ~1 MiB per write: a reader that cannot keep up gets the stream late, never an
        // ever-growing buffer (the engine's memory stays flat).
        let packets = ((due.saturating_sub(sent) as usize) / PACKET).min(MAX_PACKETS_PER_WRITE);
        if packets == 0 {
            if wait_or_end(tick, &mut ended, &mut shutdown).await {
                break;
            }
            continue;
        }
        let mut data = BytesMut::new();
        if live.null_stream {
            for _ in 0..packets {
                data.extend_from_slice(&crate::ts::NULL_PACKET);
            }
        } else {
            ts.fill(&mut data, packets);
        }
        let next = decide(&live, sent, data, &mut garbage_seed);
        let (data, last) = match next {
            Next::Send(d) => (d, false),
            Next::Drop(d) => (d, true),
            Next::Stall => {
                // Keep the socket, send nothing, until the session ends.
                let (mut e, mut s) = (ended.clone(), shutdown.clone());
                tokio::select! {
                    _ = e.wait_for(|v| *v) => {}
                    _ = s.wait_for(|v| *v) => {}
                }
                return Ok(());
            }
        };
        if !data.is_empty() {
            write_body(sock, &data, knobs.chunked).await?;
            sent += data.len() as u64;
            let mut st = lock(&shared.state);
            st.stats.bytes_sent += data.len() as u64;
            if let Some(s) = st.sessions.get_mut(token) {
                s.bytes_sent += data.len() as u64;
            }
        }
        if last {
            // Abrupt close: no terminating chunk.
            return Ok(());
        }
        if *ended.borrow() || *shutdown.borrow() {
            break;
        }
        // Behind schedule (a capped write): write again at once instead of waiting a tick.
        let behind = packets == MAX_PACKETS_PER_WRITE;
        if live.bitrate_bps != 0 && !behind && wait_or_end(tick, &mut ended, &mut shutdown).await {
            break;
        }
    }
    if knobs.chunked {
        sock.write_all(b"0\r\n\r\n").await?;
    }
    sock.shutdown().await
}

fn decide(k: &Knobs, sent: u64, mut data: BytesMut, seed: &mut u32) -> Next {
    let len = data.len() as u64;
    if let Some(limit) = k.drop_after_bytes {
        if sent + len >= limit {
            let keep = (limit.saturating_sub(sent) as usize) / PACKET * PACKET;
            data.truncate(keep);
            return Next::Drop(data.freeze());
        }
    }
    if let Some(limit) = k.stall_after_bytes {
        if sent >= limit {
            return Next::Stall;
        }
        if sent + len > limit {
            data.truncate(((limit - sent) as usize).div_ceil(PACKET) * PACKET);
        }
    }
    if let Some(limit) = k.garbage_after_bytes {
        if sent + len > limit {
            let from = (limit.saturating_sub(sent)) as usize;
            for b in data[from..].iter_mut() {
                // xorshift: noise that never lines up as 0x47 sync every 188 bytes.
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                *b = (*seed as u8) | 0x80;
            }
        }
    }
    Next::Send(data.freeze())
}

async fn write_body(sock: &mut TcpStream, data: &[u8], chunked: bool) -> io::Result<()> {
    if !chunked {
        return sock.write_all(data).await;
    }
    let mut out = BytesMut::with_capacity(data.len() + 16);
    out.put_slice(format!("{:X}\r\n", data.len()).as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
    sock.write_all(&out).await
}
