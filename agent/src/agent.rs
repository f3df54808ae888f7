//! The agent as a value: an [`Agent`] built from injected parts (the
//! watched stores, the dataplane, the cluster API, the linked clusters, a
//! wall clock), with one step, [`Agent::tick`], that publishes the node's
//! own annotations, reconciles the dataplane, reports what it left out and
//! writes the CNI configuration. What to wait for after a step is a pure
//! [`WaitPolicy`] — as kube-runtime's reconciler returns an `Action` and its
//! `error_policy` decides the retry. [`Agent::run_until`] is the loop:
//! a step, then a wait for a change, the wait's end or the stop signal.
//! The real parts are built in [`crate::runtime`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::runtime::reflector::Store;
use tokio::sync::Notify;
use trellis_api::Peer;
use trellis_mesh::annotations::own_annotations;
use trellis_mesh::desired::hostnames;
use trellis_mesh::{LocalNode, MeshInputs, PublicKey};

use crate::cluster_api::ClusterApi;
use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::kube_io;
use crate::leaks::LeakCollector;
use crate::metrics::{Metrics, Readiness};
use crate::reconcile::{Outcome, ReconcileError, Reconciler};
use crate::remote::LinkedClusters;
use crate::status::StatusBoard;
use crate::{cni_conf, leaks};

/// WireGuard's overhead on an IPv6 underlay: 40 (IPv6) + 8 (UDP) + 32.
const WIREGUARD_OVERHEAD: u32 = 80;
/// The MTU when the underlay's is unknown.
const DEFAULT_MTU: u32 = 1420;
/// How long one DNS name of an endpoint may take to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a step failed; the dataplane keeps its last state in every case.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("Node {0} is not in the cluster (yet)")]
    NotRegistered(String),
    #[error("publishing this node's annotations: {0}")]
    PublishAnnotations(kube::Error),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(
        "the mesh interface {0} is not up after reconciling: no CNI configuration until it is"
    )]
    InterfaceDown(String),
    #[error("writing the CNI configuration {path}: {error}")]
    CniConfiguration { path: String, error: std::io::Error },
}

/// What the loop waits for after a step. Pure: the loop's timing is
/// decided here and tested without a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Reconcile at least this often, changes or not.
    pub resync: Duration,
    /// How often probed pairs' paths are checked (relay fallback and
    /// return) while there are any.
    pub path_check: Duration,
    /// The first retry after a failure; doubled after each failure in a row.
    pub first_retry: Duration,
    pub max_retry: Duration,
}

impl WaitPolicy {
    pub fn new(resync: Duration) -> Self {
        WaitPolicy {
            resync,
            path_check: Duration::from_secs(2),
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(30),
        }
    }

    /// After a successful step.
    pub fn after_success(&self, step: &Reconciled) -> Duration {
        if step.republish {
            // What this node sees changed: publish it at once.
            Duration::ZERO
        } else if step.watches_paths {
            self.resync.min(self.path_check)
        } else {
            self.resync
        }
    }

    /// After the `failures`-th failed step in a row (from 1).
    pub fn after_failure(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.first_retry
            .saturating_mul(1 << doublings)
            .min(self.max_retry)
    }
}

/// What a successful step found that decides the next wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Some pair is probed: its path is checked often.
    pub watches_paths: bool,
    /// Where this node sees its peers changed since it last published.
    pub republish: bool,
}

/// How a step ended, and how long the loop waits before the next one
/// (unless something changes first).
#[derive(Debug)]
pub enum Tick {
    Reconciled { step: Reconciled, wait: Duration },
    Failed { error: StepError, wait: Duration },
}

impl Tick {
    pub fn wait(&self) -> Duration {
        match self {
            Tick::Reconciled { wait, .. } | Tick::Failed { wait, .. } => *wait,
        }
    }
}

/// The objects the agent watches, kept by reflectors (through API outages,
/// the last known objects).
#[derive(Clone, Debug)]
pub struct Stores {
    pub nodes: Store<Node>,
    pub peers: Store<Peer>,
    /// The link Secrets of linked clusters.
    pub links: Store<Secret>,
}

/// The wall clock (handshake ages are wall-clock times).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What an [`Agent`] is built from.
#[allow(missing_debug_implementations)]
pub struct Parts<D, C, L> {
    pub stores: Stores,
    pub dataplane: D,
    pub cluster: C,
    pub linked: L,
    pub clock: Clock,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub status: StatusBoard,
}

/// One node's agent.
pub struct Agent<D, C, L> {
    config: Config,
    public_key: PublicKey,
    policy: WaitPolicy,
    stores: Stores,
    cluster: C,
    linked: L,
    clock: Clock,
    metrics: Metrics,
    readiness: Readiness,
    status: StatusBoard,
    reconciler: Reconciler<D>,
    /// This node as the mesh sees it, once its Node was seen (the MTU
    /// comes from the underlay interface of its address).
    local: Option<LocalNode>,
    /// What this node last published as its discovered endpoints.
    discovered: BTreeMap<PublicKey, SocketAddr>,
    /// Failed steps in a row.
    failures: u32,
    leaks: Option<LeakCollector>,
}

