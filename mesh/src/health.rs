//! Path health from echoes. The agent sends an ICMP echo request every
//! [`ECHO_EVERY`] to the mesh address ([`echo_address`]) of every probed
//! node peer. That address stays on the peer's own WireGuard peer even
//! while the rest of its ranges are relayed (see [`crate::relay`]), and
//! the other end keeps ours on its own peer for us, so an answer says the
//! *direct* path works both ways at the endpoint now tried — whatever the
//! session's handshake age says. A handshake lives 180 s; a path that
//! answered and then has answered nothing for [`SILENT_AFTER`] is silent,
//! and [`crate::relay::PathTracker`] moves its traffic off it.
//!
//! A peer that never answered since this agent started is not judged (an
//! older agent, echoes filtered on its way): its path is judged by its
//! handshakes alone, as before there were echoes. A verdict is per endpoint:
//! when the endpoint tried changes (the next candidate, a roam configured
//! back), answers from before do not count for the new one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::key::PublicKey;
use crate::model::mesh_address;

/// How often each probed peer is sent an echo request.
pub const ECHO_EVERY: Duration = Duration::from_secs(1);

/// How long an echo may take to be answered before it counts as lost.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(1);

/// A path that answered before and has answered nothing for this long is
/// silent: five echoes in a row lost. With the agent's path check every
/// 2 s, a break is acted on 5–7 s after the last answer.
pub const SILENT_AFTER: Duration = Duration::from_secs(5);

/// The address whose datagrams start a handshake with a peer whose ranges
/// are `allowed_ips`: the network address of its first IPv4 range (else of
/// its first range), which no pod and no node has (the node's mesh address
/// is the one after it: [`echo_address`]). `None` when every range is a single address.
pub fn probe_address(allowed_ips: &[IpNet]) -> Option<IpAddr> {
    let ranges = || {
        allowed_ips
            .iter()
            .filter(|net| net.prefix_len() < net.max_prefix_len())
    };
    ranges()
        .find(|net| net.addr().is_ipv4())
        .or_else(|| ranges().next())
        .map(IpNet::network)
}

/// The address to send a peer with ranges `allowed_ips` echo requests to:
/// its mesh address in its first IPv4 range (else its first range) — the
/// address after the [`probe_address`], which the node has on
/// its mesh interface. `None` when every range is a single address.
pub fn echo_address(allowed_ips: &[IpNet]) -> Option<IpAddr> {
    probe_address(allowed_ips).map(|probe| mesh_address(&IpNet::from(probe)).addr())
}

/// What the echoes say about a direct path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An echo at this endpoint was answered within [`SILENT_AFTER`].
    Answering,
    /// The peer never answered an echo: not judged.
    Unjudged,
    /// The peer answered before, but not yet at this endpoint (it was
    /// tried for less than [`SILENT_AFTER`]).
    Waiting,
    /// Nothing answered at this endpoint for `for_` (at least
    /// [`SILENT_AFTER`]) after the peer had answered before.
    Silent { for_: Duration },
}

/// The agent's memory of each probed peer's echoes, across reconciles.
#[derive(Debug, Clone, Default)]
pub struct PathHealth {
    watches: BTreeMap<PublicKey, Watch>,
}

#[derive(Debug, Clone)]
struct Watch {
    /// The endpoint tried, and since when.
    endpoint: Option<SocketAddr>,
    since: SystemTime,
    answered_ever: bool,
    /// The peer's received bytes as last seen, and when they last grew.
    rx_bytes: u64,
    rx_grew: SystemTime,
}

/// What one reconcile knows of a peer's direct path besides the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathSigns {
    /// When an echo to the peer was last answered.
    pub last_answer: Option<SystemTime>,
    /// The bytes the device received from the peer (unknown: none).
    pub rx_bytes: Option<u64>,
    /// Whether the peer publishes that it sees this node (a live session).
    pub sees_us: bool,
}

impl PathHealth {
    /// The verdict on the direct path to `key`, set to `endpoint` now.
    ///
    /// Unanswered echoes alone do not make a path silent while the peer's
    /// packets keep arriving and it says it sees this node: a firewall that
    /// drops ICMP on the way must not look like a broken path, or every
    /// peer would stop publishing the node as seen and it would no longer
    /// be dialled where it is reachable. A path broken one way (the peer's
    /// packets arrive, ours do not) is silent at the peer's end, which then
    /// stops publishing this node as seen — and so silent here too.
    pub fn judge(
        &mut self,
        key: PublicKey,
        endpoint: Option<SocketAddr>,
        signs: PathSigns,
        now: SystemTime,
    ) -> Verdict {
        let rx_bytes = signs.rx_bytes.unwrap_or(0);
        let watch = self.watches.entry(key).or_insert(Watch {
            endpoint,
            since: now,
            answered_ever: false,
            rx_bytes,
            rx_grew: now,
        });
        if watch.endpoint != endpoint {
            watch.endpoint = endpoint;
            watch.since = now;
        }
        if rx_bytes > watch.rx_bytes {
            watch.rx_grew = now;
        }
        // A re-created peer starts counting again from zero.
        watch.rx_bytes = rx_bytes;
        let last_answer = signs.last_answer;
        watch.answered_ever |= last_answer.is_some();
        let here = last_answer.filter(|t| *t >= watch.since);
        let quiet = |from: SystemTime| now.duration_since(from).unwrap_or_default();
        match here {
            Some(t) if quiet(t) < SILENT_AFTER => Verdict::Answering,
            _ if !watch.answered_ever => Verdict::Unjudged,
            here => {
                let for_ = quiet(here.unwrap_or(watch.since));
                let traffic = quiet(watch.rx_grew.max(watch.since)) < SILENT_AFTER;
                if for_ < SILENT_AFTER {
                    Verdict::Waiting
                } else if traffic && signs.sees_us {
                    // Echoes filtered on the way, the path carries traffic.
                    Verdict::Unjudged
                } else {
                    Verdict::Silent { for_ }
                }
            }
        }
    }

