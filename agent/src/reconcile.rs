//! One reconcile: desired state from the snapshot, observed state from the
//! dataplane, the plan between them, applied and logged. The loop that
//! calls it (watch, resync, backoff) lives in [`crate::agent`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use trellis_mesh::nat::{discovered_endpoints, Session};
use trellis_mesh::nft::masquerade_ruleset;
use trellis_mesh::relay::{is_probed, PathChange, PathReadings, PathTracker};
use trellis_mesh::roaming::AppliedEndpoints;
use trellis_mesh::upgrade::UpgradeStep;
use trellis_mesh::LocalError;
use trellis_mesh::{
    desired_mesh, ClusterRejection, Desired, LocalNode, MeshInputs, PeerChange, Plan, PublicKey,
    Rejection,
};

use crate::dataplane::{Dataplane, DataplaneError, Observation};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("this node cannot join the mesh yet: {0}")]
    Local(#[from] LocalError),
    #[error("dataplane: {0}")]
    Dataplane(#[from] DataplaneError),
}

/// What a successful reconcile did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub desired: Desired,
    pub plan: Plan,
    pub observation: Observation,
    /// Rejections not reported before (each gets an Event once).
    pub new_rejections: Vec<Rejection>,
    /// Linked clusters refused, not reported before.
    pub new_cluster_rejections: Vec<ClusterRejection>,
    /// Where this node sees its peers, to publish on its Node.
    pub discovered: BTreeMap<PublicKey, SocketAddr>,
}

impl Outcome {
    /// Whether a pair is probed (kept alive; possibly relayed): its path
    /// is checked every couple of seconds, not only at resync.
    pub fn watches_paths(&self) -> bool {
        self.desired.peers.values().any(is_probed)
    }
}

/// One node's reconciles: the dataplane and what the agent remembers
/// between them (rejections reported, endpoints applied, paths tried).
#[derive(Debug)]
pub struct Reconciler<D> {
    pub nft_table: String,
    pub dataplane: D,
    pub metrics: Metrics,
    reported: BTreeSet<(String, String)>,
    applied_endpoints: AppliedEndpoints,
    paths: PathTracker,
}

impl<D: Dataplane> Reconciler<D> {
    pub fn new(nft_table: &str, dataplane: D, metrics: Metrics) -> Self {
        Reconciler {
            nft_table: nft_table.to_string(),
            dataplane,
            metrics,
            reported: BTreeSet::new(),
            applied_endpoints: AppliedEndpoints::default(),
            paths: PathTracker::default(),
        }
    }

    /// Brings the dataplane of `local` to the desired state of `inputs`,
    /// at wall-clock time `now` (handshake ages). `resolve` answers the DNS
    /// names of endpoints (already resolved: it must not block). On any
    /// error nothing is torn down: the dataplane keeps its last state.
    pub async fn reconcile_mesh(
        &mut self,
        local: &LocalNode,
        inputs: &MeshInputs<'_>,
        resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
        now: SystemTime,
    ) -> Result<Outcome, ReconcileError> {
        let start = Instant::now();
        let result = self.reconcile_inner(local, inputs, resolve, now).await;
        self.metrics
            .reconcile_duration
            .observe(start.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.reconcile_errors.inc();
        }
        result
    }

