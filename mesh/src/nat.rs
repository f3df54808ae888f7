//! NAT traversal from what the mesh itself sees. Every agent publishes, as
//! its Node's `trellis.dev/discovered-endpoints`, where its live sessions'
//! packets come from; together these are the [`Sightings`]. A node that the
//! others see at another address than the one it published is behind a
//! NAT: the others dial it there (for two endpoint-independent NATs that is
//! hole punching: both sides send to each other's public mapping until the
//! routers let the packets in), and every pair with a node behind NAT — or
//! with an address that is not routed on the Internet — gets a persistent
//! keepalive, which keeps the NAT mappings open and keeps handshakes going
//! so that a path that does not work is noticed (see [`crate::relay`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::annotations::NodeAnnotations;
use crate::desired::{Desired, NodeInfo};
use crate::key::PublicKey;

/// Keepalive (seconds) of a pair with a node behind NAT, unless an
/// annotation sets one: below the 30 s most NAT routers keep an idle UDP
/// mapping.
pub const NAT_KEEPALIVE: u16 = 25;

/// A session whose last handshake is younger than this is live: WireGuard
/// rekeys every 120 s while packets (keepalives included) flow, and gives a
/// handshake 15 s of retries.
pub const SESSION_ALIVE: Duration = Duration::from_secs(135);

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
    /// The sightings published on `nodes` (of every cluster). A node whose
    /// annotations do not parse is left out here as everywhere else; what a
    /// node says about itself is ignored.
    pub fn from_nodes<'a>(nodes: impl IntoIterator<Item = &'a NodeInfo>) -> Self {
        let mut out = Sightings::default();
        for node in nodes {
            let Ok(parsed) = NodeAnnotations::parse(&node.annotations) else {
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

/// What one peer's session looks like on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Where its packets come from now.
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
}

/// Whether a session whose last handshake was at `handshake` is live at `now`.
pub fn is_live(handshake: Option<SystemTime>, now: SystemTime) -> bool {
    handshake
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age < SESSION_ALIVE)
}

/// What this node publishes as its discovered endpoints: every peer of
/// `desired` with a live session whose endpoint matters to the others — a
/// pair kept alive (NAT in the way, or someone asked for a keepalive) or a
/// peer that roamed away from its configured endpoint.
pub fn discovered_endpoints(
    desired: &Desired,
    sessions: &BTreeMap<PublicKey, Session>,
    now: SystemTime,
) -> BTreeMap<PublicKey, SocketAddr> {
    desired
        .peers
        .iter()
        .filter_map(|(key, want)| {
            let s = sessions.get(key)?;
            let at = s.endpoint?;
            let matters = want.persistent_keepalive.is_some() || want.endpoint != Some(at);
            let direct = !desired.relayed.contains_key(key);
            (matters && direct && is_live(s.last_handshake, now)).then_some((*key, at))
        })
        .collect()
}

#[cfg(test)]
mod tests;
