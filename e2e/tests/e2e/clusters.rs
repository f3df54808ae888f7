//! End-to-end: linked clusters, with `kubectl trellis cluster link` (the
//! plugin found on PATH by the real kubectl) between lab clusters with
//! separate apiservers. Linked, every pod of one cluster pings every pod of
//! the other over direct tunnels and `status` says so; a cluster whose pod
//! CIDRs overlap is refused by the plugin before anything is created, and
//! by every agent (Event on the Secret, `status`) when linked by hand,
//! while everything else keeps working; a machine added with `peer add`
//! reaches pods of both clusters; the link's short-lived token is renewed
//! by the agents without a break; unlinking removes the remote peers and
//! everything the link created, and revokes the tokens. Root only.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use trellis_api::token::TokenClaims;
use trellis_e2e::mesh::Device;
use trellis_e2e::plugin::{self, wait_until};
use trellis_e2e::pod::{ping_from, NodePod};
use trellis_e2e::{ping, Lab, LabOptions};

const LAB: &str = "links";
const FAR: &str = "far";
const CLASH: &str = "clash";
const LINKS_NS: &str = "trellis-links";

/// `kubectl trellis ARGS` with every lab cluster's kubeconfig merged
/// (contexts named after the clusters).
fn kubectl_trellis(lab: &Lab, args: &[&str]) -> Result<(String, String), String> {
    plugin::kubectl_trellis(&lab.all_kubeconfigs(), args)
}

fn nodes_of(lab: &Lab, cluster: &str) -> Vec<String> {
    lab.state
        .nodes_of(cluster)
        .map(|n| n.name.clone())
        .collect()
}

fn peer_count(lab: &Lab, node: &str) -> usize {
    lab.wg_peers(node).map(|p| p.len()).unwrap_or(0)
}

/// Every pair of pods across `a` and `b`, both ways, v4 and v6: failures.
fn cross_pings(pods: &[NodePod], a: &str, b: &str) -> Vec<String> {
    let in_either = |p: &NodePod| p.cluster == a || p.cluster == b;
    ping::failures(pods, |from, to| {
        in_either(from) && in_either(to) && from.cluster != to.cluster
    })
}

/// The kubeconfig and token of the link Secret in cluster `LAB` for
/// `cluster`, read with kubectl.
fn link_token(lab: &Lab, cluster: &str) -> (String, String) {
    use base64::Engine as _;
    let (out, _) = plugin::kubectl(
        &lab.all_kubeconfigs(),
        &[
            "--context",
            LAB,
            "-n",
            LINKS_NS,
            "get",
            "secret",
            &format!("trellis-remote-{cluster}"),
            "-o",
            "jsonpath={.data.kubeconfig}",
        ],
    )
    .expect("the link Secret");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(out.trim())
        .expect("base64");
    let kubeconfig = String::from_utf8(bytes).unwrap();
    let token = trellis_api::kubeconfig::token_of(&kubeconfig).unwrap();
    (kubeconfig, token)
}

