//! Unit tests of `http1.rs`, beside it so the module file reads as the code.

use super::*;
use tokio::net::TcpListener;

async fn serve_once(raw: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = read_request_head(&mut s).await;
        // Dribble the response byte by byte to exercise every partial state.
        for b in raw {
            let _ = s.write_all(&[*b]).await;
        }
    });
    addr
}

/// A chunked body split at every byte boundary decodes to the original bytes.
#[tokio::test]
async fn chunked_body_decodes_across_partial_reads() {
    let addr = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
    let mut r = get(addr, "/", Duration::from_secs(2)).await.unwrap();
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(r.read_to_end(100).await.unwrap(), b"hello world");
}

/// Content-Length and close-delimited bodies end where they should.
#[tokio::test]
async fn length_and_close_framing() {
    let addr =
        serve_once(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 3\r\n\r\nabcEXTRA")
            .await;
    let mut r = get(addr, "/", Duration::from_secs(2)).await.unwrap();
    assert_eq!((r.status, r.header("location")), (302, Some("/x")));
    assert_eq!(r.read_to_end(100).await.unwrap(), b"abc");
    let addr = serve_once(b"HTTP/1.0 200 OK\r\n\r\nuntil close").await;
    let mut r = get(addr, "/", Duration::from_secs(2)).await.unwrap();
    assert_eq!(r.read_to_end(100).await.unwrap(), b"until close");
}

/// Query parameters are percent-decoded.
#[test]
fn query_params_decode() {
    assert_eq!(query_param("a=1&id=ab%2Fc", "id").as_deref(), Some("ab/c"));
    assert_eq!(query_param("a=1", "id"), None);
}
