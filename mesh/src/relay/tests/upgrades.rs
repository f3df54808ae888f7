//! A working site-mate on its public mapping moves up to its LAN address
//! once that answers; a session that roamed to a worse candidate does not
//! pull a working pair down.

use super::*;
use crate::upgrade::UPGRADE_TRIAL;

fn lan() -> SocketAddr {
    "172.31.0.3:51820".parse().unwrap()
}

fn public() -> SocketAddr {
    "198.51.100.200:40003".parse().unwrap()
}

/// Live sessions with n1..n3 at `t`; n3's device endpoint is `endpoint`;
/// n3's echoes answered at `echo` and its LAN address at `scout`.
fn site_readings(
    t: SystemTime,
    endpoint: SocketAddr,
    echo: Option<SystemTime>,
    scout: Option<SystemTime>,
) -> PathReadings {
    let mut live = relays_live(t);
    live.insert(key(3), t);
    let mut answers = BTreeMap::new();
    if let Some(e) = echo {
        answers.insert("10.244.3.1".parse().unwrap(), e);
    }
    if let Some(s) = scout {
        answers.insert(lan().ip(), s);
    }
    let mut r = readings(&live, &answers);
    r.endpoints.insert(key(3), endpoint);
    r
}

/// One path check at `s` with live relays and no session with n3, no echo
/// answered.
fn without_a_session(tracker: &mut PathTracker, s: u64) -> Desired {
    let mut d = mesh_with_site_mate();
    tracker.route_via_relays(
        &mut d,
        &key(ME),
        &readings(&relays_live(at(s)), &no_answers()),
        at(s),
    );
    d
}

/// A tracker with n3 on its public mapping, answering there: the LAN was
/// tried for its deadline first.
fn on_the_mapping() -> (PathTracker, u64) {
    let mut tracker = PathTracker::default();
    without_a_session(&mut tracker, 0);
    let d = without_a_session(&mut tracker, 15);
    assert_eq!(d.peers[&key(3)].endpoint, Some(public()));
    for s in [17, 19] {
        let mut d = mesh_with_site_mate();
        let r = site_readings(at(s), public(), Some(at(s)), None);
        let changes = tracker.route_via_relays(&mut d, &key(ME), &r, at(s));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(
            d.peers[&key(3)].endpoint,
            Some(public()),
            "works on the mapping"
        );
    }
    (tracker, 19)
}

#[test]
fn a_pair_on_its_mapping_scouts_the_lan_outside_the_tunnel_and_moves_up_when_it_answers() {
    let (mut tracker, t) = on_the_mapping();
    assert!(
        tracker.echo_targets().contains(&lan().ip()),
        "the LAN address is scouted: {:?}",
        tracker.echo_targets()
    );
    // The scout answers: the pair is tried on the LAN, pinned there.
    let t = t + 2;
    let mut d = mesh_with_site_mate();
    let r = site_readings(at(t), public(), Some(at(t)), Some(at(t)));
    let changes = tracker.route_via_relays(&mut d, &key(ME), &r, at(t));
    assert_eq!(
        changes,
        vec![PathChange::Upgrade {
            peer: PeerName::Node("n3".into()),
            kind: CandidateKind::Lan,
            endpoint: lan(),
            step: UpgradeStep::Trying,
        }]
    );
    assert_eq!(d.peers[&key(3)].endpoint, Some(lan()));
    assert!(d.pinned.contains(&key(3)), "set again over a roam back");
    assert!(d.relayed.is_empty());
    // The device roamed back to the mapping (the other end's packets in
    // flight): still the LAN, still pinned, not relayed.
    let t = t + 2;
    let mut d = mesh_with_site_mate();
    let r = site_readings(at(t), public(), Some(at(t - 2)), None);
    let changes = tracker.route_via_relays(&mut d, &key(ME), &r, at(t));
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(d.peers[&key(3)].endpoint, Some(lan()));
    assert!(d.pinned.contains(&key(3)));
    // Echoes answer at the LAN: it worked; no longer scouting.
    let t = t + 2;
    let mut d = mesh_with_site_mate();
    let r = site_readings(at(t), lan(), Some(at(t)), None);
    let changes = tracker.route_via_relays(&mut d, &key(ME), &r, at(t));
    assert!(
        matches!(
            &changes[..],
            [PathChange::Upgrade {
                step: UpgradeStep::Worked,
                ..
            }]
        ),
        "{changes:?}"
    );
    assert_eq!(d.path_kind(&key(3), Some(lan())), "lan");
    assert!(!tracker.echo_targets().contains(&lan().ip()));
    // The device roams to the mapping while the LAN answers: pinned to the
    // LAN, not pulled down.
    let t = t + 2;
    let mut d = mesh_with_site_mate();
    let r = site_readings(at(t), public(), Some(at(t)), None);
    assert!(tracker
        .route_via_relays(&mut d, &key(ME), &r, at(t))
        .is_empty());
    assert_eq!(d.peers[&key(3)].endpoint, Some(lan()));
    assert!(d.pinned.contains(&key(3)));
}

