//! Real nodes: containerd, a kubelet v1.34.4 and kube-proxy on each lab
//! node, pods placed by kube-scheduler and created through CRI, so that
//! trellis-cni is called by containerd as on a real cluster, and Services
//! served by kube-proxy across the mesh, with Trellis installed by `helm`
//! from the image built here. (The lab's own way of running Trellis plays
//! the kubelet for Trellis's pod: on a real node the kubelet would run that
//! Pod object too, so real nodes get Trellis from the chart.)

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use trellis_e2e::mesh::wait_for;
use trellis_e2e::real_node::{container_pid, holder_of};
use trellis_e2e::{Lab, LabOptions};

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
                        "name": "web",
                        "image": "trellis.dev/lab/busybox:1.35.0",
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
                    }]
                }
            }
        }
    }))
    .expect("a Deployment")
}

/// An ordinary Deployment of two pods, one per node (the scheduler decides
/// where, the kubelets create them through containerd, trellis-cni wires
/// them); returns them Running.
async fn spread_pods(client: &kube::Client) -> Vec<Pod> {
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
    running
}

/// The pid of a process of `pod` (in its network namespace).
fn pod_pid(lab: &Lab, pod: &Pod) -> i32 {
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let holder = holder_of(&lab.state.daemons, &node).expect("the node's holder");
    let container = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .expect("a container id");
    container_pid(holder, &container).expect("the container's process")
}

fn pod_ips(pod: &Pod) -> Vec<String> {
    let ips: Vec<String> = pod
        .status
        .as_ref()
        .unwrap()
        .pod_ips
        .as_ref()
        .unwrap()
        .iter()
        .map(|ip| ip.ip.clone())
        .collect();
    assert_eq!(ips.len(), 2, "dual-stack pod addresses: {ips:?}");
    ips
}

/// A ClusterIP Service in front of the spread pods.
async fn spread_service(client: &kube::Client) -> String {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "spread"},
        "spec": {"selector": {"app": "spread"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let created = services
        .create(&PostParams::default(), &service)
        .await
        .expect("the Service");
    created.spec.unwrap().cluster_ip.expect("a ClusterIP")
}

/// One HTTP request from inside `pod`'s network namespace; the body.
fn http_get_from(lab: &Lab, pod: &Pod, address: &str, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let name = format!("{}http-{}", lab.names().netns_prefix(), std::process::id());
    trellis_e2e::cmd::ip(
        None,
        &["netns", "attach", &name, &pod_pid(lab, pod).to_string()],
    )
    .ok()?;
    let target: std::net::SocketAddr = format!("{address}:{port}").parse().ok()?;
    let body = trellis_e2e::netns::run_in(&name, move || {
        let mut stream =
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_string())
    });
    let _ = trellis_e2e::cmd::ip(None, &["netns", "delete", &name]);
    body.ok().flatten()
}

/// A Service's ClusterIP, through kube-proxy on the client's node, reaches
/// the pod on the other node over the mesh.
fn service_reaches_the_other_node(lab: &Lab, pods: &[Pod], cluster_ip: &str) {
    let other = pods[1].metadata.name.clone().unwrap();
    let answers: Vec<String> = (0..20)
        .filter_map(|_| http_get_from(lab, &pods[0], cluster_ip, 80))
        .collect();
    assert!(
        answers.contains(&other),
        "no answer from {other} on the other node through {cluster_ip}: {answers:?}"
    );
}

/// `kubectl ARGS` against the lab's cluster: its stdout, or what failed.
fn kubectl(lab: &Lab, args: &[&str]) -> Result<String, String> {
    let kubectl = lab.tools.path("kubectl").unwrap();
    let kubeconfig = lab.kubeconfig(HELM_LAB).unwrap();
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
    all.extend_from_slice(args);
    trellis_e2e::cmd::run(&kubectl.display().to_string(), &all).map_err(|e| e.to_string())
}

