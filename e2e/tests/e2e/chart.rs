//! The Helm chart: `helm lint --strict`, `helm template` with the default
//! values and others, wrong values refused with a clear message, the
//! rendered manifests kept in sync, and the chart's objects and identity
//! proven against a lab's real apiserver (root).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Node};
use kube::api::{Api, Patch, PatchParams};
use trellis_e2e::chart::{self, chart_dir};
use trellis_e2e::mesh::Device;
use trellis_e2e::tools::Tools;
use trellis_e2e::{Lab, LabOptions};

mod peers;

fn helm() -> PathBuf {
    Tools::locate()
        .and_then(|t| t.path("helm"))
        .expect("helm is built by `make tools`")
}

fn render(values: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    chart::objects(&chart::render(&helm(), &values).expect("helm template")).expect("YAML")
}

fn container(objects: &[serde_json::Value], name: &str) -> Option<Container> {
    let ds = chart::daemonset(objects).unwrap();
    let spec = ds.spec.unwrap().template.spec.unwrap();
    spec.containers.into_iter().find(|c| c.name == name)
}

fn env_of(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn helm_lint_strict_passes() {
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn default_values_render_every_object_least_privileged() {
    let objects = render(&[]);
    let kinds = chart::kinds(&objects);
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(kinds.contains(&kind.to_string()), "{kind} in {kinds:?}");
    }
    assert!(!kinds.iter().any(|k| k.contains("Monitor")), "{kinds:?}");
    // The ClusterRole: exactly what the agent needs.
    let role = objects.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
    let rules: Vec<String> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{}: {}",
                r["apiGroups"][0], r["resources"][0], r["verbs"]
            )
        })
        .collect();
    assert_eq!(
        rules,
        vec![
            r#"""/"nodes": ["get","list","watch","patch"]"#,
            r#""trellis.dev"/"peers": ["get","list","watch"]"#,
            r#""trellis.dev"/"peers/status": ["patch"]"#,
            r#""events.k8s.io"/"events": ["create"]"#,
        ]
    );
    let ds = chart::daemonset(&objects).unwrap();
    let spec = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = spec.tolerations.clone().unwrap();
    assert!(tolerations
        .iter()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));
    assert_eq!(
        ds.spec.unwrap().update_strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    // dataplane=auto: the agent and trellis-wg, neither privileged.
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["agent", "trellis-wg"]);
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().unwrap();
        assert_ne!(sc.privileged, Some(true), "{}", c.name);
        assert_eq!(
            sc.capabilities.unwrap().drop,
            Some(vec!["ALL".to_string()]),
            "{}",
            c.name
        );
    }
    let agent = container(&objects, "agent").unwrap();
    let caps = agent
        .security_context
        .clone()
        .unwrap()
        .capabilities
        .unwrap();
    assert_eq!(
        caps.add,
        Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()])
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.clone().and_then(|p| p.http_get).and_then(|h| h.path)
    };
    assert_eq!(
        probe_path(&agent.readiness_probe).as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        probe_path(&agent.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert!(agent.resources.is_some());
    assert_eq!(env_of(&agent, "TRELLIS_DATAPLANE").as_deref(), Some("auto"));
    assert_eq!(env_of(&agent, "TRELLIS_MTU"), None);
    assert_eq!(env_of(&agent, "KUBERNETES_SERVICE_HOST"), None);
    assert_eq!(
        spec.init_containers.unwrap()[0].name,
        "install-cni",
        "an init container installs trellis-cni"
    );
}

#[test]
fn other_values_change_what_they_should() {
    let objects = render(&[
        ("dataplane", "kernel"),
        ("mtu", "1400"),
        ("listenPort", "51999"),
        ("interface", "wg-mesh"),
        ("apiServer.host", "fd00::10"),
        ("apiServer.port", "6443"),
        ("logFormat", "text"),
    ]);
    assert!(
        container(&objects, "trellis-wg").is_none(),
        "kernel: no trellis-wg"
    );
    let ds = chart::daemonset(&objects).unwrap();
    let volumes: Vec<String> = ds
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert!(!volumes.contains(&"dev-net-tun".to_string()), "{volumes:?}");
    let agent = container(&objects, "agent").unwrap();
    for (name, value) in [
        ("TRELLIS_DATAPLANE", "kernel"),
        ("TRELLIS_MTU", "1400"),
        ("TRELLIS_LISTEN_PORT", "51999"),
        ("TRELLIS_INTERFACE", "wg-mesh"),
        ("KUBERNETES_SERVICE_HOST", "fd00::10"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
        ("TRELLIS_LOG_FORMAT", "text"),
    ] {
        assert_eq!(env_of(&agent, name).as_deref(), Some(value), "{name}");
    }

    let objects = render(&[("dataplane", "userspace"), ("trellisWg.threads", "2")]);
    let wg = container(&objects, "trellis-wg").unwrap();
    assert_eq!(env_of(&wg, "TRELLIS_WG_THREADS").as_deref(), Some("2"));
    assert_eq!(
        env_of(&wg, "TRELLIS_WG_PERSIST").as_deref(),
        Some("true"),
        "the interface outlives the device's pod by default"
    );
    assert_eq!(
        env_of(&wg, "TRELLIS_DATAPLANE").as_deref(),
        Some("userspace")
    );

    let objects = render(&[
        ("metrics.serviceMonitor.enabled", "true"),
        ("metrics.podMonitor.enabled", "true"),
        ("admissionPolicy.enabled", "false"),
        ("metrics.bindAddress", "::"),
    ]);
    let kinds = chart::kinds(&objects);
    assert!(
        kinds.contains(&"ServiceMonitor".to_string())
            && kinds.contains(&"PodMonitor".to_string())
            && kinds.contains(&"Service".to_string()),
        "{kinds:?}"
    );
    assert!(
        !kinds
            .iter()
            .any(|k| k.starts_with("ValidatingAdmissionPolicy")),
        "{kinds:?}"
    );
    let agent = container(&objects, "agent").unwrap();
    assert_eq!(
        env_of(&agent, "TRELLIS_METRICS_ADDRESS").as_deref(),
        Some("[::]:9473")
    );
}

#[test]
fn wrong_values_are_refused_naming_the_value() {
    for (set, expected) in [
        ("dataplane=fast", "/dataplane"),
        ("mtu=576", "/mtu"),
        ("interface=a-name-longer-than-15", "/interface"),
        ("listenPort=70000", "/listenPort"),
        ("logFormat=xml", "/logFormat"),
        ("stateDir=relative/path", "/stateDir"),
        ("metrics.bindAddress=localhost", "/metrics/bindAddress"),
        ("dataplan=auto", "dataplan"),
        ("podRanges={0.0.0.0/0}", "/podRanges/0"),
        ("podRanges={10.244.0.0/16,::/0}", "/podRanges/1"),
        ("externalPeerRanges={10.99.0.0/33}", "/externalPeerRanges/0"),
        (
            "externalPeerRanges=null",
            "missing property 'externalPeerRanges'",
        ),
    ] {
        let out = Command::new(helm())
            .args(["template", "t"])
            .arg(chart_dir())
            .args(["--kube-version", chart::KUBE_VERSION, "--set", set])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(err.contains(expected), "{set}: {err}");
    }
}

/// `helm template` with no cluster and no `--kube-version` — what people
/// run to read the manifests, and what GitOps tools run — renders; an
/// explicit Kubernetes older than 1.30 is refused, saying why.
#[test]
fn the_chart_renders_offline_and_refuses_an_old_kubernetes() {
    let out = Command::new(helm())
        .args(["template", "trellis"])
        .arg(chart_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "offline helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = chart::objects(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert!(chart::daemonset(&objects).is_ok());
    let out = Command::new(helm())
        .args(["template", "trellis"])
        .arg(chart_dir())
        .args(["--kube-version", "1.29.4"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "1.29 was accepted");
    assert!(
        err.contains("Trellis needs Kubernetes 1.30 or newer") && err.contains("v1.29.4"),
        "{err}"
    );
}

/// The declared ranges reach the agents and, for `cluster link`, the
/// ConfigMap in the links namespace.
#[test]
fn declared_ranges_reach_the_agents_and_the_declaration() {
    let yaml = chart::render(
        &helm(),
        &[(
            "podRanges".into(),
            "{10.244.0.0/16,fd00:10:244::/56}".into(),
        )],
    )
    .unwrap();
    let objects = chart::objects(&yaml).unwrap();
    let agent = container(&objects, "agent").unwrap();
    assert_eq!(
        env_of(&agent, "TRELLIS_POD_RANGES").as_deref(),
        Some("10.244.0.0/16,fd00:10:244::/56")
    );
    assert_eq!(
        env_of(&agent, "TRELLIS_EXTERNAL_PEER_RANGES").as_deref(),
        Some("10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7")
    );
    let map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "trellis-declared-ranges")
        .expect("the declaration ConfigMap");
    assert_eq!(map["metadata"]["namespace"], "trellis-links");
    assert_eq!(map["data"]["podRanges"], "10.244.0.0/16,fd00:10:244::/56");
}

#[test]
fn manifests_are_rendered_from_the_chart() {
    let root = chart_dir().join("../..");
    let out = Command::new(root.join("tools/render-manifests.sh"))
        .env("HELM", helm())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(root.join("manifests/trellis.yaml")).unwrap();
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "manifests/trellis.yaml is out of date with charts/trellis: run `make manifests`"
    );
}

#[test]
fn the_chart_and_the_binaries_share_one_version() {
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap();
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion vs the workspace version"
    );
}

// ---- against a lab's real apiserver (root) ----

const LAB: &str = "chart";
const N1: &str = "chart-n1";
const N2: &str = "chart-n2";

fn kubectl(lab: &Lab, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(lab.kubeconfig(LAB).unwrap())
        .args(args)
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn helm_cmd(lab: &Lab, args: &[String]) -> String {
    let mut all = vec!["--namespace", chart::NAMESPACE];
    all.extend(args.iter().map(String::as_str));
    chart::helm(&helm(), &lab.kubeconfig(LAB).unwrap(), &all).unwrap_or_else(|e| panic!("{e}"))
}

/// Every object the chart makes, as `kubectl get` names them.
const CHART_OBJECTS: [&str; 15] = [
    "customresourcedefinition/peers.trellis.dev",
    "namespace/trellis-links",
    "-n trellis-links configmap/trellis-declared-ranges",
    "-n trellis-links role/trellis-agent-links",
    "-n trellis-links rolebinding/trellis-agent-links",
    "-n kube-system serviceaccount/trellis",
    "clusterrole/trellis-agent",
    "clusterrolebinding/trellis-agent",
    "-n kube-system role/trellis-agent",
    "-n kube-system rolebinding/trellis-agent",
    "-n kube-system daemonset/trellis",
    "validatingadmissionpolicy/trellis-agent-own-node",
    "validatingadmissionpolicybinding/trellis-agent-own-node",
    "validatingadmissionpolicy/trellis-agent-own-peer-conditions",
    "validatingadmissionpolicybinding/trellis-agent-own-peer-conditions",
];

fn exists(lab: &Lab, object: &str) -> bool {
    let mut args: Vec<&str> = vec!["get"];
    args.extend(object.split(' '));
    args.extend(["-o", "name"]);
    kubectl(lab, &args).is_ok()
}

fn manifests_are_accepted_by_the_apiserver(lab: &Lab) {
    let manifests =
        std::fs::read_to_string(chart_dir().join("../../manifests/trellis.yaml")).unwrap();
    // A server-side dry run cannot create the namespace its later objects
    // go in (true of any manifest creating a namespace): it exists first.
    kubectl(lab, &["create", "namespace", "trellis-links"]).expect("create namespace");
    let dry = lab
        .kubectl_apply(LAB, &manifests, true)
        .expect("server-side dry run");
    assert_eq!(
        dry.matches("(server dry run)").count(),
        CHART_OBJECTS.len(),
        "{dry}"
    );
    for object in CHART_OBJECTS
        .iter()
        .filter(|o| !o.starts_with("namespace/"))
    {
        assert!(!exists(lab, object), "{object} exists after a dry run");
    }
    lab.kubectl_apply(LAB, &manifests, false).expect("apply");
    for object in CHART_OBJECTS {
        assert!(exists(lab, object), "{object} was not created");
    }
    // The CRD's schema refuses a bad Peer with a message saying what to fix.
    kubectl(
        lab,
        &[
            "wait",
            "--for=condition=Established",
            "crd/peers.trellis.dev",
            "--timeout=30s",
        ],
    )
    .unwrap();
    let bad = "apiVersion: trellis.dev/v1alpha1\nkind: Peer\nmetadata:\n  name: bad\nspec:\n  publicKey: nope\n  allowedIPs: [10.10.0.1/24]\n";
    let mut file = tempfile::Builder::new()
        .prefix("trellis-bad-peer-")
        .suffix(".yaml")
        .tempfile()
        .unwrap();
    std::io::Write::write_all(&mut file, bad.as_bytes()).unwrap();
    let err = kubectl(lab, &["apply", "-f", file.path().to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("spec.publicKey") && err.contains("host bits"),
        "{err}"
    );
}

/// A client with the token of the chart's ServiceAccount bound to the lab's
/// Pod on `node`, exactly as that node's agent has it.
async fn agent_client(lab: &Lab, node: &str) -> (kube::Client, String) {
    let pod = lab
        .trellis_pod(node, Device::TrellisWg)
        .await
        .expect("pod on the node");
    let token = std::fs::read_to_string(pod.dir.join("serviceaccount/token")).unwrap();
    (
        token_client(lab, &token, &pod.dir.join("kubeconfig")).await,
        token,
    )
}

async fn token_client(lab: &Lab, token: &str, path: &std::path::Path) -> kube::Client {
    let cluster = lab.cluster_of(N1).unwrap();
    let ca = std::fs::read_to_string(cluster.dir.join("pki/ca.crt")).unwrap();
    trellis_e2e::kubeconfig::write_token_kubeconfig(
        path,
        LAB,
        &cluster.apiserver_url,
        &ca,
        "agent",
        token,
    )
    .unwrap();
    trellis_e2e::kubeconfig::client(path).await.unwrap()
}

async fn annotate(client: &kube::Client, node: &str, key: &str, value: &str) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn agents_may_change_only_their_own_node(lab: &Lab) {
    let (n1, _) = agent_client(lab, N1).await;
    // The policy is compiled asynchronously after it is created.
    let mut denied = Ok(());
    for _ in 0..50 {
        denied = annotate(&n1, N2, "trellis.dev/public-key", "stolen").await;
        if denied.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = denied.expect_err("n1's agent rewrote n2's key");
    assert!(err.contains(&format!("may not modify Node {N2}")), "{err}");
    annotate(&n1, N1, "trellis.dev/endpoint", "198.51.100.200:51820")
        .await
        .expect("an agent changes its own trellis.dev annotations");
    let err = annotate(&n1, N1, "example.com/other", "x")
        .await
        .unwrap_err();
    assert!(err.contains("only trellis.dev/ annotations"), "{err}");
    let nodes: Api<Node> = Api::all(n1.clone());
    let label = serde_json::json!({"metadata": {"labels": {"node-role.kubernetes.io/evil": ""}}});
    let err = nodes
        .patch(N1, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("only trellis.dev/ annotations"), "{err}");
    assert_eq!(
        nodes
            .list(&Default::default())
            .await
            .expect("list nodes")
            .items
            .len(),
        2
    );
    // RBAC: nothing beyond the chart's ClusterRole.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(n1.clone());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(n1.clone(), "kube-system");
    assert!(pods
        .list(&Default::default())
        .await
        .unwrap_err()
        .to_string()
        .contains("forbidden"));
    assert!(secrets
        .list(&Default::default())
        .await
        .unwrap_err()
        .to_string()
        .contains("forbidden"));
    // Secrets are listed only where linked clusters' kubeconfigs live.
    let links: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(n1.clone(), "trellis-links");
    links
        .list(&Default::default())
        .await
        .expect("the agent lists link Secrets");
    let status = serde_json::json!({"status": {"conditions": []}});
    assert!(nodes
        .patch_status(N1, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .is_err());
    // A token of the same ServiceAccount that is not bound to a Pod carries
    // no node: it may change no Node at all.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(lab.client(LAB).await.unwrap(), chart::NAMESPACE);
    let unbound = accounts
        .create_token_request("trellis", &Default::default(), &Default::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let scratch = tempfile::TempDir::new().unwrap();
    let loose = token_client(lab, &unbound, &scratch.path().join("unbound.kubeconfig")).await;
    let err = annotate(&loose, N1, "trellis.dev/endpoint", "198.51.100.201:51820")
        .await
        .unwrap_err();
    assert!(err.contains("not bound to a Pod"), "{err}");
}

/// The pod template of the DaemonSet in the cluster.
async fn installed_pod_spec(
    daemonsets: &Api<k8s_openapi::api::apps::v1::DaemonSet>,
) -> k8s_openapi::api::core::v1::PodSpec {
    let installed = daemonsets.get(chart::RELEASE).await.expect("the DaemonSet");
    installed.spec.unwrap().template.spec.unwrap()
}

async fn helm_install_upgrade_uninstall(lab: &mut Lab) {
    let cluster = lab.cluster_of(N1).unwrap().clone();
    let lab_values = trellis_e2e::daemonset::lab_values(
        &cluster.apiserver_url,
        &cluster.cluster_cidrs,
        Device::TrellisWg,
    )
    .unwrap();
    let mut install = vec![
        "install".to_string(),
        chart::RELEASE.into(),
        chart_dir().display().to_string(),
    ];
    for (k, v) in &lab_values {
        install.push("--set".into());
        install.push(format!("{k}={v}"));
    }
    let notes = helm_cmd(lab, &install);
    assert!(notes.contains("Check the mesh"), "{notes}");
    for object in CHART_OBJECTS {
        assert!(exists(lab, object), "{object} was not installed");
    }
    // The pods the lab runs are the installed DaemonSet's.
    let client = lab.client(LAB).await.unwrap();
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), chart::NAMESPACE);
    let installed = installed_pod_spec(&daemonsets).await;
    let (_, objects) = lab.render_chart(N1, Device::TrellisWg).unwrap();
    let rendered = chart::daemonset(&objects)
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    // (The API server fills in defaults; what the process gets must match.)
    let shape = |c: &Container| {
        let env: Vec<(String, Option<String>, Option<String>)> = c
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|f| f.field_ref.as_ref())
                    .map(|f| f.field_path.clone());
                (e.name.clone(), e.value.clone(), field)
            })
            .collect();
        (
            c.name.clone(),
            c.command.clone(),
            c.args.clone(),
            env,
            c.volume_mounts.clone(),
            c.security_context.clone(),
        )
    };
    assert_eq!(
        installed.containers.iter().map(shape).collect::<Vec<_>>(),
        rendered.containers.iter().map(shape).collect::<Vec<_>>(),
        "the lab runs what helm installed"
    );
    lab.start_mesh(Device::TrellisWg)
        .await
        .expect("mesh from the chart");
    lab.wait_mesh(1, Duration::from_secs(60))
        .expect("the mesh comes up");

    helm_cmd(
        lab,
        &[
            "upgrade".into(),
            chart::RELEASE.into(),
            chart_dir().display().to_string(),
            "--reuse-values".into(),
            "--set".into(),
            "mtu=1400".into(),
        ],
    );
    let upgraded = installed_pod_spec(&daemonsets).await;
    let agent = upgraded
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .unwrap();
    assert_eq!(env_of(agent, "TRELLIS_MTU").as_deref(), Some("1400"));
    assert!(helm_cmd(lab, &["history".into(), chart::RELEASE.into()]).contains("Upgrade complete"));

    helm_cmd(
        lab,
        &["uninstall".into(), chart::RELEASE.into(), "--wait".into()],
    );
    for object in CHART_OBJECTS
        .iter()
        .filter(|o| !o.contains("customresourcedefinition"))
    {
        assert!(!exists(lab, object), "{object} survived helm uninstall");
    }
    // Helm never deletes CRDs (that would delete every Peer): the README
    // says to delete it by hand, and then nothing of Trellis is left.
    assert!(exists(lab, CHART_OBJECTS[0]), "helm keeps the CRD");
    kubectl(lab, &["delete", "crd", "peers.trellis.dev"]).unwrap();
    lab.delete_trellis_pods(LAB).await.unwrap();
    let left = kubectl(lab, &["get", "all,serviceaccounts,clusterroles,clusterrolebindings,roles,rolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings,crds", "-A", "-l", "app.kubernetes.io/name=trellis", "-o", "name"]).unwrap();
    assert_eq!(left.trim(), "", "left behind: {left}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn the_chart_in_a_real_apiserver() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(LAB);
    let mut lab = Lab::up(LabOptions::new(LAB, 2)).await.expect("lab up");
    manifests_are_accepted_by_the_apiserver(&lab);
    peers::the_rust_type_and_the_crd_agree(&lab, LAB).await;
    agents_may_change_only_their_own_node(&lab).await;
    let (n1, _) = agent_client(&lab, N1).await;
    peers::agents_set_only_their_own_conditions(&lab, LAB, &n1, N1, N2).await;
    // Back to an empty cluster: what `kubectl apply` made, `kubectl delete` removes.
    let manifests = chart_dir().join("../../manifests/trellis.yaml");
    kubectl(
        &lab,
        &["delete", "-f", manifests.to_str().unwrap(), "--wait"],
    )
    .unwrap();
    lab.delete_trellis_pods(LAB).await.unwrap();
    helm_install_upgrade_uninstall(&mut lab).await;
    trellis_e2e::down(LAB);
}
