//! WireGuard configurations as text, computed with the agents' own logic
//! (trellis-mesh's desired state): a node's (`showconf node`) and the one
//! for a Peer's machine, which sees every node as a peer (`peer add`,
//! `showconf peer`). Pure: a snapshot in, text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};

use ipnet::IpNet;
use trellis_mesh::names::{ANNOTATION_PUBLIC_KEY, DEFAULT_INTERFACE, DEFAULT_LISTEN_PORT};
use trellis_mesh::{
    desired_mesh, Desired, DesiredPeer, ExternalPeerInfo, LocalNode, MeshInputs, NodeInfo,
    PeerName, PublicKey,
};

use crate::cluster::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum WgConfError {
    #[error("there is no Node {0}")]
    NoSuchNode(String),
    #[error("there is no Peer {0} (kubectl get peers lists them)")]
    NoSuchPeer(String),
    #[error("node {0} has no trellis.dev/public-key annotation yet: is the Trellis agent running there?")]
    NoKey(String),
    #[error("{0}")]
    Mesh(String),
}

/// The system resolver, for DNS endpoints.
pub fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

fn public_key_of(info: &NodeInfo) -> Result<PublicKey, WgConfError> {
    info.annotations
        .get(ANNOTATION_PUBLIC_KEY)
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| WgConfError::NoKey(info.name.clone()))
}

/// What node `name`'s agent configures, from the snapshot.
pub fn node_desired(snapshot: &Snapshot, name: &str) -> Result<Desired, WgConfError> {
    let infos = snapshot.node_infos();
    let me = infos
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| WgConfError::NoSuchNode(name.into()))?;
    let listen_port = trellis_mesh::annotations::NodeAnnotations::parse(&me.annotations)
        .ok()
        .and_then(|a| a.endpoint?.addr())
        .map(|a| a.port())
        .unwrap_or(DEFAULT_LISTEN_PORT);
    let local = LocalNode {
        name: name.into(),
        public_key: public_key_of(me)?,
        interface: DEFAULT_INTERFACE.into(),
        listen_port,
        mtu: 1420,
    };
    let external = snapshot.external_infos();
    desired_mesh(&local, &inputs(snapshot, &infos, &external), &resolve)
        .map_err(|e| WgConfError::Mesh(e.to_string()))
}

fn inputs<'a>(
    snapshot: &'a Snapshot,
    nodes: &'a [NodeInfo],
    external: &'a [ExternalPeerInfo],
) -> MeshInputs<'a> {
    MeshInputs {
        nodes,
        external,
        remotes: &snapshot.remotes,
        declared: &snapshot.declared,
    }
}

