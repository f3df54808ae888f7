//! The kernel side of an attachment behind one trait, so the plugin's logic
//! is unit tested against a recording fake and only [`crate::netlink`]
//! (with [`crate::netns`]) touches the kernel.
//!
//! Wiring is point-to-point, with no bridge: a veth pair, the pod end named
//! CNI_IFNAME inside the pod's namespace holding the pod's /32 and /128; in
//! the pod a default route through a link-local gateway (169.254.1.1 and
//! fe80::1) that resolves, by a permanent neighbour entry, to the host end's
//! fixed MAC; on the host a route to each pod address over the veth.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::error::CniError;

#[cfg(test)]
pub(crate) mod fake;

/// The pod's IPv4 gateway: link-local, the same in every pod.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway: link-local, the same in every pod.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The MAC of every host-side veth, which the gateways resolve to.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// Prefix of host-side interface names.
pub const HOST_IFNAME_PREFIX: &str = "tr";
/// Prefix of the alias that marks host-side links as ours.
pub const ALIAS_PREFIX: &str = "trellis-cni:";
/// The longest alias the kernel takes from rtnetlink, which sends it with a
/// terminating NUL: IFALIASZ (256) counts that NUL, and 255 bytes plus the
/// NUL fail with ERANGE.
pub const MAX_ALIAS_BYTES: usize = 254;

/// The gateway of a pod address's family.
pub fn gateway_for(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

/// A pod address as a host prefix (/32 or /128).
pub fn host_prefix(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// The host-side name of an attachment: deterministic from the container ID
/// and interface name, 14 characters (within IFNAMSIZ).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}\0{ifname}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{HOST_IFNAME_PREFIX}{hex}")
}

/// Whether `name` has the shape of [`host_ifname`]'s names.
pub fn is_host_ifname(name: &str) -> bool {
    name.strip_prefix(HOST_IFNAME_PREFIX).is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The alias marking a host-side link as an attachment of `network`, cut
/// to [`MAX_ALIAS_BYTES`] on a character boundary (CNI_IFNAME may hold
/// multi-byte characters).
pub fn link_alias(network: &str, container_id: &str, ifname: &str) -> String {
    let mut alias = format!("{ALIAS_PREFIX}{network}:{container_id}/{ifname}");
    let mut end = alias.len().min(MAX_ALIAS_BYTES);
    while !alias.is_char_boundary(end) {
        end -= 1;
    }
    alias.truncate(end);
    alias
}

/// The alias prefix of every host-side link of `network`.
pub fn network_alias_prefix(network: &str) -> String {
    format!("{ALIAS_PREFIX}{network}:")
}

/// What to wire for one attachment.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachmentSpec {
    pub host_ifname: String,
    pub pod_ifname: String,
    pub netns: PathBuf,
    pub mtu: u32,
    pub addresses: Vec<IpAddr>,
    pub alias: String,
}

/// What wiring produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Wired {
    pub host_mac: String,
    pub pod_mac: String,
}

/// What CHECK reads back from the kernel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub pod_link: Option<LinkState>,
    pub pod_addresses: Vec<IpNet>,
    /// (destination, gateway) of the pod's routes on the interface.
    pub pod_routes: Vec<(IpNet, Option<IpAddr>)>,
    pub host_link: Option<LinkState>,
    /// Destinations of the host's routes over the host-side link.
    pub host_routes: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinkState {
    pub up: bool,
    pub mtu: u32,
    pub mac: String,
}

/// The kernel operations the plugin needs.
pub trait PodNetwork {
    /// Whether `netns` names the plugin's own network namespace (the
    /// host's), by the namespace's identity whatever the path: a path that
    /// does not exist names none.
    fn is_own_netns(&mut self, netns: &Path) -> bool;
    /// Whether `ifname` exists in the namespace (an error with code 3 when
    /// the namespace itself does not exist).
    fn pod_interface_exists(&mut self, netns: &Path, ifname: &str) -> Result<bool, CniError>;
    /// Where the peer of host link `host_ifname` lives when that is a
    /// network namespace other than `netns` which a path still names (a
    /// runtime's bind mount or a process's `/proc/PID/ns/net`): that path.
    /// `None` when there is no such link, or its peer is in `netns` or on
    /// the host, or in a namespace nothing names any more: a stale host
    /// end, which `wire` replaces.
    fn attached_elsewhere(
        &mut self,
        host_ifname: &str,
        netns: &Path,
    ) -> Result<Option<PathBuf>, CniError>;
    /// Creates and configures the veth pair, addresses, routes, neighbours
    /// and sysctls. On error it leaves nothing behind.
    fn wire(&mut self, spec: &AttachmentSpec) -> Result<Wired, CniError>;
    /// Removes an attachment's links; what is already gone is fine.
    fn unwire(
        &mut self,
        host_ifname: &str,
        netns: Option<&Path>,
        pod_ifname: &str,
    ) -> Result<(), CniError>;
    /// Reads the attachment back.
    fn observe(
        &mut self,
        netns: &Path,
        pod_ifname: &str,
        host_ifname: &str,
    ) -> Result<Observed, CniError>;
    /// Names of the host links that are ours: alias starting with
    /// `alias_prefix`, or no alias and a name of ours ([`is_host_ifname`]:
    /// an ADD killed between creating the pair and naming it).
    fn our_host_links(&mut self, alias_prefix: &str) -> Result<Vec<String>, CniError>;
    /// Deletes a host link; one already gone is fine.
    fn delete_host_link(&mut self, name: &str) -> Result<(), CniError>;
    /// Whether a host link is up and has carrier (`None`: it does not
    /// exist).
    fn host_link_state(&mut self, name: &str) -> Result<Option<MeshLinkState>, CniError>;
    /// Addresses within `cidrs` that the host has a route of full length
    /// to (a /32 or /128, in any table): a pod's, or the host's own.
    fn host_routed_addresses(&mut self, cidrs: &[IpNet]) -> Result<Vec<IpAddr>, CniError>;
}

