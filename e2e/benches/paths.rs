//! `make bench` (paths part), on the lab with the real binaries: paths
//! that break after they worked. n1 and n2 sit behind endpoint-independent
//! NATs and hole-punch a direct path; n3 and n4 are public relays.
//! - a broken path: a firewall rule between n1 and n2's router; the time
//!   until an end notices (its status says the path is silent) and until
//!   both ends relay, and the pings a flow between their pods loses; the
//!   reference is the same break noticed by handshake age alone (echoes
//!   dropped on both nodes, so the agents cannot judge by them: what the
//!   agents did before echoes), measured once;
//! - relay failover: the relay in use drops off the network; the time until
//!   both ends use the other relay, and the pings lost; the reference is
//!   the first relay's setup time (the break above);
//! - the way back: the relay returns and the rule goes; until both ends are
//!   direct again.
//!
//! - sites: how soon a same-site pair is on its LAN.
//!
//! Needs root; writes its sections into BENCHMARKS.md.

use std::time::{Duration, Instant};

use trellis_api::status::{NodeReport, PathState};
use trellis_e2e::bench::{
    ms, percentile, poll, restart_nodes, timing_row, update_benchmarks_md, FINE,
};
use trellis_e2e::mesh::Device;
use trellis_e2e::pod::{ping_flow, result_address};
use trellis_e2e::{cmd, nat, Lab, LabOptions, NatMode};

fn main() {
    // TRELLIS_BENCH=failover picks parts (default: all).
    let (rt, parts) = trellis_e2e::bench::start();
    if parts.wanted("failover") {
        let text = rt.block_on(failover());
        update_benchmarks_md("paths-failover", "Broken paths and relay failover", &text);
    }
    if parts.wanted("sites") {
        let text = rt.block_on(sites());
        update_benchmarks_md("paths-sites", "Sites: a same-site pair on its LAN", &text);
    }
}

const LAB: &str = "bpath";
const TRIALS: usize = 3;
/// Pings per second of the flows (`ping -i 0.05`).
const PINGS_PER_S: f64 = 20.0;

/// What `node`'s agent reports of its peer `key`.
fn peer_of(lab: &Lab, node: &str, key: &str) -> Option<trellis_api::status::PeerReport> {
    let report: NodeReport = lab.agent_status(node).ok()?;
    report.peers.into_iter().find(|p| p.public_key == key)
}

/// An nft table on a node that drops echo requests arriving through the
/// mesh: its agent answers none, so its peers judge the pair by handshakes.
const NO_ECHO: &str = "table inet bench-no-echo {\n\tchain input {\n\t\ttype filter hook input priority -300; policy accept;\n\t\tiifname \"trellis\" icmp type echo-request drop\n\t}\n}\n";

fn drop_echoes(lab: &Lab, node: &str, on: bool) {
    let netns = lab.node(node).unwrap().netns.clone();
    if on {
        let path = std::env::temp_dir().join(format!("bench-no-echo-{node}.nft"));
        std::fs::write(&path, NO_ECHO).unwrap();
        cmd::in_netns(&netns, "nft", &["-f", &path.to_string_lossy()]).unwrap();
        std::fs::remove_file(&path).ok();
    } else {
        cmd::in_netns(&netns, "nft", &["delete", "table", "inet", "bench-no-echo"]).unwrap();
    }
}

struct Trial {
    detect: Duration,
    switch: Duration,
    lost_break: u32,
    failover: Duration,
    lost_failover: u32,
    back: Duration,
}

