//! `make bench` (pod start-up part): from Pod creation to Running on real
//! nodes (kube-scheduler, kubelet v1.34.4, containerd 2), 30 pods with
//! Trellis installed by helm, against the same nodes with the reference
//! plugins (ptp + host-local, the CNI project's own) in the same run. The
//! pods are made one at a time, each waited for before the next, so each
//! figure is one pod's start and not a queue's. CoreDNS is scaled to none
//! first, so no pod outlives the reference network.
//!
//! Needs root; writes its section into BENCHMARKS.md.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use trellis_e2e::bench::{percentile, update_benchmarks_md};
use trellis_e2e::mesh::wait_for;
use trellis_e2e::{Lab, LabOptions};

const LAB: &str = "podstart";
const PODS: usize = 30;
const NAMESPACE: &str = "default";
/// The reference's conflist: named to sort before Trellis's, removed before
/// Trellis is installed (containerd takes the first of the directory).
const REFERENCE_CONF: &str = "05-reference-ptp.conflist";

fn main() {
    let (rt, parts) = trellis_e2e::bench::start();
    if parts.wanted("pod-startup") {
        let body = rt.block_on(pod_startup());
        update_benchmarks_md("pod-startup", "Pod start-up on real nodes", &body);
    }
}

async fn pod_startup() -> String {
    trellis_e2e::down(LAB);
    let mut options = LabOptions::new(LAB, 2);
    options.real_nodes = true;
    let runtime = options.runtime;
    let lab = Lab::up(options).await.expect("a lab of real nodes");
    let client = lab.client(LAB).await.unwrap();
    let node_names: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();

    // CoreDNS's pods would start on the reference network and keep its
    // addresses when Trellis comes (trellis-cni skips those, as it skips
    // any address the host routes already), and their restarts would land
    // among the measured pods: none run.
    stop_coredns(&client).await;
    eprintln!("[bench] reference: ptp + host-local on {node_names:?}");
    write_reference_confs(&lab, &client).await;
    nodes_ready(&client).await;
    let reference = start_pods(&client, "ref").await;
    remove_reference_confs(&lab);

    eprintln!("[bench] Trellis: helm install (the image built here)");
    let archive = trellis_e2e::real_node::image_archive("trellis").expect("the Trellis image");
    for node in &node_names {
        let holder = trellis_e2e::real_node::holder_of(&lab.state.daemons, node).unwrap();
        trellis_e2e::real_node::import_image(holder, node, &archive).expect("import");
    }
    let chart = trellis_e2e::chart::chart_dir();
    let mut install = vec![
        "install".to_string(),
        "trellis".into(),
        chart.display().to_string(),
        "-n".into(),
        "kube-system".into(),
        "--wait".into(),
    ];
    for value in trellis_e2e::chart::real_node_values(&lab.state.clusters[0]) {
        install.extend(["--set".into(), value]);
    }
    let install: Vec<&str> = install.iter().map(String::as_str).collect();
    trellis_e2e::chart::helm(
        &lab.tools.path("helm").unwrap(),
        &lab.kubeconfig(LAB).unwrap(),
        &install,
    )
    .expect("helm install");
    nodes_ready(&client).await;
    let trellis = start_pods(&client, "trellis").await;
    assert!(trellis_e2e::down(LAB).is_clean());

    let row = |name: &str, s: &[Duration]| {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let ratio = |p: f64| ms(percentile(s, p)) / ms(percentile(&reference, p)).max(0.001);
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x |\n",
            ms(percentile(s, 50.0)),
            ms(percentile(s, 99.0)),
            ms(percentile(s, 100.0)),
            ratio(50.0),
            ratio(99.0),
        )
    };
    let body = format!(
        "Two real nodes of the lab (kubelet v1.34.4, {runtime}, kube-proxy; dual-stack pods). \
{PODS} pods (busybox `sleep`, the image present), made one at a time: from the create call to \
the Pod's phase `Running` (the API read every 20 ms), so scheduling, the sandbox, the CNI ADD \
and the container start are all in. The reference is the same nodes with the CNI project's \
ptp + host-local plugins (v1.9.1, one range per family), measured first in the same run.\n\n\
| CNI | p50 ms | p99 ms | max ms | p50 vs reference | p99 vs reference |\n|---|---|---|---|---|---|\n{}{}",
        row("ptp + host-local (reference)", &reference),
        row("Trellis (trellis-cni, helm-installed)", &trellis),
        runtime = runtime.description(),
    ) + &format!(
        "\nEach pod in order (ms), reference: {:?}\n\nTrellis: {:?}\n",
        millis(&reference),
        millis(&trellis)
    );
    println!("{body}");
    body
}

