//! Table tests of `desired` and property tests of `plan` against it.

use std::net::SocketAddr;

use proptest::prelude::*;

use ipnet::IpNet;

use super::*;
use crate::model::*;
use crate::names::*;
use crate::nft::masquerade_ruleset;
use crate::plan::{plan, Observed, ObservedPeer, PeerChange, PeerField};
use crate::ranges::DeclaredRanges;
use crate::testing::{desired_of, key, local, no_dns, node};

fn cluster(n: u8) -> Vec<NodeInfo> {
    (0..n).map(|i| node(i, i64::from(i))).collect()
}

#[test]
fn every_valid_node_becomes_a_peer_with_its_pod_cidrs_and_routes() {
    let d = desired_of(&local(), &cluster(4), &[], &no_dns).unwrap();
    assert_eq!(d.peers.len(), 3);
    let p1 = &d.peers[&key(1)];
    assert_eq!(p1.name, PeerName::Node("n1".into()));
    assert_eq!(p1.endpoint, Some("192.0.2.11:51820".parse().unwrap()));
    assert_eq!(
        p1.allowed_ips,
        vec![
            "10.244.1.0/24".parse::<IpNet>().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap()
        ]
    );
    assert_eq!(
        d.addresses,
        vec![
            "10.244.0.1/32".parse::<IpNet>().unwrap(),
            "fd00:10:244::1/128".parse().unwrap()
        ]
    );
    assert_eq!(d.routes.len(), 6);
    let r = d
        .routes
        .iter()
        .find(|r| r.dst == "10.244.2.0/24".parse().unwrap())
        .unwrap();
    assert_eq!(
        r.src,
        Some("10.244.0.1".parse().unwrap()),
        "host traffic to pods leaves from the mesh address"
    );
    assert_eq!(d.mesh_cidrs.len(), 8);
    assert!(d.rejected.is_empty() && d.pending.is_empty());
}

#[test]
fn the_local_node_must_be_registered_with_a_pod_cidr() {
    assert_eq!(
        desired_of(&local(), &cluster(0), &[], &no_dns).unwrap_err(),
        LocalError::NotRegistered("n0".into())
    );
    let mut nodes = cluster(2);
    nodes[0].pod_cidrs.clear();
    assert_eq!(
        desired_of(&local(), &nodes, &[], &no_dns).unwrap_err(),
        LocalError::NoPodCidr("n0".into())
    );
}

#[test]
fn nodes_without_key_or_pod_cidr_are_pending_not_rejected() {
    let mut nodes = cluster(3);
    nodes[1].annotations.clear();
    nodes[2].pod_cidrs.clear();
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    assert!(d.peers.is_empty());
    assert_eq!(d.pending, vec!["n1".to_string(), "n2".to_string()]);
    assert!(d.rejected.is_empty());
}

