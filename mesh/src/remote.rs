//! Linked clusters in a node's desired state: every Node and `Peer` of a
//! linked cluster becomes a direct peer, after everything of this cluster.
//! A linked cluster whose pod CIDRs overlap what is already meshed (ours,
//! a Peer's, an earlier linked cluster's), or whose nodes' addresses lie in
//! such a range, is refused as a whole — never half-applied — so linking
//! cannot take traffic away from anything that works.

use std::net::SocketAddr;

use crate::admission::{overlaps, parse_cidrs, Declaration, Taken};
use crate::external::add_external_peers;
use crate::model::{ClusterRejection, Desired, LocalNode, NodeInfo, PeerName, RemoteCluster};
use crate::nodes::add_nodes;

/// Why `remote` cannot join the mesh as it stands in `d` and `taken`.
fn conflict(d: &Desired, remote: &RemoteCluster, taken: &Taken) -> Option<String> {
    let mut sorted: Vec<&NodeInfo> = remote.nodes.iter().collect();
    sorted.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    for node in sorted {
        let name = PeerName::node(Some(&remote.name), &node.name);
        // A malformed CIDR is that node's problem alone (rejected later).
        let cidrs = parse_cidrs(&node.pod_cidrs).unwrap_or_default();
        for c in &cidrs {
            if let Some(o) = d.own_pod_cidrs.iter().find(|o| overlaps(c, o)) {
                return Some(format!(
                    "pod CIDR {c} of node {name} overlaps this node's pod CIDR {o}"
                ));
            }
            if let Some((o, owner)) = taken.owners.iter().find(|(o, _)| overlaps(c, o)) {
                return Some(format!(
                    "pod CIDR {c} of node {name} overlaps {o} of {}",
                    owner.describe()
                ));
            }
        }
        for ip in &node.internal_ips {
            if let Some((o, owner)) = taken.owners.iter().find(|(o, _)| o.contains(ip)) {
                return Some(format!(
                    "node {name}'s address {ip} lies in {o} of {}",
                    owner.describe()
                ));
            }
        }
    }
    None
}

/// Adds each linked cluster (by name) to `d`, or refuses it whole into
/// `d.rejected_clusters`.
pub(crate) fn add_remote_clusters(
    d: &mut Desired,
    local: &LocalNode,
    remotes: &[RemoteCluster],
    taken: &mut Taken,
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) {
    let mut sorted: Vec<&RemoteCluster> = remotes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen: Vec<&str> = Vec::new();
    for remote in sorted {
        let refuse = |message: String| ClusterRejection {
            cluster: remote.name.clone(),
            message,
        };
        if seen.contains(&remote.name.as_str()) {
            d.rejected_clusters.push(refuse(format!(
                "cluster {} is linked twice: keep one Secret labelled with its name",
                remote.name
            )));
            continue;
        }
        seen.push(&remote.name);
        if let Some(why) = conflict(d, remote, taken) {
            d.rejected_clusters.push(refuse(format!(
                "{why}: linked clusters need pod CIDRs that do not overlap (kube-controller-manager --cluster-cidr); nothing of cluster {} is configured",
                remote.name
            )));
            continue;
        }
        let nodes: Vec<&NodeInfo> = remote.nodes.iter().collect();
        taken.underlay.extend(
            remote
                .nodes
                .iter()
                .flat_map(|n| n.internal_ips.iter().copied()),
        );
        let declaration = Declaration {
            ranges: &remote.declared,
            cluster: Some(&remote.name),
        };
        add_nodes(d, local, &nodes, declaration, taken, resolve);
        add_external_peers(d, local, &remote.external, declaration, taken, resolve);
    }
    d.rejected_clusters.sort();
}

#[cfg(test)]
mod tests;