/// Why the agents would refuse `peer` next to the cluster's nodes and
/// Peers (judged by the first node that is in the mesh), if they would.
pub fn refusal(snapshot: &Snapshot, peer: &ExternalPeerInfo) -> Option<String> {
    let infos = snapshot.node_infos();
    let mut external = snapshot.external_infos();
    external.retain(|p| p.name != peer.name);
    external.push(peer.clone());
    for node in &infos {
        let Ok(key) = public_key_of(node) else {
            continue;
        };
        let local = LocalNode {
            name: node.name.clone(),
            public_key: key,
            interface: DEFAULT_INTERFACE.into(),
            listen_port: DEFAULT_LISTEN_PORT,
            mtu: 1420,
        };
        if let Ok(d) = desired_mesh(&local, &inputs(snapshot, &infos, &external), &resolve) {
            let name = PeerName::External(peer.name.clone());
            return d
                .rejected
                .into_iter()
                .find(|r| r.object == name)
                .map(|r| r.message);
        }
    }
    None
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn peer_section(out: &mut String, p: &DesiredPeer, psk_note: Option<&str>, keepalive: Option<u16>) {
    let _ = writeln!(out, "\n[Peer]\n# {}", p.name);
    let _ = writeln!(out, "PublicKey = {}", p.public_key);
    if let Some(note) = psk_note {
        let _ = writeln!(out, "# PresharedKey = <{note}>");
    }
    if let Some(e) = p.endpoint {
        let _ = writeln!(out, "Endpoint = {e}");
    }
    let _ = writeln!(out, "AllowedIPs = {}", join(&p.allowed_ips));
    if let Some(k) = keepalive.or(p.persistent_keepalive) {
        let _ = writeln!(out, "PersistentKeepalive = {k}");
    }
}

fn sorted_peers(d: &Desired) -> Vec<&DesiredPeer> {
    let mut peers: Vec<&DesiredPeer> = d.peers.values().collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers
}

/// Node `name`'s configuration in `wg showconf` form (no private key).
pub fn node_config(snapshot: &Snapshot, name: &str) -> Result<String, WgConfError> {
    let d = node_desired(snapshot, name)?;
    let secret_refs: BTreeMap<String, String> = snapshot
        .peers
        .iter()
        .filter_map(|p| {
            let r = p.spec.preshared_key_secret_ref.as_ref()?;
            Some((
                p.metadata.name.clone()?,
                format!("from Secret {}/{}", r.namespace, r.name),
            ))
        })
        .collect();
    let mut out = format!(
        "# Node {name}'s WireGuard interface {} as Trellis configures it.\n",
        d.interface
    );
    out.push_str("# The private key never leaves the node.\n[Interface]\n");
    let _ = writeln!(out, "ListenPort = {}", d.listen_port);
    let _ = writeln!(out, "# Address = {}", join(&d.addresses));
    for p in sorted_peers(&d) {
        let note = match &p.name {
            PeerName::External(n) => secret_refs.get(n).map(String::as_str),
            _ => None,
        };
        peer_section(&mut out, p, note, None);
    }
    for r in &d.rejected {
        let _ = writeln!(out, "\n# Left out: {}: {}", r.object, r.message);
    }
    Ok(out)
}

/// The address a machine takes in each allowed range: the address itself
/// for a host prefix, else the range's first host.
fn machine_addresses(allowed: &[IpNet]) -> Vec<IpNet> {
    allowed
        .iter()
        .map(|n| {
            if n.prefix_len() == n.max_prefix_len() {
                *n
            } else {
                trellis_mesh::model::mesh_address(n)
            }
        })
        .collect()
}

/// The configuration for Peer `name`'s machine: every node in the mesh as
/// a peer, for wg-quick. `private_key` goes in when known (`--generate`).
pub fn external_config(
    snapshot: &Snapshot,
    name: &str,
    private_key: Option<&str>,
) -> Result<String, WgConfError> {
    let peer = snapshot
        .peer(name)
        .ok_or_else(|| WgConfError::NoSuchPeer(name.into()))?;
    external_config_for(
        snapshot,
        &peer.external_peer_info(Default::default()),
        private_key,
        25,
    )
}

/// [`external_config`] for a Peer not necessarily created yet.
pub fn external_config_for(
    snapshot: &Snapshot,
    peer: &ExternalPeerInfo,
    private_key: Option<&str>,
    keepalive: u16,
) -> Result<String, WgConfError> {
    let public_key: PublicKey = peer
        .public_key
        .parse()
        .map_err(|e: trellis_mesh::key::KeyError| WgConfError::Mesh(e.to_string()))?;
    // The machine's view: the mesh as computed for a node that has the
    // machine's key and addresses ("peer/NAME" cannot be a Node's name).
    let view_name = format!("peer/{}", peer.name);
    let mut infos = snapshot.node_infos();
    infos.push(NodeInfo {
        name: view_name.clone(),
        created: i64::MAX,
        pod_cidrs: peer.allowed_ips.clone(),
        internal_ips: vec![],
        annotations: [(ANNOTATION_PUBLIC_KEY.to_string(), peer.public_key.clone())].into(),
        zone: None,
    });
    let local = LocalNode {
        name: view_name,
        public_key,
        interface: DEFAULT_INTERFACE.into(),
        listen_port: DEFAULT_LISTEN_PORT,
        mtu: 1420,
    };
    // The machine's own ranges stand in for a node's pod CIDRs in this
    // view: whether the cluster's declaration admits them is `refusal`'s
    // question, answered below.
    let mut view = snapshot.clone();
    view.declared.pods.extend(
        peer.allowed_ips
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok()),
    );
    let d = desired_mesh(&local, &inputs(&view, &infos, &[]), &resolve)
        .map_err(|e| WgConfError::Mesh(e.to_string()))?;
    let mut out = format!(
        "# WireGuard configuration for Trellis Peer {} (wg-quick format).\n",
        peer.name
    );
    out.push_str("# Every node (of this cluster and the linked ones) is a peer: pods are\n# reached directly, over one hop.\n");
    if let Some(why) = refusal(snapshot, peer) {
        let _ = writeln!(out, "# WARNING: the nodes refuse this Peer: {why}");
    }
    out.push_str("[Interface]\n");
    match private_key {
        Some(k) => {
            let _ = writeln!(out, "PrivateKey = {k}");
        }
        None => {
            let _ = writeln!(out, "PrivateKey = <the private key of {}>", peer.public_key);
        }
    }
    let own: Vec<IpNet> = peer
        .allowed_ips
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let _ = writeln!(out, "Address = {}", join(&machine_addresses(&own)));
    // Nodes dial the machine at its endpoint: it listens on that port.
    if let Some(port) = peer
        .endpoint
        .as_deref()
        .and_then(|e| e.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
    {
        let _ = writeln!(out, "ListenPort = {port}");
    }
    let keepalive = (keepalive > 0).then_some(keepalive);
    for p in sorted_peers(&d) {
        peer_section(&mut out, p, None, keepalive);
    }
    for r in &d.rejected {
        let _ = writeln!(out, "\n# Left out: {}: {}", r.object.describe(), r.message);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
