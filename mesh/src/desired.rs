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
use crate::plan::Route;

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

/// Whose WireGuard peer it is: a Node of this cluster or an external
/// machine described by a `Peer` object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerName {
    Node(String),
    External(String),
}

impl PeerName {
    /// The bare object name.
    pub fn name(&self) -> &str {
        match self {
            PeerName::Node(n) | PeerName::External(n) => n,
        }
    }
}

impl std::fmt::Display for PeerName {
    /// `n1` for a node, `peer/laptop` for an external peer.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerName::Node(n) => f.write_str(n),
            PeerName::External(n) => write!(f, "peer/{n}"),
        }
    }
}

/// Why a node is left out of the mesh (the label of the rejection metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    InvalidAnnotation,
    InvalidPodCidr,
    OverlappingPodCidr,
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
    /// Nodes not ready to be peers yet (no public key or pod CIDR): not an
    /// error, no Event.
    pub pending: Vec<String>,
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
    let mut d = Desired {
        interface: local.interface.clone(),
        listen_port: local.listen_port,
        mtu: local.mtu,
        addresses: own.iter().map(mesh_address).collect(),
        own_pod_cidrs: own.clone(),
        mesh_cidrs: own.clone(),
        ..Default::default()
    };
    let mut others: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != local.name).collect();
    others.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let mut owners: Vec<(IpNet, PeerName)> = Vec::new();
    let mut underlay: Vec<IpAddr> = nodes.iter().flat_map(|n| n.internal_ips.clone()).collect();
    for node in others {
        let reject = |reason, message: String| Rejection {
            object: PeerName::Node(node.name.clone()),
            reason,
            message,
        };
        let annotations = match NodeAnnotations::parse(&node.annotations) {
            Ok(a) => a,
            Err(e) => {
                d.rejected
                    .push(reject(RejectReason::InvalidAnnotation, e.to_string()));
                continue;
            }
        };
        let Some(key) = annotations.public_key else {
            d.pending.push(node.name.clone());
            continue;
        };
        if node.pod_cidrs.is_empty() {
            d.pending.push(node.name.clone());
            continue;
        }
        if key == local.public_key {
            d.rejected.push(reject(
                RejectReason::DuplicatePublicKey,
                format!("public key {key} is this node's own"),
            ));
            continue;
        }
        if let Some(holder) = d.peers.get(&key) {
            d.rejected.push(reject(
                RejectReason::DuplicatePublicKey,
                format!("public key {key} is already used by node {}", holder.name),
            ));
            continue;
        }
        let cidrs = match parse_cidrs(&node.pod_cidrs) {
            Ok(c) => c,
            Err(e) => {
                d.rejected.push(reject(RejectReason::InvalidPodCidr, e));
                continue;
            }
        };
        if let Some((c, o)) = cidrs
            .iter()
            .flat_map(|c| own.iter().map(move |o| (c, o)))
            .find(|(c, o)| overlaps(c, o))
        {
            d.rejected.push(reject(
                RejectReason::OverlappingPodCidr,
                format!("pod CIDR {c} overlaps this node's pod CIDR {o}"),
            ));
            continue;
        }
        if let Some((c, (o, owner))) = cidrs
            .iter()
            .flat_map(|c| owners.iter().map(move |o| (c, o)))
            .find(|(c, (o, _))| overlaps(c, o))
        {
            d.rejected.push(reject(
                RejectReason::OverlappingPodCidr,
                format!("pod CIDR {c} overlaps {o} of node {owner}"),
            ));
            continue;
        }
        let chosen = annotations.force_endpoint.or(annotations.endpoint);
        let endpoint = match chosen {
            None => None,
            Some(Endpoint::Addr(a)) => Some(a),
            Some(Endpoint::Host { host, port }) => match resolve(&host, port) {
                Some(a) => Some(a),
                None => {
                    d.rejected.push(reject(
                        RejectReason::UnresolvableEndpoint,
                        format!("endpoint {host}:{port} does not resolve"),
                    ));
                    continue;
                }
            },
        };
        if let Some(a) = endpoint {
            underlay.push(a.ip());
        }
        for c in &cidrs {
            owners.push((*c, PeerName::Node(node.name.clone())));
            d.routes.insert(d.route_to(*c));
        }
        d.mesh_cidrs.extend(cidrs.iter().copied());
        d.peers.insert(
            key,
            DesiredPeer {
                name: PeerName::Node(node.name.clone()),
                public_key: key,
                endpoint,
                allowed_ips: cidrs,
                persistent_keepalive: annotations.persistent_keepalive,
                preshared_key: None,
            },
        );
    }
    add_external_peers(&mut d, local, external, &mut owners, &underlay, resolve);
    d.mesh_cidrs.sort();
    d.rejected.sort();
    d.pending.sort();
    Ok(d)
}

#[cfg(test)]
pub(crate) mod tests;