    /// Forgets the peers not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&PublicKey) -> bool) {
        self.watches.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::key;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    /// Echoes last answered at `t`; no other sign.
    fn answer(t: Option<SystemTime>) -> PathSigns {
        PathSigns {
            last_answer: t,
            ..PathSigns::default()
        }
    }

    fn lan() -> Option<SocketAddr> {
        Some("172.31.0.3:51820".parse().unwrap())
    }

    #[test]
    fn the_echo_address_is_the_mesh_address_of_the_first_ipv4_range() {
        let ranges: Vec<IpNet> = vec![
            "fd00:1::/64".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
        ];
        assert_eq!(echo_address(&ranges), Some("10.244.3.1".parse().unwrap()));
        let v6: Vec<IpNet> = vec!["fd00:1::/64".parse().unwrap()];
        assert_eq!(echo_address(&v6), Some("fd00:1::1".parse().unwrap()));
        let hosts: Vec<IpNet> = vec!["192.0.2.1/32".parse().unwrap()];
        assert_eq!(echo_address(&hosts), None);
    }

    #[test]
    fn a_peer_that_never_answered_is_not_judged() {
        let mut health = PathHealth::default();
        for s in [0, 10, 100] {
            assert_eq!(
                health.judge(key(1), lan(), answer(None), at(s)),
                Verdict::Unjudged
            );
        }
    }

    #[test]
    fn a_path_that_stops_answering_is_silent_after_five_seconds() {
        let mut health = PathHealth::default();
        assert_eq!(
            health.judge(key(1), lan(), answer(Some(at(0))), at(0)),
            Verdict::Answering
        );
        assert_eq!(
            health.judge(key(1), lan(), answer(Some(at(10))), at(11)),
            Verdict::Answering
        );
        assert_eq!(
            health.judge(key(1), lan(), answer(Some(at(10))), at(14)),
            Verdict::Answering
        );
        assert_eq!(
            health.judge(key(1), lan(), answer(Some(at(10))), at(15)),
            Verdict::Silent { for_: SILENT_AFTER }
        );
        assert_eq!(
            health.judge(key(1), lan(), answer(Some(at(10))), at(40)),
            Verdict::Silent {
                for_: Duration::from_secs(30)
            }
        );
        assert_eq!(
            health.judge(key(1), lan(), answer(Some(at(41))), at(41)),
            Verdict::Answering,
            "answering again"
        );
    }

    #[test]
    fn answers_at_another_endpoint_do_not_count_for_a_new_one() {
        let mut health = PathHealth::default();
        let public = Some("198.51.100.7:3510".parse().unwrap());
        health.judge(key(1), lan(), answer(Some(at(0))), at(0));
        assert_eq!(
            health.judge(key(1), public, answer(Some(at(9))), at(10)),
            Verdict::Waiting,
            "an answer from before the switch"
        );
        assert_eq!(
            health.judge(key(1), public, answer(Some(at(9))), at(15)),
            Verdict::Silent { for_: SILENT_AFTER }
        );
        assert_eq!(
            health.judge(key(1), public, answer(Some(at(16))), at(16)),
            Verdict::Answering
        );
    }

    #[test]
    fn unanswered_echoes_with_traffic_from_a_peer_that_sees_us_are_not_a_break() {
        let mut health = PathHealth::default();
        let signs = |t, rx, sees_us| PathSigns {
            last_answer: Some(at(t)),
            rx_bytes: Some(rx),
            sees_us,
        };
        health.judge(key(1), lan(), signs(0, 100, true), at(0));
        // Echoes filtered from t = 0 on; the peer's packets keep coming.
        for s in [3, 6, 9] {
            assert_eq!(
                health.judge(key(1), lan(), signs(0, 100 + s, true), at(s)),
                if s < 5 {
                    Verdict::Answering
                } else {
                    Verdict::Unjudged
                },
                "at {s} s"
            );
        }
        // The peer stops saying it sees us: broken one way.
        assert_eq!(
            health.judge(key(1), lan(), signs(0, 120, false), at(10)),
            Verdict::Silent {
                for_: Duration::from_secs(10)
            }
        );
        // Or its packets stop too.
        assert_eq!(
            health.judge(key(1), lan(), signs(0, 120, true), at(15)),
            Verdict::Silent {
                for_: Duration::from_secs(15)
            }
        );
    }

    #[test]
    fn forgotten_peers_start_over() {
        let mut health = PathHealth::default();
        health.judge(key(1), lan(), answer(Some(at(0))), at(0));
        health.retain(|_| false);
        assert_eq!(
            health.judge(key(1), lan(), answer(None), at(30)),
            Verdict::Unjudged
        );
    }
}
