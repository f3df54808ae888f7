//! The rules every candidate peer passes, shared by nodes, `Peer` objects
//! and linked clusters: what accepted peers already hold ([`Taken`]), the
//! ranges a cluster declared ([`Declaration`]), key and range conflicts,
//! and why a candidate was refused ([`Refusal`]).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::key::PublicKey;
use crate::model::{Desired, LocalNode, PeerName, RejectReason, Rejection};
use crate::ranges::{self, DeclaredRanges, Undeclared};

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

/// What accepted peers hold: their ranges (with who owns each) and the
/// addresses the tunnels run over.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub owners: Vec<(IpNet, PeerName)>,
    pub underlay: Vec<IpAddr>,
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
