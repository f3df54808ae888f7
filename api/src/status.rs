//! What an agent reports about its node at `/status` on its metrics port
//! (read by `kubectl trellis status` and `graph` through the API server's
//! node proxy): every peer with its endpoints, handshake, traffic and path,
//! what the node left out of the mesh and why, and its linked clusters.

use serde::{Deserialize, Serialize};

/// How long a session lives after its handshake, in seconds (see
/// [`trellis_mesh::session`]): a handshake younger than this means the path
/// works.
pub const SESSION_SECONDS: i64 = trellis_mesh::session::LIVE.as_secs() as i64;

/// WireGuard retries an unanswered handshake this often (REKEY_TIMEOUT).
pub const HANDSHAKE_RETRY_SECONDS: i64 = trellis_mesh::session::REKEY_TIMEOUT.as_secs() as i64;

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
    /// Seconds until the link's token expires (negative: it has), when
    /// the token says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_in_s: Option<i64>,
}

/// The state of the path to a peer, as one end sees it (see
/// [`PathState::of`] for the rules).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum PathState {
    /// A handshake within the session lifetime: traffic flows directly.
    Direct,
    /// Like `Direct`, over the private network of a site both ends share
    /// (both behind one NAT): the packets never leave the site.
    Lan,
    /// Had a session, which expired: nothing is trying to talk to the peer
    /// now, and nothing says it is not reachable. Not a problem.
    Idle,
    /// Broken: traffic or keepalives go to the peer and no handshake
    /// completes.
    Down,
    /// No direct handshake completes: traffic goes through a relay node.
    Relayed,
    /// Never connected: no handshake ever, nothing sent (a peer nobody
    /// talked to yet). Not a problem.
    #[default]
    Unused,
}

/// What the agent sees of the path to a peer, for [`PathState::of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PathEvidence {
    /// The last handshake (seconds since the epoch), however old.
    pub last_handshake: Option<i64>,
    /// Bytes sent to the peer (on the kernel, handshake attempts count).
    pub tx_bytes: u64,
    /// The persistent keepalive interval (seconds), when the pair is kept
    /// alive.
    pub keepalive: Option<u16>,
    /// An earlier look at the peer, when the agent has one (at least a
    /// couple of handshake retries old).
    pub earlier: Option<EarlierLook>,
}

/// An earlier look at a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlierLook {
    /// When it was taken (seconds since the epoch).
    pub at: i64,
    /// Whether the tx counter moved since.
    pub sent_since: bool,
}

