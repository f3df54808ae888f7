//! NAT routers in the lab: putting a node, or a site of several nodes on
//! one private network, behind one (see [`crate::nat`] for the routers'
//! rulesets).

use std::net::IpAddr;

use tracing::info;

use super::{Lab, LabError};
use crate::nat::{self, NatMode};
use crate::netns;
use crate::node;
use crate::plan::{self, IpFamily};
use crate::state::RouterState;
use crate::underlay;

impl Lab {
    /// Puts `node` behind a NAT router of its own (a site of one node):
    /// see [`Lab::put_site_behind_nat`].
    pub async fn put_behind_nat(
        &mut self,
        node: &str,
        mode: NatMode,
    ) -> Result<RouterState, LabError> {
        let mut routers = self.put_site_behind_nat(&[node], mode).await?;
        Ok(routers.remove(0))
    }

    /// Puts `nodes` on one private network, a site, behind one NAT router:
    /// each node's cable to the switch is replaced by one to the router's
    /// bridge, and the router masquerades the site's traffic onto the
    /// underlay (without hairpinning, as most NAT gateways, unless `mode`
    /// is [`NatMode::Hairpin`]). The Node
    /// objects' addresses become the private ones, as real nodes behind NAT
    /// report. The router as each node's state records it, in order.
    pub async fn put_site_behind_nat(
        &mut self,
        nodes: &[&str],
        mode: NatMode,
    ) -> Result<Vec<RouterState>, LabError> {
        let Some(first) = nodes.first() else {
            return Ok(Vec::new());
        };
        let mut states = Vec::new();
        for node in nodes {
            let state = self.node(node)?.clone();
            if state.nat.is_some() {
                return Err(LabError::Invalid {
                    what: "node",
                    name: node.to_string(),
                    problem: "is behind a NAT already".into(),
                });
            }
            states.push(state);
        }
        let router_netns = self.names.router_netns(first);
        let router_index = self.state.next_router;
        self.state.next_router += 1;
        let wan_index = self.next_underlay_index()?;
        let (router_private, node_private) = nat::private_addrs(router_index, nodes.len());
        netns::create(&router_netns)?;
        let public_v4 = plan::underlay_addr(self.state.slot, wan_index)?.0;
        let routers: Vec<RouterState> = node_private
            .iter()
            .map(|private| RouterState {
                netns: router_netns.clone(),
                mode,
                underlay_index: wan_index,
                public_v4,
                private_v4: *private,
            })
            .collect();
        for (node, router) in nodes.iter().zip(&routers) {
            self.state.node_mut(node).expect("checked above").nat = Some(router.clone());
        }
        self.state.save()?;
        // The router: wan0 on the underlay (IPv4 only), the bridge lan0
        // towards its nodes.
        underlay::attach(
            &self.names,
            &router_netns,
            self.state.slot,
            wan_index,
            IpFamily::Ipv4,
            true,
        )?;
        let in_router = |args: &[&str]| crate::cmd::ip(Some(&router_netns), args).map(drop);
        in_router(&["link", "set", underlay::UPLINK, "name", nat::ROUTER_WAN])?;
        in_router(&["link", "add", nat::ROUTER_LAN, "type", "bridge"])?;
        in_router(&[
            "addr",
            "add",
            &format!("{router_private}/24"),
            "dev",
            nat::ROUTER_LAN,
        ])?;
        in_router(&["link", "set", nat::ROUTER_LAN, "up"])?;
        underlay::sysctl(&router_netns, "net.ipv4.ip_forward", "1")?;
        // A hairpin router sends a site's packets back out where they came
        // from: no ICMP redirects for that.
        for conf in ["all", nat::ROUTER_LAN] {
            let key = format!("net.ipv4.conf.{conf}.send_redirects");
            underlay::sysctl(&router_netns, &key, "0")?;
        }
        // The site's bridge is a plain switch, as in a real router: where
        // br_netfilter is loaded (a container runtime loads it), bridged
        // packets would go through the router's NAT and conntrack too.
        if underlay::sysctl(&router_netns, "net.bridge.bridge-nf-call-iptables", "0").is_err() {
            tracing::debug!("no br_netfilter here: the bridge bypasses the NAT anyway");
        }
        nat::load_ruleset(&router_netns, mode, public_v4, &node_private)?;
        let control_plane = self.names.control_plane_netns(&states[0].cluster);
        for (i, (node_state, private)) in states.iter().zip(&node_private).enumerate() {
            if let Some(index) = node_state.underlay_index {
                underlay::detach(&self.names, index)?;
            }
            let port = nat::router_port(i);
            in_router(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                underlay::UPLINK,
                "netns",
                &node_state.netns,
            ])?;
            in_router(&["link", "set", &port, "master", nat::ROUTER_LAN, "up"])?;
            let in_node = |args: &[&str]| crate::cmd::ip(Some(&node_state.netns), args).map(drop);
            in_node(&[
                "addr",
                "add",
                &format!("{private}/24"),
                "dev",
                underlay::UPLINK,
            ])?;
            in_node(&["link", "set", underlay::UPLINK, "up"])?;
            in_node(&[
                "route",
                "add",
                "default",
                "via",
                &router_private.to_string(),
            ])?;
            // The control plane still reaches the node's private address,
            // as API servers reach kubelets over a private network or a
            // tunnel (node proxy: logs, exec, the agent's /status). Only
            // the cluster's control-plane namespace has this route: nodes
            // on the underlay still see the node only through its NAT.
            let control_plane = if node_state.cluster == states[0].cluster {
                control_plane.clone()
            } else {
                self.names.control_plane_netns(&node_state.cluster)
            };
            crate::cmd::ip(
                Some(&control_plane),
                &[
                    "route",
                    "replace",
                    &format!("{private}/32"),
                    "via",
                    &public_v4.to_string(),
                ],
            )?;
            let entry = self
                .state
                .node_mut(&node_state.name)
                .expect("checked above");
            entry.underlay_index = None;
            entry.v4 = Some(*private);
            entry.v6 = None;
            self.state.save()?;
            let client = self.client(&node_state.cluster).await?;
            node::set_addresses(&client, &node_state.name, &[IpAddr::V4(*private)]).await?;
            info!(node = %node_state.name, ?mode, public = %public_v4, private = %private, site = %router_netns, "node is behind NAT");
        }
        Ok(routers)
    }
}
