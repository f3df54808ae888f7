//! Where each node sees its peers ([`Sightings`]), from the
//! `trellis.dev/discovered-endpoints` every agent publishes: a node seen
//! elsewhere than it published is behind a NAT and is dialled where most
//! nodes see it (see [`crate::nat`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::annotations::NodeAnnotations;
use crate::key::PublicKey;

/// Whether `ip` lies in a range the Internet does not route (RFC 1918,
/// shared address space of carrier-grade NAT, link-local, unique local):
/// a node with such an endpoint may well be behind a NAT.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private() || a.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Where each node sees its peers: reporter's key → peer's key → address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sightings(BTreeMap<PublicKey, BTreeMap<PublicKey, SocketAddr>>);

impl Sightings {
    /// The sightings published in the annotations of every node (of every
    /// cluster). A node whose annotations do not parse is left out here as
    /// everywhere else; what a node says about itself is ignored.
    pub fn from_annotations<'a>(
        nodes: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
    ) -> Self {
        let mut out = Sightings::default();
        for annotations in nodes {
            let Ok(parsed) = NodeAnnotations::parse(annotations) else {
                continue;
            };
            let Some(reporter) = parsed.public_key else {
                continue;
            };
            out.record(reporter, &parsed.discovered_endpoints);
        }
        out
    }

    /// Adds what `reporter` sees.
    pub fn record(&mut self, reporter: PublicKey, seen: &BTreeMap<PublicKey, SocketAddr>) {
        let entry = self.0.entry(reporter).or_default();
        entry.extend(seen.iter().filter(|(k, _)| **k != reporter));
    }

    /// Whether `reporter` has a live session with `peer`.
    pub fn sees(&self, reporter: &PublicKey, peer: &PublicKey) -> bool {
        self.0.get(reporter).is_some_and(|m| m.contains_key(peer))
    }

    /// Where the others see `key`, when that is not `published`: the address
    /// most of them report (ties: the lowest). `None` when every report
    /// agrees with `published` (no NAT in the way) or there is none.
    pub fn translated(&self, key: &PublicKey, published: Option<SocketAddr>) -> Option<SocketAddr> {
        let mut votes: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for seen in self.0.values() {
            if let Some(addr) = seen.get(key).filter(|a| Some(**a) != published) {
                *votes.entry(*addr).or_default() += 1;
            }
        }
        let most = votes.values().copied().max()?;
        votes.into_iter().find(|(_, n)| *n == most).map(|(a, _)| a)
    }

    /// Whether the node `key` (which published `published`) is, or may be,
    /// behind a NAT: the others see it elsewhere, or its address is private.
    pub fn behind_nat(&self, key: &PublicKey, published: Option<SocketAddr>) -> bool {
        published.is_some_and(|p| is_private(p.ip())) || self.translated(key, published).is_some()
    }
}
