//! `make bench` (mesh part), on the lab with the real binaries:
//! - convergence of 20 joins: Node created → every other agent has the
//!   peer, and → the first successful ping to a pod on it;
//! - the agent at idle with 3 nodes and with 1000 Node objects (resident
//!   memory, CPU), and the dataplane operations one more join costs.
//!
//! Needs root; writes its sections into BENCHMARKS.md.

use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Node;
use trellis_e2e::bench::{cpu_seconds, percentile, timed_join, update_benchmarks_md};
use trellis_e2e::mesh::{wait_for, Device};
use trellis_e2e::{IpFamily, Lab, LabOptions};

fn main() {
    // TRELLIS_BENCH=convergence,scale picks parts (default: all).
    let (rt, parts) = trellis_e2e::bench::start();
    if parts.wanted("convergence") {
        let convergence = rt.block_on(convergence());
        update_benchmarks_md("mesh-convergence", "Convergence of a join", &convergence);
    }
    if parts.wanted("scale") {
        let scale = rt.block_on(scale());
        update_benchmarks_md("mesh-scale", "The agent at idle, and at 1000 nodes", &scale);
    }
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
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    let cpu = cpu_seconds(pid) - before;
    (trellis_e2e::bench::rss_kib(pid).unwrap_or(0), cpu)
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
