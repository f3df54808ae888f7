//! The agent's loop with reflector stores written by the test, the
//! recording dataplane, a recording cluster API and no linked cluster: no
//! API server, no root.

use clap::Parser;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use trellis_api::status::LinkedClusterReport;
use trellis_mesh::names::{
    ANNOTATION_ENDPOINT, ANNOTATION_PERSISTENT_KEEPALIVE, ANNOTATION_PUBLIC_KEY,
};
use trellis_mesh::{
    ClusterRejection, Desired, ExternalPeerInfo, PeerChange, Rejection, RemoteCluster,
};

use super::*;
use crate::dataplane::fake::FakeDataplane;
use crate::wg::{DeviceState, PeerState};

/// The cluster API as a test sees it: what was published, and an outage.
#[derive(Debug, Default)]
struct RecordingCluster {
    /// The annotations each write set.
    published: Vec<BTreeMap<String, String>>,
    rejected: Vec<String>,
    /// Every call fails as an unreachable API server would.
    down: bool,
}

fn unreachable() -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::other("connection refused")))
}

impl ClusterApi for RecordingCluster {
    async fn publish_annotations(
        &mut self,
        _own: &Node,
        wanted: &BTreeMap<String, String>,
    ) -> Result<bool, kube::Error> {
        // As the real one: a write only when something differs.
        if self.published.last() == Some(wanted) {
            return Ok(false);
        }
        if self.down {
            return Err(unreachable());
        }
        self.published.push(wanted.clone());
        Ok(true)
    }

    async fn external_peers(&mut self, _peers: &[Arc<Peer>]) -> Vec<ExternalPeerInfo> {
        Vec::new()
    }

    async fn publish_conditions(
        &mut self,
        _node: &str,
        _peers: &[Arc<Peer>],
        _desired: &Desired,
    ) -> Result<usize, kube::Error> {
        if self.down {
            return Err(unreachable());
        }
        Ok(0)
    }

    async fn rejected(&mut self, _own: &Node, rejection: &Rejection) {
        self.rejected.push(rejection.object.to_string());
    }

    async fn cluster_refused(&mut self, _: &Node, _: &ObjectReference, _: &ClusterRejection) {}

    async fn link_unusable(&mut self, _: &Node, _: &ObjectReference, _: &str) {}
}

/// No linked cluster.
#[derive(Debug, Default)]
struct NoLinks;

impl LinkedClusters for NoLinks {
    async fn follow(&mut self, _secrets: &[Arc<Secret>]) -> Vec<(ObjectReference, String)> {
        Vec::new()
    }
    fn remote_clusters(&self) -> Vec<RemoteCluster> {
        Vec::new()
    }
    fn secret_of(&self, _cluster: &str) -> Option<&ObjectReference> {
        None
    }
    fn reports(&self, _desired: &Desired) -> Vec<LinkedClusterReport> {
        Vec::new()
    }
}

fn key(i: u8) -> PublicKey {
    PublicKey([i; 32])
}

fn node(i: u8) -> Node {
    trellis_api::node::node_object(
        &format!("n{i}"),
        vec![format!("10.244.{i}.0/24")],
        &[format!("192.0.2.{}", 10 + i).parse().unwrap()],
        BTreeMap::from([
            (ANNOTATION_PUBLIC_KEY.to_string(), key(i).to_string()),
            (
                ANNOTATION_ENDPOINT.to_string(),
                format!("192.0.2.{}:51820", 10 + i),
            ),
        ]),
    )
}

struct Harness {
    agent: Agent<FakeDataplane, RecordingCluster, NoLinks>,
    nodes: Writer<Node>,
    readiness: Readiness,
    /// Holds the CNI configuration and the state dir.
    dir: tempfile::TempDir,
}

impl Harness {
    fn new(nodes: impl IntoIterator<Item = Node>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::try_parse_from([
            "trellis-agent".to_string(),
            "--node-name=n0".into(),
            format!("--state-dir={}", dir.path().join("state").display()),
            format!("--cni-conf-dir={}", dir.path().join("net.d").display()),
            "--ipam-leak-grace-seconds=0".into(),
            "--resync-seconds=30".into(),
        ])
        .expect("config");
        let (node_store, mut node_writer) = reflector::store::<Node>();
        let (peers, _) = reflector::store::<Peer>();
        let (links, _) = reflector::store::<Secret>();
        for n in nodes {
            node_writer.apply_watcher_event(&watcher::Event::Apply(n));
        }
        let readiness = Readiness::default();
        let parts = Parts {
            stores: Stores {
                nodes: node_store,
                peers,
                links,
            },
            dataplane: FakeDataplane {
                underlay_mtu: Some(1500),
                ..Default::default()
            },
            cluster: RecordingCluster::default(),
            linked: NoLinks,
            clock: Arc::new(SystemTime::now),
            metrics: Metrics::default(),
            readiness: readiness.clone(),
            status: StatusBoard::new(Arc::new(|| Ok(DeviceState::default()))),
        };
        Harness {
            agent: Agent::new(config, key(0), parts),
            nodes: node_writer,
            readiness,
            dir,
        }
    }

