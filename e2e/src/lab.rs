//! A lab: one underlay, one or more clusters (each with its own real control
//! plane) and their nodes, recorded in a state file after every step. This
//! module builds and changes labs; `teardown` removes them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tracing::info;

use crate::cmd::CommandError;
use crate::control_plane::{self, ControlPlaneError, ControlPlaneSpec};
use crate::deadline;
use crate::kubeconfig::{self, KubeconfigError};
use crate::nat::{self, NatMode};
use crate::netns::{self, NetnsError};
use crate::node::{self, NodeError};
use crate::plan::{self, IpFamily, Names, PlanError};
use crate::state::{self, ClusterState, Daemon, LabState, NodeState, RouterState, StateError};
use crate::tools::{Tools, ToolsError};
use crate::underlay::{self, Addrs};

/// How long the apiserver may take to become ready (a cold start on two
/// loaded cores takes a few seconds; this is generous on purpose), before
/// [`deadline::scaled`].
const APISERVER_READY: Duration = Duration::from_secs(120);
/// How long the controller-manager may take to assign a pod CIDR.
const POD_CIDR_ASSIGNED: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tools(#[from] ToolsError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Chart(#[from] crate::chart::ChartError),
    #[error(transparent)]
    Kubelet(#[from] crate::kubelet::KubeletError),
    #[error(
        "lab {0:?} is already up (or was not torn down): run `trellis-lab down --name {0}` first"
    )]
    AlreadyUp(String),
    #[error("lab {0:?} is not up (no state in {1})")]
    NotUp(String, PathBuf),
    #[error("all {0} lab slots are in use or overlap the host's own networks: take a lab down first (`trellis-lab list`)")]
    NoFreeSlot(u8),
    #[error("the lab needs root (network namespaces, mounts): run it as root")]
    NotRoot,
    #[error("{what} {name:?} {problem}")]
    Invalid {
        what: &'static str,
        name: String,
        problem: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

/// What `Lab::up` builds.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub name: String,
    pub nodes: u8,
    pub family: IpFamily,
    /// Cluster CIDRs of the first cluster (default: per-cluster ranges).
    pub cluster_cidrs: Option<Vec<IpNet>>,
}

impl LabOptions {
    pub fn new(name: &str, nodes: u8) -> Self {
        LabOptions {
            name: name.to_string(),
            nodes,
            family: IpFamily::Dual,
            cluster_cidrs: None,
        }
    }
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    pub state: LabState,
    pub tools: Tools,
    names: Names,
}

pub fn require_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

