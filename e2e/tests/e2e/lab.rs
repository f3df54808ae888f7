//! Tests of the lab itself, on the real control plane and real namespaces.
//! They need root: they are ignored otherwise (`make test` runs them with
//! `--include-ignored` when it is root), and fail loudly if run without it.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use trellis_e2e::plan::Names;
use trellis_e2e::state::{lab_root, LabState};
use trellis_e2e::{netns, Lab, LabOptions, NatMode};

/// Asserts that nothing of lab `name` is left: namespaces, the host link,
/// the state directory, and the processes it had started.
fn assert_gone(name: &str, pids: &[i32]) {
    let names = Names::new(name);
    assert_eq!(
        netns::list_with_prefix(&names.netns_prefix()),
        Vec::<String>::new(),
        "namespaces of {name} left"
    );
    let link = std::path::Path::new("/sys/class/net").join(names.host_link());
    assert!(!link.exists(), "host link {} left", link.display());
    assert!(!lab_root().join(name).exists(), "state dir of {name} left");
    let alive: Vec<i32> = pids.iter().copied().filter(|&p| netns::alive(p)).collect();
    assert!(
        alive.is_empty(),
        "processes of {name} still running: {alive:?}"
    );
}

fn daemon_pids(lab: &Lab) -> Vec<i32> {
    lab.state.daemons.iter().map(|d| d.pid).collect()
}

async fn nodes(lab: &Lab, cluster: &str) -> Vec<Node> {
    let api: Api<Node> = Api::all(lab.client(cluster).await.unwrap());
    api.list(&Default::default()).await.unwrap().items
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn up_assigns_real_pod_cidrs_and_down_leaves_nothing() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down("t1up");
    let lab = Lab::up(LabOptions::new("t1up", 3)).await.expect("lab up");

    // The apiserver answers through the admin kubeconfig written out.
    let client = trellis_e2e::kubeconfig::client(&lab.kubeconfig("t1up").unwrap())
        .await
        .unwrap();
    let version = client.apiserver_version().await.expect("apiserver answers");
    assert_eq!(version.git_version, "v1.34.4");

    // N Nodes, each with one IPv4 and one IPv6 pod CIDR from the cluster
    // CIDRs, all distinct: assigned by the real node IPAM controller.
    let cluster_cidrs = lab.state.clusters[0].cluster_cidrs.clone();
    let nodes = nodes(&lab, "t1up").await;
    assert_eq!(nodes.len(), 3);
    let mut seen = BTreeSet::new();
    for node in &nodes {
        let cidrs = node
            .spec
            .as_ref()
            .unwrap()
            .pod_cidrs
            .clone()
            .unwrap_or_default();
        assert_eq!(cidrs.len(), 2, "{:?}", node.metadata.name);
        for cidr in cidrs {
            let net: IpNet = cidr.parse().unwrap();
            assert!(
                cluster_cidrs.iter().any(|c| c.contains(&net)),
                "{net} outside {cluster_cidrs:?}"
            );
            assert!(seen.insert(net), "{net} assigned twice");
        }
        let addrs = node.status.as_ref().unwrap().addresses.clone().unwrap();
        assert!(addrs.iter().any(|a| a.type_ == "InternalIP"));
    }

    // Nodes reach each other and the apiserver over the underlay (v4 and v6).
    let n1 = lab.node("t1up-n1").unwrap().clone();
    let n3 = lab.node("t1up-n3").unwrap().clone();
    trellis_e2e::pod::ping_from(&n1.netns, &n3.v4.unwrap().to_string()).unwrap();
    trellis_e2e::pod::ping_from(&n1.netns, &n3.v6.unwrap().to_string()).unwrap();

    // A process run on a node sees the node's own directories.
    let mut write = lab.node_command("t1up-n1", "sh").unwrap();
    write.args([
        "-c",
        "echo n1 > /var/lib/trellis/marker && ls /run/wireguard /etc/cni/net.d /opt/cni/bin",
    ]);
    let out = write.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("host-local"));
    assert!(n1.dir.join("var-lib-trellis/marker").exists());
    assert!(
        !std::path::Path::new("/var/lib/trellis/marker").exists(),
        "node dir leaked to the host"
    );
    let other = lab
        .node_command("t1up-n2", "cat")
        .unwrap()
        .arg("/var/lib/trellis/marker")
        .output()
        .unwrap();
    assert!(!other.status.success(), "node n2 sees n1's files");

    let pids = daemon_pids(&lab);
    assert_eq!(
        pids.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager"
    );
    let report = trellis_e2e::down("t1up");
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_gone("t1up", &pids);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn two_labs_run_at_once_on_separate_underlays() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    for name in ["t2a", "t2b"] {
        trellis_e2e::down(name);
    }
    let a = Lab::up(LabOptions::new("t2a", 2)).await.expect("lab a up");
    let b = Lab::up(LabOptions::new("t2b", 2)).await.expect("lab b up");
    assert_ne!(a.state.slot, b.state.slot);
    assert_eq!(nodes(&a, "t2a").await.len(), 2);
    assert_eq!(nodes(&b, "t2b").await.len(), 2);
    // Separate underlays: a node of one lab cannot reach a node of the other.
    let a1 = a.node("t2a-n1").unwrap();
    let b1 = b.node("t2b-n1").unwrap();
    assert!(trellis_e2e::pod::ping_from(&a1.netns, &b1.v4.unwrap().to_string()).is_err());
    // Taking one down leaves the other working.
    let pids_a = daemon_pids(&a);
    assert!(trellis_e2e::down("t2a").is_clean());
    assert_gone("t2a", &pids_a);
    assert_eq!(
        nodes(&b, "t2b").await.len(),
        2,
        "lab b survives lab a's down"
    );
    let pids_b = daemon_pids(&b);
    assert!(trellis_e2e::down("t2b").is_clean());
    assert_gone("t2b", &pids_b);
}

