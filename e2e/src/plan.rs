//! The lab's address and name plan, as pure functions: which underlay
//! ranges a lab uses, which address a host index gets, what a namespace or
//! link is called. Kept apart from the code that creates things so it can be
//! unit tested and so `down` can find everything by name alone.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Prefix of every network namespace the lab creates.
pub const NETNS_PREFIX: &str = "tl-";
/// How many labs can run at once: one underlay /24 each.
pub const MAX_LABS: u8 = 8;
/// Port every apiserver listens on (each cluster has its own namespace).
pub const APISERVER_PORT: u16 = 6443;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("invalid lab or cluster name {0:?}: use 1-10 characters a-z and 0-9, starting with a letter")]
    BadName(String),
    #[error("invalid node name {0:?}: use 1-20 characters a-z, 0-9 and '-'")]
    BadNodeName(String),
    #[error("the underlay of lab slot {slot} is full ({max} hosts)")]
    UnderlayFull { slot: u8, max: u8 },
}

/// Which address families the lab (underlay and pod CIDRs) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
    #[default]
    Dual,
}

impl IpFamily {
    pub fn has_v4(self) -> bool {
        matches!(self, IpFamily::Ipv4 | IpFamily::Dual)
    }
    pub fn has_v6(self) -> bool {
        matches!(self, IpFamily::Ipv6 | IpFamily::Dual)
    }
}

/// Lab and cluster names become parts of namespace and link names.
pub fn validate_name(name: &str) -> Result<(), PlanError> {
    let mut chars = name.chars();
    let ok = (1..=10).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    ok.then_some(())
        .ok_or_else(|| PlanError::BadName(name.to_string()))
}

/// Node names are DNS labels; kept short so namespace names stay readable.
pub fn validate_node_name(name: &str) -> Result<(), PlanError> {
    let ok = (1..=20).contains(&name.len())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then_some(())
        .ok_or_else(|| PlanError::BadNodeName(name.to_string()))
}

/// The underlay of lab slot `slot`: an IPv4 /24 that is never routed on the
/// internet — the three documentation ranges (RFC 5737) first, then /24s of
/// the benchmarking range 198.18.0.0/15 (RFC 2544) — and an IPv6
/// documentation /64 (RFC 3849). Slots whose ranges the host itself uses are
/// skipped (see [`slot_conflicts`]): some machines sit on 192.0.2.0/24.
pub fn underlay(slot: u8) -> (Ipv4Net, Ipv6Net) {
    let v4 = match slot {
        0 => Ipv4Addr::new(192, 0, 2, 0),
        1 => Ipv4Addr::new(198, 51, 100, 0),
        2 => Ipv4Addr::new(203, 0, 113, 0),
        n => Ipv4Addr::new(198, 18, n - 3, 0),
    };
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, u16::from(slot), 0, 0, 0, 0, 0);
    (
        Ipv4Net::new(v4, 24).expect("24 is a valid prefix"),
        Ipv6Net::new(v6, 64).expect("64 is a valid prefix"),
    )
}

/// Whether the underlay of `slot` overlaps a network the host already has
/// (an address or a route other than a default route).
pub fn slot_conflicts(slot: u8, host_networks: &[IpNet]) -> bool {
    let (v4, v6) = underlay(slot);
    let ours = [IpNet::V4(v4), IpNet::V6(v6)];
    host_networks
        .iter()
        .filter(|n| n.prefix_len() > 0)
        .any(|host| {
            ours.iter()
                .any(|o| o.contains(&host.network()) || host.contains(&o.network()))
        })
}

/// Host `index` of the underlay (1 is the host's own link; 0 and 255 are
/// never handed out).
pub fn underlay_addr(slot: u8, index: u8) -> Result<(Ipv4Addr, Ipv6Addr), PlanError> {
    if index == 0 || index == 255 {
        return Err(PlanError::UnderlayFull { slot, max: 254 });
    }
    let (v4, v6) = underlay(slot);
    let o = v4.network().octets();
    let s = v6.network().segments();
    Ok((
        Ipv4Addr::new(o[0], o[1], o[2], index),
        Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, u16::from(index)),
    ))
}

/// The default cluster CIDRs of the `index`-th cluster of a lab: distinct per
/// cluster, so linked clusters do not overlap unless asked to.
pub fn default_cluster_cidrs(index: u8, family: IpFamily) -> Vec<IpNet> {
    let mut cidrs = Vec::new();
    if family.has_v4() {
        let v4 = Ipv4Net::new(Ipv4Addr::new(10, 244u8.wrapping_add(index), 0, 0), 16);
        cidrs.push(IpNet::V4(v4.expect("16 is a valid prefix")));
    }
    if family.has_v6() {
        let v6 = Ipv6Net::new(
            Ipv6Addr::new(0xfd00, 0x10, 0x244 + u16::from(index), 0, 0, 0, 0, 0),
            56,
        );
        cidrs.push(IpNet::V6(v6.expect("56 is a valid prefix")));
    }
    cidrs
}

