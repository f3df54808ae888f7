//! Real nodes: containerd and a kubelet v1.34.4 on each lab node, pods
//! placed by kube-scheduler and created through CRI, so that trellis-cni
//! is called by containerd as on a real cluster. (Trellis's own agents are
//! still started by the lab here; `helm install` from the image comes
//! next.)

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use trellis_e2e::mesh::{wait_for, Device};
use trellis_e2e::real_node::{container_pid, holder_of};
use trellis_e2e::{Lab, LabOptions};

const LAB: &str = "real";

fn ready(node: &Node) -> Option<(bool, String)> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status == "True", c.message.clone().unwrap_or_default()))
}

async fn nodes_ready(api: &Api<Node>) -> Vec<(String, bool, String)> {
    let list = api.list(&ListParams::default()).await.expect("nodes");
    list.items
        .iter()
        .map(|n| {
            let (ok, why) = ready(n).unwrap_or((false, "no Ready condition".into()));
            (n.metadata.name.clone().unwrap_or_default(), ok, why)
        })
        .collect()
}

/// Waits (on the runtime) until `done` holds, for at most `limit` scaled.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let limit = trellis_e2e::deadline::scaled(limit);
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: not within {limit:?}");
}

fn spread_deployment() -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "spread"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "spread"}},
            "template": {
                "metadata": {"labels": {"app": "spread"}},
                "spec": {
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "spread"}},
                         "topologyKey": "kubernetes.io/hostname"}
                    ]}},
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "sleeper",
                        "image": "trellis.dev/lab/busybox:1.35.0",
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"]
                    }]
                }
            }
        }
    }))
    .expect("a Deployment")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn pods_of_a_deployment_on_real_nodes_talk_over_the_mesh() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(LAB);
    let mut options = LabOptions::new(LAB, 2);
    options.real_nodes = true;
    let mut lab = Lab::up(options).await.expect("a lab of real nodes");
    let client = lab.client(LAB).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());

    // A real kubelet registers its own Node and keeps it NotReady while no
    // CNI configuration exists.
    for (name, ok, why) in nodes_ready(&nodes).await {
        assert!(!ok, "{name} is Ready before any network plugin: {why}");
    }
    lab.start_mesh(Device::TrellisWg)
        .await
        .expect("Trellis on both nodes");
    lab.wait_mesh(1, Duration::from_secs(60)).expect("the mesh");
    eventually(
        "both nodes Ready once Trellis wrote its CNI configuration",
        Duration::from_secs(90),
        || async {
            let all = nodes_ready(&nodes).await;
            all.len() == 2 && all.iter().all(|(_, ok, _)| *ok)
        },
    )
    .await;

    // An ordinary Deployment: the scheduler puts one pod on each node, the
    // kubelets create them through containerd, trellis-cni wires them.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &spread_deployment())
        .await
        .expect("the Deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let selector = ListParams::default().labels("app=spread");
    eventually("both pods Running", Duration::from_secs(120), || async {
        let list = pods
            .list(&selector)
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        list.len() == 2
            && list
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    let running = pods.list(&selector).await.unwrap().items;
    let placed: BTreeSet<String> = running
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(placed.len(), 2, "one pod per node: {placed:?}");

    // Each pod reaches the other, both families, over the mesh.
    for (from, to) in [(&running[0], &running[1]), (&running[1], &running[0])] {
        let node = from.spec.as_ref().unwrap().node_name.clone().unwrap();
        let holder = holder_of(&lab.state.daemons, &node).expect("the node's holder");
        let container = from
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .container_id
            .clone()
            .expect("a container id");
        let pid = container_pid(holder, &container).expect("the container's process");
        let targets: Vec<String> = to
            .status
            .as_ref()
            .unwrap()
            .pod_ips
            .as_ref()
            .unwrap()
            .iter()
            .map(|ip| ip.ip.clone())
            .collect();
        assert_eq!(targets.len(), 2, "dual-stack pod addresses: {targets:?}");
        for ip in &targets {
            let ping = std::process::Command::new("nsenter")
                .args([
                    "-t",
                    &pid.to_string(),
                    "-n",
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "3",
                    ip,
                ])
                .output()
                .unwrap();
            assert!(
                ping.status.success(),
                "pod on {node} -> {ip}: {}",
                String::from_utf8_lossy(&ping.stdout)
            );
        }
    }

    // Deleting them goes through CNI DEL: the pods' veths go.
    deployments
        .delete("spread", &DeleteParams::foreground())
        .await
        .expect("delete");
    for node in ["real-n1", "real-n2"] {
        let netns = lab.node(node).unwrap().netns.clone();
        wait_for(
            Duration::from_secs(90),
            || {
                trellis_e2e::cmd::ip(Some(&netns), &["-o", "link", "show"]).is_ok_and(|links| {
                    // "7: tr585ba9afaf1c@if2: <...": a pod's host end.
                    !links.lines().any(|l| {
                        let name = l.split(": ").nth(1).unwrap_or_default();
                        name.starts_with("tr") && !name.starts_with("trellis")
                    })
                })
            },
            || format!("the pods' veths on {node} outlived their pods"),
        )
        .unwrap();
    }
    assert!(trellis_e2e::down(LAB).is_clean());
}
