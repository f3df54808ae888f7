//! End-to-end: two linked lab clusters across NATs. Cluster `nata` has a
//! public node (a1) and one behind an endpoint-independent NAT (a2);
//! cluster `natb` has a pair behind symmetric NATs (b1, b2) and one behind
//! an endpoint-independent NAT (b3), whose router also blocks a2 at first.
//! Linked with `kubectl trellis cluster link`, every pod pings every pod:
//! a2–b3 directly once the block goes, even after 130 s (hole punching
//! through both NATs), the symmetric pair and every pair with a symmetric
//! node through a1 (relay), and `status` says which is which. A machine added with
//! `peer add --endpoint` reaches pods of both clusters; annotations set with
//! kubectl (force-endpoint, persistent-keepalive, relay) take effect
//! without a restart; unlinking removes the remote peers. Root only.

use std::time::{Duration, Instant};

use trellis_e2e::mesh::Device;
use trellis_e2e::plugin::{self, wait_until};
use trellis_e2e::pod::{ping_flow, ping_from};
use trellis_e2e::{ping, Lab, LabOptions, NatMode};

const A: &str = "nata";
const B: &str = "natb";

/// `kubectl annotate node NODE CHANGE` in cluster `cluster`, as a user.
fn annotate(lab: &Lab, cluster: &str, node: &str, change: &str) {
    let args = ["--context", cluster, "annotate", "node", node, change];
    plugin::kubectl(&lab.all_kubeconfigs(), &args)
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
}

