//! Roaming: WireGuard moves a peer's endpoint to wherever its authenticated
//! packets come from. Over a live session that learned endpoint is right
//! (the peer answered from there), and setting the configured one again
//! would fight the device every resync — and on a userspace device that
//! cannot change a peer in place it would drop the session each time. So a
//! roamed endpoint is kept while the session lives, unless the configured
//! endpoint itself changed since it was last applied. A peer changed for
//! another reason meanwhile (its AllowedIPs, as a relay comes or goes) is
//! written with the roamed endpoint ([`carry`]): both kinds of device set
//! the endpoint a change carries, and the configured one may be a path
//! that does not work (a site-mate's public mapping, which the NAT does
//! not hairpin) where the session had found one that does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::key::PublicKey;
use crate::model::Desired;
use crate::plan::{Observed, Plan};
use crate::session::is_live;

/// The endpoint last set on each peer by this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppliedEndpoints(BTreeMap<PublicKey, Option<SocketAddr>>);

impl AppliedEndpoints {
    /// Records the endpoints a plan set (once it was applied).
    pub fn record(&mut self, plan: &Plan) {
        for change in &plan.peers {
            match change.peer() {
                Some(p) => {
                    self.0.insert(p.public_key, p.endpoint);
                }
                None => {
                    self.0.remove(&change.key());
                }
            }
        }
    }

    /// `observed` with every roamed endpoint that should stay counted as
    /// the configured one, so that the plan leaves it alone: the peer's
    /// latest handshake (from `handshakes`) is live ([`crate::session`])
    /// of `now`, its configured endpoint is the one last applied (or
    /// unknown, after a restart), and it is not
    /// [pinned](crate::model::Desired::pinned). Also returns those roamed
    /// endpoints, for [`carry`].
    pub fn keep_roamed(
        &self,
        desired: &Desired,
        mut observed: Observed,
        handshakes: &BTreeMap<PublicKey, SystemTime>,
        now: SystemTime,
    ) -> (Observed, BTreeMap<PublicKey, SocketAddr>) {
        let mut roamed = BTreeMap::new();
        for (key, want) in &desired.peers {
            let Some(have) = observed.peers.get_mut(key) else {
                continue;
            };
            if want.endpoint.is_none()
                || have.endpoint == want.endpoint
                || desired.pinned.contains(key)
            {
                continue;
            }
            let live = is_live(handshakes.get(key).copied(), now);
            let unchanged = self
                .0
                .get(key)
                .is_none_or(|applied| *applied == want.endpoint);
            if live && unchanged {
                if let Some(at) = have.endpoint {
                    roamed.insert(*key, at);
                }
                have.endpoint = want.endpoint;
            }
        }
        (observed, roamed)
    }
}

