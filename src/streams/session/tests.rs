//! Unit tests of `streams/session.rs`, beside it so the module file reads as the code.

use super::*;
use std::time::Duration;

const LINGER: Linger = Linger {
    watched: Duration::from_secs(300),
    unwatched: Duration::from_secs(5),
};

/// With the clock paused: a watched session lingers exactly `stream_idle_timeout` after its
/// last client leaves; a client coming back within it restarts the linger from zero.
#[tokio::test(start_paused = true)]
async fn linger_and_rejoin() {
    let session = Arc::new(StreamSession::new(
        ContentKey::content_id("a".repeat(40)),
        &Config::default(),
    ));
    let idle = LINGER;
    session.count_in();
    session.bytes_out.store(188, Ordering::Relaxed);
    let s = session.clone();
    let start = tokio::time::Instant::now();
    let lingering = tokio::spawn(async move {
        s.linger(move || idle, || true).await;
        tokio::time::Instant::now()
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(session.count_out(), 0, "last client left at 10 s");
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(session.count_in(), 1, "a client rejoined at 210 s");
    assert!(session.state().idle_since.is_none());
    tokio::time::sleep(Duration::from_secs(400)).await;
    assert!(!lingering.is_finished(), "nobody left: no expiry");
    session.count_out(); // at 610 s
    let ended = lingering.await.unwrap();
    assert_eq!(
        ended - start,
        Duration::from_secs(910),
        "610 s + the 300 s linger"
    );
}

/// An expiry the registry refuses (a client attached at that instant) keeps lingering.
#[tokio::test(start_paused = true)]
async fn refused_expiry_keeps_the_session() {
    let session = StreamSession::new(ContentKey::content_id("b".repeat(40)), &Config::default());
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let start = tokio::time::Instant::now();
    session
        .linger(|| LINGER, || tries.fetch_add(1, Ordering::Relaxed) == 2)
        .await;
    assert_eq!(tries.load(Ordering::Relaxed), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(15), "3 × unwatched");
}

/// A session no byte of which reached a client lingers `unwatched_linger`; once a client got
/// bytes, the next linger is `stream_idle_timeout`.
#[tokio::test(start_paused = true)]
async fn unwatched_sessions_linger_briefly() {
    let session = Arc::new(StreamSession::new(
        ContentKey::content_id("c".repeat(40)),
        &Config::default(),
    ));
    let start = tokio::time::Instant::now();
    session.count_in();
    session.count_out();
    session.linger(|| LINGER, || true).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    session.count_in();
    session.bytes_out.store(188, Ordering::Relaxed);
    session.count_out();
    let start = tokio::time::Instant::now();
    session.linger(|| LINGER, || true).await;
    assert_eq!(start.elapsed(), Duration::from_secs(300));
}
