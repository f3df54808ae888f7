//! Table tests of external peers in the desired state.

use super::*;
use crate::key::PresharedKey;
use crate::model::NodeInfo;
use crate::testing::{desired_of, key, local, no_dns, node};

pub(crate) fn peer(name: &str, k: u8, allowed: &[&str]) -> ExternalPeerInfo {
    ExternalPeerInfo {
        name: name.into(),
        created: 100,
        public_key: key(k).to_string(),
        endpoint: Some("198.51.100.7:51820".into()),
        allowed_ips: allowed.iter().map(|s| s.to_string()).collect(),
        persistent_keepalive: Some(25),
        preshared_key: PresharedKeySource::None,
    }
}

fn run(peers: &[ExternalPeerInfo]) -> Desired {
    let nodes: Vec<NodeInfo> = (0..3).map(|i| node(i, i64::from(i))).collect();
    desired_of(&local(), &nodes, peers, &no_dns).unwrap()
}

#[test]
fn a_valid_peer_gets_a_peer_routes_and_no_masquerading() {
    let mut p = peer("laptop", 50, &["10.99.0.2/32", "fd99::2/128"]);
    p.preshared_key = PresharedKeySource::Key(PresharedKey([7; 32]));
    let d = run(&[p]);
    let got = &d.peers[&key(50)];
    assert_eq!(got.name, PeerName::External("laptop".into()));
    assert_eq!(got.name.to_string(), "peer/laptop");
    assert_eq!(got.endpoint, Some("198.51.100.7:51820".parse().unwrap()));
    assert_eq!(got.persistent_keepalive, Some(25));
    assert_eq!(got.preshared_key, Some(PresharedKey([7; 32])));
    assert_eq!(got.allowed_ips.len(), 2);
    let v4: IpNet = "10.99.0.2/32".parse().unwrap();
    let route = d
        .routes
        .iter()
        .find(|r| r.dst == v4)
        .expect("a route to the peer");
    assert_eq!(route.src, Some("10.244.0.1".parse().unwrap()));
    assert!(d.mesh_cidrs.contains(&v4));
    assert!(d.rejected.is_empty(), "{:?}", d.rejected);
    assert_eq!(d.peers.len(), 3);
}

#[test]
fn each_bad_peer_is_left_out_with_a_reason_and_the_rest_stays() {
    let mut bad_psk = peer("psk", 60, &["10.99.1.0/24"]);
    bad_psk.preshared_key =
        PresharedKeySource::Unavailable("Secret kube-system/x has no key presharedKey".into());
    let mut bad_keepalive = peer("ka", 61, &["10.99.2.0/24"]);
    bad_keepalive.persistent_keepalive = Some(70000);
    let mut bad_endpoint = peer("ep", 62, &["10.99.3.0/24"]);
    bad_endpoint.endpoint = Some("nowhere".into());
    let mut unresolvable = peer("dns", 63, &["10.99.4.0/24"]);
    unresolvable.endpoint = Some("gw.example.com:51820".into());
    let cases: Vec<(ExternalPeerInfo, RejectReason, &str)> = vec![
        (
            peer("garbage", 0, &["10.99.0.0/24"]).with_key("garbage"),
            RejectReason::InvalidPeerSpec,
            "spec.publicKey",
        ),
        (
            peer("own", 100, &["10.99.0.0/24"]),
            RejectReason::DuplicatePublicKey,
            "n0's own",
        ),
        (
            peer("stolen", 1, &["10.99.0.0/24"]),
            RejectReason::DuplicatePublicKey,
            "already used by node n1",
        ),
        (
            peer("empty", 51, &[]),
            RejectReason::InvalidPeerSpec,
            "empty",
        ),
        (
            peer("notcidr", 52, &["10.99.0.300/32"]),
            RejectReason::InvalidPeerSpec,
            "not a CIDR",
        ),
        (
            peer("hostbits", 53, &["10.99.0.1/24"]),
            RejectReason::InvalidPeerSpec,
            "write 10.99.0.0/24",
        ),
        (
            peer("mine", 54, &["10.244.0.128/25"]),
            RejectReason::OverlappingAllowedIps,
            "node n0's pod CIDR",
        ),
        (
            peer("theirs", 55, &["fd00:10:244:2::5/128"]),
            RejectReason::OverlappingAllowedIps,
            "of node n2",
        ),
        (
            peer("default", 56, &["0.0.0.0/0"]),
            RejectReason::UndeclaredRange,
            "is a default route",
        ),
        (
            peer("underlay", 57, &["192.0.2.0/24"]),
            RejectReason::OverlappingAllowedIps,
            "tunnels run over",
        ),
        (bad_psk, RejectReason::PresharedKeyUnavailable, "has no key"),
        (bad_keepalive, RejectReason::InvalidPeerSpec, "65535"),
        (bad_endpoint, RejectReason::InvalidPeerSpec, "spec.endpoint"),
        (
            unresolvable,
            RejectReason::UnresolvableEndpoint,
            "does not resolve",
        ),
    ];
    for (p, reason, words) in cases {
        let name = p.name.clone();
        let d = run(&[p, peer("good", 70, &["10.98.0.0/24"])]);
        assert_eq!(d.rejected.len(), 1, "{name}: {:?}", d.rejected);
        let r = &d.rejected[0];
        assert_eq!(r.object, PeerName::External(name.clone()));
        assert_eq!(r.reason, reason, "{name}: {}", r.message);
        assert!(r.message.contains(words), "{name}: {}", r.message);
        assert!(
            d.peers.contains_key(&key(70)),
            "{name}: the good peer stays"
        );
        assert_eq!(d.peers.len(), 3, "{name}: two nodes and the good peer");
    }
}