async fn failover() -> String {
    eprintln!("paths: n1, n2 behind endpoint-independent NATs, n3 and n4 public; a reference, then {TRIALS} trials");
    trellis_e2e::down(LAB);
    let mut lab = Lab::up(LabOptions::new(LAB, 4)).await.expect("lab");
    let [n1, n2, n3, n4] = [1, 2, 3, 4].map(|i| format!("{LAB}-n{i}"));
    lab.put_behind_nat(&n1, NatMode::EndpointIndependent)
        .await
        .unwrap();
    let r2 = lab
        .put_behind_nat(&n2, NatMode::EndpointIndependent)
        .await
        .unwrap();
    lab.start_mesh(Device::TrellisWg).await.unwrap();
    lab.wait_mesh(3, Duration::from_secs(90)).unwrap();
    let (k1, k2) = (
        lab.wg_public_key(&n1).unwrap(),
        lab.wg_public_key(&n2).unwrap(),
    );
    let pod1 = lab.names().pod_netns(&n1, "p0");
    lab.add_pod(&n1, "p0", None).unwrap();
    let ip2 = result_address(&lab.add_pod(&n2, "p0", None).unwrap(), true).unwrap();
    let n1_netns = lab.node(&n1).unwrap().netns.clone();
    let ends = [(n1.as_str(), k2.as_str()), (n2.as_str(), k1.as_str())];
    let both = |lab: &Lab, ok: &dyn Fn(&trellis_api::status::PeerReport) -> bool| {
        ends.iter()
            .all(|(n, k)| peer_of(lab, n, k).is_some_and(|p| ok(&p)))
    };
    let direct = |p: &trellis_api::status::PeerReport| p.path == PathState::Direct;
    let relayed = |p: &trellis_api::status::PeerReport| p.path == PathState::Relayed;
    let limit = Duration::from_secs(120);
    poll("n1-n2 direct", FINE, limit, || both(&lab, &direct));

    // The reference: echoes unanswered from the agents' start, the break
    // is noticed by handshake age (the session's 180 s) alone.
    for n in [&n1, &n2] {
        drop_echoes(&lab, n, true);
    }
    restart_nodes(&mut lab, &[&n1, &n2]).await;
    poll("n1-n2 direct", FINE, limit, || both(&lab, &direct));
    std::thread::sleep(Duration::from_secs(5));
    nat::block(&n1_netns, r2.public_v4).unwrap();
    eprintln!("  reference: path broken, echoes dropped; waiting for handshake-age detection (up to ~3 min)");
    let handshake_age = poll(
        "relayed by handshake age",
        Duration::from_millis(200),
        Duration::from_secs(400),
        || both(&lab, &relayed),
    );
    eprintln!(
        "  reference: both ends relayed {:.0} ms after the break",
        ms(handshake_age)
    );
    nat::unblock(&n1_netns).unwrap();
    for n in [&n1, &n2] {
        drop_echoes(&lab, n, false);
    }
    restart_nodes(&mut lab, &[&n1, &n2]).await;
    poll("n1-n2 direct", FINE, limit, || both(&lab, &direct));

    let mut trials = Vec::new();
    for i in 0..TRIALS {
        std::thread::sleep(Duration::from_secs(5));
        // A broken path.
        let flow = ping_flow(&pod1, &ip2, 16);
        std::thread::sleep(Duration::from_secs(2));
        let cut = Instant::now();
        nat::block(&n1_netns, r2.public_v4).unwrap();
        let mut detect = None;
        let switch = poll("both ends relayed", FINE, limit, || {
            if detect.is_none()
                && ends
                    .iter()
                    .any(|(n, k)| peer_of(&lab, n, k).is_some_and(|p| p.silent_for_s.is_some()))
            {
                detect = Some(cut.elapsed());
            }
            both(&lab, &relayed)
        });
        let (sent, received) = flow.join().unwrap();
        let lost_break = sent - received;
        let relay = peer_of(&lab, &n1, &k2).and_then(|p| p.relay).unwrap();
        let other = if relay == n3 { n4.clone() } else { n3.clone() };
        // The relay drops off the network.
        std::thread::sleep(Duration::from_secs(3));
        let flow = ping_flow(&pod1, &ip2, 16);
        std::thread::sleep(Duration::from_secs(2));
        let relay_netns = lab.node(&relay).unwrap().netns.clone();
        nat::cut_off(&relay_netns).unwrap();
        let failover = poll("both ends on the other relay", FINE, limit, || {
            both(&lab, &|p| p.relay.as_deref() == Some(other.as_str()))
        });
        let (sent, received) = flow.join().unwrap();
        let lost_failover = sent - received;
        // Back: the relay returns, the rule goes.
        nat::reconnect(&relay_netns).unwrap();
        let restored = Instant::now();
        nat::unblock(&n1_netns).unwrap();
        poll("both ends direct", FINE, limit, || both(&lab, &direct));
        let t = Trial {
            detect: detect.unwrap_or(switch),
            switch,
            lost_break,
            failover,
            lost_failover,
            back: restored.elapsed(),
        };
        eprintln!(
            "  trial {}: break noticed {:>5.0} ms, both relayed {:>5.0} ms ({} pings lost); relay {relay} cut off: both via {other} {:>5.0} ms ({} lost); back direct {:>5.0} ms",
            i + 1,
            ms(t.detect),
            ms(t.switch),
            t.lost_break,
            ms(t.failover),
            t.lost_failover,
            ms(t.back)
        );
        trials.push(t);
    }
    trellis_e2e::down(LAB);
    let col = |f: fn(&Trial) -> Duration| trials.iter().map(f).collect::<Vec<_>>();
    let p = |f: fn(&Trial) -> Duration, q: f64| ms(percentile(&col(f), q));
    let reference = ms(handshake_age);
    let first_relay = p(|t| t.switch, 50.0);
    let line = |label: &str, f: fn(&Trial) -> Duration, base: f64, of: &str| {
        timing_row(label, &col(f), base, of)
    };
    let max_lost = |f: fn(&Trial) -> u32| trials.iter().map(f).max().unwrap_or(0);
    format!(
        "Four lab nodes: n1 and n2 each behind an endpoint-independent NAT router (they hole-punch a direct path), n3 and n4 public (either can relay). {TRIALS} trials, each during ping flows (50 ms apart) between pods on n1 and n2: a firewall rule at n1 drops everything to and from n2's router; then the relay the pair moved to is cut off the network (nothing in or out of its uplink; its processes go on); then the relay returns and the rule goes. Both ends' paths read from their agents' `/status` every 20 ms. The reference for the break is the same break noticed by handshake age alone — the agents' echoes dropped on both nodes since their start, so the agents judge the pair as they did before echoes — measured once; the reference for the failover is the first relay's setup (the break):\n\n| | p50 ms | max ms | p50 vs reference |\n|---|---|---|---|\n| break, handshake age alone (reference, once) | {reference:.0} | {reference:.0} | 1.00x |\n{}{}{}{}\nPings lost: at most {} per break ({:.1} s of traffic) and {} per relay failover ({:.1} s). An agent sends each kept-alive peer an echo a second; 5 s without an answer makes the path silent, acted on at the next path check (every 2 s): the target was 10 s to notice, 15 s to be on another path. By handshake age alone a break waits for the session to expire (180 s after its last handshake, renewed every 2 minutes while kept alive).\n",
        line("break: first end notices (status: silent)", |t| t.detect, reference, "of the reference"),
        line("break: both ends relayed", |t| t.switch, reference, "of the reference"),
        line("relay cut off: both ends on the other relay", |t| t.failover, first_relay, "of the first relay's setup"),
        line("relay back, rule gone: both ends direct", |t| t.back, first_relay, "of the first relay's setup"),
        max_lost(|t| t.lost_break),
        f64::from(max_lost(|t| t.lost_break)) / PINGS_PER_S,
        max_lost(|t| t.lost_failover),
        f64::from(max_lost(|t| t.lost_failover)) / PINGS_PER_S,
    )
}

