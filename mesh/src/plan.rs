//! The plan: what must change to turn what a node observed into what it
//! should have. A plain value (innernet's `DeviceUpdate` idea): the agent
//! logs it and applies it; nothing here touches the kernel. An empty plan
//! means "in sync"; one node changing touches only that peer and its routes.
//! Each peer update says which fields differ and how ([`PeerField`], as
//! innernet's `PeerDiff` does), and [`Plan::describe`] gives one line per
//! change for the log.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::key::{PresharedKey, PublicKey};
use crate::model::{Desired, DesiredPeer, Route};

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

/// A field of a peer that the device has otherwise than desired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerField {
    Endpoint {
        from: Option<SocketAddr>,
        to: Option<SocketAddr>,
    },
    AllowedIps {
        added: Vec<IpNet>,
        removed: Vec<IpNet>,
    },
    PersistentKeepalive {
        from: Option<u16>,
        to: Option<u16>,
    },
    /// Set, changed or removed (never printed).
    PresharedKey,
}

fn or_none<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "none".to_string(), |v| v.to_string())
}

fn list(nets: &[IpNet]) -> String {
    let all: Vec<String> = nets.iter().map(IpNet::to_string).collect();
    all.join(",")
}

impl std::fmt::Display for PeerField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerField::Endpoint { from, to } => {
                write!(f, "endpoint {} -> {}", or_none(from), or_none(to))
            }
            PeerField::AllowedIps { added, removed } => {
                f.write_str("allowed IPs")?;
                if !added.is_empty() {
                    write!(f, " +{}", list(added))?;
                }
                if !removed.is_empty() {
                    write!(f, " -{}", list(removed))?;
                }
                Ok(())
            }
            PeerField::PersistentKeepalive { from, to } => {
                write!(f, "keepalive {} -> {}", or_none(from), or_none(to))
            }
            PeerField::PresharedKey => f.write_str("preshared key"),
        }
    }
}

/// One change to the device's peers. An update is applied as "remove and
/// add in one transaction" where the device cannot change a peer in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Add(DesiredPeer),
    /// `changed` says what differs (never empty).
    Update {
        peer: DesiredPeer,
        changed: Vec<PeerField>,
    },
    /// A peer the device has and the desired state does not.
    Remove(PublicKey),
}

impl PeerChange {
    pub fn key(&self) -> PublicKey {
        match self {
            PeerChange::Add(p) | PeerChange::Update { peer: p, .. } => p.public_key,
            PeerChange::Remove(k) => *k,
        }
    }

    /// The peer as it should be, unless it is removed.
    pub fn peer(&self) -> Option<&DesiredPeer> {
        match self {
            PeerChange::Add(p) | PeerChange::Update { peer: p, .. } => Some(p),
            PeerChange::Remove(_) => None,
        }
    }
}

impl std::fmt::Display for PeerChange {
    /// `add node n1 (allowed IPs 10.244.1.0/24, endpoint 192.0.2.11:51820)`,
    /// `update node n1: endpoint 192.0.2.11:51820 -> 203.0.113.7:4500`,
    /// `remove peer KEY: not in the desired state`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerChange::Add(p) => {
                write!(
                    f,
                    "add {} (allowed IPs {}, endpoint {}",
                    p.name.describe(),
                    list(&p.allowed_ips),
                    or_none(&p.endpoint)
                )?;
                if let Some(k) = p.persistent_keepalive {
                    write!(f, ", keepalive {k} s")?;
                }
                f.write_str(")")
            }
            PeerChange::Update { peer, changed } => {
                let why: Vec<String> = changed.iter().map(PeerField::to_string).collect();
                write!(f, "update {}: {}", peer.name.describe(), why.join("; "))
            }
            PeerChange::Remove(k) => write!(f, "remove peer {k}: not in the desired state"),
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
            match change.peer() {
                Some(p) => {
                    o.peers.insert(p.public_key, observed_peer(p));
                }
                None => {
                    o.peers.remove(&change.key());
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

    /// One line per change, in the order they are applied.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.set_up {
            out.push("bring the interface up".to_string());
        }
        if let Some(mtu) = self.set_mtu {
            out.push(format!("set the MTU to {mtu}"));
        }
        out.extend(
            self.remove_addresses
                .iter()
                .map(|a| format!("remove address {a}")),
        );
        out.extend(
            self.add_addresses
                .iter()
                .map(|a| format!("add address {a}")),
        );
        if let Some(port) = self.set_listen_port {
            out.push(format!("listen on port {port}"));
        }
        out.extend(self.peers.iter().map(PeerChange::to_string));
        out.extend(
            self.remove_routes
                .iter()
                .map(|r| format!("remove route {r}")),
        );
        out.extend(self.add_routes.iter().map(|r| format!("add route {r}")));
        if self.nft_ruleset.is_some() {
            out.push("load the masquerade table (missing, changed or edited)".to_string());
        }
        out
    }
}

