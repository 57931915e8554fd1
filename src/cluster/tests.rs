//! Unit tests of `cluster/mod.rs`, beside it so the module file reads as the code.

use super::*;
use crate::config::Config;

fn cluster(me: &str, peers: &[&str]) -> Arc<Cluster> {
    let config = Config::default();
    let (lb, meta) = crate::engines::load_balancer(&config);
    let pool = Arc::new(EnginePool::new(Arc::new(lb), meta, &config));
    Cluster::new(
        ClusterConfig {
            self_addr: me.into(),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            mode: ClusterMode::Proxy,
            health_check_interval: Duration::from_secs(2),
            peer_timeout: Duration::from_secs(1),
        },
        Arc::new(crate::access::AdminToken::new(None)),
        pool,
        Arc::new(Metrics::new()),
        Arc::new(TrustedPeers::default()),
    )
}

/// Every node computes the same owner for an id, whichever node it is; ids spread over
/// all members; a member that leaves moves only its own ids.
#[tokio::test]
async fn nodes_agree_on_owners_and_a_leaver_moves_only_its_ids() {
    let members = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
    let nodes: Vec<Arc<Cluster>> = members.iter().map(|m| cluster(m, &members)).collect();
    for n in &nodes {
        n.lb.update().await.unwrap();
    }
    let ids: Vec<String> = (0..300).map(|i| format!("{i:040x}")).collect();
    let owners: Vec<SocketAddr> = ids.iter().map(|id| nodes[0].owner(id).unwrap()).collect();
    for n in &nodes[1..] {
        for (id, o) in ids.iter().zip(&owners) {
            assert_eq!(n.owner(id), Some(*o), "{id}");
        }
    }
    for m in members {
        let share = owners.iter().filter(|o| o.to_string() == m).count();
        assert!(share > 50, "{m} owns {share} of 300");
    }
    // Member 3 becomes unreachable from node 1's point of view: only its ids move.
    let gone: SocketAddr = members[2].parse().unwrap();
    nodes[0].mark_unreachable(gone);
    for (id, o) in ids.iter().zip(&owners) {
        let now = nodes[0].owner(id).unwrap();
        if *o == gone {
            assert_ne!(now, gone);
        } else {
            assert_eq!(now, *o, "{id} moved although its owner stayed");
        }
    }
}

/// A member given by name is resolved (every address it stands for is a member), and
/// its addresses become trusted peers; this node's own entry gives `me`.
#[tokio::test]
async fn names_resolve_to_members() {
    let c = cluster("localhost:7001", &["127.0.0.1:7002"]);
    c.lb.update().await.unwrap();
    let members: Vec<SocketAddr> =
        c.lb.backends()
            .get_backend()
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect();
    assert!(
        members.contains(&"127.0.0.1:7001".parse().unwrap()),
        "{members:?}"
    );
    assert!(members.contains(&"127.0.0.1:7002".parse().unwrap()));
    assert_eq!(c.me().map(|a| a.port()), Some(7001));
    assert!(c.is_member_ip("127.0.0.1".parse().unwrap()));
    assert!(!c.is_member_ip("10.9.9.9".parse().unwrap()));
}

/// The via header is believed only from a member's address.
#[tokio::test]
async fn via_only_from_members() {
    let c = cluster("127.0.0.1:7001", &["127.0.0.1:7002"]);
    c.lb.update().await.unwrap();
    let h = Some("127.0.0.1:7002, junk");
    assert_eq!(
        c.via_of(Some("127.0.0.1".parse().unwrap()), h),
        vec!["127.0.0.1:7002".parse::<SocketAddr>().unwrap()]
    );
    assert!(c.via_of(Some("10.0.0.9".parse().unwrap()), h).is_empty());
}