/// The reference conflist on every node, with the node's pod CIDRs (from
/// its Node, as the controller-manager assigned them); host-local keeps
/// its leases in the node's directory.
async fn write_reference_confs(lab: &Lab, client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    for state in &lab.state.nodes {
        let node = nodes.get(&state.name).await.expect("the Node");
        let cidrs = node.spec.and_then(|s| s.pod_cidrs).unwrap_or_default();
        let ranges: Vec<serde_json::Value> = cidrs
            .iter()
            .map(|c| serde_json::json!([{"subnet": c}]))
            .collect();
        let routes: Vec<serde_json::Value> = cidrs
            .iter()
            .map(|c| serde_json::json!({"dst": if c.contains(':') { "::/0" } else { "0.0.0.0/0" }}))
            .collect();
        let leases = state.dir.join("reference-ipam");
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "reference",
            "plugins": [
                {"type": "ptp", "ipMasq": false, "mtu": 1500,
                 "ipam": {"type": "host-local", "ranges": ranges, "routes": routes,
                          "dataDir": leases.display().to_string()}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let dir = trellis_e2e::node::private_dir(&state.dir, "/etc/cni/net.d");
        std::fs::write(dir.join(REFERENCE_CONF), conf.to_string()).expect("the conflist");
    }
}

/// CoreDNS scaled to no replicas (the bench needs no DNS), its pods gone.
async fn stop_coredns(client: &kube::Client) {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "kube-system");
    let patch = kube::api::Patch::Merge(serde_json::json!({"spec": {"replicas": 0}}));
    deployments
        .patch("coredns", &Default::default(), &patch)
        .await
        .expect("CoreDNS scaled to 0");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let deadline = Instant::now() + trellis_e2e::deadline::scaled(Duration::from_secs(60));
    while pods
        .list(&ListParams::default().labels("k8s-app=kube-dns"))
        .await
        .is_ok_and(|l| !l.items.is_empty())
    {
        assert!(Instant::now() < deadline, "CoreDNS's pods stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn remove_reference_confs(lab: &Lab) {
    for state in &lab.state.nodes {
        let dir = trellis_e2e::node::private_dir(&state.dir, "/etc/cni/net.d");
        std::fs::remove_file(dir.join(REFERENCE_CONF)).expect("the reference conflist");
    }
}

async fn nodes_ready(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + trellis_e2e::deadline::scaled(Duration::from_secs(180));
    loop {
        let list = nodes.list(&ListParams::default()).await.expect("nodes");
        let ready = list.items.iter().all(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "the nodes did not turn Ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The events of the slowest pod when it took over three times the median
/// (what held it up: a failed sandbox, a retried CNI ADD, the node).
async fn explain_the_slowest(
    client: &kube::Client,
    pods: &Api<Pod>,
    tag: &str,
    times: &[Duration],
) {
    let median = percentile(times, 50.0);
    let Some((slowest, time)) = times.iter().enumerate().max_by_key(|(_, t)| **t) else {
        return;
    };
    if *time < median * 3 {
        return;
    }
    let name = format!("{tag}-{slowest}");
    let node = pods
        .get(&name)
        .await
        .ok()
        .and_then(|p| p.spec?.node_name)
        .unwrap_or_default();
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NAMESPACE);
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    eprintln!("[bench] {name} on {node} took {time:?} (median {median:?}); its events:");
    for e in list {
        eprintln!(
            "[bench]   {} {} {}",
            e.reason.unwrap_or_default(),
            e.count.unwrap_or(1),
            e.message.unwrap_or_default()
        );
    }
}

fn millis(times: &[Duration]) -> Vec<u128> {
    times.iter().map(Duration::as_millis).collect()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "pod-startup"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "sleep",
                "image": "trellis.dev/lab/busybox:1.35.0",
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]
            }]
        }
    }))
    .expect("a Pod")
}

/// Makes `PODS` pods one after another; the time of each from its create
/// call to `Running`. Deletes them after (through CNI DEL), waiting until
/// they are gone.
async fn start_pods(client: &kube::Client, tag: &str) -> Vec<Duration> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let limit = trellis_e2e::deadline::scaled(Duration::from_secs(60));
    let mut times = Vec::new();
    for i in 0..PODS {
        let name = format!("{tag}-{i}");
        let start = Instant::now();
        pods.create(&PostParams::default(), &pod(&name))
            .await
            .expect("create");
        loop {
            let phase = pods.get(&name).await.ok().and_then(|p| p.status?.phase);
            if phase.as_deref() == Some("Running") {
                break;
            }
            assert!(
                start.elapsed() < limit,
                "{name} not Running within {limit:?}: {phase:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times.push(start.elapsed());
    }
    explain_the_slowest(client, &pods, tag, &times).await;
    eprintln!(
        "[bench] {tag}: p50 {:?}, p99 {:?}; each, in order (ms): {:?}",
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        millis(&times)
    );
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=pod-startup"),
    )
    .await
    .expect("delete the pods");
    let rt = tokio::runtime::Handle::current();
    let api = pods.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            Duration::from_secs(120),
            || {
                rt.block_on(api.list(&ListParams::default().labels("bench=pod-startup")))
                    .is_ok_and(|l| l.items.is_empty())
            },
            || "the bench's pods were not deleted".into(),
        )
    })
    .await
    .expect("joined")
    .expect("pods gone");
    times
}