/// `kubectl get nodes` with the kubeconfig `text`: stderr when it fails.
fn read_nodes_with(text: &str) -> Result<String, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    plugin::kubectl(file.path().to_str().unwrap(), &["get", "nodes"]).map(|(out, _)| out)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn linked_clusters_mesh_directly_refuse_overlaps_and_unlink() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(LAB);
    let mut lab = Lab::up(LabOptions::new(LAB, 2)).await.expect("lab up");
    lab.add_cluster(FAR, 2, None).await.expect("cluster far");
    // Same pod CIDRs as the first cluster: it may never be linked to it.
    let clash_cidrs = lab.state.clusters[0].cluster_cidrs.clone();
    lab.add_cluster(CLASH, 1, Some(clash_cidrs))
        .await
        .expect("cluster clash");
    lab.start_mesh(Device::TrellisWg)
        .await
        .expect("mesh started");
    // Each cluster meshes alone, every agent with its CNI configuration
    // written (clash-n1 has no peer: a peer count says nothing there).
    lab.wait_clusters_meshed(Duration::from_secs(60))
        .expect("each cluster meshes alone");
    let pods = lab.one_pod_per_node().expect("a pod on every node");
    assert!(!cross_pings(&pods, LAB, FAR).is_empty(), "not linked yet");

    // Link: every node of each cluster gets every node of the other.
    let start = Instant::now();
    let (_, stderr) = kubectl_trellis(
        &lab,
        &[
            "cluster",
            "link",
            "--from",
            LAB,
            "--to",
            FAR,
            "--wait",
            "--token-lifetime",
            "10m",
        ],
    )
    .expect("cluster link");
    let linked_in = start.elapsed();
    assert!(
        stderr.contains("has the other's nodes as peers"),
        "{stderr}"
    );
    for node in nodes_of(&lab, LAB).iter().chain(&nodes_of(&lab, FAR)) {
        assert_eq!(peer_count(&lab, node), 3, "{node}: 1 own + 2 remote peers");
    }
    let failures = cross_pings(&pods, LAB, FAR);
    assert!(failures.is_empty(), "{failures:?}");
    let reachable_in = start.elapsed();
    eprintln!(
        "linked in {linked_in:?}; every cross-cluster pod pair answered after {reachable_in:?}"
    );
    let (table, _) = kubectl_trellis(&lab, &["status", "--context", LAB]).unwrap();
    eprintln!("{table}");
    for node in nodes_of(&lab, FAR) {
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.contains(&format!("{FAR}:{node}")))
            .collect();
        assert_eq!(rows.len(), 2, "both nodes of {LAB} have {node}: {table}");
        assert!(rows.iter().all(|r| r.contains("direct")), "{table}");
    }
    assert!(
        table
            .lines()
            .filter(|l| l.contains(&format!(" {FAR} ")) && l.contains("linked"))
            .count()
            == 2,
        "{table}"
    );

    // The link's credential: a bound token of 10 minutes, which the agents
    // renew (the lab's agents 20 s after its issue) without a break.
    let lab_client = lab.client(LAB).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(lab_client.clone(), LINKS_NS);
    let first = link_token(&lab, FAR);
    let claims = TokenClaims::parse(&first.1).expect("a bound token");
    assert_eq!(claims.lifetime(), Duration::from_secs(600), "{claims:?}");
    assert_eq!(
        claims.bound_secret.as_ref().map(|b| b.0.as_str()),
        Some(format!("trellis-remote-reader-{LAB}-token").as_str()),
        "{claims:?}"
    );
    let renewed_in = wait_until("an agent renews the token", Duration::from_secs(90), || {
        link_token(&lab, FAR).1 != first.1
    });
    let renewed = link_token(&lab, FAR);
    let new_claims = TokenClaims::parse(&renewed.1).expect("a bound token");
    assert!(new_claims.issued > claims.issued, "{new_claims:?}");
    assert_eq!(new_claims.lifetime(), claims.lifetime());
    eprintln!("the link's token was renewed {renewed_in:?} into the wait");
    // Read with the renewed credential as the agents do, and still linked.
    assert!(
        read_nodes_with(&renewed.0).is_ok(),
        "the renewed token reads cluster {FAR}"
    );
    for node in nodes_of(&lab, LAB) {
        let report = lab.agent_status(&node).unwrap();
        let link = report
            .linked_clusters
            .iter()
            .find(|l| l.name == FAR)
            .unwrap();
        assert_eq!(link.state.as_str(), "linked", "{node}: {link:?}");
        assert!(
            link.token_expires_in_s.is_some_and(|s| s > 0 && s <= 600),
            "{node}: {link:?}"
        );
    }
    let failures = cross_pings(&pods, LAB, FAR);
    assert!(failures.is_empty(), "after the renewal: {failures:?}");

    // A node of the linked cluster claiming a range its cluster never
    // declared (the lab declares each cluster's CIDRs): every node of the
    // first cluster leaves that one node out, the rest of far stays.
    let far_nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(lab.client(FAR).await.unwrap());
    let (_, rogue_key) = kubectl_trellis::keys::generate();
    let rogue = trellis_e2e::node::claiming_node(
        "rogue",
        &rogue_key,
        "198.51.100.97:51820",
        "10.250.7.0/24",
    );
    far_nodes.create(&Default::default(), &rogue).await.unwrap();
    for node in nodes_of(&lab, LAB) {
        wait_until(
            "the first cluster's nodes leave far's rogue node out",
            Duration::from_secs(30),
            || {
                lab.agent_status(&node).is_ok_and(|r| {
                    r.left_out.iter().any(|l| {
                        l.name == format!("{FAR}:rogue")
                            && l.reason == "PeerUndeclaredRange"
                            && l.message.contains(&format!(
                                "pod CIDR 10.250.7.0/24 lies outside the pod ranges cluster {FAR} declared when it was linked"
                            ))
                    })
                })
            },
        );
        assert_eq!(peer_count(&lab, &node), 3, "{node}: rogue is not a peer");
        let routes = lab.mesh_routes(&node).unwrap();
        assert!(
            !routes.iter().any(|r| r.starts_with("10.250.7.0/24")),
            "{node}: {routes:?}"
        );
    }
    let failures = cross_pings(&pods, LAB, FAR);
    assert!(failures.is_empty(), "{failures:?}");
    far_nodes
        .delete("rogue", &Default::default())
        .await
        .unwrap();

    // An overlapping cluster: the plugin refuses and creates nothing.
    let err = kubectl_trellis(&lab, &["cluster", "link", "--from", LAB, "--to", CLASH])
        .expect_err("overlapping clusters are refused");
    assert!(
        err.contains("overlaps") && err.contains("Nothing was created"),
        "{err}"
    );
    assert!(secrets
        .get_opt("trellis-remote-clash")
        .await
        .unwrap()
        .is_none());
    // Linked by hand anyway: every agent refuses it whole and says so.
    let (exported, _) = kubectl_trellis(
        &lab,
        &["cluster", "export", "--context", CLASH, "--for", LAB],
    )
    .expect("cluster export");
    lab.kubectl_apply(LAB, &exported, false)
        .expect("apply the link Secret");
    wait_until(
        "both nodes report the clash refused",
        Duration::from_secs(30),
        || {
            let (t, _) = kubectl_trellis(&lab, &["status", "--context", LAB]).unwrap();
            t.lines()
                .filter(|l| l.contains(&format!(" {CLASH} ")) && l.contains("refused"))
                .count()
                == 2
        },
    );
    let events: Api<Event> = Api::namespaced(lab_client.clone(), LINKS_NS);
    let refused = events.list(&Default::default()).await.unwrap().items;
    let event = refused
        .iter()
        .find(|e| e.reason.as_deref() == Some("LinkedClusterRefused"))
        .expect("an Event on the link Secret");
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("trellis-remote-clash")
    );
    assert!(
        event.note.as_deref().unwrap().contains("overlaps"),
        "{event:?}"
    );
    for node in nodes_of(&lab, LAB) {
        assert_eq!(peer_count(&lab, &node), 3, "{node}: nothing of clash taken");
    }
    let failures = cross_pings(&pods, LAB, FAR);
    assert!(failures.is_empty(), "still linked to far: {failures:?}");
    secrets
        .delete("trellis-remote-clash", &Default::default())
        .await
        .unwrap();

    // A machine added in one cluster reaches pods of both.
    let machine = lab.add_machine("laptop").expect("machine");
    let (config, _) = kubectl_trellis(
        &lab,
        &[
            "peer",
            "add",
            "laptop",
            "--context",
            LAB,
            "--allowed-ips",
            "10.99.0.2/32,fd99::2/128",
            "--generate",
            "--wait",
        ],
    )
    .expect("peer add");
    assert_eq!(config.matches("[Peer]").count(), 4, "{config}");
    assert_eq!(config.matches(&format!("# {FAR}:")).count(), 2, "{config}");
    for node in nodes_of(&lab, FAR) {
        wait_until(
            "far's nodes configure laptop",
            Duration::from_secs(30),
            || peer_count(&lab, &node) == 4,
        );
    }
    lab.machine_wg_quick_up("laptop", &config)
        .expect("wg-quick up");
    let mut failures = Vec::new();
    for pod in pods.iter().filter(|p| p.cluster != CLASH) {
        for target in [&pod.v4, &pod.v6] {
            if ping_from(&machine.netns, target).is_err() {
                failures.push(format!("laptop -> {} ({target})", pod.node));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");

    // Unlink: the remote peers go on both sides, and so does the link.
    let start = Instant::now();
    kubectl_trellis(&lab, &["cluster", "unlink", "--from", LAB, "--to", FAR]).expect("unlink");
    for node in nodes_of(&lab, LAB) {
        wait_until("far's nodes leave", Duration::from_secs(30), || {
            peer_count(&lab, &node) == 2
        });
    }
    for node in nodes_of(&lab, FAR) {
        wait_until(
            "the first cluster's nodes and laptop leave",
            Duration::from_secs(30),
            || peer_count(&lab, &node) == 1,
        );
    }
    eprintln!("unlinked everywhere in {:?}", start.elapsed());
    let far_pod = pods.iter().find(|p| p.cluster == FAR).unwrap();
    assert!(
        ping_from(&pods[0].netns, &far_pod.v4).is_err(),
        "a pod still reaches the unlinked cluster"
    );
    let far_client = lab.client(FAR).await.unwrap();
    for (client, other) in [(&lab_client, FAR), (&far_client, LAB)] {
        let s: Api<Secret> = Api::namespaced(client.clone(), LINKS_NS);
        let left: Vec<String> = s
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|x| x.metadata.name)
            .filter(|n| n.contains(other))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // The tokens were bound to a Secret the unlink deleted: revoked now.
    let refused = read_nodes_with(&renewed.0).expect_err("an unlinked token reads nothing");
    assert!(
        refused.contains("Unauthorized") || refused.contains("Forbidden"),
        "{refused}"
    );
    // Its binding is gone at once; the token itself as the API server's
    // caches catch up.
    wait_until("the token is revoked", Duration::from_secs(30), || {
        read_nodes_with(&renewed.0).is_err_and(|e| e.contains("Unauthorized"))
    });
    kubectl_trellis(&lab, &["cluster", "unlink", "--from", LAB, "--to", FAR])
        .expect("unlinking twice is fine");
    trellis_e2e::down(LAB);
}

const KEPT: &str = "kept";
const KEPT_FAR: &str = "keptfar";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn an_agent_restarted_while_the_linked_api_server_is_stopped_keeps_its_cross_cluster_pairs() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(KEPT);
    let mut lab = Lab::up(LabOptions::new(KEPT, 2)).await.expect("lab up");
    lab.add_cluster(KEPT_FAR, 2, None)
        .await
        .expect("cluster keptfar");
    lab.start_mesh(Device::TrellisWg)
        .await
        .expect("mesh started");
    lab.wait_clusters_meshed(Duration::from_secs(60))
        .expect("each cluster meshes alone");
    let pods = lab.one_pod_per_node().expect("a pod on every node");
    kubectl_trellis(
        &lab,
        &[
            "cluster", "link", "--from", KEPT, "--to", KEPT_FAR, "--wait",
        ],
    )
    .expect("cluster link");
    let failures = cross_pings(&pods, KEPT, KEPT_FAR);
    assert!(failures.is_empty(), "{failures:?}");
    let node = format!("{KEPT}-n1");
    let from = pods.iter().find(|p| p.node == node).unwrap();
    let to = pods.iter().find(|p| p.cluster == KEPT_FAR).unwrap();

    // keptfar's API server stops answering (SIGSTOP: connections hang, as
    // behind a dead link); kept-n1's agent is killed and started again.
    let apiserver = lab
        .state
        .daemons
        .iter()
        .find(|d| d.name == format!("{KEPT_FAR}/kube-apiserver"))
        .expect("keptfar's kube-apiserver")
        .pid;
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(apiserver), sig).unwrap();
    let flow = trellis_e2e::pod::ping_flow(&from.netns, &to.v4, 40);
    signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    lab.signal_daemon(&node, "agent", nix::sys::signal::Signal::SIGKILL);
    lab.start_agent(&node, Device::TrellisWg)
        .await
        .expect("agent started again");
    // Long enough for the new agent to list, reconcile and resync; then,
    // on a loaded machine, until it has reported (or the limit).
    let restarted = Instant::now();
    std::thread::sleep(Duration::from_secs(25));
    let serves_cache = |table: &str| {
        table.lines().any(|l| {
            l.starts_with(&node)
                && l.contains(" unreachable ")
                && l.contains("as this node last saw them")
        })
    };
    let limit = trellis_e2e::deadline::scaled(Duration::from_secs(120));
    let (peers, table) = loop {
        let peers = peer_count(&lab, &node);
        let table = kubectl_trellis(&lab, &["status", "--context", KEPT])
            .map_or_else(|e| format!("kubectl trellis status failed: {e}"), |t| t.0);
        if (peers == 3 && serves_cache(&table)) || restarted.elapsed() > limit {
            break (peers, table);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let failures = cross_pings(&pods, KEPT, KEPT_FAR);
    signal(nix::sys::signal::Signal::SIGCONT);
    let (sent, received) = flow.join().unwrap();
    eprintln!("{table}");
    eprintln!(
        "agent restarted with the linked API server stopped: {peers} peers on {node} after {:?}; a flow to {} lost {} of {sent} pings",
        restarted.elapsed(),
        to.node,
        sent - received
    );
    assert_eq!(
        peers, 3,
        "1 own + 2 remote peers, from the node's cache: {table}"
    );
    assert!(failures.is_empty(), "{failures:?}\n{table}");
    assert!(
        serves_cache(&table),
        "the link says it serves the cached listing: {table}"
    );
    assert!(sent > 0, "the ping flow from {} ran", from.netns);
    assert!(
        (sent - received) * 50 <= 3_000,
        "more than 3 s of pings lost: {} of {sent}",
        sent - received
    );
    trellis_e2e::down(KEPT);
}