    async fn reconcile_inner(
        &mut self,
        local: &LocalNode,
        inputs: &MeshInputs<'_>,
        resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
        now: SystemTime,
    ) -> Result<Outcome, ReconcileError> {
        let mut desired = desired_mesh(local, inputs, resolve)?;
        let ruleset = masquerade_ruleset(&desired, &self.nft_table);
        let observation = self.dataplane.observe().await?;
        let device = &observation.device.peers;
        let readings = PathReadings {
            handshakes: device
                .iter()
                .filter_map(|(key, peer)| Some((*key, peer.last_handshake?)))
                .collect(),
            rx_bytes: device.iter().map(|(k, p)| (*k, p.rx_bytes)).collect(),
            answers: observation.echo_answers.clone(),
            endpoints: device
                .iter()
                .filter_map(|(key, peer)| Some((*key, peer.endpoint?)))
                .collect(),
        };
        for change in self
            .paths
            .route_via_relays(&mut desired, &local.public_key, &readings, now)
        {
            match change {
                PathChange::Relayed { peer, via } => {
                    tracing::warn!(%peer, %via, "no working direct path (no handshake, or silent): relaying")
                }
                PathChange::Direct { peer } => {
                    tracing::info!(%peer, "the direct path works again: leaving the relay")
                }
                PathChange::Silent {
                    peer,
                    endpoint,
                    for_,
                } => {
                    let endpoint = endpoint.map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!(%peer, %endpoint, silent_s = for_.as_secs_f64(), "the direct path stopped answering echoes: moving off it")
                }
                PathChange::RelayLost { peer } => {
                    tracing::warn!(%peer, "no node reaches both ends any more: trying direct only")
                }
                PathChange::Candidate {
                    peer,
                    kind,
                    endpoint,
                } => {
                    tracing::info!(%peer, kind = kind.as_str(), %endpoint, "no handshake at the endpoint tried: trying the next candidate")
                }
                PathChange::Upgrade {
                    peer,
                    kind,
                    endpoint,
                    step,
                } => {
                    let kind = kind.as_str();
                    match step {
                        UpgradeStep::Trying => {
                            tracing::info!(%peer, kind, %endpoint, "a better candidate answers on the underlay: trying it (the working path stays the fallback)")
                        }
                        UpgradeStep::Worked => {
                            tracing::info!(%peer, kind, %endpoint, "the better candidate works: staying on it")
                        }
                        UpgradeStep::Failed { retry_in } => {
                            tracing::warn!(%peer, kind, %endpoint, retry_in_s = retry_in.as_secs(), "no echo through the tunnel at the better candidate: back to the path that works")
                        }
                    }
                }
            }
        }
        let (observed, roamed) = self.applied_endpoints.keep_roamed(
            &desired,
            observation.observed.clone(),
            &readings.handshakes,
            now,
        );
        let plan = trellis_mesh::plan(&desired, &ruleset, &observed);
        if !plan.is_empty() {
            log_plan(&plan);
            self.dataplane
                .apply(&trellis_mesh::roaming::carry(&plan, &roamed))
                .await?;
            self.applied_endpoints.record(&plan);
            self.metrics
                .dataplane_operations
                .inc_by(plan.operations() as u64);
        }
        // After the plan: a relayed peer's probe address is on its peer now.
        self.dataplane.probe(self.paths.probes()).await;
        self.dataplane.echo(&self.paths.echo_targets()).await;
        self.metrics.record_state(&desired, &observation.device);
        let current: BTreeSet<(String, String)> = desired
            .rejected
            .iter()
            .map(|r| (r.object.to_string(), r.message.clone()))
            .chain(
                desired
                    .rejected_clusters
                    .iter()
                    .map(|r| (format!("cluster {}", r.cluster), r.message.clone())),
            )
            .collect();
        let new_cluster_rejections = desired
            .rejected_clusters
            .iter()
            .filter(|r| {
                !self
                    .reported
                    .contains(&(format!("cluster {}", r.cluster), r.message.clone()))
            })
            .cloned()
            .collect();
        let new_rejections = desired
            .rejected
            .iter()
            .filter(|r| {
                !self
                    .reported
                    .contains(&(r.object.to_string(), r.message.clone()))
            })
            .cloned()
            .collect();
        self.reported = current;
        let sessions = observation
            .device
            .peers
            .iter()
            .map(|(key, p)| {
                let session = Session {
                    endpoint: p.endpoint,
                    last_handshake: p.last_handshake,
                };
                (*key, session)
            })
            .collect();
        let discovered = discovered_endpoints(&desired, &sessions, now);
        Ok(Outcome {
            discovered,
            desired,
            plan,
            observation,
            new_rejections,
            new_cluster_rejections,
        })
    }
}

/// Above this many changes a plan is logged as a summary, and each change
/// at debug level (a first reconcile of a large mesh).
const PLAN_LINES_LOGGED: usize = 50;