/// Each bad input rejects only its own node.
#[test]
fn bad_input_rejects_one_node_and_keeps_the_others() {
    type Mutate = fn(&mut NodeInfo);
    let cases: Vec<(&str, Mutate, RejectReason, &str)> = vec![
        (
            "garbage key",
            |n| {
                n.annotations
                    .insert(ANNOTATION_PUBLIC_KEY.into(), "garbage".into());
            },
            RejectReason::InvalidAnnotation,
            "public-key",
        ),
        (
            "garbage endpoint",
            |n| {
                n.annotations
                    .insert(ANNOTATION_ENDPOINT.into(), "nowhere".into());
            },
            RejectReason::InvalidAnnotation,
            "endpoint",
        ),
        (
            "bad pod CIDR",
            |n| n.pod_cidrs = vec!["10.244.9.0/33".into()],
            RejectReason::InvalidPodCidr,
            "not a CIDR",
        ),
        (
            "host bits set",
            |n| n.pod_cidrs = vec!["10.244.9.7/24".into()],
            RejectReason::InvalidPodCidr,
            "network address",
        ),
        (
            "overlaps ours",
            |n| n.pod_cidrs = vec!["10.244.0.0/16".into()],
            RejectReason::OverlappingPodCidr,
            "this node's",
        ),
        (
            "overlaps an older node",
            |n| n.pod_cidrs = vec!["10.244.1.128/25".into()],
            RejectReason::OverlappingPodCidr,
            "of node n1",
        ),
        (
            "a public range nobody declared",
            |n| n.pod_cidrs = vec!["8.8.8.0/24".into()],
            RejectReason::UndeclaredRange,
            "8.8.8.0/24 lies outside the pod ranges this cluster declares (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7)",
        ),
        (
            "a default route",
            |n| n.pod_cidrs = vec!["0.0.0.0/0".into()],
            RejectReason::UndeclaredRange,
            "is a default route",
        ),
        (
            "IPv6 default route",
            |n| n.pod_cidrs = vec!["::/0".into()],
            RejectReason::UndeclaredRange,
            "is a default route",
        ),
        (
            "loopback",
            |n| n.pod_cidrs = vec!["127.0.0.0/24".into()],
            RejectReason::UndeclaredRange,
            "loopback",
        ),
        (
            "link-local",
            |n| n.pod_cidrs = vec!["169.254.0.0/24".into()],
            RejectReason::UndeclaredRange,
            "link-local",
        ),
        (
            "multicast",
            |n| n.pod_cidrs = vec!["ff05::/64".into()],
            RejectReason::UndeclaredRange,
            "multicast",
        ),
        (
            "our key",
            |n| {
                n.annotations
                    .insert(ANNOTATION_PUBLIC_KEY.into(), key(100).to_string());
            },
            RejectReason::DuplicatePublicKey,
            "own",
        ),
        (
            "an older node's key",
            |n| {
                n.annotations
                    .insert(ANNOTATION_PUBLIC_KEY.into(), key(1).to_string());
            },
            RejectReason::DuplicatePublicKey,
            "n1",
        ),
        (
            "unresolvable DNS",
            |n| {
                n.annotations.insert(
                    ANNOTATION_FORCE_ENDPOINT.into(),
                    "gone.example:51820".into(),
                );
            },
            RejectReason::UnresolvableEndpoint,
            "gone.example",
        ),
    ];
    for (what, mutate, reason, needle) in cases {
        let mut nodes = cluster(4);
        mutate(&mut nodes[3]);
        let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
        assert_eq!(d.rejected.len(), 1, "{what}: {:?}", d.rejected);
        assert_eq!(d.rejected[0].object.name(), "n3", "{what}");
        assert_eq!(d.rejected[0].reason, reason, "{what}");
        assert!(
            d.rejected[0].message.contains(needle),
            "{what}: {}",
            d.rejected[0].message
        );
        assert_eq!(d.peers.len(), 2, "{what}: n1 and n2 unaffected");
        assert!(
            !d.routes
                .iter()
                .any(|r| r.dst.to_string().starts_with("10.244.3.")),
            "{what}"
        );
    }
}

#[test]
fn in_a_conflict_the_older_node_wins_whatever_the_order() {
    let mut nodes = cluster(3);
    nodes[2].pod_cidrs = nodes[1].pod_cidrs.clone();
    nodes[2].created = -5; // n2 is older than n1
    nodes.reverse();
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    assert_eq!(
        d.peers.values().map(|p| p.name.name()).collect::<Vec<_>>(),
        vec!["n2"]
    );
    assert_eq!(d.rejected[0].object.name(), "n1");
}

#[test]
fn force_endpoint_wins_and_dns_names_are_resolved() {
    let mut nodes = cluster(2);
    nodes[1].annotations.insert(
        ANNOTATION_FORCE_ENDPOINT.into(),
        "gw.example.com:4500".into(),
    );
    nodes[1]
        .annotations
        .insert(ANNOTATION_PERSISTENT_KEEPALIVE.into(), "25".into());
    let resolve = |host: &str, port: u16| {
        (host == "gw.example.com").then(|| SocketAddr::new("198.51.100.7".parse().unwrap(), port))
    };
    let d = desired_of(&local(), &nodes, &[], &resolve).unwrap();
    let p = &d.peers[&key(1)];
    assert_eq!(p.endpoint, Some("198.51.100.7:4500".parse().unwrap()));
    assert_eq!(p.persistent_keepalive, Some(25));
}

#[test]
fn a_node_without_endpoint_is_a_peer_without_endpoint() {
    let mut nodes = cluster(2);
    nodes[1].annotations.remove(ANNOTATION_ENDPOINT);
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    assert_eq!(d.peers[&key(1)].endpoint, None);
}

// ---- plan ----

fn ruleset(d: &Desired) -> String {
    masquerade_ruleset(d, "trellis")
}

#[test]
fn a_node_joining_adds_one_peer_and_its_routes() {
    let before = desired_of(&local(), &cluster(3), &[], &no_dns).unwrap();
    let after = desired_of(&local(), &cluster(4), &[], &no_dns).unwrap();
    let p = plan(
        &after,
        &ruleset(&after),
        &Observed::of(&before, &ruleset(&before)),
    );
    assert_eq!(p.peers.len(), 1);
    assert!(matches!(&p.peers[0], PeerChange::Add(peer) if peer.name.name() == "n3"));
    assert_eq!(p.add_routes.len(), 2);
    assert!(p.remove_routes.is_empty() && p.add_addresses.is_empty());
    assert!(p.nft_ruleset.is_some(), "the mesh CIDR set grew");
}

