//! Table tests of the relay decision: when a peer goes through a relay,
//! which relay, and when it comes back to the direct path.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::model::{CandidateKind, DesiredPeer};
use crate::testing::{key, site_mate_candidates};

const ME: u8 = 100;

fn cidr(k: u8) -> IpNet {
    format!("10.244.{k}.0/24").parse().unwrap()
}

fn node_peer(k: u8, keepalive: Option<u16>) -> DesiredPeer {
    DesiredPeer {
        name: PeerName::Node(format!("n{k}")),
        public_key: key(k),
        endpoint: Some(format!("198.51.100.{k}:51820").parse().unwrap()),
        allowed_ips: vec![cidr(k)],
        persistent_keepalive: keepalive,
        preshared_key: None,
    }
}

/// n1..n4 probed; n1 and n2 both see us and n3; n4 sees nobody.
fn mesh() -> Desired {
    let mut d = Desired::default();
    for k in 1..=4 {
        d.peers.insert(key(k), node_peer(k, Some(25)));
    }
    for reporter in [1, 2] {
        let seen = [ME, 3]
            .iter()
            .map(|k| (key(*k), "198.51.100.200:51820".parse().unwrap()))
            .collect();
        d.sightings.record(key(reporter), &seen);
    }
    d
}

/// What the device and the echo prober read: `handshakes`, `answers`, no
/// received bytes.
fn readings(
    handshakes: &BTreeMap<PublicKey, SystemTime>,
    answers: &BTreeMap<IpAddr, SystemTime>,
) -> PathReadings {
    PathReadings {
        handshakes: handshakes.clone(),
        answers: answers.clone(),
        ..PathReadings::default()
    }
}

/// No echo answered (every path unjudged: handshakes alone decide).
fn no_answers() -> BTreeMap<IpAddr, SystemTime> {
    BTreeMap::new()
}

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
}

/// Live sessions with n1 and n2 (handshakes at `t`).
fn relays_live(t: SystemTime) -> BTreeMap<PublicKey, SystemTime> {
    BTreeMap::from([(key(1), t), (key(2), t)])
}

#[test]
fn a_peer_without_handshake_goes_through_a_relay_after_the_deadline_only() {
    let mut tracker = PathTracker::default();
    let mut d = mesh();
    let changes = tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(at(0)), &no_answers()),
        at(0),
    );
    assert!(changes.is_empty() && d.relayed.is_empty(), "still trying");
    let mut d = mesh();
    let t = at(0) + DIRECT_DEADLINE - Duration::from_secs(1);
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    assert!(d.relayed.is_empty(), "deadline not reached");
    let mut d = mesh();
    let t = at(0) + DIRECT_DEADLINE;
    let changes = tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    assert_eq!(
        changes,
        vec![PathChange::Relayed {
            peer: PeerName::Node("n3".into()),
            via: PeerName::Node("n1".into()),
        }],
        "the lowest key among the nodes that see both ends; n4 has none"
    );
    assert_eq!(
        d.peers[&key(3)].allowed_ips,
        vec![
            "10.244.3.0/32".parse::<IpNet>().unwrap(),
            "10.244.3.1/32".parse().unwrap()
        ],
        "n3's own peer keeps its probe and echo addresses only (the longest prefix wins)"
    );
    assert_eq!(d.peers[&key(1)].allowed_ips, vec![cidr(1), cidr(3)]);
    assert_eq!(d.relayed[&key(3)].allowed_ips, vec![cidr(3)]);
    assert_eq!(
        d.peers[&key(4)].allowed_ips,
        vec![cidr(4)],
        "no relay for n4"
    );
    // The next reconcile keeps it, without reporting a change.
    let mut d = mesh();
    let t = t + Duration::from_secs(2);
    assert!(tracker
        .route_via_relays(
            &mut d,
            &key(ME),
            &readings(&relays_live(t), &no_answers()),
            t
        )
        .is_empty());
    assert_eq!(d.relayed[&key(3)].via, key(1));
}

#[test]
fn probed_peers_without_a_session_are_probed_until_they_have_one() {
    let mut tracker = PathTracker::default();
    let t = at(0);
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    let probe = |k: u8| IpAddr::from([10, 244, k, 0]);
    assert_eq!(tracker.probes(), [probe(3), probe(4)], "n1, n2 are live");
    let t = t + DIRECT_DEADLINE;
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    assert_eq!(tracker.probes(), [probe(3), probe(4)], "relayed n3 too");
    let mut live = relays_live(t);
    live.insert(key(3), t);
    live.insert(key(4), t);
    tracker.route_via_relays(&mut mesh(), &key(ME), &readings(&live, &no_answers()), t);
    assert!(tracker.probes().is_empty());
}

