//! NAT routers in the lab: putting a node behind one (see [`crate::nat`]
//! for the routers' rulesets).

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
    /// Puts `node` behind a NAT router: the node's cable to the switch is
    /// replaced by one to a router namespace that masquerades its traffic
    /// onto the underlay. The Node object's address becomes the private one,
    /// as a real node behind NAT reports.
    pub async fn put_behind_nat(
        &mut self,
        node: &str,
        mode: NatMode,
    ) -> Result<RouterState, LabError> {
        let node_state = self.node(node)?.clone();
        if node_state.nat.is_some() {
            return Err(LabError::Invalid {
                what: "node",
                name: node.into(),
                problem: "is behind a NAT already".into(),
            });
        }
        let router_netns = self.names.router_netns(node);
        let router_index = self.state.next_router;
        self.state.next_router += 1;
        let wan_index = self.next_underlay_index()?;
        let (router_private, node_private) = nat::private_addrs(router_index);
        netns::create(&router_netns)?;
        let router = RouterState {
            netns: router_netns.clone(),
            mode,
            underlay_index: wan_index,
            public_v4: plan::underlay_addr(self.state.slot, wan_index)?.0,
            private_v4: node_private,
        };
        let entry = self.state.node_mut(node).expect("checked above");
        entry.nat = Some(router.clone());
        self.state.save()?;
        // The router: wan0 on the underlay (IPv4 only), lan0 towards the node.
        underlay::attach(
            &self.names,
            &router_netns,
            self.state.slot,
            wan_index,
            IpFamily::Ipv4,
            true,
        )?;
        crate::cmd::ip(
            Some(&router_netns),
            &["link", "set", underlay::UPLINK, "name", nat::ROUTER_WAN],
        )?;
        if let Some(index) = node_state.underlay_index {
            underlay::detach(&self.names, index)?;
        }
        crate::cmd::ip(
            Some(&router_netns),
            &[
                "link",
                "add",
                nat::ROUTER_LAN,
                "type",
                "veth",
                "peer",
                "name",
                underlay::UPLINK,
                "netns",
                &node_state.netns,
            ],
        )?;
        crate::cmd::ip(
            Some(&router_netns),
            &[
                "addr",
                "add",
                &format!("{router_private}/24"),
                "dev",
                nat::ROUTER_LAN,
            ],
        )?;
        crate::cmd::ip(Some(&router_netns), &["link", "set", nat::ROUTER_LAN, "up"])?;
        underlay::sysctl(&router_netns, "net.ipv4.ip_forward", "1")?;
        nat::load_ruleset(&router_netns, mode)?;
        let ns = &node_state.netns;
        crate::cmd::ip(
            Some(ns),
            &[
                "addr",
                "add",
                &format!("{node_private}/24"),
                "dev",
                underlay::UPLINK,
            ],
        )?;
        crate::cmd::ip(Some(ns), &["link", "set", underlay::UPLINK, "up"])?;
        crate::cmd::ip(
            Some(ns),
            &[
                "route",
                "add",
                "default",
                "via",
                &router_private.to_string(),
            ],
        )?;
        // The control plane still reaches the node's private address, as
        // API servers reach kubelets over a private network or a tunnel
        // (node proxy: logs, exec, the agent's /status). Only the cluster's
        // control-plane namespace has this route: nodes on the underlay
        // still see the node only through its NAT.
        let control_plane = self.names.control_plane_netns(&node_state.cluster);
        crate::cmd::ip(
            Some(&control_plane),
            &[
                "route",
                "replace",
                &format!("{node_private}/32"),
                "via",
                &router.public_v4.to_string(),
            ],
        )?;
        let entry = self.state.node_mut(node).expect("checked above");
        entry.underlay_index = None;
        entry.v4 = Some(node_private);
        entry.v6 = None;
        self.state.save()?;
        let client = self.client(&node_state.cluster).await?;
        node::set_addresses(&client, node, &[IpAddr::V4(node_private)]).await?;
        info!(node, ?mode, public = %router.public_v4, private = %node_private, "node is behind NAT");
        Ok(router)
    }
}
