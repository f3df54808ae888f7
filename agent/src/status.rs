//! The node's report for `/status`: built from the desired state and what
//! the device shows (pure), and held for the HTTP endpoint. The agent
//! remembers each peer's tx counter between looks at the device (after
//! every reconcile and at every request), so a report tells a pair whose
//! traffic goes unanswered from an idle one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use trellis_api::status::{
    CandidateReport, EarlierLook, LeftOut, LinkedClusterReport, NodeReport, PathEvidence,
    PathState, PeerReport, HANDSHAKE_RETRY_SECONDS,
};
use trellis_mesh::{Desired, PublicKey};

use crate::kube_io::reason_name;
use crate::wg::DeviceState;

fn epoch_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A look is compared with one at least this old: two handshake retries,
/// so that between the two a pair whose handshakes fail has tried again.
pub const LOOK_WINDOW_SECONDS: i64 = 2 * HANDSHAKE_RETRY_SECONDS;

/// Whether anything was sent between two readings of a tx counter. A
/// counter lower than before started again (the peer was re-created):
/// whatever it shows was sent since.
pub fn sent_between(before: u64, after: u64) -> bool {
    after != before && after > 0
}

/// A peer's tx counter at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    at: i64,
    tx_bytes: u64,
}

/// A peer's looks: the one later looks are compared with, and the newest,
/// which takes its place once it is [`LOOK_WINDOW_SECONDS`] old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Looks {
    base: Option<Look>,
    newest: Look,
}

/// The agent's memory of its peers' tx counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxMemory {
    peers: BTreeMap<PublicKey, Looks>,
}

impl TxMemory {
    /// What the latest look at least [`LOOK_WINDOW_SECONDS`] before `now`
    /// says about peer `key`, whose counter shows `tx_bytes` now.
    pub fn earlier(&self, key: &PublicKey, tx_bytes: u64, now: i64) -> Option<EarlierLook> {
        let looks = self.peers.get(key)?;
        let base = [Some(looks.newest), looks.base]
            .into_iter()
            .flatten()
            .find(|look| now - look.at >= LOOK_WINDOW_SECONDS)?;
        Some(EarlierLook {
            at: base.at,
            sent_since: sent_between(base.tx_bytes, tx_bytes),
        })
    }

    /// Records a look at the device at `now`; the peers it no longer has
    /// are forgotten.
    pub fn record(&mut self, device: &DeviceState, now: i64) {
        self.peers.retain(|key, _| device.peers.contains_key(key));
        for (key, peer) in &device.peers {
            let look = Look {
                at: now,
                tx_bytes: peer.tx_bytes,
            };
            match self.peers.get_mut(key) {
                None => {
                    self.peers.insert(
                        *key,
                        Looks {
                            base: None,
                            newest: look,
                        },
                    );
                }
                Some(looks) if now - looks.newest.at >= LOOK_WINDOW_SECONDS => {
                    looks.base = Some(looks.newest);
                    looks.newest = look;
                }
                Some(_) => {}
            }
        }
    }
}

