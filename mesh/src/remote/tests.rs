//! Table tests of linked clusters in the desired state.

use ipnet::IpNet;

use super::*;
use crate::desired::desired_mesh;
use crate::external::tests::peer;
use crate::model::{ExternalPeerInfo, MeshInputs, RejectReason};
use crate::ranges::DeclaredRanges;
use crate::testing::{key, local, no_dns, node};

fn here() -> Vec<NodeInfo> {
    (0..3).map(|i| node(i, i64::from(i))).collect()
}

/// A linked cluster of the fixture nodes `ids` (pod CIDRs 10.244.ID.0/24).
fn linked(name: &str, ids: &[u8]) -> RemoteCluster {
    RemoteCluster {
        name: name.into(),
        nodes: ids.iter().map(|&i| node(i, i64::from(i))).collect(),
        external: Vec::new(),
        declared: DeclaredRanges::private(),
    }
}

fn run(external: &[ExternalPeerInfo], remotes: &[RemoteCluster]) -> Desired {
    let nodes = here();
    let inputs = MeshInputs {
        nodes: &nodes,
        external,
        remotes,
        declared: &DeclaredRanges::private(),
    };
    desired_mesh(&local(), &inputs, &no_dns).unwrap()
}

#[test]
fn every_node_of_a_linked_cluster_is_a_direct_peer_with_routes() {
    let d = run(&[], &[linked("b", &[20, 21])]);
    assert_eq!(d.peers.len(), 4, "{:?}", d.peers.keys());
    let p = &d.peers[&key(20)];
    assert_eq!(p.name.to_string(), "b:n20");
    assert_eq!(p.name.cluster(), Some("b"));
    assert_eq!(p.endpoint, Some("192.0.2.30:51820".parse().unwrap()));
    let v4: IpNet = "10.244.20.0/24".parse().unwrap();
    assert!(p.allowed_ips.contains(&v4));
    assert!(d.routes.iter().any(|r| r.dst == v4));
    assert!(d.mesh_cidrs.contains(&v4), "never masqueraded");
    assert!(d.rejected.is_empty() && d.rejected_clusters.is_empty());
}

#[test]
fn a_linked_cluster_overlapping_ours_is_refused_whole() {
    // n21 is fine, n1 overlaps this cluster's n1: nothing of b is taken.
    let d = run(&[], &[linked("b", &[21, 1])]);
    assert_eq!(d.peers.len(), 2, "only this cluster's nodes");
    assert!(d.peers.values().all(|p| p.name.cluster().is_none()));
    assert_eq!(d.rejected_clusters.len(), 1);
    let r = &d.rejected_clusters[0];
    assert_eq!(r.cluster, "b");
    assert!(
        r.message.contains("10.244.1.0/24 of node b:n1 overlaps"),
        "{}",
        r.message
    );
    assert!(r.message.contains("of node n1"), "{}", r.message);
    assert!(r.message.contains("nothing of cluster b"), "{}", r.message);
    assert!(!d
        .routes
        .iter()
        .any(|r| r.dst.to_string() == "10.244.21.0/24"));
}

#[test]
fn a_linked_cluster_overlapping_our_own_pod_cidr_or_a_peer_is_refused() {
    let d = run(&[], &[linked("b", &[0])]);
    assert!(d.rejected_clusters[0]
        .message
        .contains("this node's pod CIDR"));
    let laptop = peer("laptop", 50, &["10.244.22.0/23"]);
    let d = run(&[laptop], &[linked("b", &[22])]);
    assert!(
        d.peers.contains_key(&key(50)),
        "the Peer that was there first stays"
    );
    assert!(
        d.rejected_clusters[0].message.contains("of peer/laptop"),
        "{}",
        d.rejected_clusters[0].message
    );
}

#[test]
fn the_first_linked_cluster_by_name_wins_and_a_name_linked_twice_is_refused() {
    let d = run(&[], &[linked("c", &[20]), linked("b", &[20, 21])]);
    assert_eq!(d.peers[&key(20)].name.to_string(), "b:n20");
    assert_eq!(d.rejected_clusters.len(), 1);
    assert_eq!(d.rejected_clusters[0].cluster, "c");
    let d = run(&[], &[linked("b", &[20]), linked("b", &[21])]);
    assert_eq!(d.rejected_clusters.len(), 1);
    assert!(d.rejected_clusters[0].message.contains("linked twice"));
}

