//! Table tests of NAT detection, the endpoint a node behind NAT is dialled
//! at, the keepalive of such pairs, and what a node publishes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::model::{CandidateKind, DesiredPeer, NodeInfo, PeerName};
use crate::names::*;
use crate::session::LIVE;
use crate::sightings::{is_private, Sightings};
use crate::testing::{desired_of, key, local, no_dns, node};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `node(i)` reporting where it sees the nodes in `seen`.
fn reporting(i: u8, seen: &[(u8, &str)]) -> NodeInfo {
    let mut n = node(i, i64::from(i));
    let map: BTreeMap<String, String> = seen
        .iter()
        .map(|(k, a)| (key(*k).to_string(), a.to_string()))
        .collect();
    n.annotations.insert(
        ANNOTATION_DISCOVERED_ENDPOINTS.into(),
        serde_json::to_string(&map).unwrap(),
    );
    n
}

/// `node(i)` behind a NAT: it publishes a private address.
fn natted(i: u8) -> NodeInfo {
    let mut n = node(i, i64::from(i));
    n.annotations
        .insert(ANNOTATION_ENDPOINT.into(), format!("172.31.{i}.2:51820"));
    n.internal_ips = vec![format!("172.31.{i}.2").parse().unwrap()];
    n
}

#[test]
fn private_ranges_are_told_apart_from_routed_ones() {
    for private in [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.1.1",
        "fd00::1",
        "fe80::1",
    ] {
        assert!(is_private(private.parse().unwrap()), "{private}");
    }
    for public in [
        "192.0.2.1",
        "198.51.100.7",
        "100.128.0.1",
        "8.8.8.8",
        "2001:db8::1",
        "172.32.0.1",
    ] {
        assert!(!is_private(public.parse().unwrap()), "{public}");
    }
}

#[test]
fn the_address_most_nodes_report_wins_and_a_node_cannot_vouch_for_itself() {
    let mut s = Sightings::default();
    let published = Some(addr("172.31.3.2:51820"));
    assert_eq!(s.translated(&key(3), published), None);
    s.record(
        key(1),
        &BTreeMap::from([(key(3), addr("198.51.100.9:51820"))]),
    );
    s.record(
        key(2),
        &BTreeMap::from([(key(3), addr("198.51.100.9:51820"))]),
    );
    s.record(
        key(4),
        &BTreeMap::from([(key(3), addr("198.51.100.8:40000"))]),
    );
    s.record(key(3), &BTreeMap::from([(key(3), addr("203.0.113.1:1"))]));
    assert_eq!(
        s.translated(&key(3), published),
        Some(addr("198.51.100.9:51820"))
    );
    assert!(s.behind_nat(&key(3), published));
    assert!(s.sees(&key(1), &key(3)) && !s.sees(&key(3), &key(3)));
    // Reports that agree with what a node published say nothing.
    let mut agree = Sightings::default();
    agree.record(
        key(1),
        &BTreeMap::from([(key(2), addr("192.0.2.12:51820"))]),
    );
    assert_eq!(
        agree.translated(&key(2), Some(addr("192.0.2.12:51820"))),
        None
    );
    assert!(!agree.behind_nat(&key(2), Some(addr("192.0.2.12:51820"))));
}

#[test]
fn a_node_seen_behind_nat_is_dialled_at_its_public_mapping_with_a_keepalive() {
    let nodes = vec![
        node(0, 0),
        reporting(1, &[(2, "198.51.100.22:51820")]),
        natted(2),
        node(3, 3),
    ];
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    let p2 = &d.peers[&key(2)];
    assert_eq!(p2.endpoint, Some(addr("198.51.100.22:51820")));
    assert_eq!(p2.persistent_keepalive, Some(NAT_KEEPALIVE));
    let p3 = &d.peers[&key(3)];
    assert_eq!(p3.endpoint, Some(addr("192.0.2.13:51820")), "untouched");
    assert_eq!(p3.persistent_keepalive, None, "no NAT, no keepalive");
    assert!(!d.behind_nat && d.keepalive.is_none());
}

