//! What an agent reports about its node at `/status` on its metrics port
//! (read by `kubectl trellis status` and `graph` through the API server's
//! node proxy): every peer with its endpoints, handshake, traffic and path,
//! what the node left out of the mesh and why, and its linked clusters.

use serde::{Deserialize, Serialize};

/// WireGuard drops a session this long after its handshake
/// (REJECT_AFTER_TIME): a handshake younger than this means the path works.
pub const SESSION_SECONDS: i64 = 180;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub node: String,
    pub public_key: String,
    pub listen_port: u16,
    /// When the agent read the device (seconds since the epoch).
    pub observed_at: i64,
    pub peers: Vec<PeerReport>,
    pub left_out: Vec<LeftOut>,
    #[serde(default)]
    pub linked_clusters: Vec<LinkedClusterReport>,
    /// Whether the node is, or may be, behind a NAT (its peers keep the
    /// pairs alive).
    #[serde(default)]
    pub behind_nat: bool,
    /// Where the other nodes see this one, when not at its own endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<String>,
}

/// How a linked cluster stands on this node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum LinkState {
    /// Its nodes and Peers are peers here.
    Linked,
    /// Not listed yet: nothing of it is configured.
    #[default]
    Connecting,
    /// Its API server cannot be reached: its last known peers stay.
    Unreachable,
    /// Left out as a whole (its pod CIDRs overlap), or its Secret is unusable.
    Refused,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Linked => "linked",
            LinkState::Connecting => "connecting",
            LinkState::Unreachable => "unreachable",
            LinkState::Refused => "refused",
        }
    }
}

/// One linked cluster as this agent sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LinkedClusterReport {
    pub name: String,
    /// `namespace/name` of the Secret that links it.
    pub secret: String,
    pub nodes: usize,
    pub peers: usize,
    pub state: LinkState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The state of the path to a peer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum PathState {
    /// A handshake within the session lifetime: traffic flows directly.
    Direct,
    /// Nothing was ever sent: no handshake needed yet.
    #[default]
    Idle,
    /// Traffic was sent but no session is up.
    Down,
    /// No direct handshake completes: traffic goes through a relay node.
    Relayed,
}

impl PathState {
    pub fn of(last_handshake: Option<i64>, tx_bytes: u64, now: i64) -> Self {
        match last_handshake {
            Some(t) if now - t < SESSION_SECONDS => PathState::Direct,
            None if tx_bytes == 0 => PathState::Idle,
            _ => PathState::Down,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Direct => "direct",
            PathState::Idle => "idle",
            PathState::Down => "down",
            PathState::Relayed => "relayed",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeerReport {
    /// `n2` for a node, `peer/laptop` for a Peer object.
    pub name: String,
    pub public_key: String,
    /// The endpoint Trellis configured (from annotations or the Peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Where the peer's packets come from now, when that differs from the
    /// configured endpoint (roaming, NAT): its discovered endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered_endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<i64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub path: PathState,
    /// The node traffic goes through when `path` is relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LeftOut {
    pub name: String,
    pub reason: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_follows_the_handshake_and_the_traffic() {
        assert_eq!(PathState::of(Some(1000), 5, 1100), PathState::Direct);
        assert_eq!(
            PathState::of(Some(1000), 5, 1000 + SESSION_SECONDS),
            PathState::Down
        );
        assert_eq!(PathState::of(None, 0, 1000), PathState::Idle);
        assert_eq!(PathState::of(None, 148, 1000), PathState::Down);
    }
}