#[test]
#[ignore = "needs root"]
fn a_killed_lab_is_removed_by_down() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down("t3kill");
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-lab"))
        .args(["up", "--name", "t3kill", "--nodes", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the control plane runs and the first node exists.
    let dir = lab_root().join("t3kill");
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        if let Ok(state) = LabState::load(&dir) {
            if state.daemons.len() == 3 && !state.nodes.is_empty() {
                break state;
            }
        }
        assert!(
            Instant::now() < deadline,
            "lab t3kill never got to its first node"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    up.kill().unwrap();
    up.wait().unwrap();
    let pids: Vec<i32> = state.daemons.iter().map(|d| d.pid).collect();
    assert!(
        pids.iter().any(|&p| netns::alive(p)),
        "the control plane outlives the killed builder"
    );

    let report = trellis_e2e::down("t3kill");
    assert!(report.is_clean(), "{:?}", report.errors);
    assert!(report.processes_stopped >= 3);
    assert_gone("t3kill", &pids);
}

/// The source address a receiver in `receiver_ns` sees for a datagram sent
/// from `sender_ns`, bound to `from_port`, to `to`.
fn observed_source(
    sender_ns: &str,
    from_port: u16,
    receiver_ns: &str,
    to: SocketAddr,
) -> SocketAddr {
    let receiver = netns::run_in(receiver_ns, move || UdpSocket::bind(to).unwrap()).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    netns::run_in(sender_ns, move || {
        let socket = UdpSocket::bind(("0.0.0.0", from_port)).unwrap();
        socket.send_to(b"probe", to).unwrap();
    })
    .unwrap();
    let mut buf = [0u8; 16];
    let (_, from) = receiver
        .recv_from(&mut buf)
        .expect("datagram through the NAT");
    from
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn pods_nat_and_a_second_cluster() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down("t4pods");
    let mut lab = Lab::up(LabOptions::new("t4pods", 3)).await.expect("lab up");

    // Pods on a node, wired by the reference ptp + host-local plugins
    // through cnitool, exactly as a runtime calls CNI.
    let n1 = lab.node("t4pods-n1").unwrap().clone();
    let conf = n1.dir.join("etc-cni-net.d/10-ptp.conflist");
    std::fs::write(
        &conf,
        r#"{"cniVersion":"1.0.0","name":"labnet","plugins":[{"type":"ptp","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/var/lib/trellis/ipam-ptp"}}]}"#,
    )
    .unwrap();
    let web = lab.add_pod("t4pods-n1", "web", None).expect("pod web");
    let db = lab.add_pod("t4pods-n1", "db", None).expect("pod db");
    let ip_of =
        |r: &serde_json::Value| trellis_e2e::pod::result_address(r, true).expect("IPv4 address");
    let (web_ip, db_ip) = (ip_of(&web), ip_of(&db));
    assert_ne!(web_ip, db_ip);
    let web_ns = lab.names().pod_netns("t4pods-n1", "web");
    trellis_e2e::pod::ping_from(&web_ns, &db_ip).expect("pod to pod");
    trellis_e2e::pod::ping_from(&web_ns, &n1.v4.unwrap().to_string()).expect("pod to its node");
    let ipam = n1.dir.join("var-lib-trellis/ipam-ptp/labnet");
    assert!(ipam.join(&web_ip).exists());
    lab.delete_pod("t4pods-n1", "web").expect("pod del");
    assert!(!netns::exists(&web_ns));
    assert!(!ipam.join(&web_ip).exists(), "CNI DEL released the address");

    // NAT: an endpoint-independent router keeps one public port for every
    // destination; a symmetric one picks a new one per destination.
    let target = lab.node("t4pods-n1").unwrap().clone();
    let to = |port: u16| SocketAddr::new(target.v4.unwrap().into(), port);
    let cone = lab
        .put_behind_nat("t4pods-n2", NatMode::EndpointIndependent)
        .await
        .unwrap();
    let sym = lab
        .put_behind_nat("t4pods-n3", NatMode::Symmetric)
        .await
        .unwrap();
    let n2_ns = lab.node("t4pods-n2").unwrap().netns.clone();
    let n3_ns = lab.node("t4pods-n3").unwrap().netns.clone();
    let a = observed_source(&n2_ns, 40000, &target.netns, to(7001));
    let b = observed_source(&n2_ns, 40000, &target.netns, to(7002));
    assert_eq!(
        a,
        SocketAddr::new(cone.public_v4.into(), 40000),
        "cone NAT maps to the public address, same port"
    );
    assert_eq!(a, b, "cone NAT: one mapping for every destination");
    let ports: BTreeSet<u16> = (0..3)
        .map(|i| observed_source(&n3_ns, 40000, &target.netns, to(7010 + i)))
        .inspect(|s| assert_eq!(s.ip(), std::net::IpAddr::V4(sym.public_v4)))
        .map(|s| s.port())
        .collect();
    assert!(
        ports.len() > 1,
        "symmetric NAT reused one port for every destination: {ports:?}"
    );
    // A node behind NAT still reaches its apiserver, and its Node reports
    // the private address.
    let cp = lab.state.clusters[0].apiserver_url.clone();
    let cp_ip = cp
        .trim_start_matches("https://")
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();
    trellis_e2e::pod::ping_from(&n3_ns, &cp_ip).expect("through the NAT");
    let n2_obj: Node = Api::all(lab.client("t4pods").await.unwrap())
        .get("t4pods-n2")
        .await
        .unwrap();
    let n2_addrs = n2_obj.status.unwrap().addresses.unwrap();
    assert!(n2_addrs
        .iter()
        .any(|a| a.address == cone.private_v4.to_string()));

    // A second cluster with its own control plane on the same underlay.
    lab.add_cluster("two", 1, None)
        .await
        .expect("second cluster");
    let two_nodes = nodes(&lab, "two").await;
    assert_eq!(two_nodes.len(), 1);
    assert_eq!(
        nodes(&lab, "t4pods").await.len(),
        3,
        "clusters are separate"
    );
    let two_cidr: IpNet = two_nodes[0]
        .spec
        .as_ref()
        .unwrap()
        .pod_cidrs
        .as_ref()
        .unwrap()[0]
        .parse()
        .unwrap();
    assert!(lab.state.clusters[0]
        .cluster_cidrs
        .iter()
        .all(|c| !c.contains(&two_cidr)));
    let two_n1 = lab.node("two-n1").unwrap().clone();
    trellis_e2e::pod::ping_from(&n1.netns, &two_n1.v4.unwrap().to_string()).expect("same underlay");

    // Node removal takes its Node object and namespace away.
    lab.remove_node("t4pods-n3").await.unwrap();
    assert_eq!(nodes(&lab, "t4pods").await.len(), 2);
    assert!(!netns::exists(&n3_ns));

    let pids = daemon_pids(&lab);
    assert_eq!(pids.len(), 6);
    let report = trellis_e2e::down("t4pods");
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_gone("t4pods", &pids);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn single_stack_labs_assign_one_cidr_per_node() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    for (name, family, v4) in [
        ("t5four", trellis_e2e::IpFamily::Ipv4, true),
        ("t5six", trellis_e2e::IpFamily::Ipv6, false),
    ] {
        trellis_e2e::down(name);
        let mut options = LabOptions::new(name, 2);
        options.family = family;
        let lab = Lab::up(options)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for node in nodes(&lab, name).await {
            let cidrs = node.spec.unwrap().pod_cidrs.unwrap();
            assert_eq!(cidrs.len(), 1, "{name}: {cidrs:?}");
            assert_eq!(cidrs[0].contains('.'), v4, "{name}: {cidrs:?}");
        }
        let n1 = lab.node(&format!("{name}-n1")).unwrap();
        assert_eq!(n1.v4.is_some(), v4);
        assert_eq!(n1.v6.is_some(), !v4);
        let pids = daemon_pids(&lab);
        assert!(trellis_e2e::down(name).is_clean());
        assert_gone(name, &pids);
    }
}
