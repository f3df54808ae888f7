//! The CNI verbs: ADD, DEL, CHECK, STATUS, GC and VERSION, on a validated
//! invocation, the configuration from stdin, the IPAM store and a
//! [`PodNetwork`]. Returns what to print on success.

use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use crate::config::NetConf;
use crate::env::{Command, Invocation};
use crate::error::CniError;
use crate::ipam::{Owner, Store};
use crate::podnet::{self, AttachmentSpec, MeshLinkState, PodNetwork};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::version::{self, Version};

/// Runs one CNI call. `Ok(Some(json))` is printed on stdout; `Ok(None)`
/// prints nothing (DEL, GC, STATUS succeed silently).
///
/// VERSION needs no [`PodNetwork`]: [`crate::run`] answers it with
/// [`version::answer`] without building one, and so does this function,
/// without touching `net`, should it be called with VERSION.
pub fn handle(
    inv: &Invocation,
    stdin: &[u8],
    net: &mut impl PodNetwork,
) -> Result<Option<Value>, CniError> {
    if inv.command == Command::Version {
        return Ok(Some(version::answer(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    match inv.command {
        Command::Add => add(inv, &conf, net).map(Some),
        Command::Del => del(inv, &conf, net).map(|()| None),
        Command::Check => check(inv, &conf, net).map(|()| None),
        Command::Status => status(&conf, net).map(|()| None),
        Command::Gc => gc(&conf, net).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn require_version(conf: &NetConf, verb: &str, ok: bool, since: &str) -> Result<(), CniError> {
    if ok {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion {
            version: conf.version.as_str().to_string(),
            supported: format!("{verb} from cniVersion {since} on"),
        })
    }
}

fn owner(inv: &Invocation) -> Owner {
    Owner::new(inv.container_id(), inv.ifname())
}

/// CNI_NETNS must name a container's namespace: wiring the plugin's own
/// would put a pod's addresses and default route on the host.
fn refuse_own_netns(net: &mut impl PodNetwork, netns: &Path) -> Result<(), CniError> {
    if net.is_own_netns(netns) {
        return Err(CniError::InvalidEnvironment {
            var: "CNI_NETNS",
            reason: format!(
                "{} is the plugin's own network namespace (the host's), not a container's: pass the pod's network namespace",
                netns.display()
            ),
        });
    }
    Ok(())
}

fn add(inv: &Invocation, conf: &NetConf, net: &mut impl PodNetwork) -> Result<Value, CniError> {
    if conf.pod_cidrs.is_empty() {
        return Err(CniError::InvalidConfig(
            "podCIDRs is empty: the node has no pod CIDR yet (the agent writes it once the Node has spec.podCIDRs)".into(),
        ));
    }
    // A garbage prevResult is refused before anything is allocated.
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_prev_result)
        .transpose()?;
    let netns = inv.netns.clone().expect("validated: ADD has CNI_NETNS");
    refuse_own_netns(net, &netns)?;
    // The spec: ADD for an interface name the container has must fail.
    if net.pod_interface_exists(&netns, inv.ifname())? {
        return Err(CniError::InterfaceExists {
            ifname: inv.ifname().to_string(),
            netns: netns.display().to_string(),
        });
    }
    // The same container and interface in another namespace whose veth is
    // live: replacing that host end would take the other pod's interface
    // (and hand this one the same addresses).
    let host_ifname = podnet::host_ifname(inv.container_id(), inv.ifname());
    if let Some(other) = net.attached_elsewhere(&host_ifname, &netns)? {
        return Err(CniError::AttachedElsewhere {
            container_id: inv.container_id().to_string(),
            ifname: inv.ifname().to_string(),
            host_ifname,
            other_netns: other.display().to_string(),
            netns: netns.display().to_string(),
        });
    }
    let owner = owner(inv);
    // Addresses the host routes already are a live pod's (of another
    // network, e.g. while a node moves from another CNI) or the host's own:
    // handing one out would fail at the host route. Our own pods' are in
    // the store anyway.
    let routed = net.host_routed_addresses(&conf.pod_cidrs)?;
    // The lock is held only while allocating; the allocation is on disk.
    let addresses =
        Store::open(&conf.data_dir, &conf.name)?.allocate(&owner, &conf.pod_cidrs, &routed)?;
    let spec = AttachmentSpec {
        host_ifname,
        pod_ifname: inv.ifname().to_string(),
        netns: netns.clone(),
        mtu: conf.mtu,
        addresses: addresses.clone(),
        alias: podnet::link_alias(&conf.name, inv.container_id(), inv.ifname()),
    };
    let wired = match net.wire(&spec) {
        Ok(w) => w,
        Err(e) => {
            // Leave nothing behind: no half-wired link, no held address.
            let _ = net.unwire(&spec.host_ifname, Some(&netns), &spec.pod_ifname);
            if let Ok(store) = Store::open(&conf.data_dir, &conf.name) {
                let _ = store.release(&owner);
            }
            return Err(e);
        }
    };
    let mut ours = CniResult {
        interfaces: vec![
            Interface {
                name: spec.host_ifname.clone(),
                mac: wired.host_mac,
                mtu: Some(conf.mtu),
                sandbox: String::new(),
            },
            Interface {
                name: spec.pod_ifname.clone(),
                mac: wired.pod_mac,
                mtu: Some(conf.mtu),
                sandbox: netns.display().to_string(),
            },
        ],
        ips: Vec::new(),
        routes: Vec::new(),
        dns: Default::default(),
    };
    for addr in &addresses {
        ours.ips.push(IpConfig {
            address: podnet::host_prefix(*addr),
            gateway: Some(podnet::gateway_for(*addr)),
            interface: Some(1),
        });
        let default = if addr.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        ours.routes.push(Route {
            dst: default.parse().expect("literal"),
            gw: Some(podnet::gateway_for(*addr)),
        });
    }
    let result = match prev {
        Some(prev) => merge(prev, ours),
        None => ours,
    };
    Ok(result.to_json(conf.version))
}

/// Appends our part to a previous plugin's result (interface indices of our
/// IPs shift past its interfaces).
fn merge(mut prev: CniResult, ours: CniResult) -> CniResult {
    let offset = prev.interfaces.len();
    prev.interfaces.extend(ours.interfaces);
    prev.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + offset);
        ip
    }));
    prev.routes.extend(ours.routes);
    prev
}