    fn conflist(&self) -> std::path::PathBuf {
        self.dir.path().join("net.d/10-trellis.conflist")
    }

    fn plans(&self) -> usize {
        self.agent.dataplane().applied.len()
    }
}

fn assert_reconciled(tick: &Tick) -> Reconciled {
    match tick {
        Tick::Reconciled { step, .. } => *step,
        Tick::Failed { error, .. } => panic!("the step failed: {error}"),
    }
}

fn added(plan: &trellis_mesh::Plan) -> Vec<String> {
    plan.peers
        .iter()
        .filter_map(|c| match c {
            PeerChange::Add(p) => Some(p.name.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_change_in_the_store_reconciles_and_nothing_else_does() {
    let mut h = Harness::new([node(0), node(1)]);
    let first = h.agent.tick().await;
    assert_reconciled(&first);
    assert_eq!(first.wait(), Duration::from_secs(30), "the resync");
    assert!(h.readiness.is_ready());
    assert_eq!(added(&h.agent.dataplane().applied[0]), vec!["n1"]);
    assert_eq!(
        h.agent.dataplane().observed.mtu,
        Some(1420),
        "the underlay's 1500 less WireGuard's 80"
    );
    let published = &h.agent.cluster().published;
    assert_eq!(published.len(), 1, "the key and endpoint, once");
    assert_eq!(published[0][ANNOTATION_PUBLIC_KEY], key(0).to_string());
    assert_eq!(published[0][ANNOTATION_ENDPOINT], "192.0.2.10:51820");
    let conflist = std::fs::read_to_string(h.conflist()).expect("CNI configuration written");
    assert!(conflist.contains("10.244.0.0/24"), "{conflist}");

    assert_reconciled(&h.agent.tick().await);
    assert_eq!(h.plans(), 1, "no change, no plan");

    h.nodes.apply_watcher_event(&watcher::Event::Apply(node(2)));
    assert_reconciled(&h.agent.tick().await);
    assert_eq!(h.plans(), 2);
    let plan = &h.agent.dataplane().applied[1];
    assert_eq!(added(plan), vec!["n2"]);
    assert_eq!(plan.peers.len(), 1, "n1 untouched: {plan:?}");
    assert_eq!(
        h.agent.cluster().published.len(),
        1,
        "nothing new to publish"
    );
}

#[tokio::test]
async fn an_error_keeps_the_last_state_and_backs_off_then_recovers() {
    let mut h = Harness::new([node(0), node(1), node(2)]);
    assert_reconciled(&h.agent.tick().await);
    let before = h.agent.dataplane().observed.clone();
    h.agent.dataplane_mut().broken = Some("device gone".into());
    let mut waits = Vec::new();
    for _ in 0..7 {
        match h.agent.tick().await {
            Tick::Failed { error, wait } => {
                assert!(error.to_string().contains("device gone"), "{error}");
                waits.push(wait.as_secs());
            }
            Tick::Reconciled { .. } => panic!("the device is broken"),
        }
    }
    assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30]);
    assert!(!h.readiness.is_ready());
    assert!(
        h.readiness.reason().contains("device gone"),
        "{}",
        h.readiness.reason()
    );
    assert_eq!(h.agent.dataplane().observed, before, "nothing torn down");
    assert_eq!(h.plans(), 1);
    assert!(
        h.conflist().exists(),
        "the interface is up: pods still work"
    );

    h.agent.dataplane_mut().broken = None;
    let back = h.agent.tick().await;
    assert_reconciled(&back);
    assert_eq!(back.wait(), Duration::from_secs(30));
    assert!(h.readiness.is_ready());
    h.agent.dataplane_mut().fail_observe = Some("once".into());
    assert_eq!(
        h.agent.tick().await.wait(),
        Duration::from_secs(1),
        "the backoff starts over"
    );
}

#[tokio::test]
async fn without_its_own_node_the_agent_waits_and_touches_nothing() {
    let mut h = Harness::new([node(1), node(2)]);
    let tick = h.agent.tick().await;
    let Tick::Failed { error, wait } = tick else {
        panic!("n0 is not registered");
    };
    assert!(
        matches!(error, StepError::NotRegistered(ref n) if n == "n0"),
        "{error}"
    );
    assert_eq!(wait, Duration::from_secs(1));
    assert_eq!(h.agent.dataplane().observations, 0);
    assert!(!h.readiness.is_ready());
    h.nodes.apply_watcher_event(&watcher::Event::Apply(node(0)));
    assert_reconciled(&h.agent.tick().await);
    assert_eq!(added(&h.agent.dataplane().applied[0]), vec!["n1", "n2"]);
}

#[tokio::test]
async fn the_cni_configuration_goes_with_the_mesh_interface_and_comes_back_with_it() {
    let mut h = Harness::new([node(0), node(1)]);
    assert_reconciled(&h.agent.tick().await);
    assert!(h.conflist().exists());
    h.agent.dataplane_mut().interface_gone = true;
    let Tick::Failed { error, .. } = h.agent.tick().await else {
        panic!("the interface is gone");
    };
    assert!(matches!(error, StepError::InterfaceDown(_)), "{error}");
    assert!(!h.conflist().exists(), "no pod may land on this node");
    assert!(!h.readiness.is_ready());
    h.agent.dataplane_mut().interface_gone = false;
    assert_reconciled(&h.agent.tick().await);
    assert!(h.conflist().exists());
}

#[tokio::test]
async fn an_api_outage_keeps_the_dataplane_and_the_readiness() {
    let mut h = Harness::new([node(0), node(1), node(2)]);
    assert_reconciled(&h.agent.tick().await);
    let before = h.agent.dataplane().observed.clone();
    // The watches fail: the stores keep their last objects, and every
    // write to the API server fails.
    h.agent.cluster.down = true;
    for _ in 0..3 {
        assert_reconciled(&h.agent.tick().await);
    }
    assert_eq!(h.agent.dataplane().observed, before);
    assert_eq!(h.agent.dataplane().observed.peers.len(), 2);
    assert_eq!(h.plans(), 1, "no plan while nothing changed");
    assert!(h.readiness.is_ready(), "{}", h.readiness.reason());
}

#[tokio::test]
async fn what_this_node_sees_is_published_at_once() {
    let mut n1 = node(1);
    n1.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANNOTATION_PERSISTENT_KEEPALIVE.into(), "25".into());
    let mut h = Harness::new([node(0), n1]);
    assert_reconciled(&h.agent.tick().await);
    // n1 answers from behind a NAT: a live session at another address.
    let seen: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    h.agent.dataplane_mut().device.peers.insert(
        key(1),
        PeerState {
            endpoint: Some(seen),
            last_handshake: Some(SystemTime::now()),
            ..Default::default()
        },
    );
    let tick = h.agent.tick().await;
    assert!(assert_reconciled(&tick).republish);
    assert_eq!(tick.wait(), Duration::ZERO, "publish without waiting");
    assert_reconciled(&h.agent.tick().await);
    let last = h.agent.cluster().published.last().unwrap();
    let discovered = &last[trellis_mesh::names::ANNOTATION_DISCOVERED_ENDPOINTS];
    assert!(discovered.contains("203.0.113.9:40000"), "{discovered}");
}

#[tokio::test(start_paused = true)]
async fn the_loop_resyncs_without_changes_and_reconciles_at_once_on_one() {
    let h = Harness::new([node(0), node(1)]);
    let changed = Arc::new(Notify::new());
    // Virtual time: three resyncs (30 s each) pass before the stop.
    let stop = tokio::time::sleep(Duration::from_secs(95));
    let agent = h.agent.run_until(changed.clone(), stop).await;
    assert_eq!(agent.dataplane().observations, 4, "at 0, 30, 60 and 90 s");

    let stop = tokio::time::sleep(Duration::from_secs(20));
    let notifier = changed.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        notifier.notify_one();
    });
    let agent = agent.run_until(changed, stop).await;
    assert_eq!(
        agent.dataplane().observations,
        6,
        "one at the start, one at the change (5 s), no resync yet"
    );
}