#[test]
fn a_forced_endpoint_and_an_annotated_keepalive_win_over_what_was_seen() {
    let mut n2 = natted(2);
    n2.annotations
        .insert(ANNOTATION_FORCE_ENDPOINT.into(), "203.0.113.5:4500".into());
    n2.annotations
        .insert(ANNOTATION_PERSISTENT_KEEPALIVE.into(), "10".into());
    let nodes = vec![node(0, 0), reporting(1, &[(2, "198.51.100.22:51820")]), n2];
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    let p2 = &d.peers[&key(2)];
    assert_eq!(p2.endpoint, Some(addr("203.0.113.5:4500")));
    assert_eq!(p2.persistent_keepalive, Some(10));
}

#[test]
fn a_node_learns_it_is_behind_nat_and_keeps_every_pair_alive() {
    // The local node (key 100) publishes a routed address, but n1 sees it
    // elsewhere: it is behind a NAT.
    let mut me = node(0, 0);
    me.annotations
        .insert(ANNOTATION_PUBLIC_KEY.into(), key(100).to_string());
    let nodes = vec![
        me,
        reporting(1, &[(100, "198.51.100.50:61000")]),
        node(2, 2),
    ];
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    assert!(d.behind_nat);
    assert_eq!(d.public_endpoint, Some(addr("198.51.100.50:61000")));
    assert_eq!(d.keepalive, Some(NAT_KEEPALIVE));
    assert!(d
        .peers
        .values()
        .all(|p| p.persistent_keepalive == Some(NAT_KEEPALIVE)));
    // A private address alone is enough to keep pairs alive.
    let mut private = node(0, 0);
    private
        .annotations
        .insert(ANNOTATION_ENDPOINT.into(), "10.0.0.5:51820".into());
    let d = desired_of(&local(), &[private, node(1, 1)], &[], &no_dns).unwrap();
    assert!(d.behind_nat && d.public_endpoint.is_none());
    assert_eq!(d.peers[&key(1)].persistent_keepalive, Some(NAT_KEEPALIVE));
}

#[test]
fn nodes_seen_behind_one_public_address_form_a_site_and_dial_each_other_on_its_lan_first() {
    // We (key 100, 172.31.9.10) and n2 (172.31.9.2) are seen by n1 at one
    // public address, n3 behind another NAT: n2 is of our site.
    let mut me = node(0, 0);
    me.annotations
        .insert(ANNOTATION_PUBLIC_KEY.into(), key(100).to_string());
    me.annotations
        .insert(ANNOTATION_ENDPOINT.into(), "172.31.9.10:51820".into());
    let mut n2 = natted(2);
    n2.annotations
        .insert(ANNOTATION_ENDPOINT.into(), "172.31.9.2:51820".into());
    // Its node addresses: the published one, and one of the other family.
    n2.internal_ips = vec!["172.31.9.2".parse().unwrap(), "fd00:31::2".parse().unwrap()];
    let nodes = vec![
        me,
        reporting(
            1,
            &[
                (100, "198.51.100.9:1100"),
                (2, "198.51.100.9:1002"),
                (3, "198.51.100.33:51820"),
            ],
        ),
        n2,
        natted(3),
    ];
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    assert_eq!(d.public_endpoint, Some(addr("198.51.100.9:1100")));
    let site_mate = &d.candidates[&key(2)];
    assert_eq!(
        site_mate
            .list
            .iter()
            .map(|c| (c.kind, c.endpoint))
            .collect::<Vec<_>>(),
        vec![
            (CandidateKind::Lan, addr("172.31.9.2:51820")),
            (CandidateKind::Lan, addr("[fd00:31::2]:51820")),
            (CandidateKind::Public, addr("198.51.100.9:1002")),
        ],
        "the published endpoint, the other node address, the public mapping"
    );
    assert_eq!(d.peers[&key(2)].endpoint, Some(addr("172.31.9.2:51820")));
    assert_eq!(d.peers[&key(2)].persistent_keepalive, Some(NAT_KEEPALIVE));
    // Another site: its public mapping, one way only.
    assert!(!d.candidates.contains_key(&key(3)));
    assert_eq!(d.peers[&key(3)].endpoint, Some(addr("198.51.100.33:51820")));
    // A forced endpoint is the one way to n2, site or not.
    let mut forced = nodes.clone();
    forced[2]
        .annotations
        .insert(ANNOTATION_FORCE_ENDPOINT.into(), "203.0.113.5:4500".into());
    let d = desired_of(&local(), &forced, &[], &no_dns).unwrap();
    assert!(d.candidates.is_empty());
    assert_eq!(d.peers[&key(2)].endpoint, Some(addr("203.0.113.5:4500")));
}

