//! End-to-end: the mesh in the lab, with the real apiserver and the real
//! binaries (trellis-wg, trellis-agent, trellis-cni through cnitool).
//! Root only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use trellis_e2e::mesh::Device;
use trellis_e2e::pod::{ping_flow, ping_from};
use trellis_e2e::{netns, ping, Lab, LabOptions};

/// The pods of the lab: (node, pod, netns, IPv4, IPv6).
struct Pod {
    name: String,
    netns: String,
    v4: String,
    v6: String,
}

fn add_pods(lab: &mut Lab, per_node: usize) -> Vec<Pod> {
    let nodes: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
    let mut pods = Vec::new();
    for node in &nodes {
        for i in 0..per_node {
            let name = format!("p{i}");
            let result = lab
                .add_pod(node, &name, None)
                .unwrap_or_else(|e| panic!("pod {name} on {node}: {e}"));
            let addr = |v4: bool| trellis_e2e::pod::result_address(&result, v4).expect("address");
            pods.push(Pod {
                name: format!("{node}/{name}"),
                netns: lab.names().pod_netns(node, &name),
                v4: addr(true),
                v6: addr(false),
            });
        }
    }
    pods
}

/// Named `NODE/POD` in a ping matrix, pinged at IPv4 and IPv6.
impl ping::Pingable for Pod {
    fn label(&self) -> &str {
        &self.name
    }
    fn netns(&self) -> &str {
        &self.netns
    }
    fn addresses(&self) -> Vec<&str> {
        vec![&self.v4, &self.v6]
    }
}