/// What STATUS asks of the mesh interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshLinkState {
    /// Set up (IFF_UP).
    pub up: bool,
    /// Has carrier (IFF_LOWER_UP): a TUN interface has none while no
    /// device process is attached to it (a persistent one outlives it).
    pub carrier: bool,
}

/// A borrowed [`PodNetwork`] is one too (tests keep the fake to inspect it).
impl<T: PodNetwork + ?Sized> PodNetwork for &mut T {
    fn is_own_netns(&mut self, netns: &Path) -> bool {
        (**self).is_own_netns(netns)
    }
    fn pod_interface_exists(&mut self, netns: &Path, ifname: &str) -> Result<bool, CniError> {
        (**self).pod_interface_exists(netns, ifname)
    }
    fn attached_elsewhere(
        &mut self,
        host_ifname: &str,
        netns: &Path,
    ) -> Result<Option<PathBuf>, CniError> {
        (**self).attached_elsewhere(host_ifname, netns)
    }
    fn wire(&mut self, spec: &AttachmentSpec) -> Result<Wired, CniError> {
        (**self).wire(spec)
    }
    fn unwire(
        &mut self,
        host_ifname: &str,
        netns: Option<&Path>,
        pod_ifname: &str,
    ) -> Result<(), CniError> {
        (**self).unwire(host_ifname, netns, pod_ifname)
    }
    fn observe(
        &mut self,
        netns: &Path,
        pod_ifname: &str,
        host_ifname: &str,
    ) -> Result<Observed, CniError> {
        (**self).observe(netns, pod_ifname, host_ifname)
    }
    fn our_host_links(&mut self, alias_prefix: &str) -> Result<Vec<String>, CniError> {
        (**self).our_host_links(alias_prefix)
    }
    fn delete_host_link(&mut self, name: &str) -> Result<(), CniError> {
        (**self).delete_host_link(name)
    }
    fn host_link_state(&mut self, name: &str) -> Result<Option<MeshLinkState>, CniError> {
        (**self).host_link_state(name)
    }
    fn host_routed_addresses(&mut self, cidrs: &[IpNet]) -> Result<Vec<IpAddr>, CniError> {
        (**self).host_routed_addresses(cidrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_deterministic_short_and_distinct() {
        let a = host_ifname("c1", "eth0");
        assert_eq!(a, host_ifname("c1", "eth0"));
        assert_ne!(a, host_ifname("c1", "eth1"));
        assert_ne!(a, host_ifname("c2", "eth0"));
        assert!(a.len() <= 15 && a.starts_with(HOST_IFNAME_PREFIX), "{a}");
        assert!(is_host_ifname(&a));
        for other in [
            "trellis",
            "tr0123",
            "tr0123456789aB",
            "eth0",
            "tr0123456789abc",
        ] {
            assert!(!is_host_ifname(other), "{other}");
        }
        crate::env::check_ifname(&a).unwrap();
    }

    #[test]
    fn aliases_fit_the_kernel_limit_and_carry_the_network() {
        let long = "c".repeat(400);
        let alias = link_alias("trellis", &long, "eth0");
        assert_eq!(alias.len(), MAX_ALIAS_BYTES);
        assert!(alias.starts_with(&network_alias_prefix("trellis")));
        assert!(!link_alias("other", "c", "eth0").starts_with(&network_alias_prefix("trellis")));
        assert_eq!(link_alias("n", "c1", "eth0"), "trellis-cni:n:c1/eth0");
        // "trellis-cni:trellis:" is 20 bytes: with a 232-byte ID and '/', a
        // two-byte character starts at byte 253 and would end past 254.
        let alias = link_alias("trellis", &"a".repeat(232), "\u{e9}0");
        assert_eq!(alias.len(), 253, "{alias}");
        assert!(alias.ends_with('/'));
        // Exactly at the limit nothing is cut.
        let alias = link_alias("trellis", &"a".repeat(230), "\u{e9}0");
        assert_eq!(alias.len(), MAX_ALIAS_BYTES);
        assert!(alias.ends_with("/\u{e9}0"));
    }

    #[test]
    fn gateways_are_link_local_per_family() {
        assert_eq!(
            gateway_for("10.0.0.5".parse().unwrap()),
            IpAddr::V4(GATEWAY_V4)
        );
        assert_eq!(
            gateway_for("fd00::5".parse().unwrap()),
            IpAddr::V6(GATEWAY_V6)
        );
        assert_eq!(host_prefix("10.0.0.5".parse().unwrap()).prefix_len(), 32);
        assert_eq!(host_prefix("fd00::5".parse().unwrap()).prefix_len(), 128);
    }
}