/// Logs what the plan changes and why, one line per change.
fn log_plan(plan: &Plan) {
    let lines = plan.describe();
    let count = |f: fn(&PeerChange) -> bool| plan.peers.iter().filter(|c| f(c)).count();
    tracing::info!(
        changes = lines.len(),
        peers_added = count(|c| matches!(c, PeerChange::Add(_))),
        peers_updated = count(|c| matches!(c, PeerChange::Update { .. })),
        peers_removed = count(|c| matches!(c, PeerChange::Remove(_))),
        routes_added = plan.add_routes.len(),
        routes_removed = plan.remove_routes.len(),
        "applying plan"
    );
    for line in &lines {
        if lines.len() <= PLAN_LINES_LOGGED {
            tracing::info!(change = %line, "plan");
        } else {
            tracing::debug!(change = %line, "plan");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use trellis_mesh::names::*;
    use trellis_mesh::{ExternalPeerInfo, NodeInfo, PublicKey};

    use super::*;
    use crate::dataplane::fake::FakeDataplane;

    fn node(i: u8) -> NodeInfo {
        let mut annotations = BTreeMap::new();
        annotations.insert(
            ANNOTATION_PUBLIC_KEY.to_string(),
            PublicKey([i; 32]).to_string(),
        );
        annotations.insert(
            ANNOTATION_ENDPOINT.to_string(),
            format!("192.0.2.{}:51820", 10 + i),
        );
        NodeInfo {
            name: format!("n{i}"),
            created: i64::from(i),
            pod_cidrs: vec![format!("10.244.{i}.0/24")],
            internal_ips: vec![],
            annotations,
            zone: None,
        }
    }

    fn reconciler() -> Reconciler<FakeDataplane> {
        Reconciler::new("trellis", FakeDataplane::default(), Metrics::default())
    }

    fn no_dns(_: &str, _: u16) -> Option<SocketAddr> {
        None
    }

    impl Reconciler<FakeDataplane> {
        /// A reconcile of node n0 among `nodes` and Peers `external`.
        async fn reconcile(
            &mut self,
            nodes: &[NodeInfo],
            external: &[ExternalPeerInfo],
            resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
        ) -> Result<Outcome, ReconcileError> {
            let local = LocalNode {
                name: "n0".into(),
                public_key: PublicKey([0; 32]),
                interface: "trellis".into(),
                listen_port: 51820,
                mtu: 1420,
            };
            let declared = trellis_mesh::DeclaredRanges::private();
            let inputs = MeshInputs {
                nodes,
                external,
                remotes: &[],
                declared: &declared,
            };
            self.reconcile_mesh(&local, &inputs, resolve, SystemTime::now())
                .await
        }
    }

    #[tokio::test]
    async fn first_reconcile_builds_everything_then_nothing_changes() {
        let mut r = reconciler();
        let nodes: Vec<NodeInfo> = (0..3).map(node).collect();
        let first = r.reconcile(&nodes, &[], &no_dns).await.unwrap();
        assert_eq!(first.plan.peers.len(), 2);
        assert!(first.plan.set_up && first.plan.nft_ruleset.is_some());
        let second = r.reconcile(&nodes, &[], &no_dns).await.unwrap();
        assert!(second.plan.is_empty(), "{:?}", second.plan);
        assert_eq!(r.dataplane.applied.len(), 1, "an empty plan is not applied");
    }

    #[tokio::test]
    async fn kept_alive_peers_without_a_session_are_probed_after_each_apply() {
        let mut r = reconciler();
        let mut nodes: Vec<NodeInfo> = (0..3).map(node).collect();
        nodes[2]
            .annotations
            .insert(ANNOTATION_PERSISTENT_KEEPALIVE.to_string(), "25".into());
        r.reconcile(&nodes, &[], &no_dns).await.unwrap();
        assert_eq!(
            r.dataplane.probed,
            vec![vec!["10.244.2.0".parse::<std::net::IpAddr>().unwrap()]],
            "n2 (kept alive, no handshake on the fake device) only"
        );
        assert_eq!(
            r.dataplane.echo_targets,
            vec!["10.244.2.1".parse::<std::net::IpAddr>().unwrap()],
            "echoes go to n2's mesh address (kept alive), not to n1's"
        );
        let plan = &r.dataplane.applied[0];
        assert!(
            plan.peers
                .iter()
                .any(|c| format!("{c:?}").contains("10.244.2.0/24")),
            "its range was configured before the probe: {plan:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_own_node_keeps_the_last_good_state() {
        let mut r = reconciler();
        let nodes: Vec<NodeInfo> = (0..3).map(node).collect();
        r.reconcile(&nodes, &[], &no_dns).await.unwrap();
        let before = r.dataplane.observed.clone();
        let err = r.reconcile(&nodes[1..], &[], &no_dns).await.unwrap_err();
        assert!(matches!(err, ReconcileError::Local(_)));
        assert_eq!(r.dataplane.observed, before, "nothing torn down");
        assert_eq!(r.metrics.reconcile_errors.get(), 1);
    }

    #[tokio::test]
    async fn a_dataplane_error_is_reported_and_retried() {
        let mut r = reconciler();
        let nodes: Vec<NodeInfo> = (0..2).map(node).collect();
        r.dataplane.fail_observe = Some("device gone".into());
        assert!(r.reconcile(&nodes, &[], &no_dns).await.is_err());
        assert!(r.reconcile(&nodes, &[], &no_dns).await.is_ok());
    }

    #[tokio::test]
    async fn a_rejection_is_reported_once_while_it_lasts() {
        let mut r = reconciler();
        let mut nodes: Vec<NodeInfo> = (0..3).map(node).collect();
        nodes[2]
            .annotations
            .insert(ANNOTATION_PUBLIC_KEY.into(), "garbage".into());
        let first = r.reconcile(&nodes, &[], &no_dns).await.unwrap();
        assert_eq!(first.new_rejections.len(), 1);
        assert_eq!(first.desired.peers.len(), 1, "n1 unaffected");
        assert!(r
            .reconcile(&nodes, &[], &no_dns)
            .await
            .unwrap()
            .new_rejections
            .is_empty());
        nodes[2] = node(2);
        assert!(r
            .reconcile(&nodes, &[], &no_dns)
            .await
            .unwrap()
            .new_rejections
            .is_empty());
        nodes[2]
            .annotations
            .insert(ANNOTATION_PUBLIC_KEY.into(), "garbage".into());
        assert_eq!(
            r.reconcile(&nodes, &[], &no_dns)
                .await
                .unwrap()
                .new_rejections
                .len(),
            1,
            "reported again after it had cleared"
        );
    }
}