/// What differs between the peer the device has and the one desired
/// (nothing: in sync).
fn differences(want: &DesiredPeer, have: &ObservedPeer) -> Vec<PeerField> {
    let mut changed = Vec::new();
    // A device learns a peer's endpoint from its packets (roaming): only a
    // configured endpoint that differs is a change.
    if want.endpoint.is_some() && want.endpoint != have.endpoint {
        changed.push(PeerField::Endpoint {
            from: have.endpoint,
            to: want.endpoint,
        });
    }
    if want.allowed_ips != have.allowed_ips {
        let missing = |a: &[IpNet], b: &[IpNet]| -> Vec<IpNet> {
            a.iter().filter(|n| !b.contains(n)).copied().collect()
        };
        changed.push(PeerField::AllowedIps {
            added: missing(&want.allowed_ips, &have.allowed_ips),
            removed: missing(&have.allowed_ips, &want.allowed_ips),
        });
    }
    if want.persistent_keepalive != have.persistent_keepalive {
        changed.push(PeerField::PersistentKeepalive {
            from: have.persistent_keepalive,
            to: want.persistent_keepalive,
        });
    }
    if want.preshared_key != have.preshared_key {
        changed.push(PeerField::PresharedKey);
    }
    changed
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
            Some(have) => {
                let changed = differences(want, have);
                if !changed.is_empty() {
                    p.peers.push(PeerChange::Update {
                        peer: want.clone(),
                        changed,
                    });
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::PresharedKey;
    use crate::model::PeerName;

    fn peer() -> DesiredPeer {
        DesiredPeer {
            name: PeerName::Node("n1".into()),
            public_key: PublicKey([1; 32]),
            endpoint: Some("192.0.2.11:51820".parse().unwrap()),
            allowed_ips: vec!["10.244.1.0/24".parse().unwrap()],
            persistent_keepalive: None,
            preshared_key: None,
        }
    }

    #[test]
    fn an_update_names_every_field_that_differs_and_how() {
        let want = DesiredPeer {
            allowed_ips: vec![
                "10.244.1.0/24".parse().unwrap(),
                "10.244.9.0/24".parse().unwrap(),
            ],
            persistent_keepalive: Some(25),
            preshared_key: Some(PresharedKey([3; 32])),
            ..peer()
        };
        let have = ObservedPeer {
            endpoint: Some("203.0.113.1:4500".parse().unwrap()),
            allowed_ips: vec![
                "10.244.1.0/24".parse().unwrap(),
                "10.99.0.0/16".parse().unwrap(),
            ],
            persistent_keepalive: None,
            preshared_key: None,
        };
        let changed = differences(&want, &have);
        let text: Vec<String> = changed.iter().map(PeerField::to_string).collect();
        assert_eq!(
            text,
            vec![
                "endpoint 203.0.113.1:4500 -> 192.0.2.11:51820",
                "allowed IPs +10.244.9.0/24 -10.99.0.0/16",
                "keepalive none -> 25",
                "preshared key",
            ]
        );
        assert!(
            !format!("{changed:?}").contains("[3, 3"),
            "the key itself is never shown"
        );
        assert!(differences(&peer(), &observed_peer(&peer())).is_empty());
    }

    #[test]
    fn each_change_of_a_plan_has_a_line() {
        let plan = Plan {
            set_up: true,
            add_addresses: vec!["10.244.0.1/32".parse().unwrap()],
            peers: vec![
                PeerChange::Add(peer()),
                PeerChange::Remove(PublicKey([2; 32])),
            ],
            add_routes: vec![Route {
                dst: "10.244.1.0/24".parse().unwrap(),
                src: Some("10.244.0.1".parse().unwrap()),
            }],
            nft_ruleset: Some(String::new()),
            ..Default::default()
        };
        let lines = plan.describe();
        assert_eq!(lines.len(), plan.operations(), "{lines:#?}");
        assert_eq!(lines[0], "bring the interface up");
        assert_eq!(
            lines[2],
            "add node n1 (allowed IPs 10.244.1.0/24, endpoint 192.0.2.11:51820)"
        );
        assert!(
            lines[3].starts_with("remove peer ") && lines[3].ends_with("not in the desired state")
        );
        assert_eq!(lines[4], "add route 10.244.1.0/24 src 10.244.0.1");
        assert!(Plan::default().describe().is_empty());
    }
}
