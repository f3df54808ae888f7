//! The desired state of one node, computed from a snapshot of the cluster:
//! its mesh addresses, one WireGuard peer per other valid node (AllowedIPs
//! from the node's `spec.podCIDRs`, never from an annotation), a route per
//! remote pod CIDR, and the mesh CIDRs masquerading must leave alone.
//!
//! Bad input rejects only the node it comes from, with a reason: an invalid
//! annotation, key or pod CIDR, a pod CIDR overlapping ours or an older
//! node's, a public key already used by an older node or by us. Conflicts
//! are decided by age (older node wins, then name), so a newcomer can never
//! take over a working node's traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::annotations::{Endpoint, NodeAnnotations};
use crate::external::{add_external_peers, ExternalPeerInfo};
use crate::key::{PresharedKey, PublicKey};
use crate::nat::{Sightings, NAT_KEEPALIVE};
use crate::plan::Route;
use crate::ranges::{self, DeclaredRanges, Undeclared};
use crate::relay::Relayed;
use crate::remote::{add_remote_clusters, ClusterRejection, RemoteCluster};

/// What the agent knows of one Node object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeInfo {
    pub name: String,
    /// Creation time, seconds since the epoch (older wins conflicts).
    pub created: i64,
    pub pod_cidrs: Vec<String>,
    pub internal_ips: Vec<IpAddr>,
    pub annotations: BTreeMap<String, String>,
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

/// Why validation refused a peer (becomes a [`Rejection`]).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reason: RejectReason,
    pub(crate) message: String,
    pub(crate) undeclared: Option<Undeclared>,
}

impl Refusal {
    pub(crate) fn into_rejection(self, object: PeerName) -> Rejection {
        Rejection {
            object,
            reason: self.reason,
            message: self.message,
            undeclared: self.undeclared,
        }
    }
}

impl From<(RejectReason, String)> for Refusal {
    fn from((reason, message): (RejectReason, String)) -> Self {
        Refusal {
            reason,
            message,
            undeclared: None,
        }
    }
}

impl From<Undeclared> for Refusal {
    fn from(u: Undeclared) -> Self {
        Refusal {
            reason: RejectReason::UndeclaredRange,
            message: u.message.clone(),
            undeclared: Some(u),
        }
    }
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
    /// Persistent keepalive this node keeps towards every node (its own
    /// annotation, or [`NAT_KEEPALIVE`] behind a NAT).
    pub keepalive: Option<u16>,
    /// Nodes marked `trellis.dev/relay=true`: preferred relays.
    pub relays: BTreeSet<PublicKey>,
    /// Peers reached through a relay for now (their AllowedIPs are on the
    /// relay's peer); filled by [`crate::relay::PathTracker`].
    pub relayed: BTreeMap<PublicKey, Relayed>,
}

impl Desired {
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

pub(crate) fn parse_cidrs(raw: &[String]) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for text in raw {
        let net: IpNet = text
            .parse()
            .map_err(|_| format!("pod CIDR {text:?} is not a CIDR"))?;
        if net.trunc() != net {
            return Err(format!("pod CIDR {text} is not a network address"));
        }
        out.push(net);
    }
    out.sort();
    Ok(out)
}

pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first address of a pod CIDR: the node's mesh address, as a host prefix.
pub fn mesh_address(cidr: &IpNet) -> IpNet {
    let first = match cidr.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
    };
    IpNet::from(first)
}

/// The desired state of `local` from `nodes`. `resolve` turns a DNS
/// endpoint into an address (the agent's resolver; `None` if it fails).
pub fn desired(
    local: &LocalNode,
    nodes: &[NodeInfo],
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) -> Result<Desired, LocalError> {
    desired_with_external(local, nodes, &[], resolve)
}

/// [`desired`] plus the external peers (`Peer` objects). Nodes come first:
/// an external peer can never take a node's key or addresses.
pub fn desired_with_external(
    local: &LocalNode,
    nodes: &[NodeInfo],
    external: &[ExternalPeerInfo],
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) -> Result<Desired, LocalError> {
    desired_mesh(
        local,
        &MeshInputs {
            nodes,
            external,
            remotes: &[],
            declared: &DeclaredRanges::private(),
        },
        resolve,
    )
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

/// The ranges the peers of one cluster must stay inside, and how messages
/// name them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Declaration<'a> {
    pub(crate) ranges: &'a DeclaredRanges,
    /// `None`: this cluster; else the linked cluster's name.
    pub(crate) cluster: Option<&'a str>,
}

