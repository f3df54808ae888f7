//! External peers — machines outside the cluster described by `Peer`
//! objects — validated and added to a node's desired state after every
//! node: a Peer may not reuse a node's (or an older Peer's) key, claim
//! addresses a node or an older Peer owns, or cover an address the mesh's
//! own tunnels run over. A bad Peer is left out with a reason; nothing else
//! changes.

use std::net::SocketAddr;

use ipnet::IpNet;

use crate::admission::{key_taken, overlaps, Declaration, Refusal, Taken};
use crate::annotations::{parse_endpoint, Endpoint};
use crate::key::PublicKey;
use crate::model::{
    Desired, DesiredPeer, ExternalPeerInfo, LocalNode, PeerName, PresharedKeySource, RejectReason,
};
use crate::ranges;

/// Validates `peer` against what `d` already holds; the peer as it should
/// be configured, or why it is left out.
fn validate(
    d: &Desired,
    local: &LocalNode,
    peer: &ExternalPeerInfo,
    name: PeerName,
    declaration: Declaration<'_>,
    taken: &Taken,
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) -> Result<DesiredPeer, Refusal> {
    use RejectReason::*;
    let key: PublicKey = peer
        .public_key
        .parse()
        .map_err(|e: crate::key::KeyError| (InvalidPeerSpec, format!("spec.publicKey: {e}")))?;
    if let Some(why) = key_taken(d, local, &key) {
        return Err((DuplicatePublicKey, why).into());
    }
    if peer.allowed_ips.is_empty() {
        return Err((
            InvalidPeerSpec,
            "spec.allowedIPs is empty: list the addresses routed to the peer".into(),
        )
            .into());
    }
    let mut allowed: Vec<IpNet> = Vec::new();
    for text in &peer.allowed_ips {
        let net: IpNet = text.parse().map_err(|_| {
            (
                InvalidPeerSpec,
                format!("spec.allowedIPs: {text:?} is not a CIDR"),
            )
        })?;
        if net.trunc() != net {
            return Err((
                InvalidPeerSpec,
                format!(
                    "spec.allowedIPs: {text} has host bits set (write {})",
                    net.trunc()
                ),
            )
                .into());
        }
        allowed.push(net);
    }
    allowed.sort();
    allowed.dedup();
    if let Some(why) = ranges::never_routed_claim(&allowed, "allowed IP") {
        return Err(why.into());
    }
    for net in &allowed {
        if let Some(own) = d.own_pod_cidrs.iter().find(|o| overlaps(net, o)) {
            return Err((
                OverlappingAllowedIps,
                format!(
                    "allowed IP {net} overlaps node {}'s pod CIDR {own}",
                    local.name
                ),
            )
                .into());
        }
        if let Some((o, owner)) = taken.owners.iter().find(|(o, _)| overlaps(net, o)) {
            let what = if owner.is_node() {
                format!("pod CIDR {o} of {}", owner.describe())
            } else {
                format!("allowed IP {o} of {owner}")
            };
            return Err((
                OverlappingAllowedIps,
                format!("allowed IP {net} overlaps {what}"),
            )
                .into());
        }
        if let Some(ip) = taken.underlay.iter().find(|ip| net.contains(*ip)) {
            return Err((
                OverlappingAllowedIps,
                format!("allowed IP {net} contains {ip}, an address the mesh's tunnels run over"),
            )
                .into());
        }
    }
    if let Some(why) = allowed
        .iter()
        .find_map(|net| declaration.allowed_ip_outside(net))
    {
        return Err(why.into());
    }
    let endpoint = match &peer.endpoint {
        None => None,
        Some(text) => match parse_endpoint(text)
            .map_err(|r| (InvalidPeerSpec, format!("spec.endpoint {text:?}: {r}")))?
        {
            Endpoint::Addr(a) => Some(a),
            Endpoint::Host { host, port } => Some(resolve(&host, port).ok_or_else(|| {
                (
                    UnresolvableEndpoint,
                    format!("endpoint {host}:{port} does not resolve"),
                )
            })?),
        },
    };
    let persistent_keepalive = match peer.persistent_keepalive {
        None | Some(0) => None,
        Some(s) => Some(u16::try_from(s).map_err(|_| {
            (
                InvalidPeerSpec,
                format!("spec.persistentKeepalive {s} is above 65535 seconds"),
            )
        })?),
    };
    // Behind a NAT, this node keeps the mapping to a machine it can dial
    // open: otherwise only the machine could start a session.
    let persistent_keepalive = persistent_keepalive.or(endpoint.and(d.keepalive));
    let preshared_key = match &peer.preshared_key {
        PresharedKeySource::None => None,
        PresharedKeySource::Key(k) => Some(*k),
        PresharedKeySource::Unavailable(why) => {
            return Err((PresharedKeyUnavailable, why.clone()).into())
        }
    };
    Ok(DesiredPeer {
        name,
        public_key: key,
        endpoint,
        allowed_ips: allowed,
        persistent_keepalive,
        preshared_key,
    })
}

/// Adds every valid external peer of the cluster `declaration` speaks for to `d`
/// (oldest first), with a route per allowed range and the ranges exempt
/// from masquerading; the others go to `d.rejected`. `taken` holds what
/// accepted peers own and grows with each accepted one.
pub(crate) fn add_external_peers(
    d: &mut Desired,
    local: &LocalNode,
    peers: &[ExternalPeerInfo],
    declaration: Declaration<'_>,
    taken: &mut Taken,
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) {
    let mut sorted: Vec<&ExternalPeerInfo> = peers.iter().collect();
    sorted.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    for peer in sorted {
        let name = PeerName::external(declaration.cluster, &peer.name);
        match validate(d, local, peer, name.clone(), declaration, taken, resolve) {
            Ok(p) => {
                for net in &p.allowed_ips {
                    taken.owners.push((*net, p.name.clone()));
                    d.routes.insert(d.route_to(*net));
                }
                d.mesh_cidrs.extend(p.allowed_ips.iter().copied());
                d.peers.insert(p.public_key, p);
            }
            Err(refusal) => d.rejected.push(refusal.into_rejection(name)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