#[test]
fn a_bad_node_of_a_linked_cluster_is_left_out_alone() {
    let mut remote = linked("b", &[20, 21]);
    remote.nodes[1].pod_cidrs = vec!["10.244.20.128/25".into()];
    let d = run(&[], &[remote]);
    assert!(d.rejected_clusters.is_empty());
    assert!(d.peers.contains_key(&key(20)));
    let r = &d.rejected[0];
    assert_eq!(r.object.to_string(), "b:n21");
    assert_eq!(r.reason, RejectReason::OverlappingPodCidr);
    assert!(r.message.contains("of node b:n20"), "{}", r.message);
}

#[test]
fn peers_of_a_linked_cluster_are_peers_here_and_lose_conflicts() {
    let mut remote = linked("b", &[20]);
    remote.external = vec![
        peer("phone", 51, &["10.99.0.3/32"]),
        // Claims this cluster's laptop's address.
        peer("thief", 52, &["10.99.0.2/32"]),
    ];
    let d = run(&[peer("laptop", 50, &["10.99.0.2/32"])], &[remote]);
    assert_eq!(d.peers[&key(51)].name.to_string(), "b:peer/phone");
    assert!(d.peers.contains_key(&key(50)));
    let r = d
        .rejected
        .iter()
        .find(|r| r.object.name() == "thief")
        .unwrap();
    assert_eq!(r.reason, RejectReason::OverlappingAllowedIps);
    assert!(r.message.contains("of peer/laptop"), "{}", r.message);
}

#[test]
fn a_linked_node_reusing_a_key_here_is_left_out() {
    let mut remote = linked("b", &[20]);
    let mut clone = node(21, 0);
    clone.annotations = node(1, 0).annotations;
    remote.nodes.push(clone);
    let d = run(&[], &[remote]);
    let r = d
        .rejected
        .iter()
        .find(|r| r.object.to_string() == "b:n21")
        .unwrap();
    assert_eq!(r.reason, RejectReason::DuplicatePublicKey);
    assert!(r.message.contains("node n1"), "{}", r.message);
}

#[test]
fn a_node_of_a_linked_cluster_outside_its_declaration_is_left_out_alone() {
    let mut b = linked("b", &[20, 21]);
    b.declared.pods = vec![
        "10.244.20.0/24".parse().unwrap(),
        "fd00::/8".parse().unwrap(),
    ];
    let d = run(&[], &[b]);
    assert!(d.peers.contains_key(&key(20)), "inside b's declaration");
    assert!(!d.peers.contains_key(&key(21)));
    assert!(d.rejected_clusters.is_empty(), "the cluster itself stays");
    let r = d
        .rejected
        .iter()
        .find(|r| r.object.to_string() == "b:n21")
        .unwrap();
    assert_eq!(r.reason, RejectReason::UndeclaredRange);
    assert!(
        r.message.contains("pod CIDR 10.244.21.0/24 lies outside the pod ranges cluster b declared when it was linked (10.244.20.0/24, fd00::/8)"),
        "{}",
        r.message
    );
    assert!(!d
        .routes
        .iter()
        .any(|r| r.dst == "10.244.21.0/24".parse::<IpNet>().unwrap()));
}

#[test]
fn a_linked_cluster_that_declared_nothing_brings_nothing() {
    let mut b = linked("b", &[20]);
    b.declared = DeclaredRanges::default();
    b.external = vec![peer("laptop", 70, &["10.99.0.2/32"])];
    let d = run(&[], &[b]);
    assert_eq!(d.peers.len(), 2, "only this cluster's nodes");
    assert_eq!(d.rejected.len(), 2, "{:?}", d.rejected);
    assert!(d
        .rejected
        .iter()
        .all(|r| r.reason == RejectReason::UndeclaredRange));
    assert!(
        d.rejected.iter().any(|r| r.message.contains("(none)")),
        "{:?}",
        d.rejected
    );
}
