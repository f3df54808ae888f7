//! The kernel dataplane driven directly: two node namespaces joined by a
//! veth, each running the agent's own `Reconciler` over the real
//! `NodeDataplane` (kernel WireGuard through wireguard-control, rtnetlink,
//! nftables), fed the Node descriptions the agent's watch would feed it.
//! The interface is created and configured only through that dataplane.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::time::SystemTime;

use libtest_mimic::Failed;
use trellis_agent::dataplane::NodeDataplane;
use trellis_agent::kernel_wg::KernelWg;
use trellis_agent::key::PrivateKey;
use trellis_agent::metrics::Metrics;
use trellis_agent::netlink::Netlink;
use trellis_agent::reconcile::{Outcome, Reconciler};
use trellis_e2e::{cmd, netns};
use trellis_mesh::names::{ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY, DEFAULT_LISTEN_PORT};
use trellis_mesh::{DeclaredRanges, LocalNode, MeshInputs, NodeInfo, PeerChange, PublicKey};

use crate::{check, INTERFACE};

/// Not the kernel's default (1420), so that a missed MTU shows.
const MESH_MTU: u32 = 1380;

type Reply = mpsc::Sender<Result<Outcome, String>>;

/// One node: its namespace and a thread in it that owns its reconciler.
struct KernelNode {
    name: String,
    netns: String,
    public_key: PublicKey,
    created: i64,
    endpoint: SocketAddr,
    pod_cidrs: Vec<String>,
    requests: Option<tokio::sync::mpsc::UnboundedSender<(Vec<NodeInfo>, Reply)>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl KernelNode {
    fn start(
        name: &str,
        netns: &str,
        created: i64,
        endpoint: SocketAddr,
        pod_cidrs: &[&str],
    ) -> Self {
        let key = PrivateKey::generate();
        let public_key = key.public_key();
        let local = LocalNode {
            name: name.to_string(),
            public_key,
            interface: INTERFACE.to_string(),
            listen_port: DEFAULT_LISTEN_PORT,
            mtu: MESH_MTU,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<NodeInfo>, Reply)>();
        let ns = netns.to_string();
        let worker = std::thread::spawn(move || {
            netns::run_in(&ns, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let dataplane = NodeDataplane {
                        wg: Box::new(KernelWg::new(INTERFACE).expect("interface name")),
                        netlink: Netlink::connect().expect("netlink"),
                        interface: INTERFACE.to_string(),
                        private_key: key,
                        nft_table: "trellis".to_string(),
                        last_nft: None,
                        nft_record: None,
                        creates_interface: true,
                        new_device: false,
                        echoes: None,
                    };
                    let mut reconciler = Reconciler::new("trellis", dataplane, Metrics::default());
                    let no_dns = |_: &str, _: u16| None;
                    let declared = DeclaredRanges::private();
                    while let Some((nodes, reply)) = rx.recv().await {
                        let inputs = MeshInputs {
                            nodes: &nodes,
                            external: &[],
                            remotes: &[],
                            declared: &declared,
                        };
                        let outcome = reconciler
                            .reconcile_mesh(&local, &inputs, &no_dns, SystemTime::now())
                            .await
                            .map_err(|e| e.to_string());
                        let _ = reply.send(outcome);
                    }
                })
            })
            .expect("node namespace");
        });
        KernelNode {
            name: name.to_string(),
            netns: netns.to_string(),
            public_key,
            created,
            endpoint,
            pod_cidrs: pod_cidrs.iter().map(|s| s.to_string()).collect(),
            requests: Some(tx),
            worker: Some(worker),
        }
    }

    /// The Node object of this node as the others see it.
    fn info(&self) -> NodeInfo {
        let annotations = BTreeMap::from([
            (
                ANNOTATION_PUBLIC_KEY.to_string(),
                self.public_key.to_string(),
            ),
            (ANNOTATION_ENDPOINT.to_string(), self.endpoint.to_string()),
        ]);
        NodeInfo {
            name: self.name.clone(),
            created: self.created,
            pod_cidrs: self.pod_cidrs.clone(),
            internal_ips: vec![self.endpoint.ip()],
            annotations,
            zone: None,
        }
    }

    /// One reconcile of this node against `nodes`.
    fn reconcile(&self, nodes: &[NodeInfo]) -> Result<Outcome, Failed> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .as_ref()
            .expect("running")
            .send((nodes.to_vec(), reply))
            .map_err(|_| format!("{}: the reconcile thread is gone", self.name))?;
        answer
            .recv()
            .map_err(|_| format!("{}: the reconcile thread panicked", self.name))?
            .map_err(|e| Failed::from(format!("{}: reconcile failed: {e}", self.name)))
    }

    fn mesh_address(&self, v4: bool) -> String {
        let cidr = self
            .pod_cidrs
            .iter()
            .find(|c| c.contains('.') == v4)
            .expect("a CIDR of the family");
        trellis_mesh::model::mesh_address(&cidr.parse().expect("cidr"))
            .addr()
            .to_string()
    }
}

