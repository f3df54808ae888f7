//! The ranges a cluster declares, and the trust boundary they draw: every
//! pod CIDR a node brings into the mesh must lie inside the pod ranges its
//! cluster declared (this cluster's from the agent's configuration, a
//! linked cluster's from its link Secret), every Peer's allowed IP inside
//! the ranges declared for external peers. Some ranges are never routed
//! into a tunnel, declared or not: a default route, loopback, multicast,
//! link-local, unspecified and reserved addresses.

use std::net::IpAddr;

use ipnet::IpNet;

/// What a declared range list cannot hold, and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{0:?} is not a CIDR (write it as 10.244.0.0/16 or fd00:10:244::/56)")]
    NotACidr(String),
    #[error("{net} has host bits set (write {trunc})")]
    HostBits { net: IpNet, trunc: IpNet },
    #[error("{net} {why}: it can never be routed into the mesh")]
    NeverRouted { net: IpNet, why: &'static str },
    #[error("no range is declared: list at least one CIDR")]
    Empty,
}

/// The ranges one cluster declares. The default declares nothing: every
/// claim lies outside it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeclaredRanges {
    /// Where the cluster's pods live: every Node's `spec.podCIDRs` must lie
    /// inside one of them.
    pub pods: Vec<IpNet>,
    /// Where its external peers (`Peer` objects) live: every allowed IP of
    /// a Peer must lie inside one of them.
    pub external_peers: Vec<IpNet>,
}

/// The private ranges (RFC 1918, shared address space 100.64.0.0/10 and
/// unique local IPv6): what is declared when nothing else is. No public
/// range is among them.
pub const PRIVATE_RANGES: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

impl DeclaredRanges {
    /// [`PRIVATE_RANGES`] for pods and for external peers alike.
    pub fn private() -> Self {
        let private = private_ranges();
        DeclaredRanges {
            pods: private.clone(),
            external_peers: private,
        }
    }
}

/// [`PRIVATE_RANGES`], parsed.
pub fn private_ranges() -> Vec<IpNet> {
    PRIVATE_RANGES
        .iter()
        .map(|r| r.parse().expect("the private ranges are CIDRs"))
        .collect()
}

/// Ranges that are never routed into the mesh, with what they are.
const NEVER_ROUTED: [(&str, &str); 10] = [
    (
        "0.0.0.0/8",
        "lies in 0.0.0.0/8 (\"this network\", unspecified)",
    ),
    ("127.0.0.0/8", "lies in 127.0.0.0/8 (loopback)"),
    ("169.254.0.0/16", "lies in 169.254.0.0/16 (link-local)"),
    ("224.0.0.0/4", "lies in 224.0.0.0/4 (multicast)"),
    ("240.0.0.0/4", "lies in 240.0.0.0/4 (reserved, broadcast)"),
    ("::/128", "is the unspecified address ::"),
    ("::1/128", "is the loopback address ::1"),
    ("::ffff:0:0/96", "lies in ::ffff:0:0/96 (IPv4-mapped)"),
    ("fe80::/10", "lies in fe80::/10 (link-local)"),
    ("ff00::/8", "lies in ff00::/8 (multicast)"),
];

/// Why `net` may never be routed into the mesh, when it may not: a default
/// route, or a range that covers or lies in loopback, multicast,
/// link-local, unspecified or reserved addresses.
pub fn never_routed(net: &IpNet) -> Option<&'static str> {
    if net.prefix_len() == 0 {
        return Some("is a default route");
    }
    NEVER_ROUTED.iter().find_map(|(range, why)| {
        let range: IpNet = range.parse().expect("the never-routed ranges are CIDRs");
        overlap(net, &range).then_some(*why)
    })
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A claim the trust boundary refuses: the range, what its cluster
/// declared (empty for a range that is never routed), and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Undeclared {
    pub range: IpNet,
    pub declared: Vec<IpNet>,
    pub message: String,
}

impl std::fmt::Display for Undeclared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The first of `nets` that may never be routed, claimed as `what` (e.g.
/// "pod CIDR"), and why; `None` when all may be.
pub fn never_routed_claim(nets: &[IpNet], what: &str) -> Option<Undeclared> {
    nets.iter().find_map(|net| {
        never_routed(net).map(|why| Undeclared {
            range: *net,
            declared: Vec::new(),
            message: format!("{what} {net} {why}: it is never routed into the mesh"),
        })
    })
}

/// Parses one declared range: a network address that may be routed.
pub fn parse_range(text: &str) -> Result<IpNet, RangeError> {
    let net: IpNet = text
        .trim()
        .parse()
        .map_err(|_| RangeError::NotACidr(text.into()))?;
    if net.trunc() != net {
        return Err(RangeError::HostBits {
            net,
            trunc: net.trunc(),
        });
    }
    if let Some(why) = never_routed(&net) {
        return Err(RangeError::NeverRouted { net, why });
    }
    Ok(net)
}

/// Parses a comma-separated list of declared ranges (as flags, the chart
/// and link Secrets carry them); at least one.
pub fn parse_list(text: &str) -> Result<Vec<IpNet>, RangeError> {
    let out = text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse_range)
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() {
        return Err(RangeError::Empty);
    }
    Ok(out)
}

