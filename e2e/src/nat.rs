//! NAT routers: a namespace between a node and the underlay that masquerades
//! the node's traffic with nftables, in one of two behaviours:
//!
//! - endpoint-independent: the router keeps the node's source port when it
//!   can, so every destination sees the same public ip:port (a "cone" NAT;
//!   hole punching works);
//! - symmetric: every new flow gets a random public port (`masquerade
//!   random`), so an endpoint learned from one peer is useless to another
//!   (hole punching fails; a relay is needed);
//! - hairpin: each node's WireGuard port is forwarded at a fixed public
//!   port ([`hairpin_port`]), and the router loops packets from its site to
//!   its own public address back into the site (NAT loopback, as many
//!   home and office routers do): site-mates reach each other at their
//!   public mappings too, through the router.
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
    /// Each node's WireGuard port forwarded at a fixed public port, and
    /// NAT loopback for the site.
    Hairpin,
}

/// Name of the router's interface on the underlay.
pub const ROUTER_WAN: &str = "wan0";
/// Name of the router's interface towards its nodes: a bridge, the site's
/// private network, with a port per node.
pub const ROUTER_LAN: &str = "lan0";

/// Name of the router's bridge port towards its `i`-th node.
pub fn router_port(i: usize) -> String {
    format!("port{i}")
}

/// The WireGuard port the lab's agents listen on.
pub const WIREGUARD_PORT: u16 = 51820;

/// The public port a [`NatMode::Hairpin`] router forwards to the
/// WireGuard port of its `i`-th node.
pub fn hairpin_port(i: usize) -> u16 {
    40000 + i as u16
}

/// The router's nftables ruleset: one table, replaced as a whole. `public`
/// is the router's address on the underlay, `nodes` its nodes' private
/// addresses in order (used by [`NatMode::Hairpin`]).
pub fn nft_ruleset(mode: NatMode, public: Ipv4Addr, nodes: &[Ipv4Addr]) -> String {
    let masquerade = match mode {
        NatMode::EndpointIndependent | NatMode::Hairpin => "masquerade",
        NatMode::Symmetric => "masquerade random",
    };
    let (mut forwards, mut mappings) = (String::new(), String::new());
    if mode == NatMode::Hairpin {
        for (i, node) in nodes.iter().enumerate() {
            let port = hairpin_port(i);
            forwards.push_str(&format!(
                "\t\tip daddr {public} udp dport {port} dnat to {node}:{WIREGUARD_PORT}\n"
            ));
            // Out to the underlay, and looped back into the site (a
            // packet sent to a site-mate's mapping); never between two
            // nodes of the site directly.
            mappings.push_str(&format!(
                "\t\toifname \"{ROUTER_WAN}\" ip saddr {node} udp sport {WIREGUARD_PORT} snat to {public}:{port}\n\
                 \t\toifname \"{ROUTER_LAN}\" ct status dnat ip saddr {node} udp sport {WIREGUARD_PORT} snat to {public}:{port}\n"
            ));
        }
    }
    format!(
        "table ip trellis-lab-nat\n\
         delete table ip trellis-lab-nat\n\
         table ip trellis-lab-nat {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {forwards}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {mappings}\
         \t\toifname \"{ROUTER_WAN}\" {masquerade}\n\
         \t}}\n\
         \tcounter {HAIRPIN_COUNTER} {{ }}\n\
         \tcounter {LOOPED_COUNTER} {{ }}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{ROUTER_LAN}\" ct status dnat counter name {LOOPED_COUNTER}\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{ROUTER_WAN}\" ct state new drop\n\
         \t\tiifname \"{ROUTER_LAN}\" ip daddr != {SITES} counter name {HAIRPIN_COUNTER}\n\
         \t}}\n\
         }}\n"
    )
}