#[test]
fn a_shared_location_or_zone_hints_a_site_that_the_sightings_do_not_show() {
    // We are seen at 198.51.100.9, n2 at 198.51.100.10 (a NAT gateway with
    // two public addresses): not one site by the sightings.
    let mut me = node(0, 0);
    me.annotations
        .insert(ANNOTATION_PUBLIC_KEY.into(), key(100).to_string());
    me.annotations
        .insert(ANNOTATION_ENDPOINT.into(), "172.31.9.10:51820".into());
    let nodes = vec![
        me,
        reporting(1, &[(100, "198.51.100.9:1100"), (2, "198.51.100.10:1002")]),
        natted(2),
    ];
    let d = desired_of(&local(), &nodes, &[], &no_dns).unwrap();
    assert!(
        !d.candidates.contains_key(&key(2)),
        "no hint: its mapping only"
    );
    assert_eq!(d.peers[&key(2)].endpoint, Some(addr("198.51.100.10:1002")));
    let lan_then_public = vec![
        (CandidateKind::Lan, addr("172.31.2.2:51820")),
        (CandidateKind::Public, addr("198.51.100.10:1002")),
    ];
    let kinds = |d: &Desired| {
        d.candidates.get(&key(2)).map(|c| {
            c.list
                .iter()
                .map(|c| (c.kind, c.endpoint))
                .collect::<Vec<_>>()
        })
    };
    // The same trellis.dev/location on both (whitespace aside).
    let mut located = nodes.clone();
    located[0]
        .annotations
        .insert(ANNOTATION_LOCATION.into(), "office-3".into());
    located[2]
        .annotations
        .insert(ANNOTATION_LOCATION.into(), " office-3 ".into());
    let d = desired_of(&local(), &located, &[], &no_dns).unwrap();
    assert_eq!(kinds(&d), Some(lan_then_public.clone()));
    assert_eq!(d.peers[&key(2)].endpoint, Some(addr("172.31.2.2:51820")));
    // Another location: no hint.
    located[2]
        .annotations
        .insert(ANNOTATION_LOCATION.into(), "office-4".into());
    assert_eq!(
        kinds(&desired_of(&local(), &located, &[], &no_dns).unwrap()),
        None
    );
    // The same zone label in one cluster.
    let mut zoned = nodes.clone();
    zoned[0].zone = Some("eu-west-1a".into());
    zoned[2].zone = Some("eu-west-1a".into());
    let d = desired_of(&local(), &zoned, &[], &no_dns).unwrap();
    assert_eq!(kinds(&d), Some(lan_then_public));
    zoned[2].zone = Some("eu-west-1b".into());
    assert_eq!(
        kinds(&desired_of(&local(), &zoned, &[], &no_dns).unwrap()),
        None
    );
    // A hint is never a requirement: a forced endpoint is still the one way.
    let mut forced = located.clone();
    forced[2]
        .annotations
        .insert(ANNOTATION_LOCATION.into(), "office-3".into());
    forced[2]
        .annotations
        .insert(ANNOTATION_FORCE_ENDPOINT.into(), "203.0.113.5:4500".into());
    assert_eq!(
        kinds(&desired_of(&local(), &forced, &[], &no_dns).unwrap()),
        None
    );
}