#[test]
fn a_learned_endpoint_is_not_a_change_but_a_configured_one_is() {
    let mut nodes = cluster(2);
    nodes[1].annotations.remove(ANNOTATION_ENDPOINT);
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    let mut o = Observed::of(&d, &ruleset(&d));
    o.peers.get_mut(&key(1)).unwrap().endpoint = Some("203.0.113.5:1234".parse().unwrap());
    assert!(plan(&d, &ruleset(&d), &o).is_empty());
    let configured = desired_of(&local(), &cluster(2), &[], &no_dns).unwrap();
    let p = plan(&configured, &ruleset(&configured), &o);
    let [PeerChange::Update { changed, .. }] = &p.peers[..] else {
        panic!("one update: {p:?}");
    };
    assert_eq!(
        changed,
        &vec![PeerField::Endpoint {
            from: Some("203.0.113.5:1234".parse().unwrap()),
            to: Some("192.0.2.11:51820".parse().unwrap()),
        }]
    );
    assert_eq!(
        p.describe(),
        vec!["update node n1: endpoint 203.0.113.5:1234 -> 192.0.2.11:51820".to_string()]
    );
}

fn arb_cluster() -> impl Strategy<Value = Vec<NodeInfo>> {
    (
        1u8..12,
        proptest::collection::vec((any::<bool>(), any::<bool>(), 0u16..3, any::<bool>()), 12),
    )
        .prop_map(|(n, tweaks)| {
            let mut nodes = cluster(n);
            for (node, (drop_endpoint, keepalive, cidr_mode, bad_key)) in
                nodes.iter_mut().zip(tweaks).skip(1)
            {
                if drop_endpoint {
                    node.annotations.remove(ANNOTATION_ENDPOINT);
                }
                if keepalive {
                    node.annotations
                        .insert(ANNOTATION_PERSISTENT_KEEPALIVE.into(), "25".into());
                }
                match cidr_mode {
                    1 => node.pod_cidrs.truncate(1),
                    2 => node.pod_cidrs = vec!["10.244.1.0/25".into()], // overlaps n1
                    _ => {}
                }
                if bad_key {
                    node.annotations
                        .insert(ANNOTATION_PUBLIC_KEY.into(), "not-a-key".into());
                }
            }
            nodes
        })
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    (
        any::<bool>(),
        proptest::option::of(1000u32..1500),
        proptest::collection::vec((0u8..20, any::<bool>()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(up, mtu, peers, with_nft)| Observed {
            listen_port: Some(51820),
            mtu,
            up,
            addresses: vec!["10.99.0.1/32".parse().unwrap()],
            peers: peers
                .into_iter()
                .map(|(k, ep)| {
                    (
                        key(k),
                        ObservedPeer {
                            endpoint: ep.then(|| "192.0.2.99:1".parse().unwrap()),
                            allowed_ips: vec![format!("10.244.{k}.0/24").parse().unwrap()],
                            persistent_keepalive: None,
                            preshared_key: None,
                        },
                    )
                })
                .collect(),
            routes: [Route {
                dst: "10.244.7.0/24".parse().unwrap(),
                src: None,
            }]
            .into_iter()
            .collect(),
            nft_ruleset: with_nft.then(|| "stale".to_string()),
        })
}

proptest! {
    #[test]
    fn the_plan_of_a_state_against_itself_is_empty(nodes in arb_cluster()) {
        let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
        prop_assert!(plan(&d, &ruleset(&d), &Observed::of(&d, &ruleset(&d))).is_empty());
    }

    #[test]
    fn applying_the_plan_yields_the_desired_state(nodes in arb_cluster(), observed in arb_observed()) {
        let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
        let p = plan(&d, &ruleset(&d), &observed);
        let after = p.applied_to(&observed);
        // Learned endpoints may stay where nothing is configured.
        let mut want = Observed::of(&d, &ruleset(&d));
        for (k, peer) in want.peers.iter_mut() {
            if peer.endpoint.is_none() {
                peer.endpoint = after.peers.get(k).and_then(|p| p.endpoint);
            }
        }
        prop_assert_eq!(after, want);
    }

    #[test]
    fn one_node_changing_touches_only_that_peer(nodes in arb_cluster(), victim in 1usize..12, port in 1024u16..60000) {
        let before = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
        let mut changed = nodes.clone();
        let victim = victim % changed.len();
        prop_assume!(victim != 0);
        let name = changed[victim].name.clone();
        changed[victim].annotations.insert(ANNOTATION_ENDPOINT.into(), format!("198.51.100.1:{port}"));
        let after = desired_of(&local(), &changed, &[], &no_dns).unwrap();
        let p = plan(&after, &ruleset(&after), &Observed::of(&before, &ruleset(&before)));
        for change in &p.peers {
            let node = match change {
                PeerChange::Add(peer) | PeerChange::Update { peer, .. } => peer.name.clone(),
                PeerChange::Remove(k) => before.peers[k].name.clone(),
            };
            prop_assert_eq!(node.name(), name.as_str());
        }
        prop_assert!(p.peers.len() <= 1);
        prop_assert!(p.add_addresses.is_empty() && p.remove_addresses.is_empty());
    }
}

fn with_declared(nodes: &[NodeInfo], pods: &[&str]) -> Result<Desired, LocalError> {
    let declared = DeclaredRanges {
        pods: pods.iter().map(|p| p.parse().unwrap()).collect(),
        external_peers: Vec::new(),
    };
    let inputs = MeshInputs {
        nodes,
        external: &[],
        remotes: &[],
        declared: &declared,
    };
    desired_mesh(&local(), &inputs, &no_dns)
}

#[test]
fn only_the_declared_pod_ranges_enter_the_mesh() {
    let mut nodes = cluster(3);
    // n2 is inside the private defaults but not inside this declaration.
    nodes[2].pod_cidrs = vec!["10.99.2.0/24".into()];
    let d = with_declared(&nodes, &["10.244.0.0/16", "fd00:10:244::/56"]).unwrap();
    assert!(d.peers.contains_key(&key(1)));
    assert!(!d.peers.contains_key(&key(2)));
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].reason, RejectReason::UndeclaredRange);
    assert!(!d.routes.iter().any(|r| r.dst.to_string() == "10.99.2.0/24"));
    assert!(!d.mesh_cidrs.iter().any(|c| c.to_string() == "10.99.2.0/24"));
}

