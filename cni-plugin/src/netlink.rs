//! The real [`PodNetwork`]: rtnetlink on a current-thread runtime (a CNI
//! call is one short, sequential job), with one netlink socket per network
//! namespace. A socket belongs to the namespace its thread was in when it
//! was opened, so the thread enters the pod's namespace only to open the
//! socket (and to write a sysctl), and returns to the host at once.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::RouteNetlinkMessage;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::CniError;
use crate::netns::{self, NetnsId};
use crate::podnet::{self, AttachmentSpec, LinkState, Observed, PodNetwork, Wired};

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// The kernel, through rtnetlink.
#[derive(Debug)]
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    host_ns: File,
    host_ns_id: NetnsId,
    host: Handle,
}

fn nl_err(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let context = context.into();
    move |e| CniError::Netlink(format!("{context}: {e}"))
}

/// Whether a netlink error says "no such device/entry".
fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if [ENODEV, ENOENT, ESRCH].contains(&m.raw_code().abs()))
}

fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        up: msg.header.flags.contains(LinkFlags::Up),
        mtu: 0,
        mac: String::new(),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Mtu(m) => state.mtu = *m,
            LinkAttribute::Address(a) => state.mac = mac_string(a),
            _ => {}
        }
    }
    state
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

async fn routes_via(handle: &Handle, index: u32) -> Result<Vec<(IpNet, Option<IpAddr>)>, CniError> {
    let mut out = Vec::new();
    let requests = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for request in requests {
        let mut stream = handle.route().get(request).execute();
        while let Some(route) = stream.try_next().await.map_err(nl_err("listing routes"))? {
            if let Some(entry) = route_entry(&route, index) {
                out.push(entry);
            }
        }
    }
    Ok(out)
}