/// Best effort and idempotent: removes the links and releases the addresses,
/// keeps going after an error, and reports every error.
fn del(inv: &Invocation, conf: &NetConf, net: &mut impl PodNetwork) -> Result<(), CniError> {
    let mut errors = Vec::new();
    let host = podnet::host_ifname(inv.container_id(), inv.ifname());
    // A namespace that is gone took its veth end, and so the pair, with it.
    // The plugin's own namespace holds no pod end: an interface there named
    // CNI_IFNAME is the host's, and stays (the host end takes its pair).
    let netns = inv
        .netns
        .as_deref()
        .filter(|p| p.exists() && !net.is_own_netns(p));
    if let Err(e) = net.unwire(&host, netns, inv.ifname()) {
        errors.push(e);
    }
    match Store::open(&conf.data_dir, &conf.name) {
        Ok(store) => {
            if let Err(e) = store.release(&owner(inv)) {
                errors.push(e);
            }
        }
        Err(e) => errors.push(e),
    }
    CniError::collect(errors)
}

fn check(inv: &Invocation, conf: &NetConf, net: &mut impl PodNetwork) -> Result<(), CniError> {
    require_version(conf, "CHECK", conf.version.has_check(), "0.4.0")?;
    let netns = inv.netns.clone().expect("validated: CHECK has CNI_NETNS");
    refuse_own_netns(net, &netns)?;
    let prev_value = conf.prev_result.as_ref().ok_or_else(|| CniError::Decode {
        what: "prevResult",
        reason: "CHECK needs the prevResult of the ADD; the runtime passed none".into(),
    })?;
    let prev = CniResult::from_prev_result(prev_value)?;
    let host = podnet::host_ifname(inv.container_id(), inv.ifname());
    let seen = net.observe(&netns, inv.ifname(), &host)?;
    let mut problems = Vec::new();
    match &seen.pod_link {
        None => problems.push(format!(
            "interface {} is missing in {}",
            inv.ifname(),
            netns.display()
        )),
        Some(link) => {
            if !link.up {
                problems.push(format!("interface {} is down", inv.ifname()));
            }
            if link.mtu != conf.mtu {
                problems.push(format!(
                    "interface {} has MTU {}, the configuration says {}",
                    inv.ifname(),
                    link.mtu,
                    conf.mtu
                ));
            }
        }
    }
    let index = prev.sandbox_interface_index(inv.ifname());
    if index.is_none() {
        problems.push(format!(
            "prevResult lists no interface {} in a sandbox",
            inv.ifname()
        ));
    }
    let ours: Vec<&IpConfig> = prev.ips.iter().filter(|ip| ip.interface == index).collect();
    for ip in &ours {
        if !seen.pod_addresses.contains(&ip.address) {
            problems.push(format!(
                "address {} is missing on {}",
                ip.address,
                inv.ifname()
            ));
        }
        if !seen
            .host_routes
            .contains(&podnet::host_prefix(ip.address.addr()))
        {
            problems.push(format!(
                "the host has no route to {} over {host}",
                ip.address.addr()
            ));
        }
    }
    for route in &prev.routes {
        let gw = route.gw.or_else(|| {
            ours.iter()
                .find(|ip| ip.address.addr().is_ipv4() == route.dst.addr().is_ipv4())
                .and_then(|ip| ip.gateway)
        });
        if !seen
            .pod_routes
            .iter()
            .any(|(dst, g)| *dst == route.dst && (gw.is_none() || *g == gw))
        {
            problems.push(format!(
                "route to {} via {gw:?} is missing in the pod",
                route.dst
            ));
        }
    }
    match &seen.host_link {
        None => problems.push(format!("host interface {host} is missing")),
        Some(link) if !link.up => problems.push(format!("host interface {host} is down")),
        Some(_) => {}
    }
    let held: Vec<IpAddr> = Store::open(&conf.data_dir, &conf.name)?.addresses_of(&owner(inv))?;
    for ip in &ours {
        if !held.contains(&ip.address.addr()) {
            problems.push(format!(
                "address {} is not reserved for this container in the IPAM store",
                ip.address.addr()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::CheckMismatch(problems.join("; ")))
    }
}

/// Ready when the configuration carries pod CIDRs with free addresses and
/// the mesh interface (when named) is up.
fn status(conf: &NetConf, net: &mut impl PodNetwork) -> Result<(), CniError> {
    require_version(conf, "STATUS", conf.version.has_status_and_gc(), "1.1.0")?;
    if conf.pod_cidrs.is_empty() {
        return Err(CniError::NotAvailable(
            "the configuration has no podCIDRs: the agent has not learned this node's pod CIDRs yet".into(),
        ));
    }
    if let Some(iface) = &conf.mesh_interface {
        match net.host_link_state(iface)? {
            None => {
                return Err(CniError::NotAvailable(format!(
                    "mesh interface {iface} does not exist: is trellis-agent running?"
                )))
            }
            Some(MeshLinkState { up: false, .. }) => {
                return Err(CniError::NotAvailable(format!(
                    "mesh interface {iface} is down"
                )))
            }
            Some(MeshLinkState { carrier: false, .. }) => {
                return Err(CniError::NotAvailable(format!(
                    "mesh interface {iface} has no carrier: no WireGuard device is attached to it (is trellis-wg running?)"
                )))
            }
            Some(MeshLinkState { .. }) => {}
        }
    }
    let store = Store::open(&conf.data_dir, &conf.name)?;
    let in_use = store.allocations()?;
    for cidr in &conf.pod_cidrs {
        let bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
        if bits < 16 {
            let reserved = if cidr.addr().is_ipv4() { 3 } else { 2 };
            let usable = (1usize << bits).saturating_sub(reserved);
            let used = in_use.iter().filter(|(a, _)| cidr.contains(a)).count();
            if used >= usable {
                return Err(CniError::NotAvailable(format!(
                    "pod CIDR {cidr} is exhausted ({used} addresses in use)"
                )));
            }
        }
    }
    Ok(())
}

/// Releases every allocation and removes every host link of this network
/// that belongs to no valid attachment; keeps going after errors.
fn gc(conf: &NetConf, net: &mut impl PodNetwork) -> Result<(), CniError> {
    require_version(conf, "GC", conf.version.has_status_and_gc(), "1.1.0")?;
    // libcni leaves the key out when the runtime gives no list, meaning
    // "nothing is valid" (as the reference plugins read it).
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let owners: Vec<Owner> = valid
        .iter()
        .map(|a| Owner::new(&a.container_id, &a.ifname))
        .collect();
    let valid_links: Vec<String> = valid
        .iter()
        .map(|a| podnet::host_ifname(&a.container_id, &a.ifname))
        .collect();
    let mut errors = Vec::new();
    match Store::open(&conf.data_dir, &conf.name) {
        Ok(store) => errors.extend(store.release_all_but(&owners).1),
        Err(e) => errors.push(e),
    }
    match net.our_host_links(&podnet::network_alias_prefix(&conf.name)) {
        Ok(links) => {
            for link in links.into_iter().filter(|l| !valid_links.contains(l)) {
                if let Err(e) = net.delete_host_link(&link) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    CniError::collect(errors)
}

/// The version to write an error object in: the configuration's when it can
/// be read, else the latest.
pub fn error_version(stdin: &[u8]) -> String {
    crate::config::peek_version(stdin).unwrap_or_else(|| Version::V1_1_0.as_str().to_string())
}
