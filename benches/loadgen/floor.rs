//! The floor: the least a fan-out server can do for N viewers of one stream on this machine, to
//! measure the proxy against in the same run. One upstream read from the simulator, every byte
//! written once into the proxy's own page file ([`PageFile`], the same ring file the proxy uses),
//! every viewer served with `sendfile` from it at the live edge, close-delimited. No pacing, no
//! joins on keyframes, no limits, no status: nothing but the copy-free fan-out.
//!
//! It runs as its own process (the bench binary started again with `LOADGEN_FLOOR_UPSTREAM` and
//! `LOADGEN_FLOOR_LISTEN` set), so its CPU and memory are read from `/proc` like the others'.

use acestream_edge::streams::pages::PageFile;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes kept behind the live edge (the proxy's default `stream_buffer_size`).
const KEEP: u64 = 4 * 1024 * 1024;

/// Viewers are woken once this much is new, or [`BLOCK_DELAY`] passed: the proxy's defaults for
/// a viewer at the live edge (`send_batch_bytes`, `send_batch_delay`), so both make as many sends.
const BLOCK: u64 = 128 * 1024;
const BLOCK_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs the floor server if this process was started as one; `false` otherwise.
pub fn run_if_asked() -> bool {
    let (Ok(upstream), Ok(listen)) = (
        std::env::var("LOADGEN_FLOOR_UPSTREAM"),
        std::env::var("LOADGEN_FLOOR_LISTEN"),
    ) else {
        return false;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(serve(
        upstream.parse().expect("upstream addr"),
        listen.parse().expect("listen addr"),
    ));
    true
}

async fn serve(upstream: SocketAddr, listen: SocketAddr) {
    let pages = Arc::new(PageFile::new().expect("memfd"));
    let (edge_tx, edge) = watch::channel(0u64);
    let listener = TcpListener::bind(listen).await.expect("bind");
    let writer = pages.clone();
    tokio::spawn(async move {
        let mut r = super::load::open(
            super::load::Target::Direct,
            upstream,
            &super::procs::content_id(1),
        )
        .await
        .expect("upstream");
        let mut at = 0u64;
        let mut told = (0u64, std::time::Instant::now());
        let block = std::env::var("LOADGEN_FLOOR_BLOCK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(BLOCK);
        while let Ok(Some(chunk)) = r.next_chunk().await {
            writer.append(at, &chunk).expect("page file write");
            at += chunk.len() as u64;
            // Viewers are woken per block (msd_lite sends blocks of at least 64 KiB).
            if at - told.0 >= block || told.1.elapsed() >= BLOCK_DELAY {
                writer.release_before(at.saturating_sub(KEEP));
                edge_tx.send_replace(at);
                told = (at, std::time::Instant::now());
            }
        }
    });
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(viewer(sock, pages.clone(), edge.clone()));
    }
}

async fn viewer(mut sock: TcpStream, pages: Arc<PageFile>, mut edge: watch::Receiver<u64>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n";
    if sock.write_all(head).await.is_err() {
        return;
    }
    // Start at the live edge, on the packet grid.
    let mut pos = *edge.borrow_and_update() / 188 * 188;
    loop {
        let end = *edge.borrow_and_update();
        if pos >= end {
            if edge.changed().await.is_err() {
                return;
            }
            continue;
        }
        let sent = loop {
            if sock.writable().await.is_err() {
                return;
            }
            let r = sock.try_io(Interest::WRITABLE, || {
                let mut at = pos;
                rustix::fs::sendfile(&sock, pages.fd(), Some(&mut at), (end - pos) as usize)
                    .map_err(std::io::Error::from)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        };
        if sent == 0 {
            return;
        }
        pos += sent as u64;
    }
}
