//! End-to-end: three sites of two nodes across two linked clusters, as
//! clusters spread over clouds and offices look. Cluster `lsa`: a1 public,
//! a2 and a3 one site behind an endpoint-independent NAT. Cluster `lsb`:
//! b1 and b2 one site behind an endpoint-independent NAT, b3 and b4 one
//! behind a symmetric NAT. No router hairpins, nothing is configured: the
//! agents find their site-mates from where the others see them. Once
//! `kubectl trellis cluster link` links the clusters, every pod answers
//! every pod: site-mates over their LAN (their routers see none of their
//! packets), the two endpoint-independent sites directly (hole punching
//! across both NATs and the clusters), the symmetric site through a1 (the
//! only node that can relay). `status` and `graph` show it. Root only.

use std::time::Duration;

use trellis_e2e::mesh::Device;
use trellis_e2e::plugin::{self, wait_until};
use trellis_e2e::pod::ping_flow;
use trellis_e2e::{nat, ping, Lab, LabOptions, NatMode};

const A: &str = "lsa";
const B: &str = "lsb";

/// How `node` (of `cluster`) names `peer` in its status: bare in its own
/// cluster, `CLUSTER:NODE` in the other.
fn seen_as(cluster: &str, peer: &str) -> String {
    if peer.starts_with(&format!("{cluster}-")) {
        peer.to_string()
    } else {
        let other = peer.split('-').next().unwrap();
        format!("{other}:{peer}")
    }
}

/// The PATH cell of `node`'s row for `peer` in its cluster's status.
fn path(statuses: &[(&str, String)], node: &str, peer: &str) -> String {
    let (cluster, table) = statuses
        .iter()
        .find(|(c, _)| node.starts_with(&format!("{c}-")))
        .unwrap();
    plugin::path_cell(&plugin::status_row(table, node, &seen_as(cluster, peer)))
}

/// Both clusters' status tables, for a failure's message.
fn tables_now(lab: &Lab) -> String {
    statuses(lab)
        .into_iter()
        .map(|(_, table)| table)
        .collect::<Vec<_>>()
        .join("\n")
}