/// The plan as the device is to get it: a peer added or updated whose
/// endpoint roamed (per [`AppliedEndpoints::keep_roamed`]) keeps the roamed
/// one. Record the plan itself ([`AppliedEndpoints::record`]): what was
/// configured, not what roamed.
pub fn carry(plan: &Plan, roamed: &BTreeMap<PublicKey, SocketAddr>) -> Plan {
    let mut out = plan.clone();
    for change in &mut out.peers {
        if let crate::plan::PeerChange::Add(p) | crate::plan::PeerChange::Update { peer: p, .. } =
            change
        {
            if let Some(at) = roamed.get(&p.public_key) {
                p.endpoint = Some(*at);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::DesiredPeer;
    use crate::plan::ObservedPeer;
    use crate::plan::PeerChange;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn desired_with(endpoint: &str) -> Desired {
        let mut d = Desired::default();
        d.peers.insert(
            PublicKey([1; 32]),
            DesiredPeer {
                name: crate::PeerName::Node("b".into()),
                public_key: PublicKey([1; 32]),
                endpoint: addr(endpoint),
                allowed_ips: vec![],
                persistent_keepalive: None,
                preshared_key: None,
            },
        );
        d
    }

    fn observed_at(endpoint: &str) -> Observed {
        let mut o = Observed::default();
        o.peers.insert(
            PublicKey([1; 32]),
            ObservedPeer {
                endpoint: addr(endpoint),
                allowed_ips: vec![],
                persistent_keepalive: None,
                preshared_key: None,
            },
        );
        o
    }

    fn handshake(ago: u64, now: SystemTime) -> BTreeMap<PublicKey, SystemTime> {
        BTreeMap::from([(PublicKey([1; 32]), now - Duration::from_secs(ago))])
    }

    fn endpoint_after(
        applied: &AppliedEndpoints,
        want: &str,
        have: &str,
        handshake_ago: Option<u64>,
    ) -> Option<SocketAddr> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let handshakes = handshake_ago.map(|a| handshake(a, now)).unwrap_or_default();
        applied
            .keep_roamed(&desired_with(want), observed_at(have), &handshakes, now)
            .0
            .peers[&PublicKey([1; 32])]
            .endpoint
    }

    fn applied(endpoint: &str) -> AppliedEndpoints {
        let mut a = AppliedEndpoints::default();
        a.record(&Plan {
            peers: vec![PeerChange::Add(
                desired_with(endpoint).peers[&PublicKey([1; 32])].clone(),
            )],
            ..Default::default()
        });
        a
    }

    #[test]
    fn a_roamed_endpoint_over_a_live_session_is_kept() {
        let a = applied("192.0.2.1:51820");
        assert_eq!(
            endpoint_after(&a, "192.0.2.1:51820", "192.0.2.9:51820", Some(5)),
            addr("192.0.2.1:51820"),
            "counted as configured: nothing to plan"
        );
    }

    #[test]
    fn a_pinned_peer_gets_its_configured_endpoint_over_a_live_roamed_session() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = applied("192.0.2.1:51820");
        let mut d = desired_with("192.0.2.1:51820");
        d.pinned.insert(PublicKey([1; 32]));
        let (observed, roamed) =
            a.keep_roamed(&d, observed_at("192.0.2.9:51820"), &handshake(5, now), now);
        assert_eq!(
            observed.peers[&PublicKey([1; 32])].endpoint,
            addr("192.0.2.9:51820"),
            "left as observed, so the plan sets the configured one again"
        );
        assert!(roamed.is_empty(), "nothing to carry");
    }

    #[test]
    fn a_stale_or_never_handshaken_session_gets_the_configured_endpoint() {
        let a = applied("192.0.2.1:51820");
        for ago in [Some(181), None] {
            assert_eq!(
                endpoint_after(&a, "192.0.2.1:51820", "192.0.2.9:51820", ago),
                addr("192.0.2.9:51820"),
                "handshake {ago:?} s ago: left as observed, so the plan sets it"
            );
        }
    }

    #[test]
    fn a_changed_configured_endpoint_is_applied_even_over_a_live_session() {
        let a = applied("192.0.2.1:51820");
        assert_eq!(
            endpoint_after(&a, "192.0.2.7:51820", "192.0.2.1:51820", Some(5)),
            addr("192.0.2.1:51820"),
            "left as observed, so the plan sets the new one"
        );
    }

    #[test]
    fn after_a_restart_a_live_roamed_endpoint_is_kept() {
        assert_eq!(
            endpoint_after(
                &AppliedEndpoints::default(),
                "192.0.2.1:51820",
                "192.0.2.9:51820",
                Some(5)
            ),
            addr("192.0.2.1:51820")
        );
    }

    #[test]
    fn a_peer_changed_for_another_reason_keeps_its_roamed_endpoint() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = applied("198.51.100.7:9463");
        let mut desired = desired_with("198.51.100.7:9463");
        let key = PublicKey([1; 32]);
        desired.peers.get_mut(&key).unwrap().allowed_ips = vec!["10.244.3.0/24".parse().unwrap()];
        let (observed, roamed) = a.keep_roamed(
            &desired,
            observed_at("172.31.0.3:51820"),
            &handshake(3, now),
            now,
        );
        let plan = crate::plan(&desired, "", &observed);
        assert_eq!(plan.peers.len(), 1, "{plan:?}");
        assert!(
            matches!(&plan.peers[0], PeerChange::Update { changed, .. } if !changed.iter().any(|f| matches!(f, crate::plan::PeerField::Endpoint { .. }))),
            "{plan:?}"
        );
        let applied_plan = carry(&plan, &roamed);
        assert_eq!(
            applied_plan.peers[0].peer().unwrap().endpoint,
            addr("172.31.0.3:51820"),
            "the device keeps the endpoint the session found"
        );
        let mut after = a.clone();
        after.record(&plan);
        assert_eq!(after, a, "what is recorded is the configured endpoint");
    }

    #[test]
    fn removal_forgets_the_endpoint() {
        let mut a = applied("192.0.2.1:51820");
        a.record(&Plan {
            peers: vec![PeerChange::Remove(PublicKey([1; 32]))],
            ..Default::default()
        });
        assert_eq!(a, AppliedEndpoints::default());
    }
}
