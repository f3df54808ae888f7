//! `make bench` (device part), on the lab with the real binaries: the
//! userspace WireGuard devices pod to pod across two nodes — trellis-wg as
//! the image ships it (the static musl build) and as a glibc release
//! build, current wireguard-go (the reference, pinned in
//! tools/references.env and built into the tools cache) and Debian's
//! wireguard-go — and node to node over the bare underlay veth. For each:
//! iperf3 throughput with one TCP stream and with four, the devices' CPU
//! per Gbit/s, and ping RTT through the tunnel during the one-stream runs.
//!
//! The peers part: each device's memory (RSS) with 1000 and 5000 peers,
//! against an empty one (see `peer_memory`).
//!
//! Needs root and the static build (`make static`); writes its section into
//! BENCHMARKS.md.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use trellis_e2e::bench::{cpu_seconds, ms, percentile, update_benchmarks_md};
use trellis_e2e::mesh::{wait_for, workspace_binary, Device, TRELLIS_WG, WIREGUARD_GO};
use trellis_e2e::pod::result_address;
use trellis_e2e::{tools, Lab, LabOptions};

fn main() {
    // TRELLIS_BENCH=throughput,peers picks parts (default: all).
    let (rt, parts) = trellis_e2e::bench::start();
    if parts.wanted("throughput") {
        let text = rt.block_on(throughput());
        update_benchmarks_md("mesh-throughput", "Pod-to-pod throughput", &text);
    }
    if parts.wanted("peers") {
        let text = peer_memory::run(&static_build_dir());
        update_benchmarks_md("device-peer-memory", "Device memory per peer", &text);
    }
}

#[path = "device/peer_memory.rs"]
mod peer_memory;

const LAB: &str = "bthr";
/// Runs of each kind per device; the table gives their median.
const RUNS: usize = 3;
/// Seconds of each iperf3 run.
const SECONDS: u32 = 5;

/// One iperf3 run: Gbit/s received, and the CPU seconds `pids` used
/// meanwhile.
fn iperf(
    server_ns: &str,
    client_ns: &str,
    server_ip: &str,
    streams: u32,
    pids: &[i32],
) -> (f64, f64) {
    let mut server = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let cpu = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let before = cpu();
    let out = Command::new("ip")
        .args(["netns", "exec", client_ns, "iperf3", "-c", server_ip, "-J"])
        .args(["-t", &SECONDS.to_string(), "-P", &streams.to_string()])
        .output()
        .expect("iperf3 client");
    let used = cpu() - before;
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    (gbps, used)
}