/// The Service's name resolves in a pod (its resolv.conf, written by the
/// kubelet, names the kube-dns Service; CoreDNS answers from the API, over
/// the mesh when it runs on the other node). Asked through `kubectl exec`,
/// which the API server takes to the kubelet with its client certificate
/// and the kubelet authorizes with the API server (webhook).
async fn dns_resolves_the_service(lab: &Lab, pod: &Pod, cluster_ip: &str) {
    let name = pod.metadata.name.clone().unwrap();
    let fqdn = "spread.default.svc.cluster.local";
    let mut last = String::new();
    eventually(
        "the Service's name resolves in a pod",
        Duration::from_secs(60),
        || {
            let answer = kubectl(
                lab,
                &["exec", "-n", "default", &name, "--", "nslookup", fqdn],
            );
            let found = answer.as_deref().is_ok_and(|out| out.contains(cluster_ip));
            last = format!("{answer:?}");
            async move { found }
        },
    )
    .await;
    let resolv = kubectl(
        lab,
        &[
            "exec",
            "-n",
            "default",
            &name,
            "--",
            "cat",
            "/etc/resolv.conf",
        ],
    )
    .unwrap();
    assert!(
        resolv.contains("nameserver 10.96.0.10")
            && resolv.contains("search default.svc.cluster.local"),
        "the kubelet's resolv.conf for the pod: {resolv} (last lookup: {last})"
    );
}

/// Waits until CoreDNS (which the lab deploys with the control plane; its
/// pods wait for the network) has every replica available.
async fn coredns_available(client: &kube::Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    eventually("CoreDNS available", Duration::from_secs(120), || async {
        deployments.get("coredns").await.ok().is_some_and(|d| {
            let status = d.status.unwrap_or_default();
            status.available_replicas.unwrap_or(0) >= 1
                && status.available_replicas == status.replicas
        })
    })
    .await;
}

/// The host ends of the pods' veths on a node ("7: tr585ba9afaf1c@if2:
/// <...>" in `ip -o link`; the mesh's own interface is `trellis`).
fn pod_veths(lab: &Lab, node: &str) -> BTreeSet<String> {
    let netns = lab.node(node).unwrap().netns.clone();
    let links = trellis_e2e::cmd::ip(Some(&netns), &["-o", "link", "show"]).unwrap_or_default();
    links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or_default().to_string())
        .filter(|name| name.starts_with("tr") && name != "trellis")
        .collect()
}

/// Each kubelet is `system:node:NAME`: the Node authorizer and
/// NodeRestriction let it change its own Node and no other.
async fn kubelets_are_confined_to_their_node(lab: &Lab) {
    let own = lab
        .node("realhelm-n1")
        .unwrap()
        .dir
        .join("kubelet.kubeconfig");
    let client = trellis_e2e::kubeconfig::client(&own).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let label =
        |value: &str| serde_json::json!({"metadata": {"labels": {"trellis.dev/test": value}}});
    let patch = kube::api::Patch::Merge(label("yes"));
    nodes
        .patch("realhelm-n1", &Default::default(), &patch)
        .await
        .expect("a kubelet labels its own Node");
    let other = nodes
        .patch("realhelm-n2", &Default::default(), &patch)
        .await
        .expect_err("a kubelet may not change another node");
    assert!(
        matches!(&other, kube::Error::Api(s) if s.code == 403),
        "not forbidden: {other}"
    );
}

/// Each pod reaches the other, both families, over the mesh.
fn ping_both_ways(lab: &Lab, pods: &[Pod]) {
    for (from, to) in [(&pods[0], &pods[1]), (&pods[1], &pods[0])] {
        let pid = pod_pid(lab, from).to_string();
        for ip in pod_ips(to) {
            let ping = std::process::Command::new("nsenter")
                .args(["-t", &pid, "-n", "ping", "-c", "1", "-W", "3", &ip])
                .output()
                .unwrap();
            assert!(
                ping.status.success(),
                "{} -> {ip}: {}",
                from.metadata.name.as_deref().unwrap_or_default(),
                String::from_utf8_lossy(&ping.stdout)
            );
        }
    }
}

