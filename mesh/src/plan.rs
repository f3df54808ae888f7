//! The plan: what must change to turn what a node observed into what it
//! should have. A plain value (innernet's `DeviceUpdate` idea): the agent
//! logs it and applies it; nothing here touches the kernel. An empty plan
//! means "in sync"; one node changing touches only that peer and its routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::desired::{Desired, DesiredPeer};
use crate::key::{PresharedKey, PublicKey};

/// A route over the WireGuard interface, with the preferred source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub src: Option<IpAddr>,
}

/// A peer as the device has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPeer {
    pub endpoint: Option<SocketAddr>,
    /// Sorted.
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<PresharedKey>,
}

/// What the node has: read back from the device and the kernel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub listen_port: Option<u16>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub addresses: Vec<IpNet>,
    pub peers: BTreeMap<PublicKey, ObservedPeer>,
    /// Only routes with the agent's own protocol number.
    pub routes: BTreeSet<Route>,
    /// The masquerade ruleset in place (None when the table is missing).
    pub nft_ruleset: Option<String>,
}

impl Observed {
    /// What a device holding exactly `desired` looks like.
    pub fn of(desired: &Desired, nft_ruleset: &str) -> Observed {
        Observed {
            listen_port: Some(desired.listen_port),
            mtu: Some(desired.mtu),
            up: true,
            addresses: sorted(desired.addresses.clone()),
            peers: desired
                .peers
                .iter()
                .map(|(k, p)| (*k, observed_peer(p)))
                .collect(),
            routes: desired.routes.clone(),
            nft_ruleset: Some(nft_ruleset.to_string()),
        }
    }
}

fn sorted(mut v: Vec<IpNet>) -> Vec<IpNet> {
    v.sort();
    v
}

fn observed_peer(p: &DesiredPeer) -> ObservedPeer {
    ObservedPeer {
        endpoint: p.endpoint,
        allowed_ips: p.allowed_ips.clone(),
        persistent_keepalive: p.persistent_keepalive,
        preshared_key: p.preshared_key,
    }
}

/// One change to the device's peers. An update is applied as "remove and
/// add in one transaction" where the device cannot change a peer in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Add(DesiredPeer),
    Update(DesiredPeer),
    Remove(PublicKey),
}

impl PeerChange {
    pub fn key(&self) -> PublicKey {
        match self {
            PeerChange::Add(p) | PeerChange::Update(p) => p.public_key,
            PeerChange::Remove(k) => *k,
        }
    }
}

/// The minimal set of changes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub set_listen_port: Option<u16>,
    pub set_mtu: Option<u32>,
    pub set_up: bool,
    pub add_addresses: Vec<IpNet>,
    pub remove_addresses: Vec<IpNet>,
    pub peers: Vec<PeerChange>,
    pub add_routes: Vec<Route>,
    pub remove_routes: Vec<Route>,
    pub nft_ruleset: Option<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }

    /// How many dataplane operations applying the plan takes.
    pub fn operations(&self) -> usize {
        usize::from(self.set_listen_port.is_some())
            + usize::from(self.set_mtu.is_some())
            + usize::from(self.set_up)
            + self.add_addresses.len()
            + self.remove_addresses.len()
            + self.peers.len()
            + self.add_routes.len()
            + self.remove_routes.len()
            + usize::from(self.nft_ruleset.is_some())
    }

    /// What `observed` becomes once the plan is applied (the model the
    /// property tests check the plan against).
    pub fn applied_to(&self, observed: &Observed) -> Observed {
        let mut o = observed.clone();
        if let Some(p) = self.set_listen_port {
            o.listen_port = Some(p);
        }
        if let Some(m) = self.set_mtu {
            o.mtu = Some(m);
        }
        o.up |= self.set_up;
        o.addresses.retain(|a| !self.remove_addresses.contains(a));
        o.addresses.extend(self.add_addresses.iter().copied());
        o.addresses.sort();
        for change in &self.peers {
            match change {
                PeerChange::Add(p) | PeerChange::Update(p) => {
                    o.peers.insert(p.public_key, observed_peer(p));
                }
                PeerChange::Remove(k) => {
                    o.peers.remove(k);
                }
            }
        }
        for r in &self.remove_routes {
            o.routes.remove(r);
        }
        o.routes.extend(self.add_routes.iter().copied());
        if let Some(n) = &self.nft_ruleset {
            o.nft_ruleset = Some(n.clone());
        }
        o
    }
}

fn peer_matches(want: &DesiredPeer, have: &ObservedPeer) -> bool {
    // A device learns a peer's endpoint from its packets (roaming): only a
    // configured endpoint that differs is a change.
    let endpoint_ok = want.endpoint.is_none() || want.endpoint == have.endpoint;
    endpoint_ok
        && want.allowed_ips == have.allowed_ips
        && want.persistent_keepalive == have.persistent_keepalive
        && want.preshared_key == have.preshared_key
}

/// The changes that turn `observed` into `desired` (with `nft_ruleset` the
/// masquerade ruleset of `desired`).
pub fn plan(desired: &Desired, nft_ruleset: &str, observed: &Observed) -> Plan {
    let mut p = Plan {
        set_listen_port: (observed.listen_port != Some(desired.listen_port))
            .then_some(desired.listen_port),
        set_mtu: (observed.mtu != Some(desired.mtu)).then_some(desired.mtu),
        set_up: !observed.up,
        ..Default::default()
    };
    let want_addrs = sorted(desired.addresses.clone());
    p.add_addresses = want_addrs
        .iter()
        .filter(|a| !observed.addresses.contains(a))
        .copied()
        .collect();
    p.remove_addresses = observed
        .addresses
        .iter()
        .filter(|a| !want_addrs.contains(a))
        .copied()
        .collect();
    for (key, want) in &desired.peers {
        match observed.peers.get(key) {
            None => p.peers.push(PeerChange::Add(want.clone())),
            Some(have) if !peer_matches(want, have) => {
                p.peers.push(PeerChange::Update(want.clone()))
            }
            Some(_) => {}
        }
    }
    for key in observed.peers.keys() {
        if !desired.peers.contains_key(key) {
            p.peers.push(PeerChange::Remove(*key));
        }
    }
    p.add_routes = desired
        .routes
        .difference(&observed.routes)
        .copied()
        .collect();
    p.remove_routes = observed
        .routes
        .difference(&desired.routes)
        .copied()
        .collect();
    if observed.nft_ruleset.as_deref() != Some(nft_ruleset) {
        p.nft_ruleset = Some(nft_ruleset.to_string());
    }
    p
}