#[test]
fn a_pod_cidr_holding_a_node_address_is_left_out() {
    let mut nodes = cluster(3);
    // 192.0.2.11 is n1's underlay address.
    nodes[2].pod_cidrs = vec!["192.0.2.0/28".into()];
    let d = with_declared(
        &nodes,
        &["10.244.0.0/16", "fd00:10:244::/56", "192.0.2.0/24"],
    )
    .unwrap();
    assert!(!d.peers.contains_key(&key(2)));
    assert!(
        d.rejected[0].message.contains("contains 192.0.2.1"),
        "{}",
        d.rejected[0].message
    );
}

#[test]
fn this_node_outside_the_declaration_is_an_error_not_a_mesh() {
    let err = with_declared(&cluster(2), &["10.96.0.0/16"]).unwrap_err();
    assert!(
        matches!(&err, LocalError::UndeclaredPodCidr { node, why } if node == "n0" && why.contains("10.244.0.0/24 lies outside")),
        "{err}"
    );
}

#[test]
fn every_dns_name_of_an_endpoint_is_listed_for_resolving() {
    let mut nodes = cluster(3);
    nodes[1]
        .annotations
        .insert(ANNOTATION_ENDPOINT.into(), "n1.example.net:51820".into());
    nodes[2].annotations.insert(
        ANNOTATION_FORCE_ENDPOINT.into(),
        "gw.example.net:4500".into(),
    );
    let machine = ExternalPeerInfo {
        name: "laptop".into(),
        endpoint: Some("laptop.example.org:51821".into()),
        ..Default::default()
    };
    let remote = RemoteCluster {
        name: "b".into(),
        nodes: vec![{
            let mut n = node(7, 7);
            n.annotations
                .insert(ANNOTATION_ENDPOINT.into(), "b7.example.com:51820".into());
            n
        }],
        ..Default::default()
    };
    let external = [machine];
    let remotes = [remote];
    let inputs = MeshInputs {
        nodes: &nodes,
        external: &external,
        remotes: &remotes,
        declared: &DeclaredRanges::private(),
    };
    let names: Vec<(String, u16)> = hostnames(&inputs).into_iter().collect();
    assert_eq!(
        names,
        vec![
            ("b7.example.com".to_string(), 51820),
            ("gw.example.net".to_string(), 4500),
            ("laptop.example.org".to_string(), 51821),
            ("n1.example.net".to_string(), 51820),
        ]
    );
}