impl PathState {
    /// The state of a path that is not relayed, at `now`:
    ///
    /// - direct: a handshake within the session lifetime;
    /// - down: a kept-alive pair whose handshake is older than a session
    ///   plus a keepalive interval and a retry (its keepalives need a
    ///   session: a working pair never gets there), or that never had one
    ///   since the agent's earlier look; traffic sent and never a handshake;
    ///   traffic sent since the earlier look while there was no session
    ///   then, and still none (it all went to handshake attempts);
    /// - idle: a handshake once, nothing of the above;
    /// - unused: never a handshake, nothing sent.
    ///
    /// Traffic that started after a session expired shows as down from the
    /// second look on (or at once on a pair never connected): a single look
    /// cannot tell failed handshake attempts from traffic the expired
    /// session carried. `tx_bytes` counts handshakes and keepalives (the
    /// kernel, wireguard-go and trellis-wg alike).
    pub fn of(evidence: &PathEvidence, now: i64) -> Self {
        let PathEvidence {
            last_handshake,
            tx_bytes,
            keepalive,
            earlier,
        } = *evidence;
        let age = last_handshake.map(|t| now - t);
        if age.is_some_and(|age| age < SESSION_SECONDS) {
            return PathState::Direct;
        }
        let keepalives_unanswered = keepalive.is_some_and(|interval| match age {
            Some(age) => age >= SESSION_SECONDS + i64::from(interval) + HANDSHAKE_RETRY_SECONDS,
            None => earlier.is_some(),
        });
        let sent_without_session = earlier.is_some_and(|e| {
            e.sent_since && last_handshake.is_none_or(|t| t + SESSION_SECONDS <= e.at)
        });
        let never_answered = last_handshake.is_none() && tx_bytes > 0;
        if keepalives_unanswered || sent_without_session || never_answered {
            PathState::Down
        } else if last_handshake.is_some() {
            PathState::Idle
        } else {
            PathState::Unused
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Direct => "direct",
            PathState::Lan => "lan",
            PathState::Idle => "idle",
            PathState::Down => "down",
            PathState::Relayed => "relayed",
            PathState::Unused => "unused",
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
    /// The endpoints the peer may be reached at, best first, when it has
    /// more than one (a node of this node's site: `lan`, then `public`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateReport>,
    /// The direct path answered echoes, then none for this many seconds:
    /// its traffic was moved off it (relayed when a relay reaches both ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_for_s: Option<u64>,
}

/// One candidate endpoint of a peer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CandidateReport {
    /// `lan` or `public`.
    pub kind: String,
    pub endpoint: String,
    /// Whether the peer is set to it now (tried, or in use).
    pub current: bool,
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

    const NOW: i64 = 100_000;

    fn path(
        last_handshake: Option<i64>,
        tx_bytes: u64,
        keepalive: Option<u16>,
        earlier: Option<EarlierLook>,
    ) -> PathState {
        PathState::of(
            &PathEvidence {
                last_handshake,
                tx_bytes,
                keepalive,
                earlier,
            },
            NOW,
        )
    }

    fn look(ago: i64, sent_since: bool) -> Option<EarlierLook> {
        Some(EarlierLook {
            at: NOW - ago,
            sent_since,
        })
    }

    #[test]
    fn a_handshake_within_the_session_is_direct() {
        assert_eq!(path(Some(NOW - 5), 5, None, None), PathState::Direct);
        assert_eq!(
            path(Some(NOW - SESSION_SECONDS + 1), 5, Some(25), look(20, true)),
            PathState::Direct
        );
    }

    #[test]
    fn a_pair_nobody_talked_to_is_unused() {
        assert_eq!(path(None, 0, None, None), PathState::Unused);
        assert_eq!(path(None, 0, None, look(20, false)), PathState::Unused);
        // Kept alive, but the agent has not watched it for long yet.
        assert_eq!(path(None, 0, Some(25), None), PathState::Unused);
    }

    #[test]
    fn an_expired_session_with_nothing_trying_is_idle() {
        let hour_ago = Some(NOW - 3600);
        assert_eq!(path(hour_ago, 4096, None, None), PathState::Idle);
        assert_eq!(path(hour_ago, 4096, None, look(20, false)), PathState::Idle);
        // Sent since a look taken while the session lived: maybe in it.
        let expired_just_now = Some(NOW - SESSION_SECONDS - 5);
        assert_eq!(
            path(expired_just_now, 4096, None, look(20, true)),
            PathState::Idle
        );
    }

    #[test]
    fn traffic_without_a_handshake_is_down() {
        // On the kernel, handshake attempts count as sent.
        assert_eq!(path(None, 148, None, None), PathState::Down);
        // Sent since a look taken after the session had expired.
        assert_eq!(
            path(Some(NOW - 3600), 4244, None, look(20, true)),
            PathState::Down
        );
        assert_eq!(
            path(Some(NOW - SESSION_SECONDS - 20), 4244, None, look(20, true)),
            PathState::Down,
            "the session ended exactly at the earlier look"
        );
    }

    #[test]
    fn a_kept_alive_pair_with_a_stale_handshake_is_down() {
        let grace = SESSION_SECONDS + 25 + HANDSHAKE_RETRY_SECONDS;
        assert_eq!(path(Some(NOW - grace), 92, Some(25), None), PathState::Down);
        assert_eq!(
            path(Some(NOW - grace + 1), 92, Some(25), None),
            PathState::Idle,
            "its next keepalive may be on its way"
        );
        assert_eq!(path(None, 0, Some(25), look(10, false)), PathState::Down);
    }

    #[test]
    fn reports_of_older_agents_still_read() {
        let old = r#"{"name":"n2","publicKey":"k","allowedIps":[],"rxBytes":0,"txBytes":0,"path":"idle"}"#;
        let peer: PeerReport = serde_json::from_str(old).unwrap();
        assert_eq!(peer.path, PathState::Idle);
        let json = serde_json::to_value(PathState::Unused).unwrap();
        assert_eq!(json, "unused");
    }
}
