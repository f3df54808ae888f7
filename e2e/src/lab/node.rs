//! The lab's nodes: adding one to a cluster (a namespace on the underlay,
//! private directories, a Node object with its pod CIDRs), removing one,
//! and running commands and long-running processes on one.

use std::process::Command;
use std::time::Duration;

use tracing::info;

use super::{Lab, LabError};
use crate::cluster_dns;
use crate::control_plane;
use crate::deadline;
use crate::kubeconfig;
use crate::netns;
use crate::node::{self, NodeError};
use crate::plan;
use crate::real_node;
use crate::state::{self, ClusterState, Daemon, NodeState};
use crate::underlay;

/// How long the controller-manager may take to assign a pod CIDR.
const POD_CIDR_ASSIGNED: Duration = Duration::from_secs(60);

impl Lab {
    /// The node's state, or an error naming the lab's nodes.
    pub fn node(&self, name: &str) -> Result<&NodeState, LabError> {
        self.state.node(name).ok_or_else(|| LabError::Invalid {
            what: "node",
            name: name.to_string(),
            problem: format!(
                "is not a node of lab {} (nodes: {})",
                self.state.name,
                self.state
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// Adds a node to `cluster`: namespace on the underlay, private dirs,
    /// Node object; waits for its pod CIDRs. Returns its name.
    pub async fn add_node(&mut self, cluster: &str) -> Result<String, LabError> {
        let cluster_state = self.cluster_state(cluster)?.clone();
        let number = (1..)
            .find(|i| self.state.node(&format!("{cluster}-n{i}")).is_none())
            .expect("some number is free");
        let name = format!("{cluster}-n{number}");
        plan::validate_node_name(&name)?;
        let underlay_index = self.next_underlay_index()?;
        let netns_name = self.names.node_netns(&name);
        let dir = self.state.dir.join("nodes").join(&name);
        netns::create(&netns_name)?;
        self.state.nodes.push(NodeState {
            name: name.clone(),
            cluster: cluster.to_string(),
            netns: netns_name.clone(),
            underlay_index: Some(underlay_index),
            v4: None,
            v6: None,
            dir: dir.clone(),
            nat: None,
        });
        self.state.save()?;
        let addrs = underlay::attach(
            &self.names,
            &netns_name,
            self.state.slot,
            underlay_index,
            self.state.family,
            true,
        )?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ] {
            underlay::sysctl(&netns_name, key, value)?;
        }
        {
            let root = state::lab_root();
            let _lock = state::lock(&root)?;
            let created = node::prepare_dirs(&dir, &self.tools.cni_plugin_dir())?;
            state::add_created_mountpoints(&root, &created)?;
        }
        let node_state = self.state.node_mut(&name).expect("just added");
        node_state.v4 = addrs.v4;
        node_state.v6 = addrs.v6;
        self.state.save()?;
        let client = kubeconfig::client(&cluster_state.admin_kubeconfig).await?;
        if cluster_state.real_nodes {
            self.start_real_node(&name, &cluster_state)?;
            let log = self.node(&name)?.dir.join("kubelet.log");
            real_node::wait_registered(&client, &name, &log).await?;
        } else {
            node::register(&client, &name, &addrs.all()).await?;
        }
        let cidrs = node::wait_pod_cidrs(
            &client,
            &name,
            cluster_state.cluster_cidrs.len(),
            deadline::scaled(POD_CIDR_ASSIGNED),
        )
        .await?;
        info!(node = %name, address = ?addrs.all(), pod_cidrs = ?cidrs, "node registered");
        if cluster_state.real_nodes {
            self.route_pods_from_control_plane(&name, &cidrs)?;
        }
        Ok(name)
    }

    /// Routes `node`'s pod CIDRs from the control plane's namespace to the
    /// node's underlay address. On a cluster of real nodes the API server
    /// dials pods (`pods/proxy`, `services/proxy`, which the upstream suite
    /// uses to read its DNS probes' results). The lab's control plane is
    /// no node of the mesh, so it reaches pods as a control plane outside
    /// the pod network does through a cloud's route table: over the
    /// underlay to the node, which forwards to the pod (unencrypted on
    /// that hop; pods reach the API server through the node's masquerade).
    fn route_pods_from_control_plane(&self, node: &str, cidrs: &[String]) -> Result<(), LabError> {
        let state = self.node(node)?;
        let control_plane = self.names.control_plane_netns(&state.cluster);
        for cidr in cidrs {
            let (family, via) = if cidr.contains(':') {
                ("-6", state.v6.map(|a| a.to_string()))
            } else {
                ("-4", state.v4.map(|a| a.to_string()))
            };
            let Some(via) = via else { continue };
            crate::cmd::ip(
                Some(&control_plane),
                &[family, "route", "replace", cidr, "via", &via],
            )?;
        }
        Ok(())
    }

    /// Starts containerd, the kubelet and kube-proxy on `node` (see
    /// [`real_node`]).
    fn start_real_node(&mut self, node: &str, cluster: &ClusterState) -> Result<(), LabError> {
        let node_state = self.node(node)?.clone();
        let cidrs = &cluster.cluster_cidrs;
        let addresses: Vec<std::net::IpAddr> = node_state
            .v4
            .map(Into::into)
            .into_iter()
            .chain(node_state.v6.map(Into::into))
            .collect();
        let credentials = real_node::credentials::issue(&real_node::credentials::NodeIdentity {
            cluster: &cluster.name,
            cluster_dir: &cluster.dir,
            apiserver_url: &cluster.apiserver_url,
            node,
            addresses: &addresses,
            node_dir: &node_state.dir,
        })
        .map_err(|source| real_node::RealNodeError::Credentials {
            node: node.to_string(),
            source,
        })?;
        let spec = real_node::RealNodeSpec {
            lab: &self.state.name.clone(),
            node: &node_state,
            credentials: &credentials,
            cluster_cidrs: cidrs,
            cluster_dns: cluster_dns::service_ip(control_plane::service_cidr(cidrs)),
            runtime: cluster.runtime,
        };
        let tools = self.tools.clone();
        let state = &mut self.state;
        real_node::start(&spec, &tools, |daemon| {
            state.daemons.push(daemon);
            state.save().map_err(|e| real_node::RealNodeError::Io {
                node: node.to_string(),
                what: "saving the lab state".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        info!(node, "containerd, kubelet and kube-proxy started");
        Ok(())
    }

    /// Removes a node: its Node object, every process and pod on it, its
    /// namespace and NAT router.
    pub async fn remove_node(&mut self, name: &str) -> Result<(), LabError> {
        let node_state = self.node(name)?.clone();
        let cluster = self.cluster_state(&node_state.cluster)?.clone();
        let client = kubeconfig::client(&cluster.admin_kubeconfig).await?;
        let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        match api.delete(name, &Default::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => {
                return Err(NodeError::Register {
                    node: name.into(),
                    source: e,
                }
                .into())
            }
        }
        if cluster.real_nodes {
            // Its pod CIDRs' routes in the control plane go with it ("no
            // such route" when it had none is fine).
            let control_plane = self.names.control_plane_netns(&cluster.name);
            let vias = [
                ("-4", node_state.v4.map(|a| a.to_string())),
                ("-6", node_state.v6.map(|a| a.to_string())),
            ];
            for (family, via) in vias {
                if let Some(via) = via {
                    let _ = crate::cmd::ip(
                        Some(&control_plane),
                        &[family, "route", "flush", "via", &via],
                    );
                }
            }
        }
        let mut namespaces: Vec<String> = self
            .state
            .pods
            .iter()
            .filter(|p| p.node == name)
            .map(|p| p.netns.clone())
            .collect();
        namespaces.push(node_state.netns.clone());
        if let Some(nat) = &node_state.nat {
            namespaces.push(nat.netns.clone());
        }
        netns::kill_all_in(&namespaces, Duration::from_secs(3));
        for ns in &namespaces {
            netns::delete(ns)?;
        }
        for index in node_state
            .underlay_index
            .into_iter()
            .chain(node_state.nat.as_ref().map(|n| n.underlay_index))
        {
            underlay::detach(&self.names, index)?;
        }
        self.state.pods.retain(|p| p.node != name);
        self.state.nodes.retain(|n| n.name != name);
        self.state
            .daemons
            .retain(|d| !namespaces.contains(&d.netns));
        self.state.save()?;
        Ok(())
    }

    /// A command that runs `program` on `node`: in its namespace, with its
    /// private directories over the standard paths.
    pub fn node_command(
        &self,
        node: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command, LabError> {
        Ok(node::placement(self.node(node)?).command(program)?)
    }

    /// Starts a long-running process on `node`, logging to the node's
    /// directory; it is recorded, and stopped by `down` or `remove_node`.
    pub fn spawn_on_node(
        &mut self,
        node: &str,
        what: &str,
        command: Command,
    ) -> Result<Daemon, LabError> {
        let placement = node::placement(self.node(node)?);
        self.spawn_placed(node, what, command, &placement)
    }

    /// Like `spawn_on_node`, in `placement` (the node's, with a container's
    /// mounts added).
    pub fn spawn_placed(
        &mut self,
        node: &str,
        what: &str,
        command: Command,
        placement: &netns::Placement,
    ) -> Result<Daemon, LabError> {
        let node_state = self.node(node)?.clone();
        let log = node_state.dir.join(format!("{what}.log"));
        let pid = placement.spawn_daemon(command, what, &log)?;
        let daemon = Daemon {
            name: format!("{node}/{what}"),
            pid,
            netns: node_state.netns.clone(),
            log,
        };
        self.state.daemons.push(daemon.clone());
        self.state.save()?;
        Ok(daemon)
    }
}