impl Declaration<'_> {
    /// Why `net`, claimed by a node as a pod CIDR, is out of bounds.
    pub(crate) fn pod_cidr_outside(&self, net: &IpNet) -> Option<Undeclared> {
        let whose = match self.cluster {
            None => "the pod ranges this cluster declares".to_string(),
            Some(c) => format!("the pod ranges cluster {c} declared when it was linked"),
        };
        ranges::outside_declared(net, "pod CIDR", &self.ranges.pods, &whose)
    }

    /// Why `net`, claimed by a Peer as an allowed IP, is out of bounds.
    pub(crate) fn allowed_ip_outside(&self, net: &IpNet) -> Option<Undeclared> {
        let whose = match self.cluster {
            None => "the external-peer ranges this cluster declares".to_string(),
            Some(c) => format!("the external-peer ranges cluster {c} declared when it was linked"),
        };
        ranges::outside_declared(net, "allowed IP", &self.ranges.external_peers, &whose)
    }
}

/// The desired state of `local`. Whoever was there first wins a conflict:
/// this cluster's nodes, then its Peers, then each linked cluster (by
/// name) — refused as a whole when its pod CIDRs overlap what is taken.
pub fn desired_mesh(
    local: &LocalNode,
    inputs: &MeshInputs<'_>,
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) -> Result<Desired, LocalError> {
    let nodes = inputs.nodes;
    let me = nodes
        .iter()
        .find(|n| n.name == local.name)
        .ok_or_else(|| LocalError::NotRegistered(local.name.clone()))?;
    if me.pod_cidrs.is_empty() {
        return Err(LocalError::NoPodCidr(local.name.clone()));
    }
    let own = parse_cidrs(&me.pod_cidrs).map_err(|_| LocalError::InvalidPodCidr {
        node: local.name.clone(),
        cidr: me.pod_cidrs.join(","),
    })?;
    let declaration = Declaration {
        ranges: inputs.declared,
        cluster: None,
    };
    if let Some(why) = own.iter().find_map(|c| declaration.pod_cidr_outside(c)) {
        return Err(LocalError::UndeclaredPodCidr {
            node: local.name.clone(),
            why: why.message,
        });
    }
    let mut d = Desired {
        interface: local.interface.clone(),
        listen_port: local.listen_port,
        mtu: local.mtu,
        addresses: own.iter().map(mesh_address).collect(),
        own_pod_cidrs: own.clone(),
        mesh_cidrs: own,
        ..Default::default()
    };
    d.sightings = Sightings::from_nodes(
        nodes
            .iter()
            .chain(inputs.remotes.iter().flat_map(|r| &r.nodes)),
    );
    let mine = NodeAnnotations::parse(&me.annotations).unwrap_or_default();
    let published = mine.endpoint.as_ref().and_then(Endpoint::addr);
    d.public_endpoint = d.sightings.translated(&local.public_key, published);
    d.behind_nat = d.sightings.behind_nat(&local.public_key, published);
    d.keepalive = mine
        .persistent_keepalive
        .or(d.behind_nat.then_some(NAT_KEEPALIVE));
    let others: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != local.name).collect();
    let mut taken = Taken {
        owners: Vec::new(),
        underlay: nodes.iter().flat_map(|n| n.internal_ips.clone()).collect(),
    };
    add_nodes(&mut d, local, &others, declaration, &mut taken, resolve);
    add_external_peers(
        &mut d,
        local,
        inputs.external,
        declaration,
        &mut taken,
        resolve,
    );
    add_remote_clusters(&mut d, local, inputs.remotes, &mut taken, resolve);
    d.mesh_cidrs.sort();
    d.rejected.sort();
    d.pending.sort();
    Ok(d)
}

/// What accepted peers hold: their ranges (with who owns each) and the
/// addresses the tunnels run over.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub owners: Vec<(IpNet, PeerName)>,
    pub underlay: Vec<IpAddr>,
}

/// Adds every valid node of `nodes` (of the cluster `declaration` speaks
/// for) to `d`, oldest first; the others go to `d.rejected` or `d.pending`.
pub(crate) fn add_nodes(
    d: &mut Desired,
    local: &LocalNode,
    nodes: &[&NodeInfo],
    declaration: Declaration<'_>,
    taken: &mut Taken,
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) {
    let mut sorted = nodes.to_vec();
    sorted.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    for node in sorted {
        let name = PeerName::node(declaration.cluster, &node.name);
        match validate_node(d, local, node, &name, declaration, taken, resolve) {
            Ok(Some((peer, relay))) => {
                if relay {
                    d.relays.insert(peer.public_key);
                }
                if let Some(a) = peer.endpoint {
                    taken.underlay.push(a.ip());
                }
                for c in &peer.allowed_ips {
                    taken.owners.push((*c, name.clone()));
                    d.routes.insert(d.route_to(*c));
                }
                d.mesh_cidrs.extend(peer.allowed_ips.iter().copied());
                d.peers.insert(peer.public_key, peer);
            }
            Ok(None) => d.pending.push(name.to_string()),
            Err(refusal) => d.rejected.push(refusal.into_rejection(name)),
        }
    }
}

