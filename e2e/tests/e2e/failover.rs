//! End-to-end: paths that break after they worked, noticed from traffic.
//! n1 and n2 sit behind endpoint-independent NATs of their own and
//! hole-punch a direct path; n3 and n4 are public, so either can relay.
//! While a flow runs between pods on n1 and n2:
//!
//! 1. a firewall rule cuts n1 off from n2 — the pair's session stays live by
//!    its handshake for minutes, but its echoes go unanswered: both ends
//!    move the pair to a relay;
//! 2. that relay node drops off the network — its sessions, too, look live:
//!    the pair moves to the other relay;
//! 3. the relay comes back and the rule goes — the pair is direct again.
//!
//! Each step prints how long the switch took and how many pings the flow
//! lost (20 a second). Every pod pair answers at the end. Root only.

use std::time::{Duration, Instant};

use trellis_e2e::mesh::Device;
use trellis_e2e::plugin::{self, wait_until};
use trellis_e2e::pod::ping_flow;
use trellis_e2e::{nat, ping, Lab, LabOptions, NatMode};

const F: &str = "fail";

/// How long the switch may take on a slow, loaded machine (the targets:
/// 10 s to notice, 15 s to be on another path; the figures are printed).
const SWITCH_LIMIT: Duration = Duration::from_secs(60);

/// The relay both agents of the pair (`a`, key `ka`; `b`, key `kb`) name
/// in their `/status`, once they name the same one. Read from the agents
/// themselves: `kubectl trellis status` waits for every agent, and an agent
/// cut off the network makes it wait seconds.
fn common_relay(lab: &Lab, (a, ka): (&str, &str), (b, kb): (&str, &str)) -> Option<String> {
    let via = |node: &str, key: &str| {
        let report = lab.agent_status(node).ok()?;
        report
            .peers
            .into_iter()
            .find(|p| p.public_key == key)?
            .relay
    };
    let (x, y) = (via(a, kb)?, via(b, ka)?);
    (x == y).then_some(x)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn a_broken_path_and_a_stopped_relay_are_left_within_seconds_and_the_pair_comes_back() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(F);
    let mut lab = Lab::up(LabOptions::new(F, 4)).await.expect("lab up");
    let [n1, n2, n3, n4] = [1, 2, 3, 4].map(|i| format!("{F}-n{i}"));
    lab.put_behind_nat(&n1, NatMode::EndpointIndependent)
        .await
        .expect("n1 behind a NAT");
    let r2 = lab
        .put_behind_nat(&n2, NatMode::EndpointIndependent)
        .await
        .expect("n2 behind a NAT");
    lab.start_mesh(Device::TrellisWg).await.expect("mesh");
    lab.wait_mesh(3, Duration::from_secs(90)).expect("mesh up");
    let pods = lab.one_pod_per_node().expect("a pod on every node");
    ping::wait_all_pairs(&pods, Duration::from_secs(120));
    wait_until("n1 and n2 direct", Duration::from_secs(120), || {
        let t = plugin::lab_status(&lab, F);
        plugin::path_cell(&plugin::status_row(&t, &n1, &n2)) == "direct"
            && plugin::path_cell(&plugin::status_row(&t, &n2, &n1)) == "direct"
    });
    let pod = |node: &str| pods.iter().find(|p| p.node == node).unwrap();
    let (from, to) = (pod(&n1).netns.clone(), pod(&n2).v4.clone());
    let n1_netns = lab.node(&n1).unwrap().netns.clone();
    let (k1, k2) = (
        lab.wg_public_key(&n1).unwrap(),
        lab.wg_public_key(&n2).unwrap(),
    );

    // 1. A firewall rule between the two sites.
    let flow = ping_flow(&from, &to, 40);
    std::thread::sleep(Duration::from_secs(3));
    nat::block(&n1_netns, r2.public_v4).expect("block n2's site at n1");
    let mut relay = None;
    let switched = wait_until("n1-n2 relayed, both ends", SWITCH_LIMIT, || {
        relay = common_relay(&lab, (&n1, &k1), (&n2, &k2));
        relay.is_some()
    });
    let relay = relay.unwrap();
    let t = plugin::lab_status(&lab, F);
    eprintln!("{t}");
    let row = plugin::status_row(&t, &n1, &n2);
    assert!(
        row.contains("the direct path has answered no echo for"),
        "why: {row}"
    );
    eprintln!("path broken by a firewall rule: relayed via {relay} {switched:?} after the rule");

    // 2. The relay drops off the network (the rule stays).
    std::thread::sleep(Duration::from_secs(5));
    let relay_netns = lab.node(&relay).unwrap().netns.clone();
    let gone = Instant::now();
    nat::cut_off(&relay_netns).expect("the relay off the network");
    let other = if relay == n3 { &n4 } else { &n3 };
    wait_until(
        &format!("n1-n2 relayed via {other}, both ends"),
        SWITCH_LIMIT,
        || common_relay(&lab, (&n1, &k1), (&n2, &k2)).as_deref() == Some(other.as_str()),
    );
    let failover = gone.elapsed();
    let (sent, received) = flow.join().unwrap();
    eprintln!(
        "relay {relay} stopped: relayed via {other} {failover:?} later; the flow over both events lost {} of {sent} pings (~{:.1} s)",
        sent - received,
        f64::from(sent - received) / 20.0
    );
    assert!(received > 0 && sent > 500, "{received} of {sent}");

    // 3. The relay comes back, the rule goes: direct again.
    let flow = ping_flow(&from, &to, 20);
    std::thread::sleep(Duration::from_secs(2));
    nat::reconnect(&relay_netns).expect("the relay back");
    nat::unblock(&n1_netns).expect("the rule gone");
    let restored = Instant::now();
    wait_until("n1 and n2 direct again", SWITCH_LIMIT, || {
        let t = plugin::lab_status(&lab, F);
        plugin::path_cell(&plugin::status_row(&t, &n1, &n2)) == "direct"
            && plugin::path_cell(&plugin::status_row(&t, &n2, &n1)) == "direct"
    });
    eprintln!("rule gone: direct again {:?} later", restored.elapsed());
    let (sent, received) = flow.join().unwrap();
    eprintln!(
        "the flow while coming back lost {} of {sent} pings",
        sent - received
    );
    assert!(received > 0, "{received} of {sent}");
    let failures = ping::all_pairs(&pods);
    assert!(failures.is_empty(), "{failures:?}");
    trellis_e2e::down(F);
}
