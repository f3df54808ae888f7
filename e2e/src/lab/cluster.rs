//! The lab's clusters: adding one with its own control plane (etcd,
//! kube-apiserver, kube-controller-manager) on the lab's underlay, and
//! finding a cluster's state, admin kubeconfig and client.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tracing::info;

use super::{io_err, Lab, LabError};
use crate::cluster_dns;
use crate::control_plane::{self, ControlPlaneError, ControlPlaneSpec};
use crate::deadline;
use crate::kubeconfig;
use crate::netns;
use crate::plan;
use crate::state::ClusterState;
use crate::underlay;

/// How long the apiserver may take to become ready (a cold start on two
/// loaded cores takes a few seconds; this is generous on purpose), before
/// [`deadline::scaled`].
const APISERVER_READY: Duration = Duration::from_secs(120);

impl Lab {
    /// The cluster `node` belongs to.
    pub fn cluster_of(&self, node: &str) -> Result<&ClusterState, LabError> {
        let cluster = self.node(node)?.cluster.clone();
        self.cluster_state(&cluster)
    }

    pub(super) fn cluster_state(&self, cluster: &str) -> Result<&ClusterState, LabError> {
        self.state
            .cluster(cluster)
            .ok_or_else(|| LabError::Invalid {
                what: "cluster",
                name: cluster.to_string(),
                problem: format!("is not part of lab {}", self.state.name),
            })
    }

    /// Adds a cluster with its own control plane on this lab's underlay,
    /// and `nodes` imitation nodes.
    pub async fn add_cluster(
        &mut self,
        name: &str,
        nodes: u8,
        cluster_cidrs: Option<Vec<IpNet>>,
    ) -> Result<(), LabError> {
        self.add_cluster_of(name, nodes, cluster_cidrs, None).await
    }

    /// [`Lab::add_cluster`], its nodes real ones (containerd and a kubelet)
    /// when `real_nodes` names their runtime.
    pub async fn add_cluster_of(
        &mut self,
        name: &str,
        nodes: u8,
        cluster_cidrs: Option<Vec<IpNet>>,
        real_nodes: Option<crate::real_node::ContainerRuntime>,
    ) -> Result<(), LabError> {
        let runtime = real_nodes.unwrap_or_default();
        let real_nodes = real_nodes.is_some();
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
            real_nodes,
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
            real_nodes,
            runtime,
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
            &[Component::ControllerManager, Component::Scheduler][..],
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
        if real_nodes {
            let range = control_plane::service_cidr(&spec.cluster_cidrs);
            cluster_dns::apply(
                &self.tools.path("kubectl")?,
                &spec.admin_kubeconfig(),
                range,
            )?;
            info!(
                cluster = name,
                service = %cluster_dns::service_ip(range),
                "CoreDNS applied (its pods start once the nodes have a network)"
            );
        }
        for _ in 0..nodes {
            self.add_node(name).await?;
        }
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
}
