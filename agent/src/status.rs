//! The node's report for `/status`: built after each reconcile from the
//! desired state and what the device showed (pure), and held for the HTTP
//! endpoint.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use trellis_api::status::{LeftOut, LinkedClusterReport, NodeReport, PathState, PeerReport};
use trellis_mesh::{Desired, PublicKey};

use crate::kube_io::reason_name;
use crate::wg::DeviceState;

fn epoch_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The report of node `node` (key `public_key`) at `now`.
pub fn node_report(
    node: &str,
    public_key: &PublicKey,
    desired: &Desired,
    device: &DeviceState,
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
            let allowed_ips = relayed.map_or(&want.allowed_ips, |r| &r.allowed_ips);
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
                path: match relayed {
                    Some(_) => PathState::Relayed,
                    None => PathState::of(last_handshake, tx_bytes, now_s),
                },
                relay: relayed.map(|r| r.via_name.to_string()),
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

/// What the last reconcile wanted, and a way to read the device: each
/// `/status` request reports live handshakes and counters.
#[derive(Clone)]
pub struct StatusBoard {
    wanted: Arc<Mutex<Option<Wanted>>>,
    reader: DeviceReader,
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
        }
    }

    pub fn set(
        &self,
        node: &str,
        public_key: PublicKey,
        desired: Desired,
        links: Vec<LinkedClusterReport>,
    ) {
        *self.wanted.lock().expect("status lock") =
            Some((node.to_string(), public_key, desired, links));
    }

    /// The report now; None before the first successful reconcile. A
    /// device that cannot be read shows every peer without a session.
    pub fn report(&self) -> Option<NodeReport> {
        let (node, key, desired, links) = self.wanted.lock().expect("status lock").clone()?;
        let device = (self.reader)().unwrap_or_default();
        let mut report = node_report(&node, &key, &desired, &device, SystemTime::now());
        report.linked_clusters = links;
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trellis_mesh::desired::RejectReason;
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
        // n1: up, seen from a NAT's address; n2: sent, never answered; n3: idle.
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
            trellis_mesh::relay::Relayed {
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
        });
        let r = node_report("n0", &PublicKey([9; 32]), &d, &device, now);
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
        assert_eq!(by("n3").path, PathState::Idle);
        assert_eq!(r.left_out[0].name, "peer/bad");
        assert_eq!(r.left_out[0].reason, "PeerInvalidSpec");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["peers"][0]["path"], "direct");
        assert_eq!(json["leftOut"][0]["reason"], "PeerInvalidSpec");
    }
}