impl Drop for KernelNode {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Two kernel-WireGuard nodes on one underlay link.
struct Pair {
    a: KernelNode,
    b: KernelNode,
}

const UNDERLAY_A: &str = "192.168.77.1";
const UNDERLAY_B: &str = "192.168.77.2";

impl Pair {
    fn new(tag: &str) -> Result<Pair, Failed> {
        let (na, nb) = (format!("tk-{tag}-a"), format!("tk-{tag}-b"));
        for ns in [&na, &nb] {
            let _ = netns::delete(ns);
            netns::create(ns)?;
            cmd::ip(Some(ns), &["link", "set", "lo", "up"])?;
        }
        cmd::ip(
            Some(&na),
            &[
                "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &nb,
            ],
        )?;
        for (ns, addr) in [(&na, UNDERLAY_A), (&nb, UNDERLAY_B)] {
            cmd::ip(
                Some(ns),
                &["addr", "add", &format!("{addr}/24"), "dev", "ul0"],
            )?;
            cmd::ip(Some(ns), &["link", "set", "ul0", "up"])?;
        }
        let endpoint = |a: &str| SocketAddr::new(a.parse().unwrap(), DEFAULT_LISTEN_PORT);
        Ok(Pair {
            a: KernelNode::start(
                "a",
                &na,
                1,
                endpoint(UNDERLAY_A),
                &["10.77.1.0/24", "fd77:1::/64"],
            ),
            b: KernelNode::start(
                "b",
                &nb,
                2,
                endpoint(UNDERLAY_B),
                &["10.77.2.0/24", "fd77:2::/64"],
            ),
        })
    }

    fn infos(&self) -> Vec<NodeInfo> {
        vec![self.a.info(), self.b.info()]
    }

    /// Reconciles both nodes until neither has anything left to do.
    fn converge(&self) -> Result<(), Failed> {
        let nodes = self.infos();
        self.a.reconcile(&nodes)?;
        self.b.reconcile(&nodes)?;
        for n in [&self.a, &self.b] {
            let again = n.reconcile(&nodes)?;
            check(
                again.plan.is_empty(),
                format!("{}: a second reconcile still plans {:?}: the kernel reads back differently from what was written", n.name, again.plan),
            )?;
        }
        Ok(())
    }