/// Why `key` cannot be a new peer's: it is this node's own or an accepted
/// peer's (nodes and Peers alike).
pub(crate) fn key_taken(d: &Desired, local: &LocalNode, key: &PublicKey) -> Option<String> {
    if *key == local.public_key {
        return Some(format!("public key {key} is node {}'s own", local.name));
    }
    d.peers.get(key).map(|holder| {
        format!(
            "public key {key} is already used by {}",
            holder.name.describe()
        )
    })
}

/// `node` as a peer (and whether it offers to relay), `None` when it is not
/// ready yet (no key or pod CIDR), or why it is left out.
fn validate_node(
    d: &Desired,
    local: &LocalNode,
    node: &NodeInfo,
    name: &PeerName,
    declaration: Declaration<'_>,
    taken: &Taken,
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) -> Result<Option<(DesiredPeer, bool)>, Refusal> {
    use RejectReason::*;
    let annotations = NodeAnnotations::parse(&node.annotations)
        .map_err(|e| (InvalidAnnotation, e.to_string()))?;
    let Some(key) = annotations.public_key else {
        return Ok(None);
    };
    if node.pod_cidrs.is_empty() {
        return Ok(None);
    }
    if let Some(why) = key_taken(d, local, &key) {
        return Err((DuplicatePublicKey, why).into());
    }
    let cidrs = parse_cidrs(&node.pod_cidrs).map_err(|e| (InvalidPodCidr, e))?;
    if let Some(why) = ranges::never_routed_claim(&cidrs, "pod CIDR") {
        return Err(why.into());
    }
    if let Some((c, o)) = cidrs
        .iter()
        .flat_map(|c| d.own_pod_cidrs.iter().map(move |o| (c, o)))
        .find(|(c, o)| overlaps(c, o))
    {
        return Err((
            OverlappingPodCidr,
            format!("pod CIDR {c} overlaps this node's pod CIDR {o}"),
        )
            .into());
    }
    if let Some((c, (o, owner))) = cidrs
        .iter()
        .flat_map(|c| taken.owners.iter().map(move |o| (c, o)))
        .find(|(c, (o, _))| overlaps(c, o))
    {
        return Err((
            OverlappingPodCidr,
            format!("pod CIDR {c} overlaps {o} of {}", owner.describe()),
        )
            .into());
    }
    if let Some(why) = cidrs.iter().find_map(|c| declaration.pod_cidr_outside(c)) {
        return Err(why.into());
    }
    if let Some((c, ip)) = cidrs
        .iter()
        .find_map(|c| ranges::contains_any(c, &taken.underlay).map(|ip| (c, ip)))
    {
        return Err(Undeclared {
            range: *c,
            declared: Vec::new(),
            message: format!("pod CIDR {c} contains {ip}, an address the mesh's tunnels run over"),
        }
        .into());
    }
    let forced = annotations.force_endpoint.is_some();
    let own_endpoint = annotations.endpoint.as_ref().and_then(Endpoint::addr);
    let chosen = annotations.force_endpoint.or(annotations.endpoint);
    let configured = match chosen {
        None => None,
        Some(Endpoint::Addr(a)) => Some(a),
        Some(Endpoint::Host { host, port }) => Some(resolve(&host, port).ok_or_else(|| {
            (
                UnresolvableEndpoint,
                format!("endpoint {host}:{port} does not resolve"),
            )
        })?),
    };
    // Behind a NAT (seen elsewhere than it says), a node is dialled where
    // the others see it, unless someone forced an endpoint.
    let published = if forced { own_endpoint } else { configured };
    let endpoint = match forced {
        true => configured,
        false => d.sightings.translated(&key, published).or(configured),
    };
    let nat = d.sightings.behind_nat(&key, published);
    let keepalive = annotations
        .persistent_keepalive
        .or(d.keepalive)
        .or(nat.then_some(NAT_KEEPALIVE));
    Ok(Some((
        DesiredPeer {
            name: name.clone(),
            public_key: key,
            endpoint,
            allowed_ips: cidrs,
            persistent_keepalive: keepalive,
            preshared_key: None,
        },
        annotations.relay,
    )))
}

#[cfg(test)]
pub(crate) mod tests;
