//! Churn in its own test binary, so that the process's memory is this test's alone.

mod common;

use common::harness::{knobs, Harness};
use common::*;
use std::time::Duration;

/// Sequential connect/disconnect cycles across 20 ids (500 in `make test`, 2,000 with
/// `ACESTREAM_EDGE_LONG_TESTS=1`): no session leaks, and memory comes
/// back to where it was (this process holds the proxy, the engines and the clients).
#[tokio::test(flavor = "multi_thread")]
async fn matrix_churn_leaks_nothing() {
    // One second of stream (2 Mbit/s) is below the byte minimum: the rings stay at 1 MiB, so a
    // ring still filling up to its time minimum is not mistaken for a leak.
    let h = Harness::with_capacity(
        knobs(),
        100,
        "stream_buffer_size: 1048576\nstream_buffer_seconds: 1",
    )
    .await;
    let cycle = |n: u32| {
        let addr = h.addr();
        async move {
            let mut r = get(
                addr,
                &format!("/ace/getstream?id={}", content_id(7500 + n % 20)),
            )
            .await;
            assert_eq!(r.status, 200);
            read_for(&mut r, Duration::from_secs(5), 188).await;
        }
    };
    // `make test` runs a short version; ACESTREAM_EDGE_LONG_TESTS=1 the full 2,000 cycles (and
    // `make bench`'s churn scenario runs 5,000 against the release binary).
    let long = std::env::var_os("ACESTREAM_EDGE_LONG_TESTS").is_some();
    let (warmup, cycles) = if long { (400, 2000) } else { (150, 500) };
    for n in 0..warmup {
        cycle(n).await; // warm-up: allocator pools and caches reach their working size
    }
    let sessions = h.server.edge.sessions.clone();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            sessions.list().len() == 1
        })
        .await
    );
    let before = rss_kib();
    for n in 0..cycles {
        cycle(n).await;
    }
    assert!(
        wait_until(Duration::from_secs(5), || async {
            sessions.list().len() == 1
        })
        .await,
        "sessions leaked"
    );
    let after = rss_kib();
    eprintln!("churn RSS: {before} KiB -> {after} KiB");
    assert!(
        (after as f64) < before as f64 * 1.10,
        "RSS grew from {before} KiB to {after} KiB"
    );
    h.finish().await;
}
