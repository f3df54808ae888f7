//! End-to-end: the mesh in the lab, with the real apiserver and the real
//! binaries (trellis-wg, trellis-agent, trellis-cni through cnitool).
//! Root only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use trellis_e2e::mesh::Device;
use trellis_e2e::pod::ping_from;
use trellis_e2e::{netns, Lab, LabOptions};

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root: run `make test` as root");
}

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
            let result = lab.add_pod(node, &name, None).unwrap_or_else(|e| panic!("pod {name} on {node}: {e}"));
            let addr = |v4: bool| {
                result["ips"].as_array().unwrap().iter().map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap().to_string()).find(|a| a.contains('.') == v4).unwrap()
            };
            pods.push(Pod { name: format!("{node}/{name}"), netns: lab.names().pod_netns(node, &name), v4: addr(true), v6: addr(false) });
        }
    }
    pods
}

fn all_pairs_ping(pods: &[Pod]) -> Vec<String> {
    let mut failures = Vec::new();
    for a in pods {
        for b in pods {
            if a.name == b.name {
                continue;
            }
            for target in [&b.v4, &b.v6] {
                if ping_from(&a.netns, target).is_err() {
                    failures.push(format!("{} -> {} ({target})", a.name, b.name));
                }
            }
        }
    }
    failures
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
    require_root();
    trellis_e2e::down("m3");
    let mut lab = Lab::up(LabOptions::new("m3", 3)).await.expect("lab up");
    lab.start_mesh(Device::TrellisWg).expect("mesh started");
    lab.wait_mesh(2, Duration::from_secs(60)).expect("every node has both peers");
    let pods = add_pods(&mut lab, 2);

    // A capture on the underlay bridge while pods talk: only WireGuard.
    let sw = lab.names().switch_netns();
    let plaintext = std::process::Command::new("ip")
        .args(["netns", "exec", &sw, "timeout", "20", "tcpdump", "-i", "br0", "-n", "-l", "-c", "1", "icmp or icmp6 and not ip6[40] >= 133 and not ip6[40] <= 137 or (tcp and not port 6443)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wireguard = std::process::Command::new("ip")
        .args(["netns", "exec", &sw, "timeout", "20", "tcpdump", "-i", "br0", "-n", "-l", "-c", "20", "udp port 51820"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let failures = all_pairs_ping(&pods);
    assert!(failures.is_empty(), "pairs that did not answer: {failures:#?}");
    let received = tcp_transfer(&pods[0], &pods[5], 1 << 20);
    assert_eq!(received, 1 << 20, "a 1 MiB TCP transfer across nodes arrives whole");

    let wg_out = wireguard.wait_with_output().unwrap();
    let wg_lines = String::from_utf8_lossy(&wg_out.stdout).lines().count();
    assert!(wg_lines >= 20, "WireGuard UDP seen on the underlay: {wg_lines} packets");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(plaintext.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let plain_out = plaintext.wait_with_output().unwrap();
    let leaked = String::from_utf8_lossy(&plain_out.stdout).to_string();
    assert!(leaked.trim().is_empty(), "plaintext pod traffic on the underlay: {leaked}");

    assert!(trellis_e2e::down("m3").is_clean());
}