/// The report of node `node` (key `public_key`) at `now`, the device's
/// counters compared with the earlier looks in `memory`.
pub fn node_report(
    node: &str,
    public_key: &PublicKey,
    desired: &Desired,
    device: &DeviceState,
    memory: &TxMemory,
    now: SystemTime,
) -> NodeReport {
    let now_s = epoch_seconds(now);
    let mut peers: Vec<PeerReport> = desired
        .peers
        .iter()
        .map(|(key, want)| {
            let seen = device.peers.get(key);
            let last_handshake = seen.and_then(|s| s.last_handshake).map(epoch_seconds);
            let tx_bytes = seen.map(|s| s.tx_bytes).unwrap_or(0);
            let current = seen.and_then(|s| s.endpoint);
            let relayed = desired.relayed.get(key);
            let candidates = desired.candidates.get(key);
            let on_lan = desired.on_lan(key, current);
            let allowed_ips = relayed.map_or(&want.allowed_ips, |r| &r.allowed_ips);
            let evidence = PathEvidence {
                last_handshake,
                tx_bytes,
                keepalive: seen.and_then(|s| s.persistent_keepalive),
                earlier: memory.earlier(key, tx_bytes, now_s),
            };
            PeerReport {
                name: want.name.to_string(),
                public_key: key.to_string(),
                endpoint: want.endpoint.map(|e| e.to_string()),
                discovered_endpoint: current
                    .filter(|c| Some(*c) != want.endpoint)
                    .map(|c| c.to_string()),
                allowed_ips: allowed_ips.iter().map(ToString::to_string).collect(),
                last_handshake,
                rx_bytes: seen.map(|s| s.rx_bytes).unwrap_or(0),
                tx_bytes,
                path: match (relayed, PathState::of(&evidence, now_s)) {
                    (Some(_), _) => PathState::Relayed,
                    (None, PathState::Direct) if on_lan => PathState::Lan,
                    (None, state) => state,
                },
                relay: relayed.map(|r| r.via_name.to_string()),
                candidates: candidates
                    .map(|c| {
                        c.list
                            .iter()
                            .enumerate()
                            .map(|(i, one)| CandidateReport {
                                kind: one.kind.as_str().into(),
                                endpoint: one.endpoint.to_string(),
                                current: i == c.current,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                silent_for_s: desired.silent.get(key).map(|d| d.as_secs()),
            }
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    NodeReport {
        node: node.into(),
        public_key: public_key.to_string(),
        listen_port: desired.listen_port,
        observed_at: now_s,
        peers,
        left_out: desired
            .rejected
            .iter()
            .map(|r| LeftOut {
                name: r.object.to_string(),
                reason: reason_name(r.reason).into(),
                message: r.message.clone(),
            })
            .chain(desired.rejected_clusters.iter().map(|r| LeftOut {
                name: format!("cluster/{}", r.cluster),
                reason: "LinkedClusterRefused".into(),
                message: r.message.clone(),
            }))
            .collect(),
        linked_clusters: Vec::new(),
        behind_nat: desired.behind_nat,
        public_endpoint: desired.public_endpoint.map(|e| e.to_string()),
    }
}

/// Reads the device now (a handle of its own, apart from the reconciler's).
pub type DeviceReader = Arc<dyn Fn() -> Result<DeviceState, crate::wg::WgError> + Send + Sync>;

type Wanted = (String, PublicKey, Desired, Vec<LinkedClusterReport>);

/// What the last reconcile wanted, a way to read the device (each
/// `/status` request reports live handshakes and counters) and the earlier
/// looks at it.
#[derive(Clone)]
pub struct StatusBoard {
    wanted: Arc<Mutex<Option<Wanted>>>,
    reader: DeviceReader,
    memory: Arc<Mutex<TxMemory>>,
}

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard").finish_non_exhaustive()
    }
}

impl StatusBoard {
    pub fn new(reader: DeviceReader) -> Self {
        StatusBoard {
            wanted: Arc::default(),
            reader,
            memory: Arc::default(),
        }
    }

    /// Records what a reconcile wanted, and takes a look at the device:
    /// with a look after every reconcile, a request always finds one to
    /// compare with.
    pub fn set(
        &self,
        node: &str,
        public_key: PublicKey,
        desired: Desired,
        links: Vec<LinkedClusterReport>,
    ) {
        *self.wanted.lock().expect("status lock") =
            Some((node.to_string(), public_key, desired, links));
        if let Ok(device) = (self.reader)() {
            let now = epoch_seconds(SystemTime::now());
            self.memory
                .lock()
                .expect("memory lock")
                .record(&device, now);
        }
    }

    /// The report now; None before the first successful reconcile. A
    /// device that cannot be read shows every peer without a session.
    pub fn report(&self) -> Option<NodeReport> {
        let (node, key, desired, links) = self.wanted.lock().expect("status lock").clone()?;
        let (device, readable) = match (self.reader)() {
            Ok(device) => (device, true),
            Err(_) => (DeviceState::default(), false),
        };
        let now = SystemTime::now();
        let mut memory = self.memory.lock().expect("memory lock");
        let mut report = node_report(&node, &key, &desired, &device, &memory, now);
        if readable {
            memory.record(&device, epoch_seconds(now));
        }
        report.linked_clusters = links;
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trellis_mesh::RejectReason;
    use trellis_mesh::{DesiredPeer, PeerName, Rejection};

    use super::*;
    use crate::wg::PeerState;

    #[test]
    fn a_report_shows_paths_discovered_endpoints_and_what_was_left_out() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let mut d = Desired {
            listen_port: 51820,
            ..Default::default()
        };
        let mut device = DeviceState::default();
        for (i, name) in [(1u8, "n1"), (2, "n2"), (3, "n3")] {
            let key = PublicKey([i; 32]);
            d.peers.insert(
                key,
                DesiredPeer {
                    name: PeerName::Node(name.into()),
                    public_key: key,
                    endpoint: Some(format!("192.0.2.{i}:51820").parse().unwrap()),
                    allowed_ips: vec![format!("10.244.{i}.0/24").parse().unwrap()],
                    persistent_keepalive: None,
                    preshared_key: None,
                },
            );
        }
        // n1: up, seen from a NAT's address; n2: sent, never answered; n3:
        // never used.
        device.peers.insert(
            PublicKey([1; 32]),
            PeerState {
                endpoint: Some("203.0.113.9:40000".parse().unwrap()),
                last_handshake: Some(now - Duration::from_secs(5)),
                rx_bytes: 100,
                tx_bytes: 200,
                ..Default::default()
            },
        );
        device.peers.insert(
            PublicKey([2; 32]),
            PeerState {
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                tx_bytes: 148,
                ..Default::default()
            },
        );
        // n2 goes through n1: its AllowedIPs sit on n1's peer.
        let n2_ips = std::mem::take(&mut d.peers.get_mut(&PublicKey([2; 32])).unwrap().allowed_ips);
        d.relayed.insert(
            PublicKey([2; 32]),
            trellis_mesh::model::Relayed {
                via: PublicKey([1; 32]),
                via_name: PeerName::Node("n1".into()),
                allowed_ips: n2_ips,
            },
        );
        d.behind_nat = true;
        d.public_endpoint = Some("198.51.100.7:51820".parse().unwrap());
        d.rejected.push(Rejection {
            object: PeerName::External("bad".into()),
            reason: RejectReason::InvalidPeerSpec,
            message: "spec.publicKey: ...".into(),
            undeclared: None,
        });
        let r = node_report(
            "n0",
            &PublicKey([9; 32]),
            &d,
            &device,
            &TxMemory::default(),
            now,
        );
        assert_eq!(r.observed_at, 10_000);
        let by = |n: &str| r.peers.iter().find(|p| p.name == n).unwrap();
        assert_eq!(by("n1").path, PathState::Direct);
        assert_eq!(
            by("n1").discovered_endpoint.as_deref(),
            Some("203.0.113.9:40000")
        );
        assert_eq!(by("n1").last_handshake, Some(9_995));
        assert_eq!(by("n2").path, PathState::Relayed);
        assert_eq!(by("n2").relay.as_deref(), Some("n1"));
        assert_eq!(
            by("n2").allowed_ips,
            vec!["10.244.2.0/24"],
            "its own, not the relay's"
        );
        assert!(r.behind_nat);
        assert_eq!(r.public_endpoint.as_deref(), Some("198.51.100.7:51820"));
        assert_eq!(
            by("n2").discovered_endpoint,
            None,
            "the configured endpoint is not news"
        );
        assert_eq!(by("n3").path, PathState::Unused);
        assert_eq!(r.left_out[0].name, "peer/bad");
        assert_eq!(r.left_out[0].reason, "PeerInvalidSpec");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["peers"][0]["path"], "direct");
        assert_eq!(json["leftOut"][0]["reason"], "PeerInvalidSpec");
    }

    fn device_with(peers: &[(u8, u64)]) -> DeviceState {
        let mut device = DeviceState::default();
        for &(i, tx_bytes) in peers {
            device.peers.insert(
                PublicKey([i; 32]),
                PeerState {
                    tx_bytes,
                    ..Default::default()
                },
            );
        }
        device
    }

    #[test]
    fn a_counter_moved_or_started_again() {
        assert!(!sent_between(0, 0));
        assert!(!sent_between(4096, 4096));
        assert!(sent_between(4096, 4244));
        assert!(sent_between(4096, 148), "re-created peer, sent since");
        assert!(!sent_between(4096, 0), "re-created peer, nothing sent");
    }

    #[test]
    fn looks_are_compared_with_one_at_least_a_window_old() {
        let key = PublicKey([1; 32]);
        let mut memory = TxMemory::default();
        assert_eq!(memory.earlier(&key, 0, 1000), None, "never looked");
        memory.record(&device_with(&[(1, 100)]), 1000);
        assert_eq!(memory.earlier(&key, 100, 1005), None, "too recent");
        let at_1000 = |sent_since| {
            Some(EarlierLook {
                at: 1000,
                sent_since,
            })
        };
        assert_eq!(memory.earlier(&key, 100, 1010), at_1000(false));
        assert_eq!(memory.earlier(&key, 248, 1010), at_1000(true));
        // Looks in quick succession do not replace the one compared with.
        memory.record(&device_with(&[(1, 248)]), 1030);
        memory.record(&device_with(&[(1, 396)]), 1032);
        assert_eq!(memory.earlier(&key, 396, 1035), at_1000(true));
        assert_eq!(
            memory.earlier(&key, 396, 1040),
            Some(EarlierLook {
                at: 1030,
                sent_since: true
            })
        );
        // A peer gone from the device is forgotten.
        memory.record(&device_with(&[(2, 0)]), 1050);
        assert_eq!(memory.earlier(&key, 396, 2000), None);
    }

    #[test]
    fn idle_pairs_and_unanswered_traffic_are_told_apart() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let mut d = Desired::default();
        let mut device = DeviceState::default();
        for i in [1u8, 2, 3] {
            let key = PublicKey([i; 32]);
            d.peers.insert(
                key,
                DesiredPeer {
                    name: PeerName::Node(format!("n{i}")),
                    public_key: key,
                    endpoint: None,
                    allowed_ips: vec![],
                    persistent_keepalive: None,
                    preshared_key: None,
                },
            );
            // An hour since the last handshake with each.
            device.peers.insert(
                key,
                PeerState {
                    last_handshake: Some(start - Duration::from_secs(3600)),
                    tx_bytes: 4096,
                    persistent_keepalive: (i == 3).then_some(25),
                    ..Default::default()
                },
            );
        }
        let mut memory = TxMemory::default();
        let first = node_report("n0", &PublicKey([9; 32]), &d, &device, &memory, start);
        let paths = |r: &NodeReport| r.peers.iter().map(|p| p.path).collect::<Vec<_>>();
        assert_eq!(
            paths(&first),
            [PathState::Idle, PathState::Idle, PathState::Down],
            "kept alive, n3's keepalives go unanswered"
        );
        assert_eq!(first.peers[0].last_handshake, Some(100_000 - 3600));
        memory.record(&device, epoch_seconds(start));
        // 30 s later, n2's handshake attempts have been counted.
        device.peers.get_mut(&PublicKey([2; 32])).unwrap().tx_bytes += 3 * 148;
        let later = start + Duration::from_secs(30);
        let second = node_report("n0", &PublicKey([9; 32]), &d, &device, &memory, later);
        assert_eq!(
            paths(&second),
            [PathState::Idle, PathState::Down, PathState::Down]
        );
    }
}
