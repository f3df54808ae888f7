//! NAT routers: a namespace between a node and the underlay that masquerades
//! the node's traffic with nftables, in one of two behaviours:
//!
//! - endpoint-independent: the router keeps the node's source port when it
//!   can, so every destination sees the same public ip:port (a "cone" NAT;
//!   hole punching works);
//! - symmetric: every new flow gets a random public port (`masquerade
//!   random`), so an endpoint learned from one peer is useless to another
//!   (hole punching fails; a relay is needed).
//!
//! Either way the router drops unsolicited packets from the underlay, as
//! home and cloud NAT gateways do: only replies to the node's own flows get
//! in. (Dropping them also keeps the router from recording the stray flow,
//! which would make it pick another public port for the node's own flow to
//! the same peer — and break hole punching for a reason no real router has.)

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cmd::{self, CommandError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NatMode {
    /// Port-preserving masquerade: the same public port for every destination.
    EndpointIndependent,
    /// A random public port per flow.
    Symmetric,
}

/// Name of the router's interface on the underlay.
pub const ROUTER_WAN: &str = "wan0";
/// Name of the router's interface towards the node.
pub const ROUTER_LAN: &str = "lan0";

/// The router's nftables ruleset: one table, replaced as a whole.
pub fn nft_ruleset(mode: NatMode) -> String {
    let masquerade = match mode {
        NatMode::EndpointIndependent => "masquerade",
        NatMode::Symmetric => "masquerade random",
    };
    format!(
        "table ip trellis-lab-nat\n\
         delete table ip trellis-lab-nat\n\
         table ip trellis-lab-nat {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{ROUTER_WAN}\" {masquerade}\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{ROUTER_WAN}\" ct state new drop\n\
         \t}}\n\
         }}\n"
    )
}

/// The private /30-style addresses of the `index`-th NAT: (router, node).
pub fn private_addrs(index: u8) -> (Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::new(172, 31, index, 1),
        Ipv4Addr::new(172, 31, index, 2),
    )
}

/// Loads the ruleset into the router's namespace (atomically: `nft -f`
/// applies the whole file or nothing).
pub fn load_ruleset(router_netns: &str, mode: NatMode) -> Result<(), CommandError> {
    nft_load(router_netns, "nat", &nft_ruleset(mode))
}

/// `nft -f` of `rules` in `netns`, through a temporary file (removed when
/// it is loaded, or not).
fn nft_load(netns: &str, what: &str, rules: &str) -> Result<(), CommandError> {
    use std::io::Write;
    let failed = |command: String| move |source| CommandError::Spawn { command, source };
    let mut file = tempfile::Builder::new()
        .prefix(&format!("trellis-lab-{what}-{netns}-"))
        .suffix(".nft")
        .tempfile()
        .map_err(failed(format!(
            "create a {what} ruleset file in {}",
            std::env::temp_dir().display()
        )))?;
    let path = file.path().to_string_lossy().to_string();
    file.write_all(rules.as_bytes())
        .and_then(|()| file.flush())
        .map_err(failed(format!("write {path}")))?;
    cmd::in_netns(netns, "nft", &["-f", &path]).map(drop)
}

/// The table [`block`] adds to a router, beside its NAT table.
pub const BLOCK_TABLE: &str = "trellis-lab-block";

/// The block's ruleset: packets from and to `other` dropped before
/// connection tracking sees them (a firewall between two sites).
pub fn block_ruleset(other: Ipv4Addr) -> String {
    format!(
        "table ip {BLOCK_TABLE} {{\n\tchain pre {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\t\tip saddr {other} drop\n\t\tip daddr {other} drop\n\t}}\n}}\n"
    )
}

/// Makes the router in `router_netns` drop everything between its node and
/// the public address `other` (both ways), until [`unblock`].
pub fn block(router_netns: &str, other: Ipv4Addr) -> Result<(), CommandError> {
    nft_load(router_netns, "block", &block_ruleset(other))
}

/// Removes the router's [`block`].
pub fn unblock(router_netns: &str) -> Result<(), CommandError> {
    cmd::in_netns(router_netns, "nft", &["delete", "table", "ip", BLOCK_TABLE]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_randomises_ports_and_cone_does_not() {
        assert!(nft_ruleset(NatMode::Symmetric).contains("masquerade random"));
        let cone = nft_ruleset(NatMode::EndpointIndependent);
        assert!(
            cone.contains("masquerade\n") && !cone.contains("random"),
            "{cone}"
        );
    }

    #[test]
    fn a_block_drops_both_directions_before_conntrack() {
        let rules = block_ruleset(Ipv4Addr::new(198, 51, 100, 9));
        assert!(rules.contains("ip saddr 198.51.100.9 drop"), "{rules}");
        assert!(rules.contains("ip daddr 198.51.100.9 drop"), "{rules}");
        // Conntrack hooks prerouting at -200: a dropped packet leaves no flow.
        assert!(rules.contains("priority -300"), "{rules}");
    }

    #[test]
    fn ruleset_replaces_its_own_table_only() {
        let rules = nft_ruleset(NatMode::EndpointIndependent);
        assert!(rules.contains("delete table ip trellis-lab-nat"));
        assert!(!rules.contains("flush ruleset"));
        assert!(rules.contains(&format!("oifname \"{ROUTER_WAN}\"")));
        assert!(rules.contains(&format!("iifname \"{ROUTER_WAN}\" ct state new drop")));
    }

    #[test]
    fn private_addresses_differ_per_router() {
        assert_ne!(private_addrs(0), private_addrs(1));
        let (r, n) = private_addrs(3);
        assert_eq!(r.octets()[..3], n.octets()[..3]);
    }
}