/// Names of the things a lab creates.
#[derive(Debug, Clone)]
pub struct Names {
    lab: String,
}

impl Names {
    pub fn new(lab: &str) -> Self {
        Names {
            lab: lab.to_string(),
        }
    }
    /// Every namespace of this lab starts with this.
    pub fn netns_prefix(&self) -> String {
        format!("{NETNS_PREFIX}{}-", self.lab)
    }
    pub fn switch_netns(&self) -> String {
        format!("{}sw", self.netns_prefix())
    }
    pub fn control_plane_netns(&self, cluster: &str) -> String {
        format!("{}{cluster}-cp", self.netns_prefix())
    }
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.netns_prefix())
    }
    pub fn machine_netns(&self, machine: &str) -> String {
        format!("{}m-{machine}", self.netns_prefix())
    }
    pub fn router_netns(&self, node: &str) -> String {
        format!("{}{node}-nat", self.netns_prefix())
    }
    pub fn pod_netns(&self, node: &str, pod: &str) -> String {
        format!("{}{node}-{pod}", self.netns_prefix())
    }
    /// The host's link into the lab's switch (in the host namespace; lab
    /// names are at most 10 characters, so this fits IFNAMSIZ).
    pub fn host_link(&self) -> String {
        format!("tl-{}", self.lab)
    }
    /// The switch-side end of the link of underlay host `index`.
    pub fn switch_port(index: u8) -> String {
        format!("h{index}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "demo", "lab2", "abcdefghij"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "Demo", "1lab", "a-b", "abcdefghijk", "a_b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        validate_node_name("demo-n1").unwrap();
        for bad in ["", "-a", "a-", "A", "a.b", "abcdefghijabcdefghijk"] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slots_use_distinct_documentation_ranges() {
        let nets: Vec<_> = (0..MAX_LABS).map(underlay).collect();
        for (i, a) in nets.iter().enumerate() {
            for b in &nets[i + 1..] {
                assert!(!a.0.contains(&b.0.network()) && !b.0.contains(&a.0.network()));
                assert!(!a.1.contains(&b.1.network()));
            }
        }
        assert_eq!(nets[0].0.to_string(), "192.0.2.0/24");
        assert_eq!(nets[2].1.to_string(), "2001:db8:2::/64");
        assert_eq!(nets[3].0.to_string(), "198.18.0.0/24");
        assert_eq!(nets[7].0.to_string(), "198.18.4.0/24");
    }

    #[test]
    fn a_slot_the_host_uses_conflicts() {
        let host: Vec<IpNet> = ["192.0.2.0/24", "fd00::/64", "0.0.0.0/0", "10.0.0.0/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(slot_conflicts(0, &host));
        assert!(!slot_conflicts(1, &host), "a default route is no conflict");
        let wide: Vec<IpNet> = vec!["198.18.0.0/15".parse().unwrap()];
        assert!(slot_conflicts(3, &wide) && slot_conflicts(7, &wide));
        assert!(!slot_conflicts(0, &wide));
    }

    #[test]
    fn host_addresses_stay_in_the_underlay() {
        for slot in 0..MAX_LABS {
            let (v4net, v6net) = underlay(slot);
            for index in [1u8, 2, 100, 254] {
                let (v4, v6) = underlay_addr(slot, index).unwrap();
                assert!(v4net.contains(&v4) && v6net.contains(&v6));
            }
            assert!(underlay_addr(slot, 0).is_err());
            assert!(underlay_addr(slot, 255).is_err());
        }
    }

    #[test]
    fn cluster_cidrs_differ_per_cluster_and_follow_family() {
        let a = default_cluster_cidrs(0, IpFamily::Dual);
        let b = default_cluster_cidrs(1, IpFamily::Dual);
        assert_eq!(a.len(), 2);
        for x in &a {
            for y in &b {
                assert!(!x.contains(&y.network()) && !y.contains(&x.network()));
            }
        }
        assert_eq!(default_cluster_cidrs(0, IpFamily::Ipv4).len(), 1);
        assert!(default_cluster_cidrs(0, IpFamily::Ipv6)[0].addr().is_ipv6());
    }

    #[test]
    fn link_names_fit_ifnamsiz() {
        assert!(Names::new("abcdefghij").host_link().len() <= 15);
        assert!(Names::switch_port(254).len() <= 15);
    }

    #[test]
    fn every_namespace_carries_the_lab_prefix() {
        let n = Names::new("demo");
        let p = n.netns_prefix();
        for ns in [
            n.switch_netns(),
            n.control_plane_netns("demo"),
            n.node_netns("demo-n1"),
            n.router_netns("demo-n1"),
            n.pod_netns("demo-n1", "p1"),
        ] {
            assert!(ns.starts_with(&p), "{ns}");
        }
        // A lab whose name extends another's never matches its prefix.
        assert!(!Names::new("demo2").switch_netns().starts_with(&p));
    }
}
