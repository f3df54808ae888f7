//! Scouts, trials and back-offs of one pair on its public mapping while its
//! LAN address may work.

use super::*;
use crate::testing::{key, site_mate_candidates};

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
}

fn site_mate() -> Candidates {
    site_mate_candidates()
}

fn lan_ip() -> IpAddr {
    "172.31.0.3".parse().unwrap()
}

/// The pair at `step`, with the echoes' `verdict` there, working directly.
fn pair(candidates: &Candidates, step: usize, verdict: Verdict) -> PairNow<'_> {
    PairNow {
        key: key(3),
        candidates,
        step,
        verdict: Some(verdict),
        direct_works: true,
    }
}

/// The LAN address answered its scout at `t`.
fn scout_answered(t: SystemTime) -> BTreeMap<IpAddr, SystemTime> {
    BTreeMap::from([(lan_ip(), t)])
}

#[test]
fn a_working_pair_on_its_mapping_scouts_the_lan_and_is_tried_there_once_it_answers() {
    let c = site_mate();
    let mut u = Upgrades::default();
    u.begin(|_| true);
    let (next, step) = u.step(pair(&c, 1, Verdict::Answering), &BTreeMap::new(), at(0));
    assert_eq!((next, step), (1, None), "no answer yet: stays");
    assert_eq!(u.scouts(), [lan_ip()], "the LAN address is scouted");
    // An answer older than SCOUT_FRESH does not count.
    u.begin(|_| true);
    let stale = scout_answered(at(2) - SCOUT_FRESH);
    assert_eq!(u.step(pair(&c, 1, Verdict::Answering), &stale, at(2)).0, 1);
    u.begin(|_| true);
    let (next, step) = u.step(
        pair(&c, 1, Verdict::Answering),
        &scout_answered(at(3)),
        at(4),
    );
    assert_eq!((next, step), (0, Some((0, UpgradeStep::Trying))));
    assert!(u.on_trial(&key(3)));
    // On trial: waiting for echoes at the LAN, no more scouting.
    u.begin(|_| true);
    let (next, step) = u.step(pair(&c, 0, Verdict::Waiting), &scout_answered(at(5)), at(6));
    assert_eq!((next, step), (0, None));
    assert!(u.scouts().is_empty());
    // Echoes through the tunnel answer at the LAN: it worked.
    u.begin(|_| true);
    let (next, step) = u.step(
        pair(&c, 0, Verdict::Answering),
        &scout_answered(at(7)),
        at(8),
    );
    assert_eq!((next, step), (0, Some((0, UpgradeStep::Worked))));
    assert!(!u.on_trial(&key(3)));
    // On its best candidate: nothing to scout.
    u.begin(|_| true);
    assert_eq!(
        u.step(pair(&c, 0, Verdict::Answering), &BTreeMap::new(), at(10)),
        (0, None)
    );
    assert!(u.scouts().is_empty());
}

#[test]
fn a_failed_trial_goes_back_to_the_working_candidate_and_backs_off_doubling() {
    let c = site_mate();
    let mut u = Upgrades::default();
    let mut t = 0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        // Scout until the back-off is over and the LAN answers.
        loop {
            u.begin(|_| true);
            let (next, step) = u.step(
                pair(&c, 1, Verdict::Answering),
                &scout_answered(at(t)),
                at(t),
            );
            t += 2;
            if step == Some((0, UpgradeStep::Trying)) {
                assert_eq!(next, 0);
                break;
            }
            assert_eq!(next, 1);
        }
        let started = t - 2;
        // No echo answers through the tunnel at the LAN.
        loop {
            u.begin(|_| true);
            let (next, step) = u.step(pair(&c, 0, Verdict::Waiting), &BTreeMap::new(), at(t));
            let elapsed = Duration::from_secs(t - started);
            t += 2;
            match step {
                None => {
                    assert!(elapsed < UPGRADE_TRIAL, "{elapsed:?}");
                    assert_eq!(next, 0);
                }
                Some((0, UpgradeStep::Failed { retry_in })) => {
                    assert!(
                        elapsed >= UPGRADE_TRIAL
                            && elapsed < UPGRADE_TRIAL + Duration::from_secs(2)
                    );
                    assert_eq!(next, 1, "back where it worked");
                    waits.push(retry_in.as_secs());
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        // Backing off: not scouted.
        u.begin(|_| true);
        u.step(
            pair(&c, 1, Verdict::Answering),
            &scout_answered(at(t)),
            at(t),
        );
        assert!(u.scouts().is_empty(), "backing off");
    }
    assert_eq!(waits, [30, 60, 120, 240, 480, 900, 900, 900]);
}

#[test]
fn no_move_up_without_answering_echoes_while_relayed_or_when_the_ladder_moved_the_pair() {
    let c = site_mate();
    let answered = scout_answered(at(0));
    for verdict in [Verdict::Unjudged, Verdict::Waiting] {
        let mut u = Upgrades::default();
        u.begin(|_| true);
        assert_eq!(u.step(pair(&c, 1, verdict), &answered, at(0)), (1, None));
        assert!(u.scouts().is_empty(), "{verdict:?}");
    }
    let mut u = Upgrades::default();
    u.begin(|_| true);
    let relayed = PairNow {
        direct_works: false,
        ..pair(&c, 1, Verdict::Answering)
    };
    assert_eq!(u.step(relayed, &answered, at(0)), (1, None));
    // A trial whose pair the ladder moved elsewhere is over.
    let mut u = Upgrades::default();
    u.begin(|_| true);
    u.step(pair(&c, 1, Verdict::Answering), &answered, at(0));
    assert!(u.on_trial(&key(3)));
    u.begin(|_| true);
    assert_eq!(
        u.step(pair(&c, 1, Verdict::Waiting), &BTreeMap::new(), at(2)),
        (1, None)
    );
    assert!(!u.on_trial(&key(3)));
    // A pair that left the candidates is forgotten.
    u.step(
        pair(&c, 1, Verdict::Answering),
        &scout_answered(at(4)),
        at(4),
    );
    assert!(u.on_trial(&key(3)));
    u.begin(|_| false);
    assert!(!u.on_trial(&key(3)));
}