const SITE_LAB: &str = "bsite";
const SITE_TRIALS: usize = 5;

/// Stops the mesh on nodes `a` and `b` (`keys` are their public keys),
/// starts it again and waits until both ends report `state` for each other;
/// the time from the start.
async fn fresh_start(
    lab: &mut Lab,
    [a, b]: [&str; 2],
    [ka, kb]: [&str; 2],
    state: PathState,
) -> Duration {
    for node in [a, b] {
        lab.stop_node(node).expect("stop the mesh on the node");
    }
    let start = Instant::now();
    for node in [a, b] {
        lab.start_node(node, Device::TrellisWg)
            .await
            .expect("start the mesh on the node");
    }
    let on = |lab: &Lab| {
        peer_of(lab, a, kb).is_some_and(|p| p.path == state)
            && peer_of(lab, b, ka).is_some_and(|p| p.path == state)
    };
    poll(
        &format!("{a} and {b} {state:?}"),
        FINE,
        Duration::from_secs(120),
        || on(lab),
    );
    start.elapsed()
}

struct SiteTrial {
    public: Duration,
    lan: Duration,
    apart: Duration,
    move_up: Duration,
    lost: u32,
}

async fn sites() -> String {
    eprintln!("paths (sites): n1, n2 public; n3, n4 a site behind a router that does not hairpin; n5, n6 a site behind one that does; {SITE_TRIALS} trials");
    trellis_e2e::down(SITE_LAB);
    let mut lab = Lab::up(LabOptions::new(SITE_LAB, 6)).await.expect("lab");
    let n: Vec<String> = (1..=6).map(|i| format!("{SITE_LAB}-n{i}")).collect();
    lab.put_site_behind_nat(&[&n[2], &n[3]], NatMode::EndpointIndependent)
        .await
        .unwrap();
    let hairpin = lab
        .put_site_behind_nat(&[&n[4], &n[5]], NatMode::Hairpin)
        .await
        .unwrap();
    let n5_lan = hairpin[0].private_v4;
    let n6_netns = lab.node(&n[5]).unwrap().netns.clone();
    lab.start_mesh(Device::TrellisWg).await.unwrap();
    lab.wait_mesh(5, Duration::from_secs(90)).unwrap();
    let k: Vec<String> = n.iter().map(|x| lab.wg_public_key(x).unwrap()).collect();
    let pod5 = lab.names().pod_netns(&n[4], "p0");
    lab.add_pod(&n[4], "p0", None).unwrap();
    let ip6 = result_address(&lab.add_pod(&n[5], "p0", None).unwrap(), true).unwrap();
    let pair = |a: usize, b: usize| {
        (
            [n[a].as_str(), n[b].as_str()],
            [k[a].as_str(), k[b].as_str()],
        )
    };

    let mut trials = Vec::new();
    for i in 0..SITE_TRIALS {
        let (nodes, keys) = pair(0, 1);
        let public = fresh_start(&mut lab, nodes, keys, PathState::Direct).await;
        let (nodes, keys) = pair(2, 3);
        let lan = fresh_start(&mut lab, nodes, keys, PathState::Lan).await;
        // Kept apart on their LAN, the hairpin site's pair works at its
        // public mappings; then the LAN opens during a flow.
        nat::block(&n6_netns, n5_lan).unwrap();
        let (nodes, keys) = pair(4, 5);
        let apart = fresh_start(&mut lab, nodes, keys, PathState::Direct).await;
        std::thread::sleep(Duration::from_secs(3));
        let flow = ping_flow(&pod5, &ip6, 12);
        std::thread::sleep(Duration::from_secs(2));
        let opened = Instant::now();
        nat::unblock(&n6_netns).unwrap();
        poll(
            "n5 and n6 on their LAN",
            FINE,
            Duration::from_secs(60),
            || {
                peer_of(&lab, &n[4], &k[5]).is_some_and(|p| p.path == PathState::Lan)
                    && peer_of(&lab, &n[5], &k[4]).is_some_and(|p| p.path == PathState::Lan)
            },
        );
        let move_up = opened.elapsed();
        let (sent, received) = flow.join().unwrap();
        let t = SiteTrial {
            public,
            lan,
            apart,
            move_up,
            lost: sent - received,
        };
        eprintln!(
            "  trial {}: public pair direct {:>5.0} ms; site pair on its LAN {:>5.0} ms; hairpin site pair apart: direct {:>5.0} ms, LAN opened: on it {:>5.0} ms ({} of {sent} pings lost)",
            i + 1,
            ms(t.public),
            ms(t.lan),
            ms(t.apart),
            ms(t.move_up),
            t.lost
        );
        trials.push(t);
    }
    trellis_e2e::down(SITE_LAB);
    let col = |f: fn(&SiteTrial) -> Duration| trials.iter().map(f).collect::<Vec<_>>();
    let p = |f: fn(&SiteTrial) -> Duration, q: f64| ms(percentile(&col(f), q));
    let reference = p(|t| t.public, 50.0);
    let line =
        |label: &str, f: fn(&SiteTrial) -> Duration| timing_row(label, &col(f), reference, "");
    format!(
        "Six lab nodes: n1 and n2 public; n3 and n4 a site, one private network behind a masquerading router that does not hairpin; n5 and n6 a site behind a router that does. No configuration says which nodes share a site. {SITE_TRIALS} trials, each: the mesh on a pair stopped (its agent and device killed) and started again, timed from the start until both ends' agents report the pair's path (`/status`, read every 20 ms). The reference is the two public nodes, which have one candidate each:\n\n| | p50 ms | max ms | p50 vs reference |\n|---|---|---|---|\n{}{}{}{}\nPings lost while the hairpin site's pair moves up (50 ms apart, over the same sessions): at most {}. The pair kept apart on its LAN tries its LAN candidates first, which are tried the way every candidate is: for 15 s (three of WireGuard's 5 s handshake retries) before the pair goes on to the next one, its public mappings; a working pair moves up within a path check or two of a better candidate answering.\n",
        line("two public nodes: both ends direct (reference)", |t| t.public),
        line("same-site pair (router without hairpin): both ends on the LAN", |t| t.lan),
        line("same-site pair kept apart on its LAN (rule at n6): both ends direct through the hairpinning router", |t| t.apart),
        line("that pair, the rule gone during a flow: both ends on the LAN (from the rule's removal)", |t| t.move_up),
        trials.iter().map(|t| t.lost).max().unwrap_or(0),
    )
}