    fn ping(&self, from: &KernelNode, to: &KernelNode) -> Result<(), Failed> {
        for v4 in [true, false] {
            let target = to.mesh_address(v4);
            cmd::in_netns(&from.netns, "ping", &["-c", "1", "-W", "3", &target])
                .map_err(|e| format!("{} -> {} ({target}): {e}", from.name, to.name))?;
        }
        Ok(())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = netns::delete(&self.a.netns);
        let _ = netns::delete(&self.b.netns);
    }
}

/// The dataplane creates a kernel WireGuard interface with the key, port,
/// MTU, addresses, peers and routes; the nodes handshake and ping over it;
/// reading it back gives exactly what was written (nothing to re-apply).
pub(crate) fn creates_and_configures_the_interface() -> Result<(), Failed> {
    let pair = Pair::new("up")?;
    pair.converge()?;
    for (n, other) in [(&pair.a, &pair.b), (&pair.b, &pair.a)] {
        let details = cmd::ip(Some(&n.netns), &["-d", "link", "show", INTERFACE])?;
        check(
            details.contains("wireguard"),
            format!("{}: not a kernel WireGuard link: {details}", n.name),
        )?;
        check(
            details.contains(&format!("mtu {MESH_MTU} ")),
            format!("{}: MTU: {details}", n.name),
        )?;
        check(
            details.contains(",UP,") || details.contains("<UP,") || details.contains(",UP>"),
            format!("{}: not up: {details}", n.name),
        )?;
        let key = cmd::in_netns(&n.netns, "wg", &["show", INTERFACE, "public-key"])?;
        check(
            key.trim() == n.public_key.to_string(),
            format!("{}: device key {key}", n.name),
        )?;
        let port = cmd::in_netns(&n.netns, "wg", &["show", INTERFACE, "listen-port"])?;
        check(
            port.trim() == "51820",
            format!("{}: listen port {port}", n.name),
        )?;
        let addrs = cmd::ip(Some(&n.netns), &["addr", "show", "dev", INTERFACE])?;
        for v4 in [true, false] {
            check(
                addrs.contains(&n.mesh_address(v4)),
                format!("{}: mesh address missing: {addrs}", n.name),
            )?;
        }
        let routes = crate::routes(&n.netns)?;
        check(
            routes
                == other
                    .pod_cidrs
                    .iter()
                    .map(|c| format!("{c} dev {INTERFACE}"))
                    .collect::<Vec<_>>(),
            format!(
                "{}: routes (proto 84) {routes:?}, want the other's pod CIDRs",
                n.name
            ),
        )?;
        let peers = crate::wg_dump(&n.netns)?;
        check(
            peers.len() == 1 && peers[0].public_key == other.public_key.to_string(),
            format!("{}: peers {peers:?}", n.name),
        )?;
        check(
            peers[0].endpoint == other.endpoint.to_string(),
            format!("{}: endpoint {}", n.name, peers[0].endpoint),
        )?;
        check(
            peers[0].allowed_ips == other.pod_cidrs,
            format!(
                "{}: allowed IPs {:?}, want {:?}",
                n.name, peers[0].allowed_ips, other.pod_cidrs
            ),
        )?;
    }
    pair.ping(&pair.a, &pair.b)?;
    pair.ping(&pair.b, &pair.a)?;
    let peers = crate::wg_dump(&pair.a.netns)?;
    check(
        peers[0].latest_handshake > 0 && peers[0].rx_bytes > 0,
        format!("no handshake: {peers:?}"),
    )?;
    Ok(())
}

/// A peer's endpoint and AllowedIPs change in place: one Update, the
/// session and its counters survive, old AllowedIPs and routes go.
pub(crate) fn updates_a_peer_in_place() -> Result<(), Failed> {
    let mut pair = Pair::new("upd")?;
    pair.converge()?;
    pair.ping(&pair.a, &pair.b)?;
    let before = crate::wg_dump(&pair.a.netns)?.remove(0);
    // Handshake times have a resolution of seconds: a re-created peer's new
    // handshake must show as a different second.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // b moves to another address of its underlay link (the old one goes:
    // while b still had it, b's device could answer from it — it keeps
    // the source address it last used — and a's would roam back there)
    // and gets another IPv4 pod CIDR.
    // (Deleted first: deleting a primary address takes its secondaries.)
    cmd::ip(
        Some(&pair.b.netns),
        &["addr", "del", &format!("{UNDERLAY_B}/24"), "dev", "ul0"],
    )?;
    cmd::ip(
        Some(&pair.b.netns),
        &["addr", "add", "192.168.77.12/24", "dev", "ul0"],
    )?;
    pair.b.endpoint = SocketAddr::new(
        "192.168.77.12".parse::<IpAddr>().unwrap(),
        DEFAULT_LISTEN_PORT,
    );
    pair.b.pod_cidrs = vec!["10.77.3.0/24".into(), "fd77:2::/64".into()];
    let nodes = pair.infos();
    let outcome = pair.a.reconcile(&nodes)?;
    let changes: Vec<String> = outcome.plan.peers.iter().map(change_name).collect();
    check(
        changes == ["update b"],
        format!("a's peer changes: {changes:?}, want one in-place update"),
    )?;
    pair.b.reconcile(&nodes)?;
    pair.ping(&pair.a, &pair.b)?;

    let after = crate::wg_dump(&pair.a.netns)?.remove(0);
    check(
        after.endpoint == "192.168.77.12:51820",
        format!("endpoint {}", after.endpoint),
    )?;
    check(
        after.allowed_ips == ["10.77.3.0/24", "fd77:2::/64"],
        format!(
            "allowed IPs {:?}: the old CIDR must be gone",
            after.allowed_ips
        ),
    )?;
    check(
        after.rx_bytes > before.rx_bytes
            && after.latest_handshake == before.latest_handshake
            && before.latest_handshake > 0,
        format!("the peer was re-created, not updated: before {before:?}, after {after:?}"),
    )?;
    let routes = crate::routes(&pair.a.netns)?;
    check(
        routes == ["10.77.3.0/24 dev trellis", "fd77:2::/64 dev trellis"],
        format!("a's routes {routes:?}"),
    )?;
    for n in [&pair.a, &pair.b] {
        let again = n.reconcile(&nodes)?;
        check(
            again.plan.is_empty(),
            format!("{}: left to do: {:?}", n.name, again.plan),
        )?;
    }
    Ok(())
}

/// A peer whose Node is gone is removed with its routes; when it comes
/// back it is added again and traffic flows.
pub(crate) fn removes_and_re_adds_a_peer() -> Result<(), Failed> {
    let pair = Pair::new("rm")?;
    pair.converge()?;
    pair.ping(&pair.a, &pair.b)?;
    let outcome = pair.a.reconcile(&[pair.a.info()])?;
    let changes: Vec<String> = outcome.plan.peers.iter().map(change_name).collect();
    check(
        changes == [format!("remove {}", pair.b.public_key)],
        format!("changes {changes:?}"),
    )?;
    check(
        crate::wg_dump(&pair.a.netns)?.is_empty(),
        "a still has a peer",
    )?;
    check(
        crate::routes(&pair.a.netns)?.is_empty(),
        "a still routes b's pod CIDRs",
    )?;
    check(
        cmd::in_netns(
            &pair.a.netns,
            "ping",
            &["-c", "1", "-W", "1", &pair.b.mesh_address(true)],
        )
        .is_err(),
        "b's mesh address still answers without a peer",
    )?;
    let outcome = pair.a.reconcile(&pair.infos())?;
    let changes: Vec<String> = outcome.plan.peers.iter().map(change_name).collect();
    check(changes == ["add b"], format!("changes {changes:?}"))?;
    pair.ping(&pair.a, &pair.b)?;
    Ok(())
}

/// The interface deleted behind the dataplane's back comes back, complete,
/// on the next reconcile.
pub(crate) fn recreates_a_deleted_interface() -> Result<(), Failed> {
    let pair = Pair::new("del")?;
    pair.converge()?;
    pair.ping(&pair.a, &pair.b)?;
    cmd::ip(Some(&pair.a.netns), &["link", "del", INTERFACE])?;
    check(
        crate::routes(&pair.a.netns)?.is_empty(),
        "routes outlived their interface",
    )?;
    pair.a.reconcile(&pair.infos())?;
    let details = cmd::ip(Some(&pair.a.netns), &["-d", "link", "show", INTERFACE])?;
    check(
        details.contains("wireguard") && details.contains(&format!("mtu {MESH_MTU} ")),
        details.clone(),
    )?;
    let key = cmd::in_netns(&pair.a.netns, "wg", &["show", INTERFACE, "public-key"])?;
    check(
        key.trim() == pair.a.public_key.to_string(),
        "recreated with another key",
    )?;
    check(
        crate::routes(&pair.a.netns)?.len() == 2,
        "routes not restored",
    )?;
    pair.ping(&pair.a, &pair.b)?;
    Ok(())
}

/// A rule of the masquerade table edited behind the agent's back (here:
/// the masquerade rule flushed, and a rule of someone else's added) is
/// noticed from the kernel's own listing and the table loaded again at the
/// next reconcile, as it was.
pub(crate) fn repairs_an_edited_masquerade_table() -> Result<(), Failed> {
    let pair = Pair::new("nft")?;
    pair.converge()?;
    let ns = &pair.a.netns;
    let list = || trellis_e2e::mesh::masquerade_table(ns);
    let loaded = list()?;
    check(loaded.contains("masquerade"), loaded.clone())?;
    trellis_e2e::mesh::tamper_with_masquerade_table(ns)?;
    let edited = list()?;
    check(
        !edited.contains("masquerade") && edited.contains("198.51.100.0/24"),
        edited.clone(),
    )?;
    let outcome = pair.a.reconcile(&pair.infos())?;
    check(
        outcome.plan.nft_ruleset.is_some() && outcome.plan.peers.is_empty(),
        format!(
            "the plan loads the table and nothing else: {:?}",
            outcome.plan
        ),
    )?;
    let repaired = list()?;
    check(
        repaired == loaded,
        format!("the table is not as loaded:\n{repaired}\nwant:\n{loaded}"),
    )?;
    let again = pair.a.reconcile(&pair.infos())?;
    check(
        again.plan.is_empty(),
        format!("a repaired table is planned again: {:?}", again.plan),
    )?;
    cmd::in_netns(ns, "nft", &["delete", "table", "inet", "trellis"])?;
    let outcome = pair.a.reconcile(&pair.infos())?;
    check(
        outcome.plan.nft_ruleset.is_some() && list()? == loaded,
        "a deleted table is loaded again",
    )?;
    Ok(())
}

fn change_name(c: &PeerChange) -> String {
    match c {
        PeerChange::Add(p) => format!("add {}", p.name),
        PeerChange::Update { peer, .. } => format!("update {}", peer.name),
        PeerChange::Remove(key) => format!("remove {key}"),
    }
}
