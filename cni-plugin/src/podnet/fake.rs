//! The recording fake of [`PodNetwork`] the unit tests drive the plugin
//! against: an in-memory kernel. Compiled for tests only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::{
    gateway_for, host_prefix, is_host_ifname, AttachmentSpec, LinkState, Observed, PodNetwork,
    Wired, MAX_ALIAS_BYTES,
};
use crate::error::CniError;

/// A recording fake for unit tests: an in-memory kernel.
#[derive(Debug, Default)]
pub(crate) struct FakePodNetwork {
    /// Namespaces that exist.
    pub(crate) namespaces: Vec<PathBuf>,
    /// Wired attachments.
    pub(crate) wired: Vec<AttachmentSpec>,
    /// Other host links: (name, alias, up).
    pub(crate) host_links: Vec<(String, String, bool)>,
    /// Host links (of those) without carrier: a TUN no process holds.
    pub(crate) no_carrier: Vec<String>,
    /// Addresses the host routes (full-length routes) besides wired pods'.
    pub(crate) routed: Vec<IpAddr>,
    /// Paths that name the plugin's own (the host's) network namespace.
    pub(crate) own_netns: Vec<PathBuf>,
    /// Every call, in order.
    pub(crate) calls: Vec<String>,
    /// Makes the next `wire` fail with this message.
    pub(crate) fail_wire: Option<String>,
    /// Makes `unwire` fail with this message.
    pub(crate) fail_unwire: Option<String>,
}

impl FakePodNetwork {
    fn check_netns(&self, netns: &Path) -> Result<(), CniError> {
        if self.namespaces.iter().any(|n| n == netns) {
            Ok(())
        } else {
            Err(CniError::UnknownContainer {
                netns: netns.display().to_string(),
                reason: "no such file".into(),
            })
        }
    }
}

impl PodNetwork for FakePodNetwork {
    fn is_own_netns(&mut self, netns: &Path) -> bool {
        self.calls.push(format!("own? {}", netns.display()));
        self.own_netns.iter().any(|n| n == netns)
    }

    fn pod_interface_exists(&mut self, netns: &Path, ifname: &str) -> Result<bool, CniError> {
        self.calls
            .push(format!("exists {} {ifname}", netns.display()));
        self.check_netns(netns)?;
        Ok(self
            .wired
            .iter()
            .any(|w| w.netns == netns && w.pod_ifname == ifname))
    }

    fn attached_elsewhere(
        &mut self,
        host_ifname: &str,
        netns: &Path,
    ) -> Result<Option<PathBuf>, CniError> {
        self.calls
            .push(format!("attached? {host_ifname} {}", netns.display()));
        Ok(self
            .wired
            .iter()
            .find(|w| {
                w.host_ifname == host_ifname
                    && w.netns != netns
                    && self.namespaces.contains(&w.netns)
            })
            .map(|w| w.netns.clone()))
    }

    fn wire(&mut self, spec: &AttachmentSpec) -> Result<Wired, CniError> {
        self.calls
            .push(format!("wire {} {}", spec.host_ifname, spec.pod_ifname));
        self.check_netns(&spec.netns)?;
        if let Some(msg) = self.fail_wire.take() {
            return Err(CniError::Netlink(msg));
        }
        if spec.alias.len() > MAX_ALIAS_BYTES {
            return Err(CniError::Netlink(format!(
                "bringing the host end up: alias of {} bytes: Numerical result out of range (os error 34)",
                spec.alias.len()
            )));
        }
        // As the kernel side does: a host end of that name is stale, and goes.
        self.wired.retain(|w| w.host_ifname != spec.host_ifname);
        self.wired.push(spec.clone());
        Ok(Wired {
            host_mac: "ee:ee:ee:ee:ee:ee".into(),
            pod_mac: "0a:00:00:00:00:01".into(),
        })
    }

    fn unwire(
        &mut self,
        host_ifname: &str,
        netns: Option<&Path>,
        pod_ifname: &str,
    ) -> Result<(), CniError> {
        self.calls.push(format!(
            "unwire {host_ifname} {} {pod_ifname}",
            netns.map_or("-".into(), |n| n.display().to_string())
        ));
        if let Some(msg) = &self.fail_unwire {
            return Err(CniError::Netlink(msg.clone()));
        }
        self.wired.retain(|w| w.host_ifname != host_ifname);
        self.host_links.retain(|(n, _, _)| n != host_ifname);
        Ok(())
    }

    fn observe(
        &mut self,
        netns: &Path,
        pod_ifname: &str,
        host_ifname: &str,
    ) -> Result<Observed, CniError> {
        self.calls
            .push(format!("observe {pod_ifname} {host_ifname}"));
        self.check_netns(netns)?;
        let Some(w) = self
            .wired
            .iter()
            .find(|w| w.netns == netns && w.pod_ifname == pod_ifname)
        else {
            return Ok(Observed::default());
        };
        let link = LinkState {
            up: true,
            mtu: w.mtu,
            mac: "0a:00:00:00:00:01".into(),
        };
        Ok(Observed {
            pod_link: Some(link.clone()),
            pod_addresses: w.addresses.iter().map(|a| host_prefix(*a)).collect(),
            pod_routes: w
                .addresses
                .iter()
                .map(|a| {
                    let default: IpNet = if a.is_ipv4() {
                        "0.0.0.0/0".parse().expect("literal")
                    } else {
                        "::/0".parse().expect("literal")
                    };
                    (default, Some(gateway_for(*a)))
                })
                .collect(),
            host_link: (w.host_ifname == host_ifname).then_some(LinkState {
                mac: "ee:ee:ee:ee:ee:ee".into(),
                ..link
            }),
            host_routes: w.addresses.iter().map(|a| host_prefix(*a)).collect(),
        })
    }

    fn our_host_links(&mut self, alias_prefix: &str) -> Result<Vec<String>, CniError> {
        self.calls.push(format!("list {alias_prefix}"));
        let mut names: Vec<String> = self
            .wired
            .iter()
            .filter(|w| w.alias.starts_with(alias_prefix))
            .map(|w| w.host_ifname.clone())
            .collect();
        names.extend(
            self.host_links
                .iter()
                .filter(|(n, a, _)| {
                    a.starts_with(alias_prefix) || (a.is_empty() && is_host_ifname(n))
                })
                .map(|(n, _, _)| n.clone()),
        );
        Ok(names)
    }

    fn delete_host_link(&mut self, name: &str) -> Result<(), CniError> {
        self.calls.push(format!("delete {name}"));
        self.wired.retain(|w| w.host_ifname != name);
        self.host_links.retain(|(n, _, _)| n != name);
        Ok(())
    }

    fn host_routed_addresses(&mut self, cidrs: &[IpNet]) -> Result<Vec<IpAddr>, CniError> {
        self.calls.push("routed?".into());
        Ok(self
            .routed
            .iter()
            .copied()
            .filter(|a| cidrs.iter().any(|c| c.contains(a)))
            .collect())
    }

    fn host_link_state(
        &mut self,
        name: &str,
    ) -> Result<Option<crate::podnet::MeshLinkState>, CniError> {
        self.calls.push(format!("up? {name}"));
        Ok(self
            .host_links
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, up)| crate::podnet::MeshLinkState {
                up: *up,
                carrier: *up && !self.no_carrier.iter().any(|n| n == name),
            }))
    }
}