/// Pings `target` from `netns` every 10 ms for `seconds`, in a thread;
/// joins to the round-trip times of the answered ones.
fn rtt_flow(netns: &str, target: &str, seconds: u32) -> std::thread::JoinHandle<Vec<Duration>> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, "ping", "-i", "0.01", "-W", "1"]);
    command.args(["-w", &seconds.to_string(), target]);
    std::thread::spawn(move || {
        let out = command.output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| {
                l.split("time=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .map(|ms| Duration::from_secs_f64(ms / 1e3))
            .collect()
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

struct Row {
    name: String,
    one: f64,
    four: f64,
    /// Both devices' CPU, in cores per Gbit/s, over the one-stream runs.
    cpu_per_gbps: f64,
    rtt_p50: Duration,
    rtt_p99: Duration,
}

/// The directory of the static musl build (`make static`), which the image
/// ships, next to this bench's target directory.
fn static_build_dir() -> PathBuf {
    let glibc = workspace_binary("trellis-wg").expect("trellis-wg built (cargo build --release)");
    // target/release/trellis-wg -> target/x86_64-unknown-linux-musl/release
    let target = glibc.parent().and_then(|d| d.parent()).expect("target dir");
    let dir = target.join("x86_64-unknown-linux-musl/release");
    assert!(
        dir.join("trellis-wg").is_file(),
        "no static build in {}: run `make static` first",
        dir.display()
    );
    dir
}

async fn throughput() -> String {
    let current = tools::pinned("WIREGUARD_GO_VERSION");
    eprintln!("throughput: lab with 2 nodes; 4 devices, {RUNS} runs each of 1 and 4 TCP streams");
    let devices = [
        (
            Device::TrellisWg,
            Some(static_build_dir()),
            "trellis-wg, the image's static musl build".to_string(),
        ),
        (
            Device::TrellisWg,
            None,
            "trellis-wg, glibc release build".to_string(),
        ),
        (
            Device::WireguardGoCurrent,
            None,
            format!("wireguard-go {current} (reference)"),
        ),
        (
            Device::WireguardGo,
            None,
            "wireguard-go 0.0.20220316 (Debian)".to_string(),
        ),
    ];
    trellis_e2e::down(LAB);
    let mut lab = Lab::up(LabOptions::new(LAB, 2)).await.expect("lab");
    lab.tools
        .wireguard_go()
        .expect("current wireguard-go: run `make tools`");
    let (n1, n2) = (format!("{LAB}-n1"), format!("{LAB}-n2"));
    let ns1 = lab.node(&n1).unwrap().netns.clone();
    let ns2 = lab.node(&n2).unwrap().netns.clone();
    let underlay_ip = lab.node(&n2).unwrap().v4.unwrap().to_string();
    let bare: Vec<f64> = (0..RUNS)
        .map(|_| iperf(&ns2, &ns1, &underlay_ip, 1, &[]).0)
        .collect();
    let bare = median(bare);
    eprintln!("  bare underlay veth: {bare:.2} Gbit/s");
    let mut rows = Vec::new();
    let mut pod_ip = None;
    for (device, binaries, name) in devices {
        lab.image_binaries = binaries;
        for node in [&n1, &n2] {
            lab.stop_node(node).expect("stop the mesh on the node");
            lab.start_node(node, device).await.unwrap();
        }
        lab.wait_mesh(1, Duration::from_secs(60)).expect("mesh");
        if pod_ip.is_none() {
            lab.add_pod(&n1, "p0", None).unwrap();
            pod_ip = result_address(&lab.add_pod(&n2, "p0", None).unwrap(), true);
        }
        let b = pod_ip.clone().expect("pod address");
        let pod1 = lab.names().pod_netns(&n1, "p0");
        let pod2 = lab.names().pod_netns(&n2, "p0");
        wait_for(
            Duration::from_secs(20),
            || trellis_e2e::pod::ping_from(&pod1, &b).is_ok(),
            || "pods do not reach each other".into(),
        )
        .unwrap();
        let daemon = if device == Device::TrellisWg {
            TRELLIS_WG
        } else {
            WIREGUARD_GO
        };
        let pids: Vec<i32> = lab
            .state
            .daemons
            .iter()
            .filter(|d| [&n1, &n2].iter().any(|n| d.name == format!("{n}/{daemon}")))
            .filter(|d| trellis_e2e::netns::alive(d.pid))
            .map(|d| d.pid)
            .collect();
        assert_eq!(pids.len(), 2, "{name}: a device process on each node");
        let (mut one, mut cpu, mut rtts) = (Vec::new(), 0.0, Vec::new());
        for _ in 0..RUNS {
            let pings = rtt_flow(&pod1, &b, SECONDS);
            let (gbps, used) = iperf(&pod2, &pod1, &b, 1, &pids);
            rtts.extend(pings.join().unwrap());
            one.push(gbps);
            cpu += used / (f64::from(SECONDS) * gbps.max(1e-3));
        }
        let four: Vec<f64> = (0..RUNS)
            .map(|_| iperf(&pod2, &pod1, &b, 4, &pids).0)
            .collect();
        let row = Row {
            name,
            one: median(one),
            four: median(four),
            cpu_per_gbps: cpu / RUNS as f64,
            rtt_p50: percentile(&rtts, 50.0),
            rtt_p99: percentile(&rtts, 99.0),
        };
        eprintln!(
            "  {}: {:.2} Gbit/s (1 stream), {:.2} (4 streams), {:.2} cores per Gbit/s, RTT p50 {:?} p99 {:?} ({} pings)",
            row.name, row.one, row.four, row.cpu_per_gbps, row.rtt_p50, row.rtt_p99, rtts.len()
        );
        rows.push(row);
    }
    trellis_e2e::down(LAB);
    table(&rows, bare)
}

fn table(rows: &[Row], bare: f64) -> String {
    let reference = &rows[2];
    let mut t = format!("iperf3 pod on node 1 to pod on node 2 through the mesh, {SECONDS} s per run, the median of {RUNS} runs of one TCP stream and of {RUNS} of four; both nodes' device processes' CPU (user and system) per Gbit/s over the one-stream runs; ping RTT pod to pod every 10 ms during the one-stream runs. Both nodes, both devices, iperf3 and ping share this machine's two cores. The reference is current wireguard-go:\n\n| device | 1 stream Gbit/s | vs reference | 4 streams Gbit/s | vs reference | cores per Gbit/s | RTT p50 ms | RTT p99 ms |\n|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        t.push_str(&format!(
            "| {} | {:.2} | {:.2}x | {:.2} | {:.2}x | {:.2} | {:.2} | {:.2} |\n",
            r.name,
            r.one,
            r.one / reference.one,
            r.four,
            r.four / reference.four,
            r.cpu_per_gbps,
            ms(r.rtt_p50),
            ms(r.rtt_p99)
        ));
    }
    t.push_str(&format!(
        "| bare underlay veth, node to node (no WireGuard) | {bare:.2} | {:.2}x | | | | | |\n",
        bare / reference.one
    ));
    let shipped = &rows[0];
    let met = |ratio: f64| if ratio >= 1.5 { "met" } else { "NOT met" };
    t.push_str(&format!(
        "\nTarget: the shipped trellis-wg at least 1.5x current wireguard-go — one stream {:.2}x ({}), four streams {:.2}x ({}).\n",
        shipped.one / reference.one,
        met(shipped.one / reference.one),
        shipped.four / reference.four,
        met(shipped.four / reference.four)
    ));
    t
}