/// The private addresses of the `index`-th NAT's site (a /24): the
/// router's, and those of its first `nodes` nodes.
pub fn private_addrs(index: u8, nodes: usize) -> (Ipv4Addr, Vec<Ipv4Addr>) {
    (
        Ipv4Addr::new(172, 31, index, 1),
        (0..nodes)
            .map(|i| Ipv4Addr::new(172, 31, index, 2 + i as u8))
            .collect(),
    )
}

/// The router's hairpin counter: packets from its site to its own public
/// address (a node dialling a site-mate at its public mapping, which this
/// router, like most, does not hairpin).
pub const HAIRPIN_COUNTER: &str = "hairpin";

/// The router's counter of packets it looped back into its site (a
/// [`NatMode::Hairpin`] router: a site-mate dialled at its public mapping).
pub const LOOPED_COUNTER: &str = "looped";

/// Where every site's private network lies ([`private_addrs`]).
pub const SITES: &str = "172.31.0.0/16";

/// How many packets the router in `router_netns` was sent by its site to
/// its own public address (see [`HAIRPIN_COUNTER`]).
pub fn hairpin_packets(router_netns: &str) -> Result<u64, CommandError> {
    counter_packets(router_netns, HAIRPIN_COUNTER)
}

/// How many packets the [`NatMode::Hairpin`] router in `router_netns` looped
/// back into its site (see [`LOOPED_COUNTER`]).
pub fn looped_packets(router_netns: &str) -> Result<u64, CommandError> {
    counter_packets(router_netns, LOOPED_COUNTER)
}