#[test]
fn the_probe_address_is_the_network_address_of_a_range_ipv4_first() {
    let nets = |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
    assert_eq!(
        probe_address(&nets(&["fd00:10:244:3::/64", "10.244.3.0/24"])),
        Some("10.244.3.0".parse().unwrap())
    );
    assert_eq!(
        probe_address(&nets(&["fd00:10:244:3::/64"])),
        Some("fd00:10:244:3::".parse().unwrap())
    );
    assert_eq!(
        probe_address(&nets(&["10.99.0.2/32", "fd00::2/128"])),
        None,
        "a single address cannot be split off"
    );
}

#[test]
fn a_node_marked_relay_is_preferred() {
    let mut tracker = PathTracker::default();
    let t = at(0);
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    let mut d = mesh();
    d.relays.insert(key(2));
    let t = t + DIRECT_DEADLINE;
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    assert_eq!(d.relayed[&key(3)].via, key(2));
    assert_eq!(d.relayed[&key(3)].via_name, PeerName::Node("n2".into()));
}

#[test]
fn a_completed_handshake_brings_the_peer_back_with_a_fresh_deadline() {
    let mut tracker = PathTracker::default();
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&relays_live(at(0)), &no_answers()),
        at(0),
    );
    let t = at(0) + DIRECT_DEADLINE;
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    // Hole punched: a handshake with n3.
    let t = t + Duration::from_secs(4);
    let mut live = relays_live(t);
    live.insert(key(3), t);
    let mut d = mesh();
    let changes = tracker.route_via_relays(&mut d, &key(ME), &readings(&live, &no_answers()), t);
    assert_eq!(
        changes,
        vec![PathChange::Direct {
            peer: PeerName::Node("n3".into())
        }]
    );
    assert!(!d.relayed.contains_key(&key(3)));
    assert_eq!(d.peers[&key(3)].allowed_ips, vec![cidr(3)]);
    assert_eq!(d.peers[&key(1)].allowed_ips, vec![cidr(1)]);
    // Re-created without its session (userspace device): not relayed
    // again before a new deadline has passed.
    let t2 = t + Duration::from_secs(3);
    let mut d = mesh();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t2), &no_answers()),
        t2,
    );
    assert!(!d.relayed.contains_key(&key(3)));
    let t3 = t + DIRECT_DEADLINE;
    let mut d = mesh();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t3), &no_answers()),
        t3,
    );
    assert!(
        d.relayed.contains_key(&key(3)),
        "no handshake again: relayed"
    );
}

#[test]
fn losing_every_relay_is_reported_and_traffic_goes_direct() {
    let mut tracker = PathTracker::default();
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&relays_live(at(0)), &no_answers()),
        at(0),
    );
    let t = at(0) + DIRECT_DEADLINE;
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    // n1 and n2 lost their sessions with us.
    let t = t + SESSION_DEADLINE_PLUS;
    let mut d = mesh();
    let changes = tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&BTreeMap::new(), &no_answers()),
        t,
    );
    assert!(changes.contains(&PathChange::RelayLost {
        peer: PeerName::Node("n3".into())
    }));
    assert_eq!(d.peers[&key(3)].allowed_ips, vec![cidr(3)]);
    assert!(d.relayed.is_empty());
}

const SESSION_DEADLINE_PLUS: Duration = Duration::from_secs(200);

#[test]
fn pairs_without_keepalive_and_external_peers_are_never_relayed() {
    let mut tracker = PathTracker::default();
    let build = || {
        let mut d = mesh();
        d.peers.get_mut(&key(3)).unwrap().persistent_keepalive = None;
        let mut ext = node_peer(5, Some(25));
        ext.name = PeerName::External("laptop".into());
        d.peers.insert(key(5), ext);
        d.sightings.record(
            key(1),
            &BTreeMap::from([(key(5), "198.51.100.5:51820".parse().unwrap())]),
        );
        d
    };
    tracker.route_via_relays(
        &mut build(),
        &key(ME),
        &readings(&relays_live(at(0)), &no_answers()),
        at(0),
    );
    let t = at(0) + DIRECT_DEADLINE * 4;
    let mut d = build();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    assert!(d.relayed.is_empty(), "{:?}", d.relayed);
}

#[test]
fn a_new_endpoint_restarts_the_deadline_unless_already_relayed() {
    let mut tracker = PathTracker::default();
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&relays_live(at(0)), &no_answers()),
        at(0),
    );
    let moved = || {
        let mut d = mesh();
        d.peers.get_mut(&key(3)).unwrap().endpoint = Some("203.0.113.3:4000".parse().unwrap());
        d
    };
    let t = at(0) + DIRECT_DEADLINE;
    let mut d = moved();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    assert!(d.relayed.is_empty(), "trying the new endpoint");
    let t = t + DIRECT_DEADLINE;
    let mut d = moved();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    assert!(d.relayed.contains_key(&key(3)));
    // Relayed: another endpoint change does not interrupt the relay.
    let t = t + Duration::from_secs(1);
    let mut d = mesh();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(t), &no_answers()),
        t,
    );
    assert!(d.relayed.contains_key(&key(3)));
}