#[test]
fn a_trial_without_echoes_through_the_tunnel_goes_back_to_the_mapping_never_via_a_relay() {
    // The other end idle: the device stays where the trial set it, nothing
    // answers there.
    failed_trial(|_t| (lan(), None));
    // The other end's packets keep coming over the mapping: the device
    // roams back there between path checks, and the echoes answer there.
    failed_trial(|t| (public(), Some(at(t))));
}

/// A trial at the LAN whose WireGuard packets go nowhere (its pings of the
/// LAN address answer); `device(t)`: the device's endpoint at `t` and when
/// the echoes last answered.
fn failed_trial(device: impl Fn(u64) -> (SocketAddr, Option<SystemTime>)) {
    let (mut tracker, t) = on_the_mapping();
    let start = t + 2;
    let mut d = mesh_with_site_mate();
    let r = site_readings(at(start), public(), Some(at(start)), Some(at(start)));
    tracker.route_via_relays(&mut d, &key(ME), &r, at(start));
    assert_eq!(d.peers[&key(3)].endpoint, Some(lan()));
    let mut t = start;
    loop {
        t += 2;
        let mut d = mesh_with_site_mate();
        let (endpoint, echo) = device(t);
        let r = site_readings(at(t), endpoint, echo.or(Some(at(start))), Some(at(t)));
        let changes = tracker.route_via_relays(&mut d, &key(ME), &r, at(t));
        assert!(
            d.relayed.is_empty(),
            "never relayed by a trial: {changes:?}"
        );
        if at(t).duration_since(at(start)).unwrap() < UPGRADE_TRIAL {
            assert!(changes.is_empty(), "{changes:?}");
            assert_eq!(d.peers[&key(3)].endpoint, Some(lan()));
            continue;
        }
        assert!(
            matches!(
                &changes[..],
                [PathChange::Upgrade {
                    step: UpgradeStep::Failed { .. },
                    ..
                }]
            ),
            "{changes:?}"
        );
        assert_eq!(
            d.peers[&key(3)].endpoint,
            Some(public()),
            "back where it works"
        );
        assert!(!d.pinned.contains(&key(3)));
        break;
    }
    // Backing off: the LAN is not scouted, the mapping keeps working.
    let t = t + 2;
    let mut d = mesh_with_site_mate();
    let r = site_readings(at(t), public(), Some(at(t)), Some(at(t)));
    assert!(tracker
        .route_via_relays(&mut d, &key(ME), &r, at(t))
        .is_empty());
    assert!(!tracker.echo_targets().contains(&lan().ip()));
    assert_eq!(d.peers[&key(3)].endpoint, Some(public()));
}

#[test]
fn a_session_that_roamed_to_a_worse_candidate_is_followed_unless_the_chosen_one_was_proven() {
    // Chosen: the LAN (never answered while the device sent there); the
    // session lives at the mapping and answers there.
    let mut tracker = PathTracker::default();
    without_a_session(&mut tracker, 0);
    for s in [2, 4] {
        let mut d = mesh_with_site_mate();
        let r = site_readings(at(s), public(), Some(at(s)), None);
        tracker.route_via_relays(&mut d, &key(ME), &r, at(s));
        assert_eq!(
            d.peers[&key(3)].endpoint,
            Some(public()),
            "at {s}: where it works"
        );
        assert!(
            !d.pinned.contains(&key(3)),
            "not set back to an unproven LAN"
        );
    }
}
