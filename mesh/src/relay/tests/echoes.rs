//! The relay decision when echoes judge the paths: a direct path that goes
//! silent is left at once, a silent relay is left for another, and the way
//! back waits for the direct path to answer.

use super::*;
use crate::health::SILENT_AFTER;

/// `peers` answered their last echo at `t`.
fn answered(peers: &[u8], t: SystemTime) -> BTreeMap<IpAddr, SystemTime> {
    peers
        .iter()
        .map(|k| (format!("10.244.{k}.1").parse().unwrap(), t))
        .collect()
}

/// Live sessions with n1, n2 and n3 (handshakes at `t`).
fn all_live(t: SystemTime) -> BTreeMap<PublicKey, SystemTime> {
    BTreeMap::from([(key(1), t), (key(2), t), (key(3), t)])
}

fn n(k: u8) -> PeerName {
    PeerName::Node(format!("n{k}"))
}

#[test]
fn every_probed_peer_is_sent_echoes_at_its_mesh_address() {
    let mut tracker = PathTracker::default();
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&all_live(at(0)), &no_answers()),
        at(0),
    );
    let want: Vec<IpAddr> = (1..=4)
        .map(|k| format!("10.244.{k}.1").parse().unwrap())
        .collect();
    assert_eq!(tracker.echo_targets(), want);
}

#[test]
fn a_direct_path_that_goes_silent_is_relayed_at_once_and_comes_back_when_it_answers() {
    let mut tracker = PathTracker::default();
    let t0 = at(0);
    let mut d = mesh();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&all_live(t0), &answered(&[1, 2, 3], t0)),
        t0,
    );
    assert!(d.relayed.is_empty() && d.silent.is_empty());
    // n3 stops answering at t0; its session stays live by its handshake.
    let answers = |t| {
        let mut a = answered(&[1, 2], t);
        a.extend(answered(&[3], t0));
        a
    };
    let t = t0 + SILENT_AFTER - Duration::from_secs(1);
    let mut d = mesh();
    tracker.route_via_relays(&mut d, &key(ME), &readings(&all_live(t), &answers(t)), t);
    assert!(d.relayed.is_empty(), "4 s of silence is not yet a break");
    let t = t0 + SILENT_AFTER;
    let mut d = mesh();
    let changes =
        tracker.route_via_relays(&mut d, &key(ME), &readings(&all_live(t), &answers(t)), t);
    assert_eq!(
        changes,
        vec![
            PathChange::Silent {
                peer: n(3),
                endpoint: d.peers[&key(3)].endpoint,
                for_: SILENT_AFTER,
            },
            PathChange::Relayed {
                peer: n(3),
                via: n(1)
            },
        ],
        "relayed at once: no deadline for a path that worked and broke"
    );
    assert_eq!(d.silent[&key(3)], SILENT_AFTER);
    assert_eq!(
        d.peers[&key(3)].allowed_ips,
        vec![
            "10.244.3.0/32".parse::<IpNet>().unwrap(),
            "10.244.3.1/32".parse().unwrap()
        ],
        "the echo address stays on n3's own peer: echoes go on testing the direct path"
    );
    // Still silent: relayed, reported once.
    let t = t + Duration::from_secs(2);
    let mut d = mesh();
    let changes =
        tracker.route_via_relays(&mut d, &key(ME), &readings(&all_live(t), &answers(t)), t);
    assert!(changes.is_empty(), "{changes:?}");
    assert!(d.relayed.contains_key(&key(3)));
    // It answers again: direct.
    let t = t + Duration::from_secs(2);
    let mut d = mesh();
    let changes = tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&all_live(t), &answered(&[1, 2, 3], t)),
        t,
    );
    assert_eq!(changes, vec![PathChange::Direct { peer: n(3) }]);
    assert!(d.relayed.is_empty() && d.silent.is_empty());
    assert_eq!(d.peers[&key(3)].allowed_ips, vec![cidr(3)]);
}

/// n3 has no session, n1 and n2 answer: n3 relayed through n1 once its
/// deadline passed; the tracker, and the time then.
fn relayed_via_n1() -> (PathTracker, SystemTime) {
    let mut tracker = PathTracker::default();
    let live = |t| BTreeMap::from([(key(1), t), (key(2), t)]);
    let t = at(0);
    tracker.route_via_relays(
        &mut mesh(),
        &key(ME),
        &readings(&live(t), &answered(&[1, 2], t)),
        t,
    );
    let t = at(0) + DIRECT_DEADLINE;
    let mut d = mesh();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&live(t), &answered(&[1, 2], t)),
        t,
    );
    assert_eq!(d.relayed[&key(3)].via, key(1));
    (tracker, t)
}