/// `mesh()` with n3 a node of our site: its LAN address first, then its
/// public mapping.
fn mesh_with_site_mate() -> Desired {
    let mut d = mesh();
    d.candidates.insert(key(3), site_mate_candidates());
    d
}

#[test]
fn a_site_mate_is_tried_on_the_lan_then_at_its_mapping_then_relayed_and_cycles_while_relayed() {
    let mut tracker = PathTracker::default();
    let endpoint_of = |d: &Desired| d.peers[&key(3)].endpoint.unwrap().to_string();
    let mut step = |s: u64, live: BTreeMap<PublicKey, SystemTime>| {
        let mut d = mesh_with_site_mate();
        let changes =
            tracker.route_via_relays(&mut d, &key(ME), &readings(&live, &no_answers()), at(s));
        (d, changes)
    };
    let (d, changes) = step(0, relays_live(at(0)));
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(endpoint_of(&d), "172.31.0.3:51820", "the LAN first");
    assert_eq!(d.candidates[&key(3)].current, 0);
    let (d, _) = step(14, relays_live(at(14)));
    assert_eq!(endpoint_of(&d), "172.31.0.3:51820", "within its deadline");
    let (d, changes) = step(15, relays_live(at(15)));
    assert_eq!(
        changes,
        vec![PathChange::Candidate {
            peer: PeerName::Node("n3".into()),
            kind: CandidateKind::Public,
            endpoint: "198.51.100.200:40003".parse().unwrap(),
        }]
    );
    assert_eq!(endpoint_of(&d), "198.51.100.200:40003");
    assert!(
        d.relayed.is_empty(),
        "the public mapping gets its own deadline"
    );
    let (d, _) = step(29, relays_live(at(29)));
    assert!(d.relayed.is_empty());
    let (d, changes) = step(30, relays_live(at(30)));
    assert!(
        matches!(&changes[..], [PathChange::Relayed { .. }]),
        "{changes:?}"
    );
    assert_eq!(d.relayed[&key(3)].via, key(1));
    assert_eq!(endpoint_of(&d), "198.51.100.200:40003");
    // Relayed, its own peer carries no traffic: the LAN is tried again.
    let (d, changes) = step(45, relays_live(at(45)));
    assert!(
        matches!(
            &changes[..],
            [PathChange::Candidate {
                kind: CandidateKind::Lan,
                ..
            }]
        ),
        "{changes:?}"
    );
    assert_eq!(endpoint_of(&d), "172.31.0.3:51820");
    assert!(d.relayed.contains_key(&key(3)), "still relayed meanwhile");
    // The LAN works again: direct, on the LAN.
    let mut live = relays_live(at(50));
    live.insert(key(3), at(50));
    let (d, changes) = step(50, live.clone());
    assert_eq!(
        changes,
        vec![PathChange::Direct {
            peer: PeerName::Node("n3".into())
        }]
    );
    assert!(d.relayed.is_empty());
    assert_eq!(d.candidates[&key(3)].current().kind, CandidateKind::Lan);
    // A live pair stays where it is, however long.
    let (d, changes) = step(200, {
        live.insert(key(3), at(190));
        live.insert(key(1), at(190));
        live.insert(key(2), at(190));
        live
    });
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(endpoint_of(&d), "172.31.0.3:51820");
}

#[test]
fn a_session_that_roamed_to_another_candidate_makes_it_current() {
    let mut tracker = PathTracker::default();
    let lan: SocketAddr = "172.31.0.3:51820".parse().unwrap();
    let mut d = mesh_with_site_mate();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(at(0)), &no_answers()),
        at(0),
    );
    let mut d = mesh_with_site_mate();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(at(15)), &no_answers()),
        at(15),
    );
    assert_eq!(d.candidates[&key(3)].current().kind, CandidateKind::Public);
    // The other end dialled us from its LAN address: the session lives there.
    let mut live = relays_live(at(20));
    live.insert(key(3), at(20));
    let mut r = readings(&live, &no_answers());
    r.endpoints.insert(key(3), lan);
    let mut d = mesh_with_site_mate();
    let changes = tracker.route_via_relays(&mut d, &key(ME), &r, at(20));
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(d.candidates[&key(3)].current().kind, CandidateKind::Lan);
    assert_eq!(
        d.peers[&key(3)].endpoint,
        Some(lan),
        "configured where it works"
    );
    // Without a working session a roamed endpoint is not followed.
    let mut tracker = PathTracker::default();
    let mut r = readings(&relays_live(at(0)), &no_answers());
    r.endpoints
        .insert(key(3), "198.51.100.200:40003".parse().unwrap());
    let mut d = mesh_with_site_mate();
    tracker.route_via_relays(&mut d, &key(ME), &r, at(0));
    assert_eq!(d.candidates[&key(3)].current().kind, CandidateKind::Lan);
}

mod echoes;
mod upgrades;
