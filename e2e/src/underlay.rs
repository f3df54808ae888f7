//! The underlay: one switch namespace per lab with a bridge, the host's own
//! link into it, and veth "cables" from each namespace (control plane, node,
//! NAT router) to a bridge port.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::cmd::{self, CommandError};
use crate::plan::{self, IpFamily, Names};

/// The bridge in the switch namespace.
pub const BRIDGE: &str = "br0";
/// The underlay interface inside a control plane, node or router namespace.
pub const UPLINK: &str = "eth0";

/// Addresses of one end on the underlay, by family.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Addrs {
    pub fn of(slot: u8, index: u8, family: IpFamily) -> Result<Self, plan::PlanError> {
        let (v4, v6) = plan::underlay_addr(slot, index)?;
        Ok(Addrs {
            v4: family.has_v4().then_some(v4),
            v6: family.has_v6().then_some(v6),
        })
    }
    pub fn all(&self) -> Vec<std::net::IpAddr> {
        let mut v = Vec::new();
        v.extend(self.v4.map(std::net::IpAddr::V4));
        v.extend(self.v6.map(std::net::IpAddr::V6));
        v
    }
}

/// Creates the switch namespace with its bridge, and the host's link.
pub fn create_switch(names: &Names, slot: u8, family: IpFamily) -> Result<(), CommandError> {
    let sw = names.switch_netns();
    cmd::ip(Some(&sw), &["link", "add", BRIDGE, "type", "bridge"])?;
    cmd::ip(Some(&sw), &["link", "set", BRIDGE, "up"])?;
    let host = names.host_link();
    cmd::ip(
        None,
        &[
            "link", "add", &host, "type", "veth", "peer", "name", "host", "netns", &sw,
        ],
    )?;
    cmd::ip(Some(&sw), &["link", "set", "host", "master", BRIDGE, "up"])?;
    let addrs = Addrs::of(slot, 1, family).expect("index 1 is valid");
    configure(None, &host, addrs, 24)?;
    Ok(())
}

fn configure(
    netns: Option<&str>,
    ifname: &str,
    addrs: Addrs,
    v4_prefix: u8,
) -> Result<(), CommandError> {
    if let Some(v4) = addrs.v4 {
        cmd::ip(
            netns,
            &["addr", "add", &format!("{v4}/{v4_prefix}"), "dev", ifname],
        )?;
    }
    if let Some(v6) = addrs.v6 {
        cmd::ip(
            netns,
            &["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"],
        )?;
    }
    cmd::ip(netns, &["link", "set", ifname, "up"])?;
    Ok(())
}

/// Cables `netns` to switch port `index` and gives its `eth0` the
/// underlay addresses of that index; with `default_route`, the host's end of
/// the underlay becomes its default gateway (the lab's "internet").
pub fn attach(
    names: &Names,
    netns: &str,
    slot: u8,
    index: u8,
    family: IpFamily,
    default_route: bool,
) -> Result<Addrs, CommandError> {
    let sw = names.switch_netns();
    let port = Names::switch_port(index);
    cmd::ip(
        Some(&sw),
        &[
            "link", "add", &port, "type", "veth", "peer", "name", UPLINK, "netns", netns,
        ],
    )?;
    cmd::ip(Some(&sw), &["link", "set", &port, "master", BRIDGE, "up"])?;
    let addrs = Addrs::of(slot, index, family).map_err(|e| CommandError::Failed {
        command: "address plan".into(),
        status: "error".into(),
        stderr: e.to_string(),
    })?;
    configure(Some(netns), UPLINK, addrs, 24)?;
    if default_route {
        let gw = Addrs::of(slot, 1, family).expect("index 1 is valid");
        if let Some(v4) = gw.v4 {
            cmd::ip(
                Some(netns),
                &["route", "add", "default", "via", &v4.to_string()],
            )?;
        }
        if let Some(v6) = gw.v6 {
            cmd::ip(
                Some(netns),
                &["-6", "route", "add", "default", "via", &v6.to_string()],
            )?;
        }
    }
    Ok(addrs)
}

/// Removes switch port `index` (and with it the cable to its namespace).
pub fn detach(names: &Names, index: u8) -> Result<(), CommandError> {
    let sw = names.switch_netns();
    let port = Names::switch_port(index);
    match cmd::ip(Some(&sw), &["link", "del", &port]) {
        Err(CommandError::Failed { stderr, .. }) if stderr.contains("Cannot find device") => Ok(()),
        other => other.map(drop),
    }
}

/// Every network the host namespace has an address in or a route to, so
/// the lab never takes a range the machine itself uses.
pub fn host_networks() -> Result<Vec<ipnet::IpNet>, CommandError> {
    let mut nets = Vec::new();
    let addrs: serde_json::Value =
        serde_json::from_str(&cmd::ip(None, &["-j", "addr", "show"])?).unwrap_or_default();
    for link in addrs.as_array().into_iter().flatten() {
        for info in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(len)) = (info["local"].as_str(), info["prefixlen"].as_u64())
            else {
                continue;
            };
            if let Ok(net) = format!("{local}/{len}").parse::<ipnet::IpNet>() {
                nets.push(net.trunc());
            }
        }
    }
    for family in ["-4", "-6"] {
        let routes: serde_json::Value = serde_json::from_str(&cmd::ip(
            None,
            &["-j", family, "route", "show", "table", "all"],
        )?)
        .unwrap_or_default();
        for route in routes.as_array().into_iter().flatten() {
            let Some(dst) = route["dst"].as_str() else {
                continue;
            };
            if let Ok(net) = dst.parse::<ipnet::IpNet>() {
                nets.push(net);
            } else if let Ok(addr) = dst.parse::<std::net::IpAddr>() {
                nets.push(ipnet::IpNet::from(addr));
            }
        }
    }
    Ok(nets)
}

/// Sets a sysctl inside a namespace.
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), CommandError> {
    cmd::in_netns(netns, "sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
}
