//! `make bench` (mesh part), on the lab with the real binaries:
//! - pod-to-pod TCP throughput across two nodes with trellis-wg, with
//!   Debian's wireguard-go, and node to node over the bare underlay veth;
//! - convergence of 20 joins: Node created → every other agent has the
//!   peer, and → the first successful ping to a pod on it;
//! - the agent at idle with 3 nodes and with 1000 Node objects (resident
//!   memory, CPU), and the dataplane operations one more join costs.
//!
//! Needs root; writes its sections into BENCHMARKS.md.

use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Node;
use trellis_e2e::bench::{percentile, timed_join, update_benchmarks_md};
use trellis_e2e::mesh::{wait_for, Device};
use trellis_e2e::{IpFamily, Lab, LabOptions};

fn main() {
    // TRELLIS_BENCH=throughput,convergence,scale picks parts (default: all).
    let (rt, parts) = trellis_e2e::bench::start();
    if parts.wanted("throughput") {
        let throughput = rt.block_on(throughput());
        update_benchmarks_md("mesh-throughput", "Pod-to-pod throughput", &throughput);
    }
    if parts.wanted("convergence") {
        let convergence = rt.block_on(convergence());
        update_benchmarks_md("mesh-convergence", "Convergence of a join", &convergence);
    }
    if parts.wanted("scale") {
        let scale = rt.block_on(scale());
        update_benchmarks_md("mesh-scale", "The agent at idle, and at 1000 nodes", &scale);
    }
}

fn pod_ip(result: &serde_json::Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .split('/')
        .next()
        .expect("ip")
        .to_string()
}

/// iperf3 from `client_ns` to `server_ip` (a server started in `server_ns`), in Gbit/s.
fn iperf(server_ns: &str, client_ns: &str, server_ip: &str) -> f64 {
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-t", "5", "-J",
        ])
        .output()
        .expect("iperf3 client");
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

async fn throughput() -> String {
    eprintln!("throughput: lab with 2 nodes");
    trellis_e2e::down("bthr");
    let mut lab = Lab::up(LabOptions::new("bthr", 2)).await.expect("lab");
    let (n1, n2) = ("bthr-n1".to_string(), "bthr-n2".to_string());
    let ns1 = lab.node(&n1).unwrap().netns.clone();
    let ns2 = lab.node(&n2).unwrap().netns.clone();
    let underlay_ip = lab.node(&n2).unwrap().v4.unwrap().to_string();
    let bare = iperf(&ns2, &ns1, &underlay_ip);
    eprintln!("  bare underlay veth: {bare:.2} Gbit/s");
    let mut rows = Vec::new();
    let mut pod_ips = None;
    for (device, name) in [
        (Device::TrellisWg, "trellis-wg (boringtun)"),
        (Device::WireguardGo, "wireguard-go (Debian)"),
    ] {
        for node in [&n1, &n2] {
            lab.stop_node(node).expect("stop the mesh on the node");
            lab.start_node(node, device).await.unwrap();
        }
        lab.wait_mesh(1, Duration::from_secs(60)).expect("mesh");
        if pod_ips.is_none() {
            let a = pod_ip(&lab.add_pod(&n1, "p0", None).unwrap());
            let b = pod_ip(&lab.add_pod(&n2, "p0", None).unwrap());
            pod_ips = Some((a, b));
        }
        let (_, b) = pod_ips.clone().unwrap();
        let pod1 = lab.names().pod_netns(&n1, "p0");
        let pod2 = lab.names().pod_netns(&n2, "p0");
        wait_for(
            Duration::from_secs(20),
            || trellis_e2e::pod::ping_from(&pod1, &b).is_ok(),
            || "pods do not reach each other".into(),
        )
        .unwrap();
        let gbps = iperf(&pod2, &pod1, &b);
        eprintln!("  {name}: {gbps:.2} Gbit/s");
        rows.push((name, gbps));
    }
    trellis_e2e::down("bthr");
    let wg_go = rows[1].1;
    let mut t = String::from("iperf3, one TCP stream for 5 s, pod on node 1 to pod on node 2 (through the mesh), and node to node over the bare underlay veth:\n\n| path | Gbit/s | vs wireguard-go | vs bare veth |\n|---|---|---|---|\n");
    for (name, gbps) in &rows {
        t.push_str(&format!(
            "| {name} | {gbps:.2} | {:.2}x | {:.3}x |\n",
            gbps / wg_go,
            gbps / bare
        ));
    }
    t.push_str(&format!(
        "| bare underlay veth (no WireGuard) | {bare:.2} | {:.2}x | 1x |\n",
        bare / wg_go
    ));
    t.push_str("\ntrellis-wg runs with its default of one worker thread (`TRELLIS_WG_THREADS`): here both nodes, both devices and iperf3 share two cores, and more boringtun threads lose more to lock contention than they gain.\n");
    t.push_str(&format!(
        "\nTarget: trellis-wg at least equal to wireguard-go — measured {:.2}x: {}.\n",
        rows[0].1 / wg_go,
        if rows[0].1 >= wg_go { "met" } else { "NOT met" }
    ));
    t
}

