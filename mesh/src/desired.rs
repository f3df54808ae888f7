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

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::admission::{parse_cidrs, Declaration, Taken};
use crate::annotations::{parse_endpoint, Endpoint, NodeAnnotations};
use crate::external::add_external_peers;
use crate::model::{mesh_address, Desired, LocalError, LocalNode, MeshInputs, NodeInfo, SiteHints};
use crate::nat::NAT_KEEPALIVE;
use crate::nodes::add_nodes;
use crate::remote::add_remote_clusters;
use crate::sightings::Sightings;

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
    d.sightings = Sightings::from_annotations(
        nodes
            .iter()
            .chain(inputs.remotes.iter().flat_map(|r| &r.nodes))
            .map(|n| &n.annotations),
    );
    let mine = NodeAnnotations::parse(&me.annotations).unwrap_or_default();
    let published = mine.endpoint.as_ref().and_then(Endpoint::addr);
    d.public_endpoint = d.sightings.translated(&local.public_key, published);
    d.site_hints = SiteHints {
        location: mine.location.clone(),
        zone: me.zone.clone(),
    };
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

/// Every DNS name (with its port) an endpoint of `inputs` names — a Node's
/// endpoint or forced endpoint, a Peer's endpoint, of every cluster — so
/// that the agent resolves them all before computing the desired state
/// (off its async threads) and hands [`desired_mesh`] the answers.
pub fn hostnames(inputs: &MeshInputs<'_>) -> BTreeSet<(String, u16)> {
    let nodes = inputs
        .nodes
        .iter()
        .chain(inputs.remotes.iter().flat_map(|r| &r.nodes))
        .filter_map(|n| NodeAnnotations::parse(&n.annotations).ok())
        .flat_map(|a| [a.endpoint, a.force_endpoint]);
    let peers = inputs
        .external
        .iter()
        .chain(inputs.remotes.iter().flat_map(|r| &r.external))
        .filter_map(|p| parse_endpoint(p.endpoint.as_deref()?).ok());
    nodes
        .flatten()
        .chain(peers)
        .filter_map(|e| match e {
            Endpoint::Host { host, port } => Some((host, port)),
            Endpoint::Addr(_) => None,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
