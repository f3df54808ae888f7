//! `make bench` (clusters part), on the lab with the real binaries:
//! - a new node of a linked cluster becoming reachable: Node created in the
//!   other cluster → every node of both clusters has the peer, and → the
//!   first ping from a pod here; the reference is a new node of this
//!   cluster, measured the same way in the same run, alternating;
//! - relay → direct: two nodes behind endpoint-independent NATs whose
//!   routers are kept apart fall back to a relay; when the block goes, the
//!   time until both ends route directly again and the gap in a ping flow
//!   between their pods; the reference is the same pair finding its direct
//!   path from a fresh start with nothing in the way.
//!
//! Needs root; writes its sections into BENCHMARKS.md.

use std::time::{Duration, Instant};

use trellis_api::status::PathState;
use trellis_e2e::bench::{
    first_ping, ms, percentile, poll, restart_nodes, timed_join, timing_row, update_benchmarks_md,
    FINE,
};
use trellis_e2e::mesh::Device;
use trellis_e2e::pod::{ping_flow, result_address};
use trellis_e2e::{Lab, LabOptions, NatMode};

fn main() {
    // TRELLIS_BENCH=remote-join,relay-switch picks parts (default: all).
    let (rt, parts) = trellis_e2e::bench::start();
    if parts.wanted("remote-join") {
        let text = rt.block_on(remote_join());
        update_benchmarks_md(
            "clusters-remote-join",
            "A new node of a linked cluster",
            &text,
        );
    }
    if parts.wanted("relay-switch") {
        let text = rt.block_on(relay_switch());
        update_benchmarks_md("clusters-relay-switch", "Relay to direct", &text);
    }
}

const JOINS: usize = 6;
const HERE: &str = "here";
const THERE: &str = "there";

async fn remote_join() -> String {
    eprintln!("remote join: clusters {HERE} and {THERE} (2 + 2 nodes), linked; then {JOINS} joins to each, alternating");
    trellis_e2e::down(HERE);
    let mut lab = Lab::up(LabOptions::new(HERE, 2)).await.expect("lab");
    lab.add_cluster(THERE, 2, None)
        .await
        .expect("second cluster");
    lab.start_mesh(Device::TrellisWg).await.unwrap();
    lab.wait_clusters_meshed(Duration::from_secs(60)).unwrap();
    let pods = lab.one_pod_per_node().expect("a pod on every node");
    let there_ips: Vec<&str> = pods
        .iter()
        .filter(|p| p.cluster == THERE)
        .map(|p| p.v4.as_str())
        .collect();
    let from = lab.names().pod_netns(&format!("{HERE}-n1"), "p0");

    let start = Instant::now();
    trellis_e2e::plugin::kubectl_trellis(
        &lab.all_kubeconfigs(),
        &["cluster", "link", "--from", HERE, "--to", THERE, "--wait"],
    )
    .expect("cluster link");
    let linked = start.elapsed();
    for ip in &there_ips {
        first_ping(&from, ip, Duration::from_secs(60));
    }
    let reachable = start.elapsed();
    eprintln!(
        "  link --wait returned after {:.0} ms; pods of {THERE} answer after {:.0} ms",
        ms(linked),
        ms(reachable)
    );

    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for i in 0..JOINS {
        for (cluster, samples) in [(HERE, &mut local), (THERE, &mut remote)] {
            let (peers, ping) = timed_join(&mut lab, cluster, &from).await;
            eprintln!(
                "  join {:>2} to {cluster:<5}: peer everywhere {:>5.0} ms, first ping {:>5.0} ms",
                i + 1,
                ms(peers),
                ms(ping)
            );
            samples.push((peers, ping));
        }
    }
    trellis_e2e::down(HERE);
    let column = |s: &[(Duration, Duration)], pick: fn(&(Duration, Duration)) -> Duration| {
        s.iter().map(pick).collect::<Vec<_>>()
    };
    let row = |label: &str, s: &[(Duration, Duration)]| {
        let (peers, ping) = (column(s, |x| x.0), column(s, |x| x.1));
        let (lp, lq) = (column(&local, |x| x.0), column(&local, |x| x.1));
        format!(
            "| {label} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.2}x |\n",
            ms(percentile(&peers, 50.0)),
            ms(percentile(&peers, 99.0)),
            ms(percentile(&peers, 50.0)) / ms(percentile(&lp, 50.0)),
            ms(percentile(&ping, 50.0)),
            ms(percentile(&ping, 99.0)),
            ms(percentile(&ping, 50.0)) / ms(percentile(&lq, 50.0)),
        )
    };
    let remote_ping = ms(percentile(&column(&remote, |x| x.1), 50.0));
    let local_ping = ms(percentile(&column(&local, |x| x.1), 50.0));
    format!(
        "Two lab clusters (`{HERE}`, `{THERE}`: own etcd, kube-apiserver and controller-manager; 2 nodes each, growing by {JOINS} each), linked with `kubectl trellis cluster link --wait`. A node joins (the lab registers it, the controller-manager assigns its pod CIDR, trellis-wg and the agent start on it), alternately in `{THERE}` (a remote node for `{HERE}`'s agents, seen through their watch on the other API server) and in `{HERE}` (the reference, seen through their own API server). Measured from the Node's creation to (a) every other node of both clusters having it as a peer and (b) the first successful ping from a pod on `{HERE}-n1` to a pod on the new node:\n\n| new node | (a) p50 ms | (a) p99 ms | (a) p50 vs local | (b) p50 ms | (b) p99 ms | (b) p50 vs local |\n|---|---|---|---|---|---|---|\n{}{}\nA new remote node needs {:.2}x the time of a local one to answer pings (target: the same order — the only extra step is the remote watch). Linking the two clusters: `cluster link --wait` returned after {:.0} ms, and the pods of `{THERE}` answered a pod of `{HERE}` {:.0} ms after the command started.\n\n(b) includes creating the pod through trellis-cni once the new node's agent has written its CNI configuration.\n",
        row(&format!("in `{THERE}` (remote)"), &remote),
        row(&format!("in `{HERE}` (local, reference)"), &local),
        remote_ping / local_ping,
        ms(linked),
        ms(reachable),
    )
}