#[test]
fn a_relay_that_goes_silent_is_left_for_the_next() {
    let (mut tracker, t) = relayed_via_n1();
    let live = |t| BTreeMap::from([(key(1), t), (key(2), t)]);
    // n1 stops answering (its node is down); its session looks live for minutes.
    let quiet = t;
    let t = quiet + SILENT_AFTER;
    let mut answers = answered(&[2], t);
    answers.extend(answered(&[1], quiet));
    let mut d = mesh();
    let changes = tracker.route_via_relays(&mut d, &key(ME), &readings(&live(t), &answers), t);
    assert!(
        changes.contains(&PathChange::Relayed {
            peer: n(3),
            via: n(2)
        }),
        "{changes:?}"
    );
    assert_eq!(d.relayed[&key(3)].via, key(2));
    assert_eq!(d.peers[&key(2)].allowed_ips, vec![cidr(2), cidr(3)]);
    assert!(d.silent.contains_key(&key(1)));
}

#[test]
fn a_silent_site_mate_is_relayed_at_once_while_its_next_candidate_is_tried() {
    let mut tracker = PathTracker::default();
    let t0 = at(0);
    let endpoint_of = |d: &Desired| d.peers[&key(3)].endpoint.unwrap().to_string();
    let mut d = mesh_with_site_mate();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&all_live(t0), &answered(&[1, 2, 3], t0)),
        t0,
    );
    assert_eq!(endpoint_of(&d), "172.31.0.3:51820");
    // The LAN stops answering at t0 + 20.
    let quiet = t0 + Duration::from_secs(20);
    let mut d = mesh_with_site_mate();
    let all = answered(&[1, 2, 3], quiet);
    tracker.route_via_relays(&mut d, &key(ME), &readings(&all_live(quiet), &all), quiet);
    let t = quiet + SILENT_AFTER;
    let mut answers = answered(&[1, 2], t);
    answers.extend(answered(&[3], quiet));
    let mut d = mesh_with_site_mate();
    let changes = tracker.route_via_relays(&mut d, &key(ME), &readings(&all_live(t), &answers), t);
    assert!(
        changes.contains(&PathChange::Relayed {
            peer: n(3),
            via: n(1)
        }),
        "{changes:?}"
    );
    assert_eq!(
        endpoint_of(&d),
        "198.51.100.200:40003",
        "the public mapping is tried meanwhile"
    );
    // Not yet answering at the mapping: stays relayed (no flapping back).
    let t = t + Duration::from_secs(2);
    let mut d = mesh_with_site_mate();
    tracker.route_via_relays(&mut d, &key(ME), &readings(&all_live(t), &answers), t);
    assert!(
        d.relayed.contains_key(&key(3)),
        "waiting for an answer at the mapping"
    );
    // The mapping answers: direct there.
    let t = t + Duration::from_secs(1);
    let mut d = mesh_with_site_mate();
    let changes = tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&all_live(t), &answered(&[1, 2, 3], t)),
        t,
    );
    assert_eq!(changes, vec![PathChange::Direct { peer: n(3) }]);
    assert_eq!(endpoint_of(&d), "198.51.100.200:40003");
}

#[test]
fn a_silent_peer_is_not_published_as_seen() {
    let mut tracker = PathTracker::default();
    let t0 = at(0);
    let all = answered(&[1, 2, 3], t0);
    tracker.route_via_relays(&mut mesh(), &key(ME), &readings(&all_live(t0), &all), t0);
    let t = t0 + SILENT_AFTER;
    let mut answers = answered(&[2, 3], t);
    answers.extend(answered(&[1], t0));
    let mut d = mesh();
    tracker.route_via_relays(&mut d, &key(ME), &readings(&all_live(t), &answers), t);
    let sessions = (1..=3)
        .map(|k| {
            let s = crate::nat::Session {
                endpoint: Some(format!("198.51.100.{k}:51820").parse().unwrap()),
                last_handshake: Some(t),
            };
            (key(k), s)
        })
        .collect();
    let seen = crate::nat::discovered_endpoints(&d, &sessions, t);
    assert!(!seen.contains_key(&key(1)), "n1's path is silent: {seen:?}");
    assert!(seen.contains_key(&key(2)));
}

#[test]
fn a_relay_whose_peer_was_just_re_created_stays_while_it_answers() {
    let (mut tracker, t) = relayed_via_n1();
    // Given n3's ranges, n1's peer was re-created by the device: no
    // handshake for a moment, but its echoes were answered a second ago.
    let t = t + Duration::from_secs(2);
    let handshakes = BTreeMap::from([(key(2), t)]);
    let mut d = mesh();
    let changes = tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&handshakes, &answered(&[1, 2], t - Duration::from_secs(1))),
        t,
    );
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(d.relayed[&key(3)].via, key(1));
}
