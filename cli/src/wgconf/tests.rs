//! Configurations from hand-made snapshots (no cluster).

use k8s_openapi::api::core::v1::Node;
use trellis_api::{Peer, PeerSpec, SecretKeyRef};
use trellis_mesh::names::{ANNOTATION_ENDPOINT, ANNOTATION_FORCE_ENDPOINT, ANNOTATION_PUBLIC_KEY};

use super::*;

fn key(n: u8) -> String {
    PublicKey([n; 32]).to_string()
}

pub(crate) fn node(i: u8) -> Node {
    trellis_api::node::node_object(
        &format!("n{i}"),
        vec![
            format!("10.244.{i}.0/24"),
            format!("fd00:10:244:{i:x}::/64"),
        ],
        &[format!("192.0.2.{}", 10 + i).parse().unwrap()],
        [
            (ANNOTATION_PUBLIC_KEY.to_string(), key(i)),
            (
                ANNOTATION_ENDPOINT.to_string(),
                format!("192.0.2.{}:51820", 10 + i),
            ),
        ]
        .into(),
    )
}

pub(crate) fn peer(name: &str, k: u8, allowed: &[&str]) -> Peer {
    Peer::new(
        name,
        PeerSpec {
            public_key: key(k),
            allowed_ips: allowed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
}

fn snapshot() -> Snapshot {
    let mut forced = node(2);
    forced
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANNOTATION_FORCE_ENDPOINT.into(), "203.0.113.5:4500".into());
    let mut with_psk = peer("psk", 61, &["10.99.1.0/24"]);
    with_psk.spec.preshared_key_secret_ref = Some(SecretKeyRef {
        name: "s".into(),
        namespace: "kube-system".into(),
        key: None,
    });
    Snapshot {
        nodes: vec![node(1), forced, node(3)],
        peers: vec![
            peer("laptop", 60, &["10.99.0.2/32", "fd99::2/128"]),
            with_psk,
        ],
        remotes: vec![],
        declared: trellis_mesh::DeclaredRanges::private(),
    }
}

#[test]
fn the_machine_sees_every_node_as_a_peer() {
    let s = snapshot();
    let text = external_config(&s, "laptop", None).unwrap();
    assert!(
        text.contains("[Interface]\nPrivateKey = <the private key of"),
        "{text}"
    );
    assert!(
        text.contains("Address = 10.99.0.2/32, fd99::2/128"),
        "{text}"
    );
    assert_eq!(text.matches("[Peer]").count(), 3, "{text}");
    assert!(text.contains(&format!("# n1\nPublicKey = {}\nEndpoint = 192.0.2.11:51820\nAllowedIPs = 10.244.1.0/24, fd00:10:244:1::/64\nPersistentKeepalive = 25", key(1))), "{text}");
    // force-endpoint wins over the published endpoint.
    assert!(text.contains("Endpoint = 203.0.113.5:4500"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
    let with_key = external_config_for(
        &s,
        &s.peer("laptop")
            .unwrap()
            .external_peer_info(Default::default()),
        Some("PRIVATE"),
        0,
    )
    .unwrap();
    assert!(with_key.contains("PrivateKey = PRIVATE\n"), "{with_key}");
    assert!(!with_key.contains("PersistentKeepalive"), "{with_key}");
    assert!(!with_key.contains("ListenPort"), "nodes cannot dial it");
    let mut dialable = s
        .peer("laptop")
        .unwrap()
        .external_peer_info(Default::default());
    dialable.endpoint = Some("192.0.2.99:51999".into());
    let listening = external_config_for(&s, &dialable, None, 25).unwrap();
    assert!(listening.contains("ListenPort = 51999\n"), "{listening}");
    assert!(matches!(
        external_config(&s, "nobody", None),
        Err(WgConfError::NoSuchPeer(_))
    ));
}

#[test]
fn a_range_gives_the_machine_its_first_host() {
    let mut s = snapshot();
    s.peers.push(peer("site", 62, &["10.98.0.0/24"]));
    let text = external_config(&s, "site", None).unwrap();
    assert!(text.contains("Address = 10.98.0.1/32"), "{text}");
}

#[test]
fn a_node_config_lists_nodes_and_peers_as_its_agent_would() {
    let s = snapshot();
    let text = node_config(&s, "n1").unwrap();
    assert!(text.contains("ListenPort = 51820"), "{text}");
    assert!(
        text.contains("# Address = 10.244.1.1/32, fd00:10:244:1::1/128"),
        "{text}"
    );
    assert_eq!(text.matches("[Peer]").count(), 4, "{text}");
    assert!(text.contains("# peer/laptop\n"), "{text}");
    assert!(
        text.contains("# PresharedKey = <from Secret kube-system/s>"),
        "{text}"
    );
    assert!(!text.contains("PrivateKey"), "{text}");
    assert!(matches!(
        node_config(&s, "n9"),
        Err(WgConfError::NoSuchNode(_))
    ));
}

#[test]
fn what_the_agents_would_refuse_is_said_before_anything_is_created() {
    let s = snapshot();
    let overlapping = peer("bad", 70, &["10.244.3.0/25"]);
    let why = refusal(&s, &overlapping.external_peer_info(Default::default())).unwrap();
    assert!(why.contains("pod CIDR 10.244.3.0/24 of node n3"), "{why}");
    let stolen = peer("thief", 1, &["10.97.0.0/24"]);
    let why = refusal(&s, &stolen.external_peer_info(Default::default())).unwrap();
    assert!(why.contains("public key") && why.contains("n1"), "{why}");
    let wide = peer("wide", 72, &["0.0.0.0/1"]);
    let why = refusal(&s, &wide.external_peer_info(Default::default())).unwrap();
    assert!(
        why.contains("allowed IP 0.0.0.0/1") && why.contains("never routed"),
        "{why}"
    );
    let public = peer("public", 73, &["8.8.8.0/24"]);
    let why = refusal(&s, &public.external_peer_info(Default::default())).unwrap();
    assert!(
        why.contains("lies outside the external-peer ranges this cluster declares"),
        "{why}"
    );
    assert!(refusal(
        &s,
        &peer("fine", 71, &["10.97.0.0/24"]).external_peer_info(Default::default())
    )
    .is_none());
    let mut no_key = node(4);
    no_key.metadata.annotations = None;
    let only_new = Snapshot {
        nodes: vec![no_key.clone()],
        declared: trellis_mesh::DeclaredRanges::private(),
        ..Default::default()
    };
    assert!(matches!(
        node_config(&only_new, "n4"),
        Err(WgConfError::NoKey(_))
    ));
}

#[test]
fn a_machine_and_a_node_see_the_linked_clusters_nodes() {
    let mut s = snapshot();
    s.remotes = vec![trellis_mesh::RemoteCluster {
        name: "b".into(),
        nodes: vec![trellis_api::node::node_info(&node(20))],
        external: vec![],
        declared: trellis_mesh::DeclaredRanges::private(),
    }];
    let text = external_config(&s, "laptop", None).unwrap();
    assert_eq!(text.matches("[Peer]").count(), 4, "{text}");
    assert!(text.contains("# b:n20\nPublicKey = "), "{text}");
    assert!(
        text.contains("AllowedIPs = 10.244.20.0/24, fd00:10:244:14::/64"),
        "{text}"
    );
    let conf = node_config(&s, "n1").unwrap();
    assert!(conf.contains("# b:n20"), "{conf}");
}