#[test]
fn the_wait_policy() {
    let policy = WaitPolicy::new(Duration::from_secs(30));
    let step = |watches_paths, republish| Reconciled {
        watches_paths,
        republish,
    };
    assert_eq!(
        policy.after_success(&step(false, false)),
        Duration::from_secs(30)
    );
    assert_eq!(
        policy.after_success(&step(true, false)),
        Duration::from_secs(2)
    );
    assert_eq!(policy.after_success(&step(true, true)), Duration::ZERO);
    let short = WaitPolicy::new(Duration::from_secs(1));
    assert_eq!(
        short.after_success(&step(true, false)),
        Duration::from_secs(1)
    );
    let waits: Vec<u64> = (1..=8).map(|n| policy.after_failure(n).as_secs()).collect();
    assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(policy.after_failure(u32::MAX), Duration::from_secs(30));
}

#[tokio::test]
async fn endpoint_names_are_resolved_off_the_runtime_threads() {
    let names = BTreeSet::from([("localhost".to_string(), 51820)]);
    let resolved = resolve_all(names).await;
    let addr = resolved[&("localhost".to_string(), 51820)];
    assert!(addr.ip().is_loopback() && addr.port() == 51820, "{addr}");

    let mut n1 = node(1);
    n1.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANNOTATION_ENDPOINT.into(), "localhost:51821".into());
    let mut h = Harness::new([node(0), n1]);
    assert_reconciled(&h.agent.tick().await);
    let peer = &h.agent.dataplane().observed.peers[&key(1)];
    let endpoint = peer.endpoint.expect("resolved");
    assert!(
        endpoint.ip().is_loopback() && endpoint.port() == 51821,
        "{endpoint}"
    );
}