#[test]
fn the_older_peer_keeps_contested_addresses() {
    let mut old = peer("old", 50, &["10.99.0.0/24"]);
    old.created = 1;
    let mut new = peer("new", 51, &["10.99.0.128/25"]);
    new.created = 2;
    for order in [
        vec![old.clone(), new.clone()],
        vec![new.clone(), old.clone()],
    ] {
        let d = run(&order);
        assert!(d.peers.contains_key(&key(50)));
        assert!(!d.peers.contains_key(&key(51)));
        assert!(
            d.rejected[0].message.contains("peer/old"),
            "{}",
            d.rejected[0].message
        );
    }
}

#[test]
fn a_node_always_wins_over_a_peer() {
    // A Peer claiming a key first and a node publishing it later: the node
    // is a peer, the Peer is refused.
    let d = run(&[peer("early", 2, &["10.99.0.0/24"])]);
    assert_eq!(d.peers[&key(2)].name, PeerName::Node("n2".into()));
    assert_eq!(d.rejected[0].object, PeerName::External("early".into()));
}

impl ExternalPeerInfo {
    fn with_key(mut self, k: &str) -> Self {
        self.public_key = k.into();
        self
    }
}

#[test]
fn a_peer_outside_the_declared_external_ranges_is_left_out() {
    for (allowed, expect) in [
        ("0.0.0.0/1", "is never routed"),
        ("0.0.0.0/0", "is a default route"),
        (
            "8.8.8.0/24",
            "lies outside the external-peer ranges this cluster declares",
        ),
        ("224.0.0.0/24", "multicast"),
    ] {
        let d = run(&[
            peer("wide", 70, &[allowed]),
            peer("laptop", 71, &["10.99.0.2/32"]),
        ]);
        assert!(!d.peers.contains_key(&key(70)), "{allowed}");
        assert!(
            d.peers.contains_key(&key(71)),
            "{allowed}: the other Peer stays"
        );
        let r = &d.rejected[0];
        assert_eq!(r.reason, RejectReason::UndeclaredRange, "{allowed}");
        assert!(r.message.contains(expect), "{allowed}: {}", r.message);
        assert!(!d
            .routes
            .iter()
            .any(|r| r.dst == allowed.parse::<IpNet>().unwrap()));
    }
}
