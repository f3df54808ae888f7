//! A lab: one underlay, one or more clusters (each with its own real control
//! plane) and their nodes, recorded in a state file after every step. This
//! module owns the lab itself (its errors, options, `up` and `open`);
//! `cluster`, `node` and `nat` change it, `teardown` removes it.

mod cluster;
mod nat;
mod node;

use std::path::PathBuf;
use std::time::Instant;

use ipnet::IpNet;
use tracing::info;

use crate::cmd::CommandError;
use crate::control_plane::ControlPlaneError;
use crate::kubeconfig::KubeconfigError;
use crate::netns::{self, NetnsError};
use crate::node::NodeError;
use crate::plan::{self, IpFamily, Names, PlanError};
use crate::state::{self, LabState, StateError};
use crate::tools::{Tools, ToolsError};
use crate::underlay::{self, Addrs};

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
    #[error(transparent)]
    RealNode(#[from] crate::real_node::RealNodeError),
    #[error(transparent)]
    ClusterDns(#[from] crate::cluster_dns::ClusterDnsError),
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
    /// The first cluster's nodes are real: containerd and a kubelet each.
    pub real_nodes: bool,
    /// Their container runtime.
    pub runtime: crate::real_node::ContainerRuntime,
}

impl LabOptions {
    pub fn new(name: &str, nodes: u8) -> Self {
        LabOptions {
            name: name.to_string(),
            nodes,
            family: IpFamily::Dual,
            cluster_cidrs: None,
            real_nodes: false,
            runtime: Default::default(),
        }
    }
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    pub state: LabState,
    pub tools: Tools,
    /// Where the image's binaries (trellis-agent, trellis-cni, trellis-wg)
    /// come from: this workspace's target directory unless set (a
    /// benchmark points it at the static build the image ships).
    pub image_binaries: Option<std::path::PathBuf>,
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
                image_binaries: None,
                names,
            }
        };
        let start = Instant::now();
        info!(lab = %options.name, slot = lab.state.slot, "creating the underlay");
        netns::create(&lab.names.switch_netns())?;
        underlay::create_switch(&lab.names, lab.state.slot, options.family)?;
        lab.add_cluster_of(
            &options.name,
            options.nodes,
            options.cluster_cidrs.clone(),
            options.real_nodes.then_some(options.runtime),
        )
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
            image_binaries: None,
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

    /// Underlay addresses of the host's own link into the lab.
    pub fn host_addrs(&self) -> Addrs {
        Addrs::of(self.state.slot, 1, self.state.family).expect("index 1 is valid")
    }
}