impl<D, C, L> std::fmt::Debug for Agent<D, C, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.config.node_name)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl<D: Dataplane, C: ClusterApi, L: LinkedClusters> Agent<D, C, L> {
    pub fn new(config: Config, public_key: PublicKey, parts: Parts<D, C, L>) -> Self {
        let leaks = (config.ipam_leak_grace_seconds > 0).then(|| {
            LeakCollector::new(
                &config.ipam_dir(),
                cni_conf::NETWORK,
                Duration::from_secs(config.ipam_leak_grace_seconds),
            )
        });
        parts.readiness.set_not_ready("starting");
        Agent {
            policy: WaitPolicy::new(config.resync()),
            reconciler: Reconciler::new(&config.nft_table, parts.dataplane, parts.metrics.clone()),
            public_key,
            stores: parts.stores,
            cluster: parts.cluster,
            linked: parts.linked,
            clock: parts.clock,
            metrics: parts.metrics,
            readiness: parts.readiness,
            status: parts.status,
            local: None,
            discovered: BTreeMap::new(),
            failures: 0,
            leaks,
            config,
        }
    }

    pub fn dataplane(&self) -> &D {
        &self.reconciler.dataplane
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.reconciler.dataplane
    }

    pub fn cluster(&self) -> &C {
        &self.cluster
    }