/// tcpdump on the underlay bridge in `switch_netns` for up to 20 s: the
/// first `count` packets matching `filter`, one line each on its stdout.
fn capture(switch_netns: &str, count: u32, filter: &str) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", switch_netns, "timeout", "20"])
        .args([
            "tcpdump",
            "-i",
            "br0",
            "-n",
            "-l",
            "-c",
            &count.to_string(),
            filter,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump runs")
}

fn tcp_transfer(from: &Pod, to: &Pod, bytes: usize) -> usize {
    let listener = netns::run_in(&to.netns, || TcpListener::bind("0.0.0.0:5001").unwrap()).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    let target: SocketAddr = format!("{}:5001", to.v4).parse().unwrap();
    netns::run_in(&from.netns, move || {
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        conn.write_all(&vec![7u8; bytes]).unwrap();
    })
    .unwrap();
    server.join().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn three_nodes_mesh_all_pairs_over_wireguard_only() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    trellis_e2e::down("m3");
    let mut lab = Lab::up(LabOptions::new("m3", 3)).await.expect("lab up");
    lab.start_mesh(Device::TrellisWg)
        .await
        .expect("mesh started");
    lab.wait_mesh(2, Duration::from_secs(60))
        .expect("every node has both peers");
    let pods = add_pods(&mut lab, 2);

    // A capture on the underlay bridge while pods talk: only WireGuard.
    // Plaintext pod traffic would carry pod addresses in its IP header (the
    // WireGuard packets carry node addresses), or be TCP other than the
    // apiserver's.
    let sw = lab.names().switch_netns();
    let mut leak_filter: Vec<String> = lab.state.clusters[0]
        .cluster_cidrs
        .iter()
        .map(|c| format!("net {c}"))
        .collect();
    leak_filter.push("(tcp and not port 6443)".into());
    let plaintext = capture(&sw, 1, &leak_filter.join(" or "));
    let wireguard = capture(&sw, 20, "udp port 51820");
    std::thread::sleep(Duration::from_secs(1));

    let failures = ping::all_pairs(&pods);
    assert!(
        failures.is_empty(),
        "pairs that did not answer: {failures:#?}"
    );
    let received = tcp_transfer(&pods[0], &pods[5], 1 << 20);
    assert_eq!(
        received,
        1 << 20,
        "a 1 MiB TCP transfer across nodes arrives whole"
    );

    let wg_out = wireguard.wait_with_output().unwrap();
    let wg_lines = String::from_utf8_lossy(&wg_out.stdout).lines().count();
    assert!(
        wg_lines >= 20,
        "WireGuard UDP seen on the underlay: {wg_lines} packets"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(plaintext.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let plain_out = plaintext.wait_with_output().unwrap();
    let leaked = String::from_utf8_lossy(&plain_out.stdout).to_string();
    assert!(
        leaked.trim().is_empty(),
        "plaintext pod traffic on the underlay: {leaked}"
    );

    // The agents report healthy and ready.
    for node in ["m3-n1", "m3-n2", "m3-n3"] {
        for path in ["/healthz", "/readyz"] {
            let answer = lab.agent_http(node, path).unwrap();
            assert!(
                answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
                "{node} {path}: {answer}"
            );
        }
        assert!(
            lab.agent_metrics(node).unwrap().contains("trellis_peers 2"),
            "{node}"
        );
    }

    // Traffic leaving the mesh is masqueraded: the host (outside every pod
    // CIDR) sees the node's address, not the pod's.
    let host_ip = lab.host_addrs().v4.unwrap();
    let receiver = std::net::UdpSocket::bind((host_ip, 0)).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    netns::run_in(&pods[0].netns, move || {
        std::net::UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .send_to(b"out", to)
            .unwrap()
    })
    .unwrap();
    let (_, seen) = receiver
        .recv_from(&mut [0u8; 8])
        .expect("a datagram from the pod");
    let node_ip = lab.node("m3-n1").unwrap().v4.unwrap();
    assert_eq!(
        seen.ip(),
        std::net::IpAddr::V4(node_ip),
        "masqueraded to the node's address"
    );

    assert!(trellis_e2e::down("m3").is_clean());
}

/// The mesh tests run one at a time: each brings a lab up, and the timing
/// ones (a restart loses at most 1 s) must not share two cores with others
/// (tests of other modules wait for this module's turn: `module_turn`).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

async fn mesh_lab(name: &str, nodes: u8) -> Lab {
    trellis_e2e::down(name);
    let mut lab = Lab::up(LabOptions::new(name, nodes)).await.expect("lab up");
    lab.start_mesh(Device::TrellisWg)
        .await
        .expect("mesh started");
    lab.wait_mesh(usize::from(nodes) - 1, Duration::from_secs(60))
        .expect("mesh up");
    lab
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn a_node_joins_and_leaves() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    let mut lab = mesh_lab("mjoin", 3).await;
    let pods = add_pods(&mut lab, 1);

    let new = lab.add_node("mjoin").await.unwrap();
    lab.start_node(&new, Device::TrellisWg).await.unwrap();
    lab.wait_mesh(3, Duration::from_secs(60))
        .expect("every agent adds the new node");
    let joined = lab.add_pod(&new, "p0", None).unwrap();
    let joined_ip = joined["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    for p in &pods {
        ping_from(&p.netns, &joined_ip)
            .unwrap_or_else(|e| panic!("{} -> new node's pod: {e}", p.name));
    }

    // The node goes: its Node object is deleted, its namespace with it.
    let gone_cidrs = {
        let api: kube::Api<k8s_openapi::api::core::v1::Node> =
            kube::Api::all(lab.client("mjoin").await.unwrap());
        api.get(&new)
            .await
            .unwrap()
            .spec
            .unwrap()
            .pod_cidrs
            .unwrap()
    };
    lab.remove_node(&new).await.unwrap();
    lab.wait_mesh(2, Duration::from_secs(60))
        .expect("every agent drops the peer");
    for n in ["mjoin-n1", "mjoin-n2", "mjoin-n3"] {
        let routes = lab.mesh_routes(n).unwrap();
        for gone in &gone_cidrs {
            assert!(
                !routes.iter().any(|r| r.starts_with(&format!("{gone} "))),
                "{n} still routes {gone}: {routes:?}"
            );
        }
    }
    assert!(ping::all_pairs(&pods).is_empty());
    assert!(trellis_e2e::down("mjoin").is_clean());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn an_agent_killed_and_restarted_keeps_traffic_flowing() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    let mut lab = mesh_lab("mkill", 3).await;
    let pods = add_pods(&mut lab, 1);
    let before: Vec<Vec<(String, u64)>> = ["mkill-n1", "mkill-n2", "mkill-n3"]
        .iter()
        .map(|n| lab.wg_peers(n).unwrap())
        .collect();

    let traffic = ping_flow(&pods[0].netns, &pods[2].v4, 8);
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.signal_daemon("mkill-n1", "agent", nix::sys::signal::Signal::SIGKILL));
    std::thread::sleep(Duration::from_secs(1));
    lab.start_agent("mkill-n1", Device::TrellisWg)
        .await
        .unwrap();
    let (sent, received) = traffic.join().unwrap();
    assert!(sent >= 100, "the flow ran: {sent} sent");
    let lost = sent - received;
    assert!(
        lost <= 20,
        "a restart lost {lost} of {sent} packets at 50 ms intervals (more than 1 s)"
    );

    // The restarted agent converges on the same peers: none duplicated,
    // missing or extra.
    std::thread::sleep(Duration::from_secs(2));
    let after = lab.wg_peers("mkill-n1").unwrap();
    let keys = |v: &[(String, u64)]| {
        v.iter()
            .map(|(k, _)| k.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(after.len(), 2);
    assert_eq!(keys(&after), keys(&before[0]));
    // ... and finds nothing to change: not even the masquerade ruleset is
    // loaded again.
    let metrics = lab.agent_metrics("mkill-n1").unwrap();
    assert!(
        metrics.contains("trellis_dataplane_operations_total 0"),
        "the restarted agent changed the dataplane:\n{metrics}"
    );
    assert!(trellis_e2e::down("mkill").is_clean());
}

/// A runtime that never asks the plugin's STATUS (containerd 1.x) takes
/// a CNI configuration as "this node can take pods": it goes while the
/// mesh interface is gone, and comes back with it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn no_cni_configuration_while_the_mesh_interface_is_gone() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    let mut lab = mesh_lab("mcni", 2).await;
    let conflist = trellis_e2e::node::private_dir(
        &lab.node("mcni-n1").unwrap().dir,
        trellis_mesh::names::DEFAULT_CNI_CONF_DIR,
    )
    .join("10-trellis.conflist");
    assert!(conflist.exists(), "written once the mesh is up");
    assert!(lab.signal_daemon(
        "mcni-n1",
        trellis_e2e::mesh::TRELLIS_WG,
        nix::sys::signal::Signal::SIGKILL
    ));
    trellis_e2e::mesh::wait_for(
        Duration::from_secs(60),
        || !conflist.exists(),
        || "the CNI configuration stayed after the mesh interface went".into(),
    )
    .unwrap();
    lab.start_device("mcni-n1", Device::TrellisWg)
        .await
        .unwrap();
    trellis_e2e::mesh::wait_for(
        Duration::from_secs(60),
        || conflist.exists(),
        || "the CNI configuration did not come back with the interface".into(),
    )
    .unwrap();
    lab.wait_mesh(1, Duration::from_secs(60)).unwrap();
    let pods = add_pods(&mut lab, 1);
    ping_from(&pods[0].netns, &pods[1].v4).expect("n1 to n2 after the device came back");
    ping_from(&pods[1].netns, &pods[0].v6).expect("n2 to n1 after the device came back");
    assert!(trellis_e2e::down("mcni").is_clean());
}

/// The masquerade table is read back from the kernel: a rule edited inside
/// `inet trellis` behind the agent's back (the masquerade rule flushed,
/// a rule of someone else's added) is restored at the next reconcile, and
/// pods reach the underlay masqueraded again.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn an_edited_masquerade_table_is_restored() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    let lab = mesh_lab("mnft", 2).await;
    let ns = lab.node("mnft-n1").unwrap().netns.clone();
    let list = || trellis_e2e::mesh::masquerade_table(&ns).unwrap();
    let loaded = list();
    assert!(loaded.contains("masquerade"), "{loaded}");
    let operations = || {
        let metrics = lab.agent_metrics("mnft-n1").unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("trellis_dataplane_operations_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("the operations counter")
    };
    let before = operations();
    trellis_e2e::mesh::tamper_with_masquerade_table(&ns).unwrap();
    assert_ne!(list(), loaded, "the edit took");
    // The chart's resync is 10 s.
    trellis_e2e::mesh::wait_for(
        Duration::from_secs(60),
        || list() == loaded,
        || format!("the table was not restored:\n{}\nwant:\n{loaded}", list()),
    )
    .unwrap();
    // The counter moves once the reconcile that loaded the table ends,
    // which can be just after the kernel shows the table.
    trellis_e2e::mesh::wait_for(
        Duration::from_secs(30),
        || operations() > before,
        || "the restoring load was not counted".into(),
    )
    .unwrap();
    assert_eq!(
        operations(),
        before + 1.0,
        "one load of the table, nothing else"
    );
    assert!(trellis_e2e::down("mnft").is_clean());
}

/// Idle is not down: a mesh nobody talks over for longer than a
/// WireGuard session lives (180 s) shows every pair idle with the age of
/// its last handshake and no problem, in `kubectl trellis status` and
/// `graph`; one ping later the pair is direct again. Not serialized with
/// the other tests of this module (its own lab): it mostly waits.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn an_idle_mesh_reports_idle_not_down() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let mut lab = mesh_lab("midle", 2).await;
    let pods = add_pods(&mut lab, 1);
    ping_from(&pods[0].netns, &pods[1].v4).expect("n1 to n2 makes a session");
    let kubeconfig = lab.kubeconfig("midle").unwrap().display().to_string();
    let kubectl_trellis = |args: &[&str]| {
        trellis_e2e::plugin::kubectl_trellis(&kubeconfig, args)
            .expect("kubectl trellis")
            .0
    };
    // The rows of n1's peer n2 and n2's peer n1.
    let peer_rows = |table: &str| -> Vec<String> {
        table
            .lines()
            .filter(|l| {
                let mut cols = l.split_whitespace();
                cols.next().is_some_and(|n| n.starts_with("midle-n"))
                    && cols.next().is_some_and(|p| p.starts_with("midle-n"))
            })
            .map(str::to_string)
            .collect()
    };
    let both_ends = |what: &str| {
        let rows = peer_rows(&kubectl_trellis(&["status"]));
        rows.len() == 2 && rows.iter().all(|r| r.contains(what))
    };
    trellis_e2e::plugin::wait_until(
        "both ends report the pair direct",
        Duration::from_secs(30),
        || both_ends("direct"),
    );
    eprintln!(
        "waiting for the sessions to expire (WireGuard drops them 180 s after the handshake)"
    );
    let took = trellis_e2e::plugin::wait_until(
        "both ends report the pair idle",
        // 180 s after the last handshake; up to 120 s more when a packet
        // after the session's rekey time made a new one.
        Duration::from_secs(420),
        || both_ends(" idle"),
    );
    let table = kubectl_trellis(&["status"]);
    eprintln!("{table}(idle after {took:?})");
    for row in peer_rows(&table) {
        assert!(
            row.contains("m ago"),
            "the last handshake's age shows: {row}"
        );
        assert!(
            !row.contains("never") && !row.contains("down") && !row.contains("reachable"),
            "no problem for an idle pair: {row}"
        );
    }
    let dot = kubectl_trellis(&["graph"]);
    assert!(
        dot.contains("\"midle-n1\" -- \"midle-n2\" [style=dashed")
            && dot.contains("label=\"idle\""),
        "{dot}"
    );
    for node in ["midle-n1", "midle-n2"] {
        let wg = lab.wg_dump(node).unwrap();
        assert!(
            wg.iter().all(|p| p.latest_handshake > 0),
            "{node}: wg show keeps the latest handshake: {wg:?}"
        );
    }
    // One echo a second until one is answered, 6 s at most: the first
    // packet waits for a new handshake (CI once saw one ping of 2 s go
    // unanswered here, on a loaded machine).
    let again = std::time::Instant::now();
    trellis_e2e::cmd::in_netns(&pods[0].netns, "ping", &["-c", "1", "-w", "6", &pods[1].v4])
        .expect("an idle pair answers within seconds");
    eprintln!(
        "the idle pair answered {:?} after the first ping",
        again.elapsed()
    );
    trellis_e2e::plugin::wait_until("the pair is direct again", Duration::from_secs(30), || {
        both_ends("direct")
    });
    assert!(trellis_e2e::down("midle").is_clean());
}

/// A pod its runtime lost without CNI DEL (and no GC, as containerd 1.x
/// never calls it): its network namespace is gone, and with it the veth
/// pair. The agent releases its addresses after the grace period (20 s
/// in the lab); the pods that still live keep theirs.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn addresses_of_pods_lost_without_del_are_released() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    let mut lab = mesh_lab("mleak", 2).await;
    let pods = add_pods(&mut lab, 2);
    let store = trellis_e2e::node::private_dir(
        &lab.node("mleak-n1").unwrap().dir,
        trellis_mesh::names::DEFAULT_STATE_DIR,
    )
    .join("ipam/trellis");
    let (lost, kept) = (&pods[0], &pods[1]);
    assert!(lost.name.starts_with("mleak-n1/") && kept.name.starts_with("mleak-n1/"));
    let allocated = |pod: &Pod| store.join(&pod.v4).exists() && store.join(&pod.v6).exists();
    assert!(allocated(lost) && allocated(kept), "{}", store.display());
    netns::delete(&lost.netns).expect("the runtime loses the pod");
    let took = trellis_e2e::plugin::wait_until(
        "the lost pod's addresses are released",
        Duration::from_secs(120),
        || !store.join(&lost.v4).exists() && !store.join(&lost.v6).exists(),
    );
    eprintln!("released {took:?} after the pod was lost");
    assert!(allocated(kept), "a live pod keeps its addresses");
    ping_from(&kept.netns, &pods[2].v4).expect("the live pod still reaches n2");
    let metrics = lab.agent_metrics("mleak-n1").unwrap();
    assert!(
        metrics.contains("trellis_leaked_pod_addresses_released_total 2"),
        "{metrics}"
    );
    assert!(trellis_e2e::down("mleak").is_clean());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn bad_nodes_are_left_out_and_the_rest_keeps_working() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    let mut lab = mesh_lab("mbad", 3).await;
    let pods = add_pods(&mut lab, 1);
    let client = lab.client("mbad").await.unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());

    // A node whose agent is gone gets a garbage key.
    assert!(lab.signal_daemon("mbad-n3", "agent", nix::sys::signal::Signal::SIGKILL));
    let patch =
        serde_json::json!({"metadata": {"annotations": {"trellis.dev/public-key": "garbage"}}});
    nodes
        .patch(
            "mbad-n3",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    // And a Node object whose pod CIDR overlaps n1's.
    let n1_cidrs = nodes
        .get("mbad-n1")
        .await
        .unwrap()
        .spec
        .unwrap()
        .pod_cidrs
        .unwrap();
    let overlapping = trellis_e2e::node::claiming_node(
        "intruder",
        "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
        "198.51.100.99:51820",
        &n1_cidrs[0],
    );
    nodes
        .create(&Default::default(), &overlapping)
        .await
        .unwrap();
    // And Nodes claiming what the cluster never declared: a public range
    // (someone else's traffic) and a default route. The lab declares its
    // cluster CIDRs (10.x/16, fd00:..::/56) as the pod ranges.
    for (name, key, cidr) in [
        (
            "hijacker",
            "8CunncfPcB5leDxYgmhEZheHNUnKop6r0YQNff7Iu9U=",
            "8.8.8.0/24",
        ),
        (
            "everything",
            "xfwLRApxfx99Gq9vvJRxsdsH45GHEVU2VbtWrYBPFDw=",
            "0.0.0.0/0",
        ),
    ] {
        let claim = trellis_e2e::node::claiming_node(name, key, "198.51.100.98:51820", cidr);
        nodes.create(&Default::default(), &claim).await.unwrap();
    }

    trellis_e2e::mesh::wait_for(
        Duration::from_secs(30),
        || {
            lab.wg_peers("mbad-n1")
                .map(|p| p.len() == 1)
                .unwrap_or(false)
        },
        || "n1 did not drop n3".into(),
    )
    .unwrap();
    trellis_e2e::mesh::wait_for(
        Duration::from_secs(30),
        || {
            lab.wg_peers("mbad-n2")
                .map(|p| p.len() == 1)
                .unwrap_or(false)
        },
        || "n2 did not drop n3".into(),
    )
    .unwrap();
    // n1 and n2 keep talking.
    ping_from(&pods[0].netns, &pods[1].v4).expect("n1 to n2 still works");
    ping_from(&pods[1].netns, &pods[0].v6).expect("n2 to n1 still works");

    // Metrics and Events say why (each agent reconciles on its own time).
    let mut metrics = String::new();
    trellis_e2e::mesh::wait_for(
        Duration::from_secs(30),
        || {
            metrics = lab.agent_metrics("mbad-n2").unwrap_or_default();
            metrics.contains("trellis_rejected_peers{reason=\"invalid_annotation\"} 1")
                && metrics.contains("trellis_rejected_peers{reason=\"overlapping_pod_cidr\"} 1")
                && metrics.contains("trellis_rejected_peers{reason=\"undeclared_range\"} 2")
        },
        || "n2's metrics do not count every rejection".into(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    assert!(
        metrics.contains(
            "trellis_undeclared_ranges{peer=\"hijacker\",range=\"8.8.8.0/24\",declared=\"10.244.0.0/16,fd00:10:244::/56\"} 1"
        ) && metrics.contains("trellis_undeclared_ranges{peer=\"everything\",range=\"0.0.0.0/0\",declared=\"\"} 1"),
        "{metrics}"
    );
    // No node routes the undeclared ranges into the mesh, nor anywhere
    // else: the host's own default route is untouched.
    for node in ["mbad-n1", "mbad-n2"] {
        let routes = lab.mesh_routes(node).unwrap();
        assert!(
            !routes.iter().any(|r| r.starts_with("8.8.8.0/24")
                || r.starts_with("default")
                || r.starts_with("0.0.0.0/0")),
            "{node}: {routes:?}"
        );
        let wg = lab.wg_dump(node).unwrap();
        assert!(
            !wg.iter().any(|p| p
                .allowed_ips
                .iter()
                .any(|a| a == "8.8.8.0/24" || a == "0.0.0.0/0")),
            "{node}: {wg:?}"
        );
    }
    ping_from(&pods[0].netns, &pods[1].v4).expect("n1 to n2 still works");
    ping_from(&pods[1].netns, &pods[0].v6).expect("n2 to n1 still works");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::all(client);
    let mut notes: Vec<String> = Vec::new();
    for _ in 0..100 {
        notes = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.note)
            .collect();
        if notes.iter().any(|n| n.contains("intruder"))
            && notes.iter().any(|n| n.contains("mbad-n3"))
            && notes.iter().any(|n| n.contains("hijacker"))
            && notes.iter().any(|n| n.contains("everything"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        notes
            .iter()
            .any(|n| n.contains("mbad-n3") && n.contains("public-key")),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("intruder") && n.contains("overlaps")),
        "{notes:#?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("hijacker")
            && n.contains("pod CIDR 8.8.8.0/24 lies outside the pod ranges this cluster declares")
            && n.contains("10.")),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("everything") && n.contains("0.0.0.0/0 is a default route")),
        "{notes:#?}"
    );
    assert!(trellis_e2e::down("mbad").is_clean());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn wireguard_go_on_one_node_interoperates() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    let mut lab = mesh_lab("mgo", 3).await;
    // Swap n2's trellis-wg for current wireguard-go (pinned in
    // tools/references.env, with its TUN and UDP offloads); the agent
    // configures it over the same UAPI socket.
    lab.signal_daemon("mgo-n2", "agent", nix::sys::signal::Signal::SIGKILL);
    lab.signal_daemon("mgo-n2", "trellis-wg", nix::sys::signal::Signal::SIGTERM);
    // trellis-wg leaves its interface (persistent, as the chart runs it)
    // without carrier; wireguard-go opens a TUN of other flags, so the
    // interface goes first, as a user switching devices removes it.
    let ns = lab.node("mgo-n2").unwrap().netns.clone();
    trellis_e2e::mesh::wait_for(
        Duration::from_secs(10),
        || {
            trellis_e2e::cmd::ip(Some(&ns), &["link", "show", "trellis"])
                .is_ok_and(|l| l.contains("NO-CARRIER"))
        },
        || "trellis-wg did not stop, or took its persistent interface with it".into(),
    )
    .unwrap();
    trellis_e2e::cmd::ip(Some(&ns), &["link", "delete", "trellis"]).unwrap();
    lab.start_device("mgo-n2", Device::WireguardGoCurrent)
        .await
        .unwrap();
    lab.start_agent("mgo-n2", Device::WireguardGoCurrent)
        .await
        .unwrap();
    lab.wait_mesh(2, Duration::from_secs(60))
        .expect("mesh up with wireguard-go on n2");
    let pods = add_pods(&mut lab, 1);
    // trellis-wg's noise protocol (gotatun's, as boringtun's before it)
    // stamps its handshake initiations 27 s later than
    // wireguard-go and the kernel do (TAI64N base 2^62 + 37 against + 10):
    // a peer that took an initiation from n2's trellis-wg within the last
    // 27 s refuses wireguard-go's as replays, until it initiates itself
    // (its rekey, ~15 s after its packets go unanswered). A device switch
    // away from trellis-wg costs such pairs that long; the pairs answer.
    let took = ping::wait_all_pairs(&pods, Duration::from_secs(60));
    eprintln!("every pod pair answered {took:?} after the pods were added, wireguard-go on n2");
    assert!(trellis_e2e::down("mgo").is_clean());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn traffic_survives_a_stopped_apiserver_and_changes_converge_after() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    let _one = serial().await;
    let mut lab = mesh_lab("mapi", 3).await;
    let pods = add_pods(&mut lab, 1);
    let apiserver = lab
        .state
        .daemons
        .iter()
        .find(|d| d.name == "mapi/kube-apiserver")
        .unwrap()
        .pid;
    let stop = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(apiserver), sig).unwrap();

    let traffic = ping_flow(&pods[0].netns, &pods[1].v4, 62);
    stop(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(60));
    stop(nix::sys::signal::Signal::SIGCONT);
    let (sent, received) = traffic.join().unwrap();
    assert!(
        sent > 1000 && sent - received <= 5,
        "traffic during the outage: {received}/{sent}"
    );

    // A node joining after the outage reaches every agent.
    let new = lab.add_node("mapi").await.unwrap();
    lab.start_node(&new, Device::TrellisWg).await.unwrap();
    lab.wait_mesh(3, Duration::from_secs(90))
        .expect("changes after the outage converge");
    assert!(trellis_e2e::down("mapi").is_clean());
}