/// Runs helm against the lab's cluster.
fn helm(lab: &Lab, args: &[&str]) -> String {
    let helm = lab.tools.path("helm").unwrap();
    trellis_e2e::chart::helm(&helm, &lab.kubeconfig(HELM_LAB).unwrap(), args)
        .unwrap_or_else(|e| panic!("{e}"))
}

const HELM_LAB: &str = "realhelm";

/// The DaemonSet's pods, when every one is Ready: their names.
async fn trellis_pods_ready(client: &kube::Client, expected: usize) -> Option<BTreeSet<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=trellis"))
        .await
        .ok()?;
    let ready = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let names: BTreeSet<String> = list
        .items
        .iter()
        .filter(|p| ready(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    (names.len() == expected && list.items.len() == expected).then_some(names)
}

/// What a user does: `helm install` of the chart onto a cluster of real
/// nodes, the image built here and imported into each node's containerd.
/// The kubelets run the DaemonSet (init container installs trellis-cni,
/// then trellis-wg and the agent); the nodes turn Ready; ordinary pods on
/// different nodes reach each other, and through a Service's ClusterIP
/// (kube-proxy); the Service's name resolves in a pod (CoreDNS, asked
/// through `kubectl exec`, so the API server reaches the kubelet with its
/// client certificate); a kubelet's own credentials change its Node and
/// no other (Node authorizer, NodeRestriction); `helm upgrade` rolls the DaemonSet (new pods; traffic
/// flows again after, the loss printed); deleting the pods goes through CNI
/// DEL; `helm uninstall` removes the DaemonSet. The nodes run containerd 2,
/// which asks the network's CNI STATUS: once Trellis is gone (its device
/// process with it), the kubelets report the nodes NotReady with
/// trellis-cni's reason.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn helm_installs_trellis_on_real_nodes_upgrades_and_uninstalls() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(HELM_LAB);
    let archive = trellis_e2e::real_node::image_archive("trellis").expect("the Trellis image");
    let mut options = LabOptions::new(HELM_LAB, 2);
    options.real_nodes = true;
    let lab = Lab::up(options).await.expect("a lab of real nodes");
    for node in ["realhelm-n1", "realhelm-n2"] {
        let holder = holder_of(&lab.state.daemons, node).unwrap();
        trellis_e2e::real_node::import_image(holder, node, &archive).expect("import");
    }
    let client = lab.client(HELM_LAB).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await.unwrap().items {
        let runtime = node
            .status
            .and_then(|s| s.node_info)
            .map(|i| i.container_runtime_version);
        assert!(
            runtime
                .as_deref()
                .is_some_and(|r| r.starts_with("containerd://2.")),
            "the nodes run containerd 2: {runtime:?}"
        );
    }
    // A real kubelet registers its own Node and keeps it NotReady while no
    // CNI configuration exists.
    for (name, ok, why) in nodes_ready(&nodes).await {
        assert!(!ok, "{name} is Ready before any network plugin: {why}");
    }
    let chart_dir = trellis_e2e::chart::chart_dir();
    let chart = chart_dir.to_str().unwrap();
    let mut install = vec!["install", "trellis", chart, "-n", "kube-system"];
    let values = trellis_e2e::chart::real_node_values(&lab.state.clusters[0]);
    for value in &values {
        install.extend(["--set", value]);
    }
    install.extend(["--set", "resyncSeconds=10", "--set", "logFormat=text"]);
    helm(&lab, &install);
    eventually(
        "the DaemonSet's pods Ready on both nodes",
        Duration::from_secs(120),
        || async { trellis_pods_ready(&client, 2).await.is_some() },
    )
    .await;
    eventually(
        "both nodes Ready once Trellis wrote its CNI configuration",
        Duration::from_secs(60),
        || async { nodes_ready(&nodes).await.iter().all(|(_, ok, _)| *ok) },
    )
    .await;
    let before = trellis_pods_ready(&client, 2).await.unwrap();
    coredns_available(&client).await;
    let nodes_of_lab = ["realhelm-n1", "realhelm-n2"];
    let baseline: Vec<BTreeSet<String>> = nodes_of_lab.iter().map(|n| pod_veths(&lab, n)).collect();
    let running = spread_pods(&client).await;
    ping_both_ways(&lab, &running);
    let cluster_ip = spread_service(&client).await;
    service_reaches_the_other_node(&lab, &running, &cluster_ip);
    dns_resolves_the_service(&lab, &running[0], &cluster_ip).await;
    kubelets_are_confined_to_their_node(&lab).await;

    // The upgrade replaces each node's pod, the userspace device with it.
    let flow_netns = format!("{}flow", lab.names().netns_prefix());
    let pid = pod_pid(&lab, &running[0]).to_string();
    trellis_e2e::cmd::ip(None, &["netns", "attach", &flow_netns, &pid]).unwrap();
    let target = pod_ips(&running[1])[0].clone();
    let flow = trellis_e2e::pod::ping_flow(&flow_netns, &target, 60);
    helm(
        &lab,
        &[
            "upgrade",
            "trellis",
            chart,
            "-n",
            "kube-system",
            "--reuse-values",
            "--set",
            "resyncSeconds=11",
        ],
    );
    eventually(
        "the DaemonSet rolled: new pods, all Ready",
        Duration::from_secs(180),
        || async {
            trellis_pods_ready(&client, 2)
                .await
                .is_some_and(|now| now.is_disjoint(&before))
        },
    )
    .await;
    let (sent, received) = flow.join().unwrap();
    eprintln!(
        "helm upgrade: a flow of {sent} pings (50 ms apart) across the nodes lost {} while the DaemonSet rolled",
        sent - received
    );
    assert!(
        received > 0 && sent > 100,
        "the flow ran: {received} of {sent}"
    );
    ping_both_ways(&lab, &running);

    // Deleting them goes through CNI DEL: the pods' veths go.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .delete("spread", &DeleteParams::foreground())
        .await
        .expect("delete");
    for (node, baseline) in nodes_of_lab.iter().zip(&baseline) {
        wait_for(
            Duration::from_secs(90),
            || pod_veths(&lab, node) == *baseline,
            || {
                format!(
                    "the pods' veths on {node} outlived their pods: {:?}, before them {baseline:?}",
                    pod_veths(&lab, node)
                )
            },
        )
        .unwrap();
    }
    helm(
        &lab,
        &["uninstall", "trellis", "-n", "kube-system", "--wait"],
    );
    eventually(
        "the DaemonSet's pods gone",
        Duration::from_secs(90),
        || async {
            let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
            pods.list(&ListParams::default().labels("app.kubernetes.io/name=trellis"))
                .await
                .is_ok_and(|l| l.items.is_empty())
        },
    )
    .await;
    // The configuration stays (the agent is gone), and so does the mesh
    // interface (persistent) but with no device attached: containerd 2
    // asks trellis-cni's STATUS, which says so, and the kubelets turn
    // their nodes NotReady with that reason (containerd 1.6 would keep
    // them Ready).
    eventually(
        "both nodes NotReady with trellis-cni's STATUS reason",
        Duration::from_secs(90),
        || async {
            nodes_ready(&nodes)
                .await
                .iter()
                .all(|(_, ok, why)| !ok && why.contains("mesh interface trellis has no carrier"))
        },
    )
    .await;
    eprintln!(
        "after helm uninstall: {:?}",
        nodes_ready(&nodes)
            .await
            .first()
            .map(|(_, _, why)| why.clone())
    );
    let _ = trellis_e2e::cmd::ip(None, &["netns", "delete", &flow_netns]);
    assert!(trellis_e2e::down(HELM_LAB).is_clean());
}