    /// Steps until `stop` completes: after each step, waits for a change
    /// of the stores (`changed`), the policy's wait, or `stop`. Returns
    /// the agent (its dataplane stays as it is).
    pub async fn run_until(mut self, changed: Arc<Notify>, stop: impl Future<Output = ()>) -> Self {
        tokio::pin!(stop);
        loop {
            let wait = self.tick().await.wait();
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => break,
            }
        }
        self
    }

    /// One step: reconcile against the stores as they are now.
    pub async fn tick(&mut self) -> Tick {
        match self.step().await {
            Ok(step) => {
                self.readiness.set_ready();
                self.failures = 0;
                self.collect_leaks().await;
                Tick::Reconciled {
                    step,
                    wait: self.policy.after_success(&step),
                }
            }
            Err(error) => {
                self.failures += 1;
                let wait = self.policy.after_failure(self.failures);
                tracing::warn!(error = %error, retry_in = ?wait, "reconcile failed; the dataplane keeps its last state");
                if !self.reconciler.dataplane.interface_up().await {
                    self.withdraw_cni_configuration();
                }
                self.readiness.set_not_ready(error.to_string());
                Tick::Failed { error, wait }
            }
        }
    }

    async fn step(&mut self) -> Result<Reconciled, StepError> {
        let nodes = self.stores.nodes.state();
        let peer_objects = self.stores.peers.state();
        let own = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.config.node_name.as_str()))
            .cloned()
            .ok_or_else(|| StepError::NotRegistered(self.config.node_name.clone()))?;
        let endpoint_ip = self.endpoint_ip(&own);
        let endpoint = endpoint_ip.map(|ip| SocketAddr::new(ip, self.config.listen_port));
        let wanted = own_annotations(&self.public_key, endpoint, &self.discovered);
        if self
            .cluster
            .publish_annotations(&own, &wanted)
            .await
            .map_err(StepError::PublishAnnotations)?
        {
            tracing::info!(
                ?endpoint,
                discovered = self.discovered.len(),
                "published this node's key, endpoint and discovered endpoints"
            );
        }
        let local = self.local(endpoint_ip).await;
        let infos: Vec<_> = nodes.iter().map(|n| kube_io::node_info(n)).collect();
        let external = self.cluster.external_peers(&peer_objects).await;
        for (secret, problem) in self.linked.follow(&self.stores.links.state()).await {
            self.cluster.link_unusable(&own, &secret, &problem).await;
        }
        let remotes = self.linked.remote_clusters();
        let declared = self.config.declared();
        let inputs = MeshInputs {
            nodes: &infos,
            external: &external,
            remotes: &remotes,
            declared: &declared,
        };
        let resolved = resolve_all(hostnames(&inputs)).await;
        let resolve = |host: &str, port: u16| resolved.get(&(host.to_string(), port)).copied();
        let now = (self.clock)();
        let outcome = self
            .reconciler
            .reconcile_mesh(&local, &inputs, &resolve, now)
            .await?;
        let republish = outcome.discovered != self.discovered;
        if republish {
            self.discovered = outcome.discovered.clone();
        }
        self.report(&own, &peer_objects, &outcome).await;
        // The configuration is what tells a runtime the node can take pods
        // (containerd 1.x never asks the plugin's STATUS): only with the
        // mesh interface up.
        if !self.reconciler.dataplane.interface_up().await {
            return Err(StepError::InterfaceDown(self.config.interface.clone()));
        }
        let path = self.config.cni_conflist_path();
        let conflist = cni_conf::conflist(
            &outcome.desired.own_pod_cidrs,
            outcome.desired.mtu,
            &self.config.ipam_dir(),
            &self.config.interface,
        );
        let written = cni_conf::write_if_changed(&path, &conflist).map_err(|error| {
            StepError::CniConfiguration {
                path: path.display().to_string(),
                error,
            }
        })?;
        if written {
            tracing::info!(path = %path.display(), "wrote the CNI configuration");
        }
        Ok(Reconciled {
            watches_paths: outcome.watches_paths(),
            republish,
        })
    }

    /// The address peers dial: the flag's, else the Node's first IPv4
    /// internal address, else its first.
    fn endpoint_ip(&self, own: &Node) -> Option<IpAddr> {
        let own_ips = kube_io::internal_ips(own);
        self.config.endpoint_address.or_else(|| {
            own_ips
                .iter()
                .find(|a| a.is_ipv4())
                .or(own_ips.first())
                .copied()
        })
    }

    /// This node for the mesh; its MTU is decided once, from the flag or
    /// the underlay interface of `endpoint_ip`.
    async fn local(&mut self, endpoint_ip: Option<IpAddr>) -> LocalNode {
        if let Some(local) = &self.local {
            return local.clone();
        }
        let underlay_mtu = match endpoint_ip {
            Some(ip) => self.reconciler.dataplane.underlay_mtu(ip).await,
            None => None,
        };
        let mtu = self.config.mtu.unwrap_or_else(|| {
            underlay_mtu
                .map(|m| m.saturating_sub(WIREGUARD_OVERHEAD))
                .unwrap_or(DEFAULT_MTU)
        });
        tracing::info!(mtu, ?underlay_mtu, "MTU");
        let local = LocalNode {
            name: self.config.node_name.clone(),
            public_key: self.public_key,
            interface: self.config.interface.clone(),
            listen_port: self.config.listen_port,
            mtu,
        };
        self.local = Some(local.clone());
        local
    }

    /// Events for what is newly left out, the status report, the Peers'
    /// conditions.
    async fn report(&mut self, own: &Node, peers: &[Arc<Peer>], outcome: &Outcome) {
        for r in &outcome.new_rejections {
            tracing::warn!(peer = %r.object, reason = r.reason.as_str(), message = %r.message, "left out of the mesh");
            self.cluster.rejected(own, r).await;
        }
        for r in &outcome.new_cluster_rejections {
            tracing::warn!(cluster = r.cluster, message = %r.message, "linked cluster left out of the mesh");
            if let Some(secret) = self.linked.secret_of(&r.cluster).cloned() {
                self.cluster.cluster_refused(own, &secret, r).await;
            }
        }
        self.status.set(
            &self.config.node_name,
            self.public_key,
            outcome.desired.clone(),
            self.linked.reports(&outcome.desired),
        );
        match self
            .cluster
            .publish_conditions(&self.config.node_name, peers, &outcome.desired)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(peers = n, "updated this node's condition on Peers"),
            Err(e) => {
                tracing::warn!(error = %e, "could not update Peer conditions (retried next reconcile)")
            }
        }
    }

    /// The mesh interface is gone or down: no runtime may take a pod this
    /// node cannot serve (written again once the interface is back).
    fn withdraw_cni_configuration(&self) {
        let path = self.config.cni_conflist_path();
        match cni_conf::remove(&path) {
            Ok(true) => {
                tracing::warn!(interface = self.config.interface, path = %path.display(), "the mesh interface is gone or down: removed the CNI configuration, so the runtime takes no pod this node cannot serve (written again once the interface is back)")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove the CNI configuration"),
        }
    }

    /// Runs the leak collector when it is due, off the async threads (it
    /// takes the IPAM store's lock), and logs what it released.
    async fn collect_leaks(&mut self) {
        let Some(mut c) = self.leaks.take_if(|c| c.due(std::time::Instant::now())) else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || {
            let got = c.collect(leaks::interface_exists);
            (c, got)
        })
        .await;
        let Ok((c, got)) = joined else {
            tracing::error!("the IPAM leak collector panicked: it is off until the agent restarts");
            return;
        };
        self.leaks = Some(c);
        for (address, owner) in &got.released {
            tracing::warn!(%address, container = owner.container_id, ifname = owner.ifname, "released a leaked pod address: its pod's interface is gone and no CNI DEL came");
        }
        self.metrics
            .leaked_addresses_released
            .inc_by(got.released.len() as u64);
        for e in &got.errors {
            tracing::warn!(error = %e, "collecting leaked pod addresses");
        }
    }
}

/// Resolves every name at once, on tokio's blocking pool (getaddrinfo
/// blocks), each within [`DNS_TIMEOUT`]; a name that fails is missing from
/// the answer (its peer is left out, saying it does not resolve).
pub async fn resolve_all(names: BTreeSet<(String, u16)>) -> BTreeMap<(String, u16), SocketAddr> {
    let lookups = names.into_iter().map(|(host, port)| async move {
        let found =
            tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|mut addrs| addrs.next());
        found.map(|addr| ((host, port), addr))
    });
    futures::future::join_all(lookups)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests;
