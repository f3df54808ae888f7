//! The model every part of the mesh speaks: what the agent knows of Nodes,
//! `Peer` objects and linked clusters (the inputs), one node's desired
//! state with its peers, and what was left out and why (the outputs). Plain
//! data: the algorithms live in [`crate::desired`] and the modules it
//! calls, which all import this one; it imports none of them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::key::{PresharedKey, PublicKey};
use crate::ranges::{DeclaredRanges, Undeclared};
use crate::sightings::Sightings;

/// What the agent knows of one Node object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeInfo {
    pub name: String,
    /// Creation time, seconds since the epoch (older wins conflicts).
    pub created: i64,
    pub pod_cidrs: Vec<String>,
    pub internal_ips: Vec<IpAddr>,
    pub annotations: BTreeMap<String, String>,
    /// Its `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

/// The node the agent runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalNode {
    pub name: String,
    pub public_key: PublicKey,
    pub interface: String,
    pub listen_port: u16,
    pub mtu: u32,
}

/// Whose WireGuard peer it is: a Node or an external machine (a `Peer`
/// object), of this cluster or of a linked one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerName {
    Node(String),
    External(String),
    RemoteNode { cluster: String, name: String },
    RemoteExternal { cluster: String, name: String },
}

impl PeerName {
    /// A Node of `cluster` (`None`: this cluster).
    pub fn node(cluster: Option<&str>, name: &str) -> Self {
        match cluster {
            None => PeerName::Node(name.into()),
            Some(c) => PeerName::RemoteNode {
                cluster: c.into(),
                name: name.into(),
            },
        }
    }

    /// A `Peer` object of `cluster` (`None`: this cluster).
    pub fn external(cluster: Option<&str>, name: &str) -> Self {
        match cluster {
            None => PeerName::External(name.into()),
            Some(c) => PeerName::RemoteExternal {
                cluster: c.into(),
                name: name.into(),
            },
        }
    }

    /// The bare object name.
    pub fn name(&self) -> &str {
        match self {
            PeerName::Node(n) | PeerName::External(n) => n,
            PeerName::RemoteNode { name, .. } | PeerName::RemoteExternal { name, .. } => name,
        }
    }

    /// The linked cluster the object lives in (`None`: this cluster).
    pub fn cluster(&self) -> Option<&str> {
        match self {
            PeerName::Node(_) | PeerName::External(_) => None,
            PeerName::RemoteNode { cluster, .. } | PeerName::RemoteExternal { cluster, .. } => {
                Some(cluster)
            }
        }
    }

    /// `node n1`, `peer/laptop`, `node b:n1`: what a message calls it.
    pub fn describe(&self) -> String {
        if self.is_node() {
            format!("node {self}")
        } else {
            self.to_string()
        }
    }

    /// Whether it is a Node (of any cluster), not a `Peer` object.
    pub fn is_node(&self) -> bool {
        matches!(self, PeerName::Node(_) | PeerName::RemoteNode { .. })
    }
}

impl std::fmt::Display for PeerName {
    /// `n1` for a node, `peer/laptop` for an external peer, prefixed with
    /// `cluster:` for a linked cluster's (`b:n1`, `b:peer/laptop`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(c) = self.cluster() {
            write!(f, "{c}:")?;
        }
        if self.is_node() {
            f.write_str(self.name())
        } else {
            write!(f, "peer/{}", self.name())
        }
    }
}

/// Why a node is left out of the mesh (the label of the rejection metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    InvalidAnnotation,
    InvalidPodCidr,
    OverlappingPodCidr,
    /// A pod CIDR or allowed IP outside what its cluster declared, or a
    /// range never routed into the mesh (default route, loopback, ...).
    UndeclaredRange,
    DuplicatePublicKey,
    UnresolvableEndpoint,
    InvalidPeerSpec,
    OverlappingAllowedIps,
    PresharedKeyUnavailable,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidAnnotation => "invalid_annotation",
            RejectReason::InvalidPodCidr => "invalid_pod_cidr",
            RejectReason::OverlappingPodCidr => "overlapping_pod_cidr",
            RejectReason::UndeclaredRange => "undeclared_range",
            RejectReason::DuplicatePublicKey => "duplicate_public_key",
            RejectReason::UnresolvableEndpoint => "unresolvable_endpoint",
            RejectReason::InvalidPeerSpec => "invalid_peer_spec",
            RejectReason::OverlappingAllowedIps => "overlapping_allowed_ips",
            RejectReason::PresharedKeyUnavailable => "preshared_key_unavailable",
        }
    }
}