const TRIALS: usize = 5;
const RELAY_LAB: &str = "brly";

/// The path `node`'s agent reports to the peer with `key`.
fn path(lab: &Lab, node: &str, key: &str) -> Option<PathState> {
    let report = lab.agent_status(node).ok()?;
    let peer = report.peers.into_iter().find(|p| p.public_key == key)?;
    Some(peer.path)
}

/// Polls every 20 ms until both ends report `state` for each other.
fn wait_both(lab: &Lab, ends: [(&str, &str); 2], state: PathState, limit: Duration) -> Duration {
    poll(&format!("both ends {state:?}"), FINE, limit, || {
        ends.iter().all(|(n, k)| path(lab, n, k) == Some(state))
    })
}

/// Whether the device on `node` has a session with `key`.
fn handshaken(lab: &Lab, node: &str, key: &str) -> bool {
    lab.wg_dump(node)
        .map(|peers| {
            peers
                .iter()
                .any(|p| p.public_key == key && p.latest_handshake > 0)
        })
        .unwrap_or(false)
}

struct Switch {
    fresh: Duration,
    fallback: Duration,
    handshake: Duration,
    direct: Duration,
    lost: u32,
    sent: u32,
}

async fn relay_switch() -> String {
    eprintln!(
        "relay -> direct: n1 public, n2 and n3 behind endpoint-independent NATs; {TRIALS} trials"
    );
    trellis_e2e::down(RELAY_LAB);
    let mut lab = Lab::up(LabOptions::new(RELAY_LAB, 3)).await.expect("lab");
    let (n2, n3) = (format!("{RELAY_LAB}-n2"), format!("{RELAY_LAB}-n3"));
    let r2 = lab
        .put_behind_nat(&n2, NatMode::EndpointIndependent)
        .await
        .unwrap();
    let r3 = lab
        .put_behind_nat(&n3, NatMode::EndpointIndependent)
        .await
        .unwrap();
    lab.start_mesh(Device::TrellisWg).await.unwrap();
    lab.wait_mesh(2, Duration::from_secs(60)).unwrap();
    let k2 = lab.wg_public_key(&n2).unwrap();
    let k3 = lab.wg_public_key(&n3).unwrap();
    let pod2 = lab.names().pod_netns(&n2, "p0");
    lab.add_pod(&n2, "p0", None).unwrap();
    let ip3 = result_address(&lab.add_pod(&n3, "p0", None).unwrap(), true).unwrap();
    let ends = [(n2.as_str(), k3.as_str()), (n3.as_str(), k2.as_str())];

    let mut trials = Vec::new();
    for i in 0..TRIALS {
        // Reference: a fresh start, nothing in the way.
        restart_nodes(&mut lab, &[&n2, &n3]).await;
        let fresh = wait_both(&lab, ends, PathState::Direct, Duration::from_secs(60));
        first_ping(&pod2, &ip3, Duration::from_secs(10));
        // A fresh start with the routers kept apart: relayed via n1.
        trellis_e2e::nat::block(&r3.netns, r2.public_v4).unwrap();
        restart_nodes(&mut lab, &[&n2, &n3]).await;
        let fallback = wait_both(&lab, ends, PathState::Relayed, Duration::from_secs(60));
        first_ping(&pod2, &ip3, Duration::from_secs(10));
        // The block goes during a 50 ms ping flow.
        let flow = ping_flow(&pod2, &ip3, 12);
        std::thread::sleep(Duration::from_secs(2));
        let unblocked = Instant::now();
        trellis_e2e::nat::unblock(&r3.netns).unwrap();
        let mut handshake = None;
        let direct = poll(
            "both ends direct again",
            FINE,
            Duration::from_secs(60),
            || {
                if handshake.is_none() && handshaken(&lab, &n2, &k3) {
                    handshake = Some(unblocked.elapsed());
                }
                ends.iter()
                    .all(|(n, k)| path(&lab, n, k) == Some(PathState::Direct))
            },
        );
        let (sent, received) = flow.join().unwrap();
        let t = Switch {
            fresh,
            fallback,
            handshake: handshake.unwrap_or(direct),
            direct,
            lost: sent - received,
            sent,
        };
        eprintln!(
            "  trial {}: fresh direct {:>5.0} ms; blocked: relayed {:>5.0} ms; unblocked: handshake {:>5.0} ms, both direct {:>5.0} ms, {} of {} pings lost",
            i + 1,
            ms(t.fresh),
            ms(t.fallback),
            ms(t.handshake),
            ms(t.direct),
            t.lost,
            t.sent
        );
        trials.push(t);
    }
    trellis_e2e::down(RELAY_LAB);
    let col = |f: fn(&Switch) -> Duration| trials.iter().map(f).collect::<Vec<_>>();
    let p = |f: fn(&Switch) -> Duration, q: f64| ms(percentile(&col(f), q));
    let fresh50 = p(|t| t.fresh, 50.0);
    let max_lost = trials.iter().map(|t| t.lost).max().unwrap_or(0);
    let line = |label: &str, f: fn(&Switch) -> Duration| timing_row(label, &col(f), fresh50, "");
    format!(
        "Three lab nodes: n1 public, n2 and n3 each behind an endpoint-independent NAT router. {TRIALS} trials, each restarting trellis-wg and the agent on n2 and n3: once with nothing in the way (the reference: the time the pair needs to find its direct path, hole punching through both NATs), once with n3's router dropping everything to and from n2's router (the pair falls back to a relay through n1), then the block goes during a ping flow (50 ms apart) between pods on n2 and n3. Both ends' paths read from their agents' `/status` every 20 ms:\n\n| | p50 ms | max ms | p50 vs fresh direct |\n|---|---|---|---|\n{}{}{}{}\nLost pings while switching back: at most {max_lost} of about {} per trial ({} ms of traffic; 0 means no gap). After the block goes, the switch waits for the direct peer's handshake retry already under way (WireGuard retries every 5 s; the agent's probes start a handshake only when none is under way), then for the next path check of each end (every 2 s): bounded by 7 s. The fallback is bounded by the direct deadline (15 s) plus a path check.\n",
        line("fresh start, nothing in the way: both ends direct (reference)", |t| t.fresh),
        line("fresh start, routers kept apart: both ends relayed", |t| t.fallback),
        line("block removed: first direct handshake on n2's device", |t| t.handshake),
        line("block removed: both ends direct again (**relay → direct switch**)", |t| t.direct),
        trials.first().map(|t| t.sent).unwrap_or(0),
        max_lost * 50,
    )
}