/// The list as [`parse_list`] reads it.
pub fn format_list(ranges: &[IpNet]) -> String {
    ranges
        .iter()
        .map(IpNet::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Why `net`, claimed by `what` (e.g. "pod CIDR"), may not enter the mesh
/// under the declaration `declared` (described as `whose`, e.g. "the pod
/// ranges this cluster declares"); `None` when it may.
pub fn outside_declared(
    net: &IpNet,
    what: &str,
    declared: &[IpNet],
    whose: &str,
) -> Option<Undeclared> {
    if let Some(refused) = never_routed_claim(std::slice::from_ref(net), what) {
        return Some(refused);
    }
    if declared.iter().any(|d| d.contains(net)) {
        return None;
    }
    let message = format!(
        "{what} {net} lies outside {whose} ({}): declare the range (chart value {}) or fix the object",
        if declared.is_empty() {
            "none".to_string()
        } else {
            declared
                .iter()
                .map(IpNet::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
        if what.starts_with("pod") {
            "podRanges"
        } else {
            "externalPeerRanges"
        }
    );
    Some(Undeclared {
        range: *net,
        declared: declared.to_vec(),
        message,
    })
}

/// The first of `addresses` that `net` contains.
pub fn contains_any<'a>(net: &IpNet, addresses: &'a [IpAddr]) -> Option<&'a IpAddr> {
    addresses.iter().find(|ip| net.contains(*ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn default_routes_and_special_ranges_are_never_routed() {
        for bad in [
            "0.0.0.0/0",
            "::/0",
            "0.0.0.0/1",
            "127.0.0.0/8",
            "127.0.0.0/24",
            "224.0.0.0/4",
            "239.1.0.0/16",
            "169.254.0.0/16",
            "169.254.1.0/24",
            "255.255.255.255/32",
            "::1/128",
            "::/128",
            "::/96",
            "::ffff:10.0.0.0/104",
            "fe80::/64",
            "ff02::/16",
            "8000::/1",
            "fe00::/7",
        ] {
            assert!(never_routed(&net(bad)).is_some(), "{bad}");
        }
        for ok in [
            "10.244.0.0/16",
            "8.8.8.0/24",
            "fd00:10:244::/56",
            "2001:db8::/32",
            "100.64.0.0/10",
        ] {
            assert_eq!(never_routed(&net(ok)), None, "{ok}");
        }
    }

    #[test]
    fn a_declared_list_is_parsed_and_checked() {
        assert_eq!(
            parse_list("10.244.0.0/16, fd00:10:244::/56").unwrap(),
            vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]
        );
        assert_eq!(
            parse_list("0.0.0.0/0").unwrap_err().to_string(),
            "0.0.0.0/0 is a default route: it can never be routed into the mesh"
        );
        assert!(matches!(
            parse_list("10.244.0.1/16"),
            Err(RangeError::HostBits { .. })
        ));
        assert!(matches!(parse_list("ten"), Err(RangeError::NotACidr(_))));
        assert_eq!(parse_list(" , "), Err(RangeError::Empty));
        assert_eq!(
            parse_list(&format_list(&private_ranges())).unwrap(),
            private_ranges()
        );
    }

    #[test]
    fn the_private_defaults_hold_no_public_range() {
        for r in private_ranges() {
            assert_eq!(never_routed(&r), None, "{r}");
            for public in ["8.8.8.0/24", "1.1.1.1/32", "2001:4860::/32"] {
                assert!(!r.contains(&net(public)), "{r} contains {public}");
            }
        }
    }

    #[test]
    fn a_claim_outside_the_declaration_says_which_range_and_what_is_declared() {
        let declared = [net("10.244.0.0/16"), net("fd00:10:244::/56")];
        let whose = "the pod ranges this cluster declares";
        assert_eq!(
            outside_declared(&net("10.244.3.0/24"), "pod CIDR", &declared, whose),
            None
        );
        let why = outside_declared(&net("8.8.8.0/24"), "pod CIDR", &declared, whose).unwrap();
        assert_eq!(why.range, net("8.8.8.0/24"));
        assert_eq!(why.declared, declared);
        assert_eq!(why.to_string(), "pod CIDR 8.8.8.0/24 lies outside the pod ranges this cluster declares (10.244.0.0/16, fd00:10:244::/56): declare the range (chart value podRanges) or fix the object");
        // A range wider than the declaration is outside it too.
        assert!(outside_declared(&net("10.0.0.0/8"), "pod CIDR", &declared, whose).is_some());
        let why = outside_declared(&net("0.0.0.0/1"), "allowed IP", &declared, "x").unwrap();
        assert!(why.message.contains("is never routed"), "{why}");
        assert!(
            why.declared.is_empty(),
            "never routed, whatever is declared"
        );
    }
}