async fn convergence() -> String {
    eprintln!("convergence: 3-node mesh, then 20 joins");
    trellis_e2e::down("bconv");
    let mut lab = Lab::up(LabOptions::new("bconv", 3)).await.expect("lab");
    lab.start_mesh(Device::TrellisWg).await.unwrap();
    lab.wait_mesh(2, Duration::from_secs(60)).unwrap();
    lab.add_pod("bconv-n1", "p0", None).unwrap();
    let from = lab.names().pod_netns("bconv-n1", "p0");
    let (mut peers_ready, mut ping_ready) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let (peers, ping) = timed_join(&mut lab, "bconv", &from).await;
        peers_ready.push(peers);
        ping_ready.push(ping);
        eprintln!(
            "  join {:>2}: peers {:>6.0} ms, ping {:>6.0} ms",
            i + 1,
            peers_ready[i].as_secs_f64() * 1e3,
            ping_ready[i].as_secs_f64() * 1e3
        );
    }
    trellis_e2e::down("bconv");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "From the Node's creation (the lab registers it, the controller-manager assigns its pod CIDR, trellis-wg and the agent start on it) to (a) every other agent having the peer configured and (b) the first successful ping from an existing pod to a pod on the new node. 20 joins, growing a 3-node mesh to 23 nodes:\n\n| | p50 ms | p99 ms |\n|---|---|---|\n| (a) peer on every other node | {:.0} | {:.0} |\n| (b) first pod ping | {:.0} | {:.0} |\n\n(b) includes creating the pod through trellis-cni once the new node's agent has written its CNI configuration.\n",
        ms(percentile(&peers_ready, 50.0)),
        ms(percentile(&peers_ready, 99.0)),
        ms(percentile(&ping_ready, 50.0)),
        ms(percentile(&ping_ready, 99.0)),
    )
}

/// (resident kB, CPU seconds over `window`) of a process.
fn idle_usage(pid: i32, window: Duration) -> (u64, f64) {
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let before = ticks();
    std::thread::sleep(window);
    let cpu = (ticks() - before) as f64 / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (rss, cpu)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn fake_node(i: u32) -> Node {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&i.to_be_bytes());
    key[31] = 0x55;
    let (a, b) = (1 + i / 256, i % 256);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("sim-{i:04}"), "annotations": {
            "trellis.dev/public-key": base64::engine::general_purpose::STANDARD.encode(key),
            "trellis.dev/endpoint": format!("198.18.{}.{}:51820", i / 250, 1 + i % 250),
        }},
        "spec": {"podCIDR": format!("10.{a}.{b}.0/24"), "podCIDRs": [format!("10.{a}.{b}.0/24")]},
    }))
    .expect("node JSON")
}

async fn scale() -> String {
    eprintln!("scale: 3-node mesh, idle; then 1000 Node objects");
    trellis_e2e::down("bscale");
    let mut options = LabOptions::new("bscale", 3);
    options.family = IpFamily::Ipv4;
    // /12: 4096 node CIDRs of /24 (the controller-manager refuses more
    // than 16 bits between cluster and node mask).
    options.cluster_cidrs = Some(vec!["10.0.0.0/12".parse().unwrap()]);
    let mut lab = Lab::up(options).await.expect("lab");
    lab.start_mesh(Device::TrellisWg).await.unwrap();
    lab.wait_mesh(2, Duration::from_secs(60)).unwrap();
    let agent = lab
        .state
        .daemons
        .iter()
        .find(|d| d.name == "bscale-n1/agent")
        .unwrap()
        .pid;
    let window = Duration::from_secs(20);
    let (rss3, cpu3) = idle_usage(agent, window);
    eprintln!("  3 nodes: {rss3} kB, {cpu3:.2} CPU s / {window:?}");

    let api: kube::Api<Node> = kube::Api::all(lab.client("bscale").await.unwrap());
    let start = Instant::now();
    for i in 0..1000 {
        api.create(&Default::default(), &fake_node(i))
            .await
            .expect("simulated node");
    }
    let created = start.elapsed();
    wait_for(
        Duration::from_secs(300),
        || {
            lab.wg_peers("bscale-n1")
                .map(|p| p.len() == 1002)
                .unwrap_or(false)
        },
        || "1002 peers".into(),
    )
    .unwrap();
    let converged = start.elapsed();
    eprintln!(
        "  1000 Node objects created in {created:?}, all peers configured after {converged:?}"
    );
    std::thread::sleep(Duration::from_secs(12)); // let a resync pass
    let (rss1000, cpu1000) = idle_usage(agent, window);
    eprintln!("  1003 nodes: {rss1000} kB, {cpu1000:.2} CPU s / {window:?}");

    let ops_before = metric(
        &lab.agent_metrics("bscale-n1").unwrap(),
        "trellis_dataplane_operations_total",
    );
    api.create(&Default::default(), &fake_node(1000))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(60),
        || {
            lab.wg_peers("bscale-n1")
                .map(|p| p.len() == 1003)
                .unwrap_or(false)
        },
        || "1003 peers".into(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let ops_after = metric(
        &lab.agent_metrics("bscale-n1").unwrap(),
        "trellis_dataplane_operations_total",
    );
    let ops = ops_after - ops_before;
    eprintln!("  one more join: {ops} dataplane operations");
    trellis_e2e::down("bscale");
    format!(
        "trellis-agent (release build) on one node, idle for {} s after converging:\n\n| mesh | resident memory | CPU over {} s |\n|---|---|---|\n| 3 nodes | {:.1} MiB | {:.2} s |\n| 3 nodes + 1000 simulated Node objects (valid annotations and pod CIDRs) | {:.1} MiB | {:.2} s |\n\nCreating the 1000 Node objects took {:.1} s; the agent had all 1002 peers configured {:.1} s after the first was created.\n\nOne more node joining the 1003-node mesh cost **{ops} dataplane operations** on that agent (target: only that peer and its routes — here 1 peer + 1 route, plus 1 replacement of the masquerade ruleset, whose mesh CIDR set grew).\n",
        window.as_secs(),
        window.as_secs(),
        rss3 as f64 / 1024.0,
        cpu3,
        rss1000 as f64 / 1024.0,
        cpu1000,
        created.as_secs_f64(),
        converged.as_secs_f64(),
    )
}
