//! This cluster's (or a linked cluster's) Nodes as peers: each valid node
//! becomes a direct peer with its pod CIDRs as AllowedIPs (never an
//! annotation's claim), oldest first; the others are pending (no key or pod
//! CIDR yet) or rejected with a reason.

use std::net::{IpAddr, SocketAddr};

use crate::admission::{key_taken, overlaps, parse_cidrs, Declaration, Refusal, Taken};
use crate::annotations::{Endpoint, NodeAnnotations};
use crate::model::{
    Candidate, CandidateKind, Candidates, Desired, DesiredPeer, LocalNode, NodeInfo, PeerName,
    RejectReason, SiteHints,
};
use crate::nat::NAT_KEEPALIVE;
use crate::ranges::{self, Undeclared};

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
            Ok(Some((peer, relay, candidates))) => {
                if let Some(c) = candidates {
                    d.candidates.insert(peer.public_key, c);
                }
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

/// `node` as a peer (whether it offers to relay, and its candidate
/// endpoints when it has more than one), `None` when it is not ready yet
/// (no key or pod CIDR), or why it is left out.
fn validate_node(
    d: &Desired,
    local: &LocalNode,
    node: &NodeInfo,
    name: &PeerName,
    declaration: Declaration<'_>,
    taken: &Taken,
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) -> Result<Option<(DesiredPeer, bool, Option<Candidates>)>, Refusal> {
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
    // the others see it, unless someone forced an endpoint; a node of this
    // node's own site (seen at this node's public address, or hinted so) is
    // dialled on the site's network first.
    let published = if forced { own_endpoint } else { configured };
    let public = d.sightings.translated(&key, published);
    let hints = SiteHints {
        location: annotations.location.clone(),
        zone: node.zone.clone(),
    };
    let hinted = d
        .site_hints
        .shared_with(&hints, declaration.cluster.is_none());
    let seen_together = public.is_some_and(|p| same_site(d.public_endpoint, p));
    let candidates = match (forced, published) {
        (false, Some(lan)) if seen_together || hinted => {
            Candidates::new(site_candidates(lan, &node.internal_ips, public))
        }
        _ => None,
    };
    let endpoint = match (&candidates, forced) {
        (Some(c), _) => Some(c.current().endpoint),
        (None, true) => configured,
        (None, false) => public.or(configured),
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
        candidates,
    )))
}

/// A site-mate's candidate endpoints, best first: the endpoint it
/// published, its other node addresses (either family, at the published
/// port), then its public mapping (when the others see it behind a NAT).
fn site_candidates(
    published: SocketAddr,
    internal_ips: &[IpAddr],
    public: Option<SocketAddr>,
) -> Vec<Candidate> {
    let mut lan = vec![published];
    for ip in internal_ips {
        let at = SocketAddr::new(*ip, published.port());
        if !lan.contains(&at) && Some(at) != public {
            lan.push(at);
        }
    }
    lan.into_iter()
        .map(|endpoint| Candidate {
            kind: CandidateKind::Lan,
            endpoint,
        })
        .chain(public.map(|endpoint| Candidate {
            kind: CandidateKind::Public,
            endpoint,
        }))
        .collect()
}

/// Whether a node seen at `public` shares this node's site: the others see
/// both at one public address (this node's is `local_public`), so both sit
/// behind one NAT, where its public mapping needs the NAT to hairpin and
/// its own address may well be reachable.
pub fn same_site(local_public: Option<SocketAddr>, public: SocketAddr) -> bool {
    local_public.is_some_and(|l| l.ip() == public.ip())
}