impl Lab {
    /// Builds a lab: underlay, the first cluster (named like the lab) and its
    /// nodes. On failure what was built stays recorded: `down` removes it.
    pub async fn up(options: LabOptions) -> Result<Lab, LabError> {
        require_root()?;
        plan::validate_name(&options.name)?;
        let tools = Tools::locate()?;
        for tool in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "cnitool",
        ] {
            tools.path(tool)?;
        }
        let root = state::lab_root();
        let names = Names::new(&options.name);
        let dir = root.join(&options.name);
        let mut lab = {
            let _lock = state::lock(&root)?;
            if LabState::path(&dir).exists()
                || !netns::list_with_prefix(&names.netns_prefix()).is_empty()
            {
                return Err(LabError::AlreadyUp(options.name.clone()));
            }
            let used: Vec<u8> = state::existing_labs(&root).iter().map(|l| l.slot).collect();
            let host_networks = underlay::host_networks()?;
            let slot = (0..plan::MAX_LABS)
                .find(|s| !used.contains(s) && !plan::slot_conflicts(*s, &host_networks))
                .ok_or(LabError::NoFreeSlot(plan::MAX_LABS))?;
            let state = LabState {
                name: options.name.clone(),
                slot,
                family: options.family,
                dir: dir.clone(),
                next_underlay_index: 2,
                next_router: 0,
                clusters: Vec::new(),
                nodes: Vec::new(),
                pods: Vec::new(),
                daemons: Vec::new(),
                machines: Vec::new(),
            };
            state.save()?;
            Lab {
                state,
                tools,
                names,
            }
        };
        let start = Instant::now();
        info!(lab = %options.name, slot = lab.state.slot, "creating the underlay");
        netns::create(&lab.names.switch_netns())?;
        underlay::create_switch(&lab.names, lab.state.slot, options.family)?;
        lab.add_cluster(&options.name, options.nodes, options.cluster_cidrs.clone())
            .await?;
        info!(lab = %options.name, seconds = start.elapsed().as_secs_f32(), "lab is up");
        Ok(lab)
    }

    /// Opens a lab that is up.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        plan::validate_name(name)?;
        let dir = state::lab_root().join(name);
        if !LabState::path(&dir).exists() {
            return Err(LabError::NotUp(name.to_string(), dir));
        }
        Ok(Lab {
            state: LabState::load(&dir)?,
            tools: Tools::locate()?,
            names: Names::new(name),
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub(crate) fn next_underlay_index(&mut self) -> Result<u8, LabError> {
        let index = self.state.next_underlay_index;
        if index == 255 {
            return Err(PlanError::UnderlayFull {
                slot: self.state.slot,
                max: 254,
            }
            .into());
        }
        self.state.next_underlay_index += 1;
        self.state.save()?;
        Ok(index)
    }

    /// The cluster `node` belongs to.
    pub fn cluster_of(&self, node: &str) -> Result<&ClusterState, LabError> {
        let cluster = self.node(node)?.cluster.clone();
        self.cluster_state(&cluster)
    }

    fn cluster_state(&self, cluster: &str) -> Result<&ClusterState, LabError> {
        self.state
            .cluster(cluster)
            .ok_or_else(|| LabError::Invalid {
                what: "cluster",
                name: cluster.to_string(),
                problem: format!("is not part of lab {}", self.state.name),
            })
    }

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

    /// Adds a cluster with its own control plane on this lab's underlay.
    pub async fn add_cluster(
        &mut self,
        name: &str,
        nodes: u8,
        cluster_cidrs: Option<Vec<IpNet>>,
    ) -> Result<(), LabError> {
        plan::validate_name(name)?;
        if self.state.cluster(name).is_some() {
            return Err(LabError::Invalid {
                what: "cluster",
                name: name.into(),
                problem: "exists already".into(),
            });
        }
        let index = self.state.clusters.len() as u8;
        let family = self.state.family;
        let cidrs = cluster_cidrs.unwrap_or_else(|| plan::default_cluster_cidrs(index, family));
        let underlay_index = self.next_underlay_index()?;
        let cp_netns = self.names.control_plane_netns(name);
        let dir = self.state.dir.join("clusters").join(name);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        info!(
            cluster = name,
            "starting the control plane (etcd, kube-apiserver, kube-controller-manager)"
        );
        netns::create(&cp_netns)?;
        let addrs = underlay::attach(
            &self.names,
            &cp_netns,
            self.state.slot,
            underlay_index,
            family,
            false,
        )?;
        let spec = ControlPlaneSpec {
            cluster: name.to_string(),
            netns: cp_netns.clone(),
            dir: dir.clone(),
            addresses: addrs.all(),
            cluster_cidrs: cidrs.clone(),
        };
        self.state.clusters.push(ClusterState {
            name: name.to_string(),
            index,
            netns: cp_netns,
            underlay_index,
            apiserver_url: spec.apiserver_url(),
            cluster_cidrs: cidrs,
            dir,
            admin_kubeconfig: spec.admin_kubeconfig(),
        });
        self.state.save()?;
        control_plane::write_pki(&spec)?;
        // The controller-manager starts once the apiserver is ready (RBAC
        // roles bootstrapped): on a slow machine it would otherwise give up.
        use control_plane::Component;
        let mut started = Vec::new();
        let start = Instant::now();
        for phase in [
            &[Component::Etcd, Component::ApiServer][..],
            &[Component::ControllerManager][..],
        ] {
            control_plane::start(&spec, &self.tools, phase, |daemon| {
                started.push(daemon.clone());
                self.state.daemons.push(daemon);
                self.state.save().map_err(|e| ControlPlaneError::Dir {
                    path: self.state.dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?;
            control_plane::wait_ready(&spec, &started, deadline::scaled(APISERVER_READY)).await?;
        }
        info!(
            cluster = name,
            seconds = start.elapsed().as_secs_f32(),
            "apiserver ready"
        );
        for _ in 0..nodes {
            self.add_node(name).await?;
        }
        Ok(())
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
        node::register(&client, &name, &addrs.all()).await?;
        let cidrs = node::wait_pod_cidrs(
            &client,
            &name,
            cluster_state.cluster_cidrs.len(),
            deadline::scaled(POD_CIDR_ASSIGNED),
        )
        .await?;
        info!(node = %name, address = ?addrs.all(), pod_cidrs = ?cidrs, "node registered");
        Ok(name)
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

    /// The admin kubeconfig of a cluster.
    pub fn kubeconfig(&self, cluster: &str) -> Result<PathBuf, LabError> {
        Ok(self.cluster_state(cluster)?.admin_kubeconfig.clone())
    }

    /// Every cluster's admin kubeconfig joined by ':' (as KUBECONFIG takes
    /// them): one context per cluster, named after it.
    pub fn all_kubeconfigs(&self) -> String {
        self.state
            .clusters
            .iter()
            .map(|c| c.admin_kubeconfig.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// An admin client of a cluster.
    pub async fn client(&self, cluster: &str) -> Result<kube::Client, LabError> {
        Ok(kubeconfig::client(&self.kubeconfig(cluster)?).await?)
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

    /// Underlay addresses of the host's own link into the lab.
    pub fn host_addrs(&self) -> Addrs {
        Addrs::of(self.state.slot, 1, self.state.family).expect("index 1 is valid")
    }
}