fn counter_packets(router_netns: &str, counter: &str) -> Result<u64, CommandError> {
    let listing = cmd::in_netns(
        router_netns,
        "nft",
        &["list", "counter", "ip", "trellis-lab-nat", counter],
    )?;
    Ok(listing
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Loads the ruleset into the router's namespace (atomically: `nft -f`
/// applies the whole file or nothing).
pub fn load_ruleset(
    router_netns: &str,
    mode: NatMode,
    public: Ipv4Addr,
    nodes: &[Ipv4Addr],
) -> Result<(), CommandError> {
    nft_load(router_netns, "nat", &nft_ruleset(mode, public, nodes))
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
/// connection tracking sees them (a firewall between two sites), whether
/// they pass through the namespace (a router) or start or end in it (a
/// node).
pub fn block_ruleset(other: Ipv4Addr) -> String {
    format!(
        "table ip {BLOCK_TABLE} {{\n\tchain pre {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\t\tip saddr {other} drop\n\t\tip daddr {other} drop\n\t}}\n\tchain out {{\n\t\ttype filter hook output priority -300; policy accept;\n\t\tip daddr {other} drop\n\t}}\n}}\n"
    )
}

/// Makes the namespace `netns` (a router, or a node) drop everything
/// between it (or the nodes behind it) and the address `other` (both
/// ways), until [`unblock`].
pub fn block(netns: &str, other: Ipv4Addr) -> Result<(), CommandError> {
    nft_load(netns, "block", &block_ruleset(other))
}

/// Removes the namespace's [`block`].
pub fn unblock(netns: &str) -> Result<(), CommandError> {
    cmd::in_netns(netns, "nft", &["delete", "table", "ip", BLOCK_TABLE]).map(drop)
}

/// The table [`cut_off`] adds to a node.
pub const CUT_OFF_TABLE: &str = "trellis-lab-cut-off";

/// The ruleset of [`cut_off`]: nothing in or out of the uplink `uplink`,
/// either family, whether sent by the node or forwarded.
pub fn cut_off_ruleset(uplink: &str) -> String {
    format!(
        "table inet {CUT_OFF_TABLE} {{\n\tchain pre {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\t\tiifname \"{uplink}\" drop\n\t}}\n\tchain post {{\n\t\ttype filter hook postrouting priority 300; policy accept;\n\t\toifname \"{uplink}\" drop\n\t}}\n}}\n"
    )
}

/// Takes the node in `netns` off the network, as a node that lost power
/// looks to everyone else (its processes go on, its uplink carries
/// nothing), until [`reconnect`].
pub fn cut_off(netns: &str) -> Result<(), CommandError> {
    nft_load(netns, "cut-off", &cut_off_ruleset(crate::underlay::UPLINK))
}

/// Undoes [`cut_off`].
pub fn reconnect(netns: &str) -> Result<(), CommandError> {
    cmd::in_netns(netns, "nft", &["delete", "table", "inet", CUT_OFF_TABLE]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(mode: NatMode) -> String {
        let (_, nodes) = private_addrs(2, 2);
        nft_ruleset(mode, Ipv4Addr::new(198, 51, 100, 7), &nodes)
    }

    #[test]
    fn symmetric_randomises_ports_and_cone_does_not() {
        assert!(ruleset(NatMode::Symmetric).contains("masquerade random"));
        let cone = ruleset(NatMode::EndpointIndependent);
        assert!(
            cone.contains("masquerade\n") && !cone.contains("random"),
            "{cone}"
        );
        assert!(
            !cone.contains("dnat to") && !cone.contains("snat to"),
            "{cone}"
        );
    }

    #[test]
    fn a_hairpin_router_forwards_each_node_at_a_fixed_port_and_counts_what_it_loops() {
        let rules = ruleset(NatMode::Hairpin);
        for (i, node) in ["172.31.2.2", "172.31.2.3"].iter().enumerate() {
            let port = hairpin_port(i);
            assert!(
                rules.contains(&format!(
                    "ip daddr 198.51.100.7 udp dport {port} dnat to {node}:51820"
                )),
                "{rules}"
            );
            for out in [
                format!("oifname \"{ROUTER_WAN}\" ip saddr"),
                format!("oifname \"{ROUTER_LAN}\" ct status dnat ip saddr"),
            ] {
                assert!(
                    rules.contains(&format!(
                        "{out} {node} udp sport 51820 snat to 198.51.100.7:{port}"
                    )),
                    "{rules}"
                );
            }
        }
        assert!(
            rules.find("snat to").unwrap() < rules.find("masquerade").unwrap(),
            "the fixed mappings before the masquerade: {rules}"
        );
        assert!(
            rules.contains(&format!(
                "iifname \"{ROUTER_LAN}\" ct status dnat counter name {LOOPED_COUNTER}"
            )),
            "{rules}"
        );
    }

    #[test]
    fn a_block_drops_both_directions_before_conntrack() {
        let rules = block_ruleset(Ipv4Addr::new(198, 51, 100, 9));
        assert!(rules.contains("ip saddr 198.51.100.9 drop"), "{rules}");
        assert!(rules.contains("ip daddr 198.51.100.9 drop"), "{rules}");
        // Conntrack hooks prerouting at -200: a dropped packet leaves no flow.
        assert!(rules.contains("priority -300"), "{rules}");
        assert!(
            rules.contains("hook output priority -300"),
            "a node's own packets too: {rules}"
        );
    }

    #[test]
    fn ruleset_replaces_its_own_table_only() {
        let rules = ruleset(NatMode::EndpointIndependent);
        assert!(rules.contains("delete table ip trellis-lab-nat"));
        assert!(!rules.contains("flush ruleset"));
        assert!(rules.contains(&format!("oifname \"{ROUTER_WAN}\"")));
        assert!(rules.contains(&format!("iifname \"{ROUTER_WAN}\" ct state new drop")));
        assert!(
            rules.contains(&format!(
                "iifname \"{ROUTER_LAN}\" ip daddr != {SITES} counter name {HAIRPIN_COUNTER}"
            )),
            "{rules}"
        );
    }

    #[test]
    fn private_addresses_differ_per_router_and_per_node_of_a_site() {
        assert_ne!(private_addrs(0, 1), private_addrs(1, 1));
        let (r, n) = private_addrs(3, 3);
        assert_eq!(n.len(), 3);
        assert!(n.iter().all(|n| r.octets()[..3] == n.octets()[..3]));
        assert!(n[0] != n[1] && n[1] != n[2] && !n.contains(&r));
    }
}
