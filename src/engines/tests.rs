//! Unit tests of `engines/mod.rs`, beside it so the module file reads as the code.

use super::choose::choice_line;
use super::*;

/// A mark holds until its deadline and is gone after it; a new mark replaces the old one.
#[test]
fn expiring_set_forgets_at_the_deadline() {
    let set = ExpiringSet::default();
    let t0 = std::time::Instant::now();
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    set.insert(a, t0 + Duration::from_secs(1));
    set.insert(b, t0 + Duration::from_secs(3));
    let mut now = set.current(t0);
    now.sort();
    assert_eq!(now, vec![a, b]);
    assert_eq!(set.current(t0 + Duration::from_secs(2)), vec![b]);
    set.insert(a, t0 + Duration::from_secs(5));
    let mut later = set.current(t0 + Duration::from_secs(4));
    later.sort();
    assert_eq!(later, vec![a]);
}

/// The choice line says why: the winner's score and its parts, and what the others scored.
#[test]
fn choice_line_says_why() {
    let status = |port: u16, forwarded: bool, streams: usize, healthy: bool| {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let candidate = Candidate {
            addr,
            forwarded,
            healthy,
            eligible: true,
            active_streams: streams,
            recently_failed: false,
            node_load: streams,
            last_assigned: None,
        };
        EngineStatus {
            meta: EngineMeta::default(),
            addr,
            healthy,
            proxy_streams: streams,
            peer_streams: 0,
            score: score::score(&candidate),
            recently_failed: false,
            candidate,
        }
    };
    let all = vec![status(1, true, 1, true), status(2, false, 0, false)];
    let engine = Engine {
        endpoint: EngineEndpoint {
            host: "127.0.0.1".into(),
            port: 1,
            headers: Default::default(),
        },
        addr: all[0].addr,
        forwarded: true,
        container_id: None,
        score: all[0].score,
    };
    let line = choice_line(&engine, &all, &[]);
    assert_eq!(
            line,
            "engine 127.0.0.1:1 chosen for a session: score 990 (forwarded +1000, 1 streams −10); others: 127.0.0.1:2 -1000 (unhealthy)"
        );
}

/// A reserved stream counts on its engine (the next choice moves on) until its lease is
/// dropped; no socket is opened (discovery of literal addresses, no health probe).
#[tokio::test]
async fn leases_count_until_dropped() {
    let config = crate::config::load_str(
        "acestream: {engines: [{host: 127.0.0.1, port: 1}, {host: 127.0.0.1, port: 2}]}",
    )
    .expect("valid")
    .acestream;
    let (lb, meta) = load_balancer(&config);
    let pool = Arc::new(EnginePool::new(Arc::new(lb), meta, &config));
    let (a, lease_a) = pool.acquire(&[]).await.expect("an engine");
    let (b, lease_b) = pool.acquire(&[]).await.expect("an engine");
    assert_ne!(
        a.addr, b.addr,
        "the first lease moves the next choice to the other engine"
    );
    let streams = |pool: &EnginePool, addr| {
        pool.status()
            .into_iter()
            .find(|s| s.addr == addr)
            .map(|s| s.proxy_streams)
    };
    assert_eq!(streams(&pool, a.addr), Some(1));
    drop(lease_a);
    assert_eq!(
        streams(&pool, a.addr),
        Some(0),
        "dropping the lease releases it"
    );
    let (c, _lease_c) = pool.acquire(&[]).await.expect("an engine");
    assert_eq!(
        c.addr, a.addr,
        "the released engine is the least loaded again"
    );
    drop(lease_b);
    assert_eq!(streams(&pool, b.addr), Some(0));
}
