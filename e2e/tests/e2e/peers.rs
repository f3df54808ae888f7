//! End-to-end: machines outside the cluster, driven with `kubectl trellis`
//! (the plugin found on PATH by the real kubectl). A machine added with
//! `peer add` and brought up with wg-quick and the printed configuration
//! reaches every pod and is reached from every pod, one WireGuard hop per
//! node; a Peer the nodes would refuse is not created, one made with
//! kubectl directly is refused by every node with a condition saying why
//! while the rest keeps working; `peer rm` removes it everywhere. Root only.

use std::time::{Duration, Instant};

use kube::api::Api;
use trellis_api::Peer;
use trellis_e2e::mesh::Device;
use trellis_e2e::plugin::{self, wait_until};
use trellis_e2e::pod::ping_from;
use trellis_e2e::{Lab, LabOptions};

const LAB: &str = "peers";

/// `kubectl trellis ARGS` against the lab's first cluster.
fn kubectl_trellis(lab: &Lab, args: &[&str]) -> Result<(String, String), String> {
    let cluster = lab.state.clusters[0].name.clone();
    let kubeconfig = lab.kubeconfig(&cluster).unwrap();
    plugin::kubectl_trellis(&kubeconfig.display().to_string(), args)
}

fn peer_keys_on(lab: &Lab, node: &str) -> Vec<String> {
    lab.wg_dump(node)
        .unwrap()
        .into_iter()
        .map(|p| p.public_key)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn an_external_machine_reaches_every_pod_with_the_printed_config() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(LAB);
    let mut lab = Lab::up(LabOptions::new(LAB, 3)).await.expect("lab up");
    lab.start_mesh(Device::TrellisWg)
        .await
        .expect("mesh started");
    lab.wait_mesh(2, Duration::from_secs(60)).expect("mesh up");
    let pods = lab.one_pod_per_node().expect("a pod on every node");
    let nodes: Vec<String> = pods.iter().map(|p| p.node.clone()).collect();
    let machine = lab.add_machine("laptop").expect("machine");

    // A Peer the nodes would refuse is not created.
    let err = kubectl_trellis(
        &lab,
        &[
            "peer",
            "add",
            "thief",
            "--allowed-ips",
            "10.244.1.0/25",
            "--generate",
        ],
    )
    .expect_err("an overlapping Peer is refused");
    assert!(
        err.contains("would refuse Peer thief") && err.contains("overlaps"),
        "{err}"
    );
    // Nor one claiming what this cluster never declared for external peers.
    for (range, why) in [
        ("0.0.0.0/1", "is never routed into the mesh"),
        (
            "8.8.8.0/24",
            "lies outside the external-peer ranges this cluster declares",
        ),
    ] {
        let err = kubectl_trellis(
            &lab,
            &["peer", "add", "wide", "--allowed-ips", range, "--generate"],
        )
        .expect_err("an undeclared range is refused");
        assert!(err.contains(range) && err.contains(why), "{range}: {err}");
    }

    let (config, stderr) = kubectl_trellis(
        &lab,
        &[
            "peer",
            "add",
            "laptop",
            "--allowed-ips",
            "10.99.0.2/32,fd99::2/128",
            "--generate",
            "--wait",
        ],
    )
    .expect("peer add");
    assert!(stderr.contains("configured on 3 nodes"), "{stderr}");
    assert!(
        config.contains("PrivateKey = ") && !config.contains("<the private key"),
        "{config}"
    );
    assert_eq!(config.matches("[Peer]").count(), 3, "{config}");
    let public_key = lab
        .client(&lab.state.clusters[0].name.clone())
        .await
        .map(Api::<Peer>::all)
        .unwrap()
        .get("laptop")
        .await
        .unwrap()
        .spec
        .public_key;
    for node in &nodes {
        assert!(
            peer_keys_on(&lab, node).contains(&public_key),
            "{node} has the peer"
        );
    }

    lab.machine_wg_quick_up("laptop", &config)
        .expect("wg-quick up with the printed config");
    let mut failures = Vec::new();
    for pod in &pods {
        for target in [&pod.v4, &pod.v6] {
            if ping_from(&machine.netns, target).is_err() {
                failures.push(format!("laptop -> {} ({target})", pod.node));
            }
        }
        for target in ["10.99.0.2", "fd99::2"] {
            if ping_from(&pod.netns, target).is_err() {
                failures.push(format!("{} -> laptop ({target})", pod.node));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    // One hop per node: the machine has a handshake with every node.
    let dump = lab
        .machine_exec("laptop", "wg", &["show", "tw0", "latest-handshakes"])
        .unwrap();
    let handshakes: Vec<u64> = dump
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(handshakes.len(), 3, "{dump}");
    assert!(handshakes.iter().all(|t| *t > 0), "{dump}");

    // status and graph: every agent's report through the node proxy.
    let wait_direct = wait_until(
        "every node reports the machine direct",
        Duration::from_secs(30),
        || {
            let (table, _) = kubectl_trellis(&lab, &["status"]).expect("status");
            table
                .lines()
                .filter(|l| l.contains("peer/laptop") && l.contains("direct"))
                .count()
                == nodes.len()
        },
    );
    let (table, _) = kubectl_trellis(&lab, &["status"]).unwrap();
    eprintln!("{table}(all direct after {wait_direct:?})");
    assert!(table.starts_with("NODE"), "{table}");
    for node in &nodes {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(node.as_str()) && l.contains("peer/laptop")),
            "{table}"
        );
        assert!(!table.contains("unreachable"), "{table}");
    }
    let (svg, _) = kubectl_trellis(&lab, &["graph", "--format", "svg"]).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("peer/laptop"),
        "{svg}"
    );
    assert_eq!(
        svg.matches("<g class=\"vertex\">").count(),
        nodes.len() + 1,
        "{svg}"
    );
    let (dot, _) = kubectl_trellis(&lab, &["graph"]).unwrap();
    for node in &nodes {
        // Edges are written with their ends in name order.
        let (a, b) = if node.as_str() < "peer/laptop" {
            (node.as_str(), "peer/laptop")
        } else {
            ("peer/laptop", node.as_str())
        };
        assert!(
            dot.contains(&format!("\"{a}\" -- \"{b}\" [style=solid")),
            "{dot}"
        );
    }

    let (showconf, _) = kubectl_trellis(&lab, &["showconf", "node", &nodes[0]]).unwrap();
    assert!(
        showconf.contains("# peer/laptop\n") && showconf.contains(&public_key),
        "{showconf}"
    );

    // Bad Peers made with kubectl directly: every node refuses each and
    // says why on the Peer, routes nothing to it; the machine keeps working.
    let client = lab
        .client(&lab.state.clusters[0].name.clone())
        .await
        .unwrap();
    let peers: Api<Peer> = Api::all(client);
    for (name, range, reason, why) in [
        (
            "overlap",
            "10.99.0.0/24",
            "PeerOverlappingAllowedIPs",
            "peer/laptop",
        ),
        (
            "half-the-internet",
            "0.0.0.0/1",
            "PeerUndeclaredRange",
            "0.0.0.0/1",
        ),
    ] {
        let (_, other_key) = kubectl_trellis::keys::generate();
        let bad = Peer::new(
            name,
            trellis_api::PeerSpec {
                public_key: other_key,
                allowed_ips: vec![range.into()],
                ..Default::default()
            },
        );
        peers.create(&Default::default(), &bad).await.unwrap();
        let start = Instant::now();
        loop {
            let got = peers.get(name).await.unwrap();
            let refused: Vec<_> = nodes
                .iter()
                .filter_map(|n| got.condition("Configured", n))
                .filter(|c| c.status == "False")
                .collect();
            if refused.len() == nodes.len() {
                let c = refused[0];
                assert_eq!(c.reason.as_deref(), Some(reason), "{name}");
                assert!(c.message.as_deref().unwrap().contains(why), "{c:?}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name}: conditions: {:?}",
                got.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for node in &nodes {
            let routes = lab.mesh_routes(node).unwrap();
            assert!(
                !routes.iter().any(|r| r.starts_with(range)),
                "{node} routes {range}: {routes:?}"
            );
        }
        for pod in &pods {
            ping_from(&machine.netns, &pod.v4).expect("the machine still reaches every pod");
        }
        let (table, _) = kubectl_trellis(&lab, &["peer", "rm", name]).unwrap();
        assert!(table.is_empty());
    }

    // peer rm: gone from every node.
    kubectl_trellis(&lab, &["peer", "rm", "laptop"]).expect("peer rm");
    let took = wait_until(
        "the peer leaves every node",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| !peer_keys_on(&lab, n).contains(&public_key))
        },
    );
    eprintln!("peer rm reached every node in {took:?}");
    assert!(
        ping_from(&machine.netns, &pods[0].v4).is_err(),
        "a removed peer still reaches pods"
    );
    let err = kubectl_trellis(&lab, &["peer", "rm", "laptop"]).unwrap_err();
    assert!(err.contains("there is no Peer laptop"), "{err}");
    trellis_e2e::down(LAB);
}