/// Destinations of full-length routes (any table) within `cidrs`.
async fn routed_addresses(handle: &Handle, cidrs: &[IpNet]) -> Result<Vec<IpAddr>, CniError> {
    let mut out = Vec::new();
    let requests = [
        RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build(),
        RouteMessageBuilder::<Ipv6Addr>::new().table_id(0).build(),
    ];
    for request in requests {
        let mut stream = handle.route().get(request).execute();
        while let Some(route) = stream.try_next().await.map_err(nl_err("listing routes"))? {
            let full = match route.header.address_family {
                netlink_packet_route::AddressFamily::Inet => 32,
                _ => 128,
            };
            if route.header.destination_prefix_length != full {
                continue;
            }
            let dst = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => route_address(d),
                _ => None,
            });
            if let Some(dst) = dst.filter(|d| cidrs.iter().any(|c| c.contains(d))) {
                out.push(dst);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_entry(route: &RouteMessage, index: u32) -> Option<(IpNet, Option<IpAddr>)> {
    let mut oif = None;
    let mut dst = None;
    let mut gw = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(a) => dst = route_address(a),
            RouteAttribute::Gateway(a) => gw = route_address(a),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    let v4 = route.header.address_family == netlink_packet_route::AddressFamily::Inet;
    let dst = dst.unwrap_or(if v4 {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let net = IpNet::new(dst, route.header.destination_prefix_length).ok()?;
    Some((net, gw))
}

/// The id the namespace of `ns` has in the handle's namespace (RTM_GETNSID;
/// `None`: it has none, so no link there has a peer in it).
async fn nsid_of(handle: &Handle, ns: &File) -> Result<Option<i32>, rtnetlink::Error> {
    let mut message = NsidMessage::default();
    message
        .attributes
        .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut responses = handle.clone().request(request)?;
    while let Some(response) = responses.next().await {
        match response.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(rtnetlink::Error::NetlinkError(e))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(reply)) => {
                return Ok(reply.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                }));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Writes a sysctl under /proc/sys/net (in the calling thread's namespace).
fn write_sysctl(path: &str, value: &str) -> Result<(), CniError> {
    std::fs::write(path, value).map_err(CniError::io(format!("writing {path}")))
}

impl Netlink {
    /// Connects to the host's (the calling thread's) namespace.
    pub fn new() -> Result<Self, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(CniError::io("starting the netlink runtime"))?;
        let host_ns = File::open("/proc/thread-self/ns/net")
            .map_err(CniError::io("opening the host network namespace"))?;
        let host_ns_id = NetnsId::of_file(&host_ns)
            .map_err(CniError::io("reading the host network namespace"))?;
        let host = {
            let _guard = rt.enter();
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(CniError::io("opening a netlink socket"))?;
            rt.spawn(connection);
            handle
        };
        Ok(Netlink {
            rt,
            host_ns,
            host_ns_id,
            host,
        })
    }

    fn open_netns(netns: &Path) -> Result<File, CniError> {
        File::open(netns).map_err(|e| CniError::UnknownContainer {
            netns: netns.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Runs `work` with the thread inside `ns`, then returns to the host.
    fn inside<T>(
        &self,
        ns: &File,
        netns: &Path,
        work: impl FnOnce() -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| CniError::UnknownContainer {
            netns: netns.display().to_string(),
            reason: format!("not a network namespace ({e})"),
        })?;
        let result = work();
        setns(&self.host_ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| CniError::Internal(format!("cannot return to the host namespace: {e}")))?;
        result
    }

    /// A netlink handle bound to namespace `ns`.
    fn handle_in(&self, ns: &File, netns: &Path) -> Result<Handle, CniError> {
        self.inside(ns, netns, || {
            let _guard = self.rt.enter();
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(CniError::io("opening a netlink socket"))?;
            self.rt.spawn(connection);
            Ok(handle)
        })
    }

    async fn wire_async(
        &self,
        spec: &AttachmentSpec,
        pod_ns: &File,
        pod: &Handle,
    ) -> Result<Wired, CniError> {
        let host = &self.host;
        let has_v6 = spec.addresses.iter().any(IpAddr::is_ipv6);
        // A stale host end (a crashed ADD, a namespace nothing names any
        // more) would block the name; ADD refused a live one already.
        if let Some(stale) = link_by_name(host, &spec.host_ifname).await? {
            host.link()
                .del(stale.header.index)
                .execute()
                .await
                .map_err(nl_err("removing a stale host link"))?;
        }
        // The pair, the pod end created directly in the pod's namespace.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.pod_ifname.clone())
            .mtu(spec.mtu)
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(pod_ns))
            .build();
        let veth = LinkVeth::new(&spec.host_ifname, &spec.pod_ifname)
            .mtu(spec.mtu)
            .address(podnet::HOST_MAC.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        host.link()
            .add(veth)
            .execute()
            .await
            .map_err(nl_err(format!("creating veth {}", spec.host_ifname)))?;

        let host_link = link_by_name(host, &spec.host_ifname)
            .await?
            .ok_or_else(|| {
                CniError::Netlink(format!("veth {} vanished after creation", spec.host_ifname))
            })?;
        let host_index = host_link.header.index;
        if has_v6 {
            write_sysctl(
                &format!("/proc/sys/net/ipv6/conf/{}/accept_dad", spec.host_ifname),
                "0",
            )?;
        }
        host.link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .alias(spec.alias.clone())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err("bringing the host end up"))?;

        // The pod end: addresses without duplicate address detection, up,
        // routes through the link-local gateway.
        let pod_link = link_by_name(pod, &spec.pod_ifname).await?.ok_or_else(|| {
            CniError::Netlink(format!(
                "{} missing in the pod after creation",
                spec.pod_ifname
            ))
        })?;
        let pod_index = pod_link.header.index;
        let pod_mac = link_state(&pod_link).mac;
        if has_v6 {
            let path = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", spec.pod_ifname);
            self.inside(pod_ns, &spec.netns, || write_sysctl(&path, "0"))?;
        }
        for addr in &spec.addresses {
            let prefix = podnet::host_prefix(*addr);
            let mut request = pod.address().add(pod_index, *addr, prefix.prefix_len());
            if addr.is_ipv6() {
                let msg = request.message_mut();
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            request
                .execute()
                .await
                .map_err(nl_err(format!("adding {prefix} in the pod")))?;
        }
        pod.link()
            .set(LinkUnspec::new_with_index(pod_index).up().build())
            .execute()
            .await
            .map_err(nl_err("bringing the pod end up"))?;
        let host_mac = podnet::HOST_MAC.to_vec();
        for addr in &spec.addresses {
            let gateway = podnet::gateway_for(*addr);
            pod.neighbours()
                .add(pod_index, gateway)
                .link_layer_address(&host_mac)
                .execute()
                .await
                .map_err(nl_err(format!("adding the gateway {gateway} neighbour")))?;
            let default = match gateway {
                IpAddr::V4(gw) => {
                    let link_route = RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(gw, 32)
                        .output_interface(pod_index)
                        .scope(RouteScope::Link)
                        .build();
                    pod.route()
                        .add(link_route)
                        .execute()
                        .await
                        .map_err(nl_err("adding the gateway route"))?;
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(gw)
                        .output_interface(pod_index)
                        .build()
                }
                IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(gw)
                    .output_interface(pod_index)
                    .build(),
            };
            pod.route()
                .add(default)
                .execute()
                .await
                .map_err(nl_err("adding the default route"))?;
        }

        // The host: a route to each pod address over the veth, and the pod's
        // MAC as a permanent neighbour (no ARP or NDP needed either way).
        let pod_mac_bytes = pod_link
            .attributes
            .iter()
            .find_map(|a| {
                if let LinkAttribute::Address(m) = a {
                    Some(m.clone())
                } else {
                    None
                }
            })
            .unwrap_or_default();
        for addr in &spec.addresses {
            let route = match addr {
                IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(*a, 32)
                    .output_interface(host_index)
                    .scope(RouteScope::Link)
                    .protocol(RouteProtocol::Other(
                        trellis_mesh::names::ROUTE_PROTOCOL_POD,
                    ))
                    .build(),
                IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(*a, 128)
                    .output_interface(host_index)
                    .protocol(RouteProtocol::Other(
                        trellis_mesh::names::ROUTE_PROTOCOL_POD,
                    ))
                    .build(),
            };
            host.route()
                .add(route)
                .execute()
                .await
                .map_err(nl_err(format!("adding the host route to {addr}")))?;
            if !pod_mac_bytes.is_empty() {
                host.neighbours()
                    .add(host_index, *addr)
                    .link_layer_address(&pod_mac_bytes)
                    .execute()
                    .await
                    .map_err(nl_err(format!("adding the neighbour {addr}")))?;
            }
        }
        Ok(Wired {
            host_mac: mac_string(&host_mac),
            pod_mac,
        })
    }

    async fn delete_link(handle: &Handle, name: &str) -> Result<(), CniError> {
        if let Some(link) = link_by_name(handle, name).await? {
            match handle.link().del(link.header.index).execute().await {
                Err(e) if !is_missing(&e) => return Err(nl_err(format!("deleting {name}"))(e)),
                _ => {}
            }
        }
        Ok(())
    }
}

impl PodNetwork for Netlink {
    fn is_own_netns(&mut self, netns: &Path) -> bool {
        NetnsId::of_path(netns).is_ok_and(|id| id == self.host_ns_id)
    }

    fn pod_interface_exists(&mut self, netns: &Path, ifname: &str) -> Result<bool, CniError> {
        let ns = Self::open_netns(netns)?;
        let pod = self.handle_in(&ns, netns)?;
        Ok(self.rt.block_on(link_by_name(&pod, ifname))?.is_some())
    }

    fn attached_elsewhere(
        &mut self,
        host_ifname: &str,
        netns: &Path,
    ) -> Result<Option<PathBuf>, CniError> {
        let Some(link) = self.rt.block_on(link_by_name(&self.host, host_ifname))? else {
            return Ok(None);
        };
        // The kernel names the namespace of a veth's peer, when it is not
        // the link's own, by its id here.
        let Some(peer_nsid) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkNetNsId(id) => Some(*id),
            _ => None,
        }) else {
            return Ok(None);
        };
        let skip: Vec<NetnsId> = NetnsId::of_path(netns).into_iter().collect();
        for (path, ns) in netns::named_namespaces(self.host_ns_id, &skip) {
            // A namespace that cannot be asked about is not the peer's.
            if let Ok(Some(id)) = self.rt.block_on(nsid_of(&self.host, &ns)) {
                if id == peer_nsid {
                    return Ok(Some(path));
                }
            }
        }
        Ok(None)
    }

    fn wire(&mut self, spec: &AttachmentSpec) -> Result<Wired, CniError> {
        let ns = Self::open_netns(&spec.netns)?;
        let pod = self.handle_in(&ns, &spec.netns)?;
        let result = self.rt.block_on(self.wire_async(spec, &ns, &pod));
        if result.is_err() {
            // Deleting the host end deletes the pair: nothing is left.
            let _ = self
                .rt
                .block_on(Self::delete_link(&self.host, &spec.host_ifname));
        }
        result
    }

    fn unwire(
        &mut self,
        host_ifname: &str,
        netns: Option<&Path>,
        pod_ifname: &str,
    ) -> Result<(), CniError> {
        let mut errors = Vec::new();
        // The pod end first (deleting either end deletes the pair); then the
        // host end, which is still there when the pod end was gone already.
        if let Some(path) = netns {
            match Self::open_netns(path).and_then(|ns| self.handle_in(&ns, path)) {
                Ok(pod) => {
                    if let Err(e) = self.rt.block_on(Self::delete_link(&pod, pod_ifname)) {
                        errors.push(e);
                    }
                }
                Err(CniError::UnknownContainer { .. }) => {}
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = self.rt.block_on(Self::delete_link(&self.host, host_ifname)) {
            errors.push(e);
        }
        CniError::collect(errors)
    }

    fn observe(
        &mut self,
        netns: &Path,
        pod_ifname: &str,
        host_ifname: &str,
    ) -> Result<Observed, CniError> {
        let ns = Self::open_netns(netns)?;
        let pod = self.handle_in(&ns, netns)?;
        self.rt.block_on(async {
            let mut seen = Observed::default();
            if let Some(link) = link_by_name(&pod, pod_ifname).await? {
                let index = link.header.index;
                seen.pod_link = Some(link_state(&link));
                let mut addrs = pod.address().get().set_link_index_filter(index).execute();
                while let Some(msg) = addrs
                    .try_next()
                    .await
                    .map_err(nl_err("listing pod addresses"))?
                {
                    let addr = msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    if let Some(ip) = addr
                        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
                    {
                        if let Ok(net) = IpNet::new(ip, msg.header.prefix_len) {
                            seen.pod_addresses.push(net);
                        }
                    }
                }
                seen.pod_routes = routes_via(&pod, index).await?;
            }
            if let Some(link) = link_by_name(&self.host, host_ifname).await? {
                seen.host_link = Some(link_state(&link));
                seen.host_routes = routes_via(&self.host, link.header.index)
                    .await?
                    .into_iter()
                    .map(|(dst, _)| dst)
                    .collect();
            }
            Ok(seen)
        })
    }

    fn our_host_links(&mut self, alias_prefix: &str) -> Result<Vec<String>, CniError> {
        self.rt.block_on(async {
            let mut names = Vec::new();
            let mut links = self.host.link().get().execute();
            while let Some(link) = links.try_next().await.map_err(nl_err("listing links"))? {
                let mut name = None;
                let mut alias = None;
                for attr in &link.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::IfAlias(a) => alias = Some(a.clone()),
                        _ => {}
                    }
                }
                let Some(name) = name else { continue };
                let ours = match alias.as_deref() {
                    Some(a) if !a.is_empty() => a.starts_with(alias_prefix),
                    _ => podnet::is_host_ifname(&name),
                };
                if ours {
                    names.push(name);
                }
            }
            Ok(names)
        })
    }

    fn host_routed_addresses(&mut self, cidrs: &[IpNet]) -> Result<Vec<IpAddr>, CniError> {
        self.rt.block_on(routed_addresses(&self.host, cidrs))
    }

    fn delete_host_link(&mut self, name: &str) -> Result<(), CniError> {
        self.rt.block_on(Self::delete_link(&self.host, name))
    }

    fn host_link_state(&mut self, name: &str) -> Result<Option<podnet::MeshLinkState>, CniError> {
        Ok(self
            .rt
            .block_on(link_by_name(&self.host, name))?
            .map(|l| podnet::MeshLinkState {
                up: l.header.flags.contains(LinkFlags::Up),
                carrier: l.header.flags.contains(LinkFlags::LowerUp),
            }))
    }
}