fn statuses(lab: &Lab) -> Vec<(&'static str, String)> {
    [A, B]
        .into_iter()
        .map(|c| (c, plugin::lab_trellis(lab, &["status", "--context", c])))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn three_sites_across_two_linked_clusters_each_pair_on_its_best_path() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(A);
    let mut lab = Lab::up(LabOptions::new(A, 3)).await.expect("lab up");
    lab.add_cluster(B, 4, None).await.expect("cluster lsb");
    let [a1, a2, a3] = [1, 2, 3].map(|i| format!("{A}-n{i}"));
    let [b1, b2, b3, b4] = [1, 2, 3, 4].map(|i| format!("{B}-n{i}"));
    let site_a = lab
        .put_site_behind_nat(&[&a2, &a3], NatMode::EndpointIndependent)
        .await
        .expect("site a2, a3");
    let site_b = lab
        .put_site_behind_nat(&[&b1, &b2], NatMode::EndpointIndependent)
        .await
        .expect("site b1, b2");
    let site_s = lab
        .put_site_behind_nat(&[&b3, &b4], NatMode::Symmetric)
        .await
        .expect("site b3, b4 (symmetric)");
    lab.start_mesh(Device::TrellisWg).await.expect("mesh");
    lab.wait_clusters_meshed(Duration::from_secs(90))
        .expect("each cluster meshed, CNI configurations written");
    let pods = lab.one_pod_per_node().expect("a pod on every node");
    plugin::lab_trellis(&lab, &["cluster", "link", "--from", A, "--to", B, "--wait"]);
    let took = ping::wait_all_pairs(&pods, Duration::from_secs(180));
    eprintln!(
        "every pod pair of 7 nodes in 3 sites and 2 clusters answered {took:?} after the link"
    );

    // Every pair on the path its NATs allow, both ends agreeing.
    let mates = [(&a2, &a3), (&b1, &b2), (&b3, &b4)];
    let punched: Vec<_> = [&a2, &a3]
        .into_iter()
        .flat_map(|a| [(a, &b1), (a, &b2)])
        .collect();
    let through_a1: Vec<_> = [&b3, &b4]
        .into_iter()
        .flat_map(|s| [(s, &a2), (s, &a3), (s, &b1), (s, &b2)])
        .collect();
    let settled = wait_until(
        "site-mates lan, the endpoint-independent sites direct, the symmetric site relayed",
        Duration::from_secs(120),
        || {
            let t = statuses(&lab);
            let both = |x: &str, y: &str, want: &str| {
                path(&t, x, y).starts_with(want) && path(&t, y, x).starts_with(want)
            };
            mates.iter().all(|(x, y)| both(x, y, "lan"))
                && punched.iter().all(|(x, y)| both(x, y, "direct"))
                && through_a1.iter().all(|(x, y)| both(x, y, "relayed via"))
        },
    );
    let t = statuses(&lab);
    // The tables go into the failures that need them, not before them: a
    // failure's first line is what a trimmed log keeps.
    let tables = tables_now(&lab);
    eprintln!("every pair on its path {settled:?} later");
    for (s, other) in &through_a1 {
        for (x, y) in [(s, other), (other, s)] {
            let (cluster, table) = t.iter().find(|(c, _)| x.starts_with(c)).unwrap();
            let row = plugin::status_row(table, x, &seen_as(cluster, y));
            assert!(
                row.contains(&format!("relayed via {}", seen_as(cluster, &a1))),
                "{x} -> {y} through a1: {row}\n{tables}"
            );
        }
    }
    for n in [&a2, &a3, &b1, &b2, &b3, &b4] {
        assert_eq!(path(&t, &a1, n), "direct", "a1 -> {n}\n{tables}");
    }
    // Each site-mate reaches the other at its LAN address.
    for (site, [x, y]) in [
        (&site_a, [&a2, &a3]),
        (&site_b, [&b1, &b2]),
        (&site_s, [&b3, &b4]),
    ] {
        let key = lab.wg_public_key(y).unwrap();
        let seen = lab
            .wg_dump(x)
            .unwrap()
            .into_iter()
            .find(|p| p.public_key == key)
            .unwrap();
        assert_eq!(
            seen.endpoint,
            format!("{}:51820", site[1].private_v4),
            "{x} -> {y}"
        );
    }

    // graph groups the nodes by site, its own cluster's and the other's.
    let dot = plugin::lab_trellis(&lab, &["graph", "--context", A]);
    for site in [&site_a, &site_b, &site_s] {
        assert!(
            dot.contains(&format!("label=\"site {}\"", site[0].public_v4)),
            "site {} in\n{dot}",
            site[0].public_v4
        );
    }

    // Flows within each site and across: every ping answered, and no
    // packet of a site pair reaches its router.
    let pod = |node: &str| pods.iter().find(|p| p.node == node).unwrap();
    let routers = [&site_a, &site_b, &site_s].map(|s| s[0].netns.clone());
    let before: Vec<u64> = routers
        .iter()
        .map(|r| nat::hairpin_packets(r).unwrap())
        .collect();
    let flows: Vec<_> = [(&a2, &a3), (&b1, &b2), (&b3, &b4), (&a3, &b2), (&b4, &a2)]
        .into_iter()
        .map(|(x, y)| ((x, y), ping_flow(&pod(x).netns, &pod(y).v4, 10)))
        .collect();
    for ((x, y), flow) in flows {
        let (sent, received) = flow.join().unwrap();
        eprintln!("{x} -> {y}: {received} of {sent} pings answered");
        assert!(
            sent > 100 && received == sent,
            "{x} -> {y}: {received} of {sent} answered; now:\n{}",
            tables_now(&lab)
        );
    }
    let after: Vec<u64> = routers
        .iter()
        .map(|r| nat::hairpin_packets(r).unwrap())
        .collect();
    assert_eq!(
        before,
        after,
        "no site pair's packet reached its router; now:\n{}",
        tables_now(&lab)
    );
    let failures = ping::all_pairs(&pods);
    assert!(
        failures.is_empty(),
        "{failures:?}; now:\n{}",
        tables_now(&lab)
    );
    trellis_e2e::down(A);
}