#[test]
fn zones_hint_only_within_a_cluster_and_an_unset_hint_matches_nothing() {
    use crate::model::SiteHints;
    let zone = |z: &str| SiteHints {
        location: None,
        zone: Some(z.into()),
    };
    assert!(zone("a").shared_with(&zone("a"), true));
    assert!(
        !zone("a").shared_with(&zone("a"), false),
        "zone names of two clusters need not mean the same"
    );
    let at = |l: &str| SiteHints {
        location: Some(l.into()),
        zone: None,
    };
    assert!(at("rack-1").shared_with(&at("rack-1"), false));
    assert!(!SiteHints::default().shared_with(&SiteHints::default(), true));
}

fn peer(name: &str, k: u8, endpoint: &str, keepalive: Option<u16>) -> DesiredPeer {
    DesiredPeer {
        name: PeerName::Node(name.into()),
        public_key: key(k),
        endpoint: Some(addr(endpoint)),
        allowed_ips: vec![],
        persistent_keepalive: keepalive,
        preshared_key: None,
    }
}

#[test]
fn only_live_sessions_that_matter_to_others_are_published() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
    let mut d = Desired::default();
    for p in [
        peer("kept-alive", 1, "192.0.2.11:51820", Some(25)),
        peer("roamed", 2, "192.0.2.12:51820", None),
        peer("plain", 3, "192.0.2.13:51820", None),
        peer("stale", 4, "192.0.2.14:51820", Some(25)),
        peer("never", 5, "192.0.2.15:51820", Some(25)),
    ] {
        d.peers.insert(p.public_key, p);
    }
    let recent = Some(now - Duration::from_secs(30));
    let sessions = BTreeMap::from([
        (
            key(1),
            Session {
                endpoint: Some(addr("198.51.100.1:51820")),
                last_handshake: recent,
            },
        ),
        (
            key(2),
            Session {
                endpoint: Some(addr("198.51.100.2:1234")),
                last_handshake: recent,
            },
        ),
        (
            key(3),
            Session {
                endpoint: Some(addr("192.0.2.13:51820")),
                last_handshake: recent,
            },
        ),
        (
            key(4),
            Session {
                endpoint: Some(addr("198.51.100.4:51820")),
                last_handshake: Some(now - LIVE),
            },
        ),
        (
            key(5),
            Session {
                endpoint: Some(addr("192.0.2.15:51820")),
                last_handshake: None,
            },
        ),
    ]);
    let published = discovered_endpoints(&d, &sessions, now);
    assert_eq!(
        published,
        BTreeMap::from([
            (key(1), addr("198.51.100.1:51820")),
            (key(2), addr("198.51.100.2:1234")),
        ])
    );
}

#[test]
fn behind_nat_a_node_keeps_machines_it_can_dial_alive() {
    use crate::external::tests::peer as machine;
    let mut me = node(0, 0);
    me.annotations
        .insert(ANNOTATION_ENDPOINT.into(), "10.0.0.5:51820".into());
    let mut dialable = machine("laptop", 50, &["10.99.0.2/32"]);
    dialable.persistent_keepalive = None;
    let mut roaming = machine("phone", 51, &["10.99.0.3/32"]);
    (roaming.endpoint, roaming.persistent_keepalive) = (None, None);
    let d = desired_of(&local(), &[me], &[dialable, roaming], &no_dns).unwrap();
    assert_eq!(d.peers[&key(50)].persistent_keepalive, Some(NAT_KEEPALIVE));
    assert_eq!(
        d.peers[&key(51)].persistent_keepalive,
        None,
        "no endpoint to dial"
    );
}
