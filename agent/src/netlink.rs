//! The kernel side of the mesh interface, through rtnetlink: its MTU,
//! up/down state and mesh addresses, the routes to remote pod CIDRs (only
//! ever routes with our own protocol number), and the underlay's MTU.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use trellis_mesh::names::ROUTE_PROTOCOL_MESH;
use trellis_mesh::Route;

#[derive(Debug, thiserror::Error)]
#[error("netlink: {context}: {message}")]
pub struct NetlinkError {
    pub context: String,
    pub message: String,
}

fn err(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let context = context.into();
    move |e| NetlinkError {
        context,
        message: e.to_string(),
    }
}

const ENODEV: i32 = 19;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;

fn code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The interface's state as the plan needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterfaceState {
    pub index: u32,
    pub up: bool,
    /// Has carrier: a persistent TUN interface has none while no
    /// userspace device is attached to it.
    pub carrier: bool,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

/// rtnetlink on the agent's runtime.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink connection (on the current tokio runtime).
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        match self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
        {
            Ok(l) => Ok(l),
            Err(e) if code(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(err(format!("looking up {name}"))(e)),
        }
    }

    /// The interface's state, `None` when it does not exist.
    pub async fn state(&self, name: &str) -> Result<Option<InterfaceState>, NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(None);
        };
        let mut state = InterfaceState {
            index: link.header.index,
            up: link.header.flags.contains(LinkFlags::Up),
            carrier: link.header.flags.contains(LinkFlags::LowerUp),
            ..Default::default()
        };
        for attr in &link.attributes {
            if let LinkAttribute::Mtu(m) = attr {
                state.mtu = *m;
            }
        }
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(state.index)
            .execute();
        while let Some(msg) = addrs.try_next().await.map_err(err("listing addresses"))? {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) =
                ip.filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            {
                if let Ok(net) = IpNet::new(ip, msg.header.prefix_len) {
                    state.addresses.push(net);
                }
            }
        }
        state.addresses.sort();
        Ok(Some(state))
    }

    pub async fn set_mtu_up(
        &self,
        index: u32,
        mtu: Option<u32>,
        up: bool,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkUnspec::new_with_index(index);
        if let Some(m) = mtu {
            msg = msg.mtu(m);
        }
        if up {
            msg = msg.up();
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(err("setting MTU / up"))
    }

    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let mut req = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            let msg = req.message_mut();
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Err(e) if code(&e) == Some(EEXIST) => Ok(()),
            other => other.map_err(err(format!("adding address {net}"))),
        }
    }

    pub async fn remove_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(net.addr())
            .execute();
        while let Some(msg) = addrs.try_next().await.map_err(err("listing addresses"))? {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(err(format!("removing address {net}")))?;
        }
        Ok(())
    }

    /// Our routes (protocol ROUTE_PROTOCOL_MESH) in the main table.
    pub async fn mesh_routes(&self) -> Result<BTreeSet<Route>, NetlinkError> {
        let mut out = BTreeSet::new();
        for request in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = self.handle.route().get(request).execute();
            while let Some(route) = routes.try_next().await.map_err(err("listing routes"))? {
                if route.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL_MESH) {
                    continue;
                }
                if let Some(r) = to_route(&route) {
                    out.insert(r);
                }
            }
        }
        Ok(out)
    }

    fn route_message(index: u32, route: &Route) -> RouteMessage {
        let proto = RouteProtocol::Other(ROUTE_PROTOCOL_MESH);
        match (route.dst, route.src) {
            (IpNet::V4(dst), src) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.addr(), dst.prefix_len())
                    .output_interface(index)
                    .scope(RouteScope::Link)
                    .protocol(proto);
                if let Some(IpAddr::V4(s)) = src {
                    b = b.pref_source(s);
                }
                b.build()
            }
            (IpNet::V6(dst), src) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(dst.addr(), dst.prefix_len())
                    .output_interface(index)
                    .protocol(proto);
                if let Some(IpAddr::V6(s)) = src {
                    b = b.pref_source(s);
                }
                b.build()
            }
        }
    }

    pub async fn add_route(&self, index: u32, route: &Route) -> Result<(), NetlinkError> {
        let msg = Self::route_message(index, route);
        match self.handle.route().add(msg).replace().execute().await {
            Err(e) if code(&e) == Some(EEXIST) => Ok(()),
            other => other.map_err(err(format!("adding route {}", route.dst))),
        }
    }

    pub async fn remove_route(&self, route: &Route) -> Result<(), NetlinkError> {
        // Delete by destination and protocol: never a route that is not ours.
        let mut routes = self
            .handle
            .route()
            .get(match route.dst {
                IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
                IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            })
            .execute();
        let mut victims = Vec::new();
        while let Some(msg) = routes.try_next().await.map_err(err("listing routes"))? {
            if msg.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL_MESH)
                && to_route(&msg).map(|r| r.dst) == Some(route.dst)
            {
                victims.push(msg);
            }
        }
        for msg in victims {
            match self.handle.route().del(msg).execute().await {
                Err(e) if code(&e) == Some(ESRCH) => {}
                other => other.map_err(err(format!("removing route {}", route.dst)))?,
            }
        }
        Ok(())
    }

    /// The MTU of the interface that holds `addr` (the underlay).
    pub async fn mtu_of_interface_with(&self, addr: IpAddr) -> Result<Option<u32>, NetlinkError> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_address_filter(addr)
            .execute();
        let Some(msg) = addrs
            .try_next()
            .await
            .map_err(err("finding the underlay interface"))?
        else {
            return Ok(None);
        };
        let mut links = self
            .handle
            .link()
            .get()
            .match_index(msg.header.index)
            .execute();
        let Some(link) = links
            .try_next()
            .await
            .map_err(err("reading the underlay interface"))?
        else {
            return Ok(None);
        };
        Ok(link.attributes.iter().find_map(|a| {
            if let LinkAttribute::Mtu(m) = a {
                Some(*m)
            } else {
                None
            }
        }))
    }
}

fn to_route(msg: &RouteMessage) -> Option<Route> {
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut dst = None;
    let mut src = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = addr(a),
            RouteAttribute::PrefSource(a) => src = addr(a),
            _ => {}
        }
    }
    let net = IpNet::new(dst?, msg.header.destination_prefix_length).ok()?;
    Some(Route { dst: net, src })
}

/// Turns IP forwarding on (both families), as a router of pod traffic must,
/// through the sysctl tree at `sysctl_dir` (`/proc/sys`, or in a container
/// the host's net sysctls mounted writable). A switch already on is not
/// written, so a host that enables forwarding itself needs no writable tree.
pub fn enable_forwarding(sysctl_dir: &std::path::Path) -> std::io::Result<()> {
    for (name, required) in [
        ("net/ipv4/ip_forward", true),
        ("net/ipv6/conf/all/forwarding", false),
    ] {
        let path = sysctl_dir.join(name);
        let current = match std::fs::read_to_string(&path) {
            Ok(value) => value,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(sysctl_error(&path, e)),
        };
        if current.trim() != "1" {
            std::fs::write(&path, "1").map_err(|e| sysctl_error(&path, e))?;
        }
    }
    Ok(())
}

fn sysctl_error(path: &std::path::Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!(
            "{}: {e} (mount the host's /proc/sys/net writable and point --sysctl-dir at it, or turn forwarding on on the host)",
            path.display()
        ),
    )
}