/// A node or external peer left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejection {
    pub object: PeerName,
    pub reason: RejectReason,
    pub message: String,
    /// For [`RejectReason::UndeclaredRange`]: the range and the
    /// declaration it lies outside.
    pub undeclared: Option<Undeclared>,
}

/// One WireGuard peer as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub name: PeerName,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    /// Sorted.
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<PresharedKey>,
}

/// Everything one node's dataplane should have.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Desired {
    pub interface: String,
    pub listen_port: u16,
    pub mtu: u32,
    /// The mesh addresses (first address of each own pod CIDR) as /32 and /128.
    pub addresses: Vec<IpNet>,
    pub own_pod_cidrs: Vec<IpNet>,
    pub peers: BTreeMap<PublicKey, DesiredPeer>,
    pub routes: BTreeSet<Route>,
    /// Every pod CIDR in the mesh, ours included: traffic to them is never
    /// masqueraded.
    pub mesh_cidrs: Vec<IpNet>,
    pub rejected: Vec<Rejection>,
    /// Linked clusters left out as a whole (their pod CIDRs overlap ours).
    pub rejected_clusters: Vec<ClusterRejection>,
    /// Nodes not ready to be peers yet (no public key or pod CIDR): not an
    /// error, no Event.
    pub pending: Vec<String>,
    /// Where every node (of every cluster) sees its peers.
    pub sightings: Sightings,
    /// Whether this node is, or may be, behind a NAT.
    pub behind_nat: bool,
    /// Where the other nodes see this one, when not at its own endpoint.
    pub public_endpoint: Option<SocketAddr>,
    /// Where this node says it is: hints that another node shares its site.
    pub site_hints: SiteHints,
    /// Persistent keepalive this node keeps towards every node (its own
    /// annotation, or [`crate::nat::NAT_KEEPALIVE`] behind a NAT).
    pub keepalive: Option<u16>,
    /// Nodes marked `trellis.dev/relay=true`: preferred relays.
    pub relays: BTreeSet<PublicKey>,
    /// Peers reached through a relay for now (their AllowedIPs are on the
    /// relay's peer); filled by [`crate::relay::PathTracker`].
    pub relayed: BTreeMap<PublicKey, Relayed>,
    /// The endpoints each node peer with more than one can be reached at,
    /// best first, and the one its peer is set to now (chosen by
    /// [`crate::relay::PathTracker`]). A peer without an entry has one way
    /// only: its `endpoint`.
    pub candidates: BTreeMap<PublicKey, Candidates>,
    /// Probed peers whose direct path answered echoes, then nothing for
    /// this long (filled by [`crate::relay::PathTracker`]; see
    /// [`crate::health`]): not published as seen, not chosen as relays.
    pub silent: BTreeMap<PublicKey, Duration>,
    /// Peers whose endpoint is set again even where their session roamed
    /// (filled by [`crate::relay::PathTracker`]): a better candidate on
    /// trial, or one that answers echoes while the device roamed to a
    /// worse one (see [`crate::upgrade`]).
    pub pinned: BTreeSet<PublicKey>,
}

impl Desired {
    /// How traffic to the peer `key`, whose device endpoint is `endpoint`
    /// now, is sent: `relayed` (through another node), `lan` (a node of
    /// this node's site, on the site's network) or `direct`.
    pub fn path_kind(&self, key: &PublicKey, endpoint: Option<SocketAddr>) -> &'static str {
        if self.relayed.contains_key(key) {
            "relayed"
        } else if self.on_lan(key, endpoint) {
            "lan"
        } else {
            "direct"
        }
    }

    /// Whether the peer `key`, at `endpoint` on the device now, is a node
    /// of this node's site reached on the site's network. The device's
    /// endpoint, not the candidate set: the other end may have reached this
    /// one on the LAN while this one still tried its public mapping (the
    /// session roamed there).
    pub fn on_lan(&self, key: &PublicKey, endpoint: Option<SocketAddr>) -> bool {
        self.candidates.get(key).is_some_and(|c| {
            c.list
                .iter()
                .any(|one| one.kind == CandidateKind::Lan && Some(one.endpoint) == endpoint)
        })
    }

    /// The route to `dst` over the mesh, from this node's mesh address of
    /// the same family (none when the node has no address of it).
    pub(crate) fn route_to(&self, dst: IpNet) -> Route {
        let src = self
            .addresses
            .iter()
            .find(|a| a.addr().is_ipv4() == dst.addr().is_ipv4())
            .map(|a| a.addr());
        Route { dst, src }
    }
}