fn keepalive_of(lab: &Lab, node: &str, peer_key: &str) -> Option<u16> {
    lab.wg_dump(node)
        .unwrap()
        .into_iter()
        .find(|p| p.public_key == peer_key)
        .and_then(|p| p.persistent_keepalive)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn nat_traversal_hole_punching_and_relays_across_linked_clusters() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(A);
    let mut lab = Lab::up(LabOptions::new(A, 2)).await.expect("lab up");
    lab.add_cluster(B, 3, None).await.expect("cluster natb");
    let (a1, a2) = (format!("{A}-n1"), format!("{A}-n2"));
    let (b1, b2, b3) = (format!("{B}-n1"), format!("{B}-n2"), format!("{B}-n3"));
    let ra2 = lab
        .put_behind_nat(&a2, NatMode::EndpointIndependent)
        .await
        .unwrap();
    lab.put_behind_nat(&b1, NatMode::Symmetric).await.unwrap();
    lab.put_behind_nat(&b2, NatMode::Symmetric).await.unwrap();
    let rb3 = lab
        .put_behind_nat(&b3, NatMode::EndpointIndependent)
        .await
        .unwrap();
    // b3's router drops a2 for now: that pair starts relayed.
    trellis_e2e::nat::block(&rb3.netns, ra2.public_v4).expect("block");
    let blocked_at = Instant::now();
    lab.start_mesh(Device::TrellisWg).await.expect("mesh");
    lab.wait_clusters_meshed(Duration::from_secs(90))
        .expect("each cluster meshed, CNI configurations written");
    let pods = lab.one_pod_per_node().expect("a pod on every node");

    let start = Instant::now();
    plugin::lab_trellis(&lab, &["cluster", "link", "--from", A, "--to", B, "--wait"]);
    ping::wait_all_pairs(&pods, Duration::from_secs(120));
    eprintln!(
        "every pod pair of 5 nodes (4 behind NAT) answered {:?} after the link command",
        start.elapsed()
    );

    // Who goes how: a1 directly with everyone; the symmetric nodes (and
    // the blocked pair) through a1, the only node reaching both ends.
    let a_status = plugin::lab_trellis(&lab, &["status", "--context", A]);
    let b_status = plugin::lab_trellis(&lab, &["status", "--context", B]);
    eprintln!("{a_status}\n{b_status}");
    for peer in [&b1, &b2, &b3] {
        assert!(plugin::status_row(&a_status, &a1, &format!("{B}:{peer}")).contains("direct"));
    }
    for peer in [&b1, &b2, &b3] {
        let r = plugin::status_row(&a_status, &a2, &format!("{B}:{peer}"));
        assert!(r.contains(&format!("relayed via {a1}")), "{r}");
    }
    let r = plugin::status_row(&b_status, &b1, &b2);
    assert!(r.contains(&format!("relayed via {A}:{a1}")), "{r}");
    let r = plugin::status_row(&a_status, &a2, "(this node)");
    assert!(
        r.contains("behind NAT") && r.contains(&format!("{}:51820", ra2.public_v4)),
        "a2 learnt its public endpoint: {r}"
    );

    // The block goes: a2 and b3 punch through both NATs and leave the
    // relay, with a short gap in a flow between their pods.
    // Longer than WireGuard's 90 s of handshake retries (userspace
    // WireGuard then stops trying by itself; the agent's probes go on).
    let long = Duration::from_secs(130);
    std::thread::sleep(long.saturating_sub(blocked_at.elapsed()));
    let pod_a2 = pods.iter().find(|p| p.node == a2).unwrap();
    let pod_b3 = pods.iter().find(|p| p.node == b3).unwrap();
    let flow = ping_flow(&pod_a2.netns, &pod_b3.v4, 25);
    std::thread::sleep(Duration::from_secs(3));
    let unblocked = Instant::now();
    trellis_e2e::nat::unblock(&rb3.netns).expect("unblock");
    let switched = wait_until("a2 and b3 go direct", Duration::from_secs(40), || {
        let a = plugin::lab_trellis(&lab, &["status", "--context", A]);
        let b = plugin::lab_trellis(&lab, &["status", "--context", B]);
        plugin::status_row(&a, &a2, &format!("{B}:{b3}")).contains("direct")
            && plugin::status_row(&b, &b3, &format!("{A}:{a2}")).contains("direct")
    });
    let (sent, received) = flow.join().unwrap();
    eprintln!(
        "relay -> direct: both ends direct {switched:?} after a {:?} block went; flow lost {} of {sent} pings (50 ms apart)",
        unblocked.duration_since(blocked_at),
        sent - received
    );
    assert!(sent > 300, "the flow ran: {sent}");
    assert!(
        (sent - received) * 50 <= 6_000,
        "more than 6 s of pings lost while switching: {} of {sent}",
        sent - received
    );
    let b3_key = lab.wg_public_key(&b3).unwrap();
    let seen = lab
        .wg_dump(&a2)
        .unwrap()
        .into_iter()
        .find(|p| p.public_key == b3_key)
        .unwrap();
    assert_eq!(
        seen.endpoint,
        format!("{}:51820", rb3.public_v4),
        "a2 reaches b3 at its NAT's public mapping"
    );
    assert!(
        seen.latest_handshake > 0 && seen.allowed_ips.len() == 2,
        "{seen:?}"
    );

    // A machine on the underlay, dialled by the nodes at its endpoint.
    let machine = lab.add_machine("laptop").expect("machine");
    let endpoint = format!("{}:51820", machine.v4.unwrap());
    let config = plugin::lab_trellis(
        &lab,
        &[
            "peer",
            "add",
            "laptop",
            "--context",
            A,
            "--allowed-ips",
            "10.99.0.2/32,fd99::2/128",
            "--endpoint",
            &endpoint,
            "--generate",
            "--wait",
        ],
    );
    assert_eq!(config.matches("[Peer]").count(), 5, "{config}");
    assert!(config.contains("ListenPort = 51820"), "{config}");
    lab.machine_wg_quick_up("laptop", &config)
        .expect("wg-quick up");
    wait_until(
        "the machine reaches every pod",
        Duration::from_secs(60),
        || {
            pods.iter().all(|p| {
                ping_from(&machine.netns, &p.v4).is_ok() && ping_from(&machine.netns, &p.v6).is_ok()
            })
        },
    );

    // Annotations take effect live.
    let a1_key = lab.wg_public_key(&a1).unwrap();
    annotate(&lab, A, &a1, "trellis.dev/persistent-keepalive=7");
    wait_until(
        "a1's keepalive is 7 on a2 and b1",
        Duration::from_secs(20),
        || {
            keepalive_of(&lab, &a2, &a1_key) == Some(7)
                && keepalive_of(&lab, &b1, &a1_key) == Some(7)
        },
    );
    let b2_key = lab.wg_public_key(&b2).unwrap();
    assert_eq!(
        keepalive_of(&lab, &a1, &b2_key),
        Some(7),
        "a1 keeps every pair alive at 7 s"
    );
    annotate(&lab, A, &a1, "trellis.dev/persistent-keepalive-");
    wait_until("back to the NAT keepalive", Duration::from_secs(20), || {
        keepalive_of(&lab, &a2, &a1_key) == Some(25)
    });
    annotate(
        &lab,
        A,
        &a1,
        "trellis.dev/force-endpoint=198.51.100.250:51820",
    );
    wait_until(
        "the forced endpoint is configured",
        Duration::from_secs(20),
        || {
            let t = plugin::lab_trellis(&lab, &["status", "--context", B]);
            plugin::status_row(&t, &b3, &format!("{A}:{a1}")).contains("198.51.100.250:51820")
        },
    );
    annotate(&lab, A, &a1, "trellis.dev/force-endpoint-");
    wait_until(
        "the published endpoint again",
        Duration::from_secs(20),
        || {
            let t = plugin::lab_trellis(&lab, &["status", "--context", B]);
            !plugin::status_row(&t, &b3, &format!("{A}:{a1}")).contains("198.51.100.250")
        },
    );
    annotate(&lab, A, &a1, "trellis.dev/relay=true");
    // The wrong endpoint cost a1's sessions (a userspace device re-creates a
    // changed peer; the other end finds out at its next handshake): they
    // come back on their own.
    let again = ping::wait_all_pairs(&pods, Duration::from_secs(90));
    eprintln!("every pod pair answers again {again:?} after the forced endpoint went");
    let t = plugin::lab_trellis(&lab, &["status", "--context", B]);
    assert!(
        plugin::status_row(&t, &b1, &b2).contains(&format!("relayed via {A}:{a1}")),
        "{t}"
    );

    // Unlink: the remote peers go on both sides.
    plugin::lab_trellis(&lab, &["cluster", "unlink", "--from", A, "--to", B]);
    // a-nodes keep each other and the machine, b-nodes each other.
    for node in [&a1, &a2, &b1, &b2, &b3] {
        wait_until("remote peers leave", Duration::from_secs(30), || {
            lab.wg_peers(node).map(|p| p.len()).unwrap_or(0) == 2
        });
    }
    trellis_e2e::down(A);
}