/// Why the node itself cannot be meshed yet: the agent keeps what it has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("Node {0} is not in the snapshot (not registered yet, or deleted)")]
    NotRegistered(String),
    #[error(
        "Node {0} has no spec.podCIDRs yet (is the controller-manager allocating node CIDRs?)"
    )]
    NoPodCidr(String),
    #[error("Node {node} has an invalid pod CIDR {cidr:?}")]
    InvalidPodCidr { node: String, cidr: String },
    #[error("Node {node}: {why}")]
    UndeclaredPodCidr { node: String, why: String },
}

/// The first address of a pod CIDR: the node's mesh address, as a host prefix.
pub fn mesh_address(cidr: &IpNet) -> IpNet {
    let first = match cidr.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
    };
    IpNet::from(first)
}

/// Everything a node's desired state is computed from.
#[derive(Debug, Clone, Copy)]
pub struct MeshInputs<'a> {
    /// This cluster's Nodes (the local node among them).
    pub nodes: &'a [NodeInfo],
    /// This cluster's `Peer` objects.
    pub external: &'a [ExternalPeerInfo],
    /// The linked clusters.
    pub remotes: &'a [RemoteCluster],
    /// The ranges this cluster declares for its pods and its Peers.
    pub declared: &'a DeclaredRanges,
}

/// The preshared key a Peer asks for, as the agent could read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PresharedKeySource {
    #[default]
    None,
    Key(PresharedKey),
    /// The Secret or its key is missing or malformed: the message says which.
    Unavailable(String),
}

/// What the mesh needs of one `Peer` object (raw strings: validated here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExternalPeerInfo {
    pub name: String,
    /// Creation time, seconds since the epoch (older wins conflicts).
    pub created: i64,
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u32>,
    pub preshared_key: PresharedKeySource,
}

/// What the mesh knows of one linked cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteCluster {
    /// The name it is linked under (a DNS label).
    pub name: String,
    pub nodes: Vec<NodeInfo>,
    pub external: Vec<ExternalPeerInfo>,
    /// The ranges it declared when it was linked (from its link Secret):
    /// its nodes' pod CIDRs and its Peers' allowed IPs must lie inside.
    pub declared: DeclaredRanges,
}

/// A linked cluster left out as a whole, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterRejection {
    pub cluster: String,
    pub message: String,
}

/// A peer reached through a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub via: PublicKey,
    pub via_name: PeerName,
    /// The peer's own AllowedIPs, now on the relay's peer.
    pub allowed_ips: Vec<IpNet>,
}

/// What kind of way to a node peer an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateKind {
    /// The address the node published, on the private network of the site
    /// this node shares with it (both are seen behind one public address).
    Lan,
    /// Where the other nodes see it: its NAT's public mapping.
    Public,
}

impl CandidateKind {
    /// `lan` or `public`, as status and metrics print it.
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Lan => "lan",
            CandidateKind::Public => "public",
        }
    }
}

/// Where a node says it is: its `trellis.dev/location` annotation and its
/// zone label. Hints only: nodes that share one are tried on their node
/// addresses first, and fall back as any pair does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteHints {
    pub location: Option<String>,
    pub zone: Option<String>,
}

impl SiteHints {
    /// Whether these hints and `other`'s say the two nodes share a site:
    /// the same location, or (for nodes of one cluster, where zone names
    /// mean the same) the same zone.
    pub fn shared_with(&self, other: &SiteHints, same_cluster: bool) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        same(&self.location, &other.location) || (same_cluster && same(&self.zone, &other.zone))
    }
}

/// One endpoint a node peer may be reached at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Candidate {
    pub kind: CandidateKind,
    pub endpoint: SocketAddr,
}

/// A node peer's candidate endpoints, best first, and the index of the
/// one its WireGuard peer is set to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    pub list: Vec<Candidate>,
    pub current: usize,
}

impl Candidates {
    /// `list` starting at its first, best candidate; `None` unless it
    /// holds two or more (one way is just the peer's endpoint).
    pub fn new(list: Vec<Candidate>) -> Option<Self> {
        (list.len() > 1).then_some(Candidates { list, current: 0 })
    }

    /// The candidate the peer is set to now.
    pub fn current(&self) -> Candidate {
        self.list[self.current.min(self.list.len() - 1)]
    }
}

/// A route over the WireGuard interface, with the preferred source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub src: Option<IpAddr>,
}

impl std::fmt::Display for Route {
    /// `10.244.1.0/24` or `10.244.1.0/24 src 10.244.0.1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        Ok(())
    }
}
