//! A cluster's control plane, running in the cluster's own namespace on the
//! underlay: etcd, kube-apiserver (TLS; the Node authorizer, RBAC and
//! NodeRestriction) and kube-controller-manager running the node IPAM
//! controller, so pod CIDRs come from the real thing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;

use crate::deadline::Progress;
use crate::kubeconfig::{self, write_cert_kubeconfig, KubeconfigError};
use crate::netns::{self, NetnsError, Placement};
use crate::pki::{self, Ca, PkiError};
use crate::plan::APISERVER_PORT;
use crate::state::Daemon;
use crate::tools::{Tools, ToolsError};

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Tools(#[from] ToolsError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited during start-up; last lines of {log}:\n{tail}")]
    Died {
        name: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the apiserver at {url} was not ready after {seconds} s (last answer: {last}); see the logs in {dir}. On a slow or loaded machine, stretch every lab deadline with TRELLIS_DEADLINE_SCALE (a factor)")]
    NotReady {
        url: String,
        seconds: u64,
        last: String,
        dir: PathBuf,
    },
}

/// What a control plane needs to know to start.
#[derive(Debug, Clone)]
pub struct ControlPlaneSpec {
    pub cluster: String,
    pub netns: String,
    pub dir: PathBuf,
    /// The control plane's addresses on the underlay (first one is advertised).
    pub addresses: Vec<IpAddr>,
    pub cluster_cidrs: Vec<IpNet>,
    /// Real nodes (kubelets) join: a scheduler runs and the
    /// controller-manager runs every controller, as on a real cluster.
    pub real_nodes: bool,
}

impl ControlPlaneSpec {
    pub fn apiserver_url(&self) -> String {
        match self.addresses[0] {
            IpAddr::V4(a) => format!("https://{a}:{APISERVER_PORT}"),
            IpAddr::V6(a) => format!("https://[{a}]:{APISERVER_PORT}"),
        }
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }
    fn pki_dir(&self) -> PathBuf {
        pki_dir(&self.dir)
    }
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
    /// `--service-cluster-ip-range`'s value.
    fn service_ranges(&self) -> String {
        let ranges: Vec<String> = service_cidrs(&self.cluster_cidrs)
            .iter()
            .map(|c| c.to_string())
            .collect();
        ranges.join(",")
    }
}

const SERVICE_V4: &str = "10.96.0.0/16";
const SERVICE_V6: &str = "fd00:10:96::/112";

/// The Services' ranges of a cluster with these pod CIDRs, primary first:
/// kubeadm's IPv4 default when the pods have IPv4, and the IPv6 range when
/// they have IPv6 (a dual-stack cluster gets both: Services of either
/// family or of both).
pub fn service_cidrs(cluster_cidrs: &[IpNet]) -> Vec<IpNet> {
    let has = |v4: bool| cluster_cidrs.iter().any(|c| c.addr().is_ipv4() == v4);
    [(has(true), SERVICE_V4), (has(false), SERVICE_V6)]
        .into_iter()
        .filter(|(present, _)| *present)
        .map(|(_, range)| range.parse().expect("literal"))
        .collect()
}

/// The primary Services' range (the `kubernetes` and `kube-dns` Services'
/// family).
pub fn service_cidr(cluster_cidrs: &[IpNet]) -> IpNet {
    service_cidrs(cluster_cidrs)
        .first()
        .copied()
        .unwrap_or_else(|| SERVICE_V4.parse().expect("literal"))
}

/// The PKI directory of the cluster whose files are in `cluster_dir`.
pub fn pki_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("pki")
}

fn ca_name(cluster: &str) -> String {
    format!("trellis-lab-{cluster}-ca")
}

/// The CA of the cluster `cluster` whose files are in `cluster_dir`, to
/// sign certificates for nodes that join.
pub fn load_ca(cluster: &str, cluster_dir: &Path) -> Result<Ca, ControlPlaneError> {
    let dir = pki_dir(cluster_dir);
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| ControlPlaneError::Read { path, source })
    };
    Ok(Ca::load(
        &ca_name(cluster),
        &read("ca.crt")?,
        &read("ca.key")?,
    )?)
}

fn mkdir(path: &Path) -> Result<(), ControlPlaneError> {
    std::fs::create_dir_all(path).map_err(|source| ControlPlaneError::Dir {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the cluster's PKI and kubeconfigs (admin and controller-manager).
pub fn write_pki(spec: &ControlPlaneSpec) -> Result<(), ControlPlaneError> {
    let pki_dir = spec.pki_dir();
    mkdir(&pki_dir)?;
    let ca = Ca::new(&ca_name(&spec.cluster))?;
    let mut ips = spec.addresses.clone();
    ips.extend([
        "127.0.0.1".parse::<IpAddr>().expect("literal"),
        "10.96.0.1".parse().expect("literal"),
    ]);
    let server = ca.server_cert(
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ],
        &ips,
    )?;
    let (sa_key, sa_pub) = pki::service_account_key()?;
    pki::write_private(&pki_dir.join("ca.crt"), &ca.cert_pem)?;
    pki::write_private(&pki_dir.join("ca.key"), &ca.key_pem)?;
    // The apiserver's client certificate towards kubelets (exec, logs,
    // port-forward, the node proxy), as kubeadm issues it.
    let kubelet_client = ca.client_cert("kube-apiserver-kubelet-client", &["system:masters"])?;
    pki::write_private(
        &pki_dir.join("apiserver-kubelet-client.crt"),
        &kubelet_client.cert_pem,
    )?;
    pki::write_private(
        &pki_dir.join("apiserver-kubelet-client.key"),
        &kubelet_client.key_pem,
    )?;
    pki::write_private(&pki_dir.join("apiserver.crt"), &server.cert_pem)?;
    pki::write_private(&pki_dir.join("apiserver.key"), &server.key_pem)?;
    pki::write_private(&pki_dir.join("sa.key"), &sa_key)?;
    pki::write_private(&pki_dir.join("sa.pub"), &sa_pub)?;

    let url = spec.apiserver_url();
    let admin = ca.client_cert("lab-admin", &["system:masters"])?;
    // Named per cluster: kubeconfigs of several clusters merge (KUBECONFIG=a:b).
    write_cert_kubeconfig(
        &spec.admin_kubeconfig(),
        &spec.cluster,
        &url,
        &ca.cert_pem,
        &format!("lab-admin@{}", spec.cluster),
        &admin,
    )?;
    let kcm = ca.client_cert("system:kube-controller-manager", &[])?;
    let local = format!("https://127.0.0.1:{APISERVER_PORT}");
    write_cert_kubeconfig(
        &spec.dir.join("controller-manager.kubeconfig"),
        &spec.cluster,
        &local,
        &ca.cert_pem,
        "system:kube-controller-manager",
        &kcm,
    )?;
    let scheduler = ca.client_cert("system:kube-scheduler", &[])?;
    write_cert_kubeconfig(
        &spec.dir.join("scheduler.kubeconfig"),
        &spec.cluster,
        &local,
        &ca.cert_pem,
        "system:kube-scheduler",
        &scheduler,
    )?;
    Ok(())
}

/// A process of the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    /// Only with real nodes.
    Scheduler,
}

/// Starts the given components (etcd, kube-apiserver,
/// kube-controller-manager) as daemons in the control plane's namespace; `record` is called with each one as soon as it
/// runs, so the caller can persist it before the next step.
pub fn start(
    spec: &ControlPlaneSpec,
    tools: &Tools,
    components: &[Component],
    mut record: impl FnMut(Daemon) -> Result<(), ControlPlaneError>,
) -> Result<(), ControlPlaneError> {
    let place = Placement::netns(&spec.netns);
    let pki_dir = spec.pki_dir();
    let p = |f: &str| pki_dir.join(f).display().to_string();
    let data = spec.dir.join("etcd-data");
    mkdir(&data)?;

    let mut etcd = Command::new(tools.path("etcd")?);
    etcd.args([
        "--name=lab",
        &format!("--data-dir={}", data.display()),
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=lab=http://127.0.0.1:2380",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]);
    let cidrs: Vec<String> = spec.cluster_cidrs.iter().map(|c| c.to_string()).collect();
    let mut apiserver = Command::new(tools.path("kube-apiserver")?);
    apiserver.args([
        "--etcd-servers=http://127.0.0.1:2379".to_string(),
        "--bind-address=::".to_string(),
        format!("--secure-port={APISERVER_PORT}"),
        format!("--advertise-address={}", spec.addresses[0]),
        format!("--cert-dir={}", pki_dir.display()),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        format!("--service-cluster-ip-range={}", spec.service_ranges()),
        // Kubelets authenticate as system:node:NAME: the Node authorizer
        // and NodeRestriction confine each to its own Node and pods.
        "--authorization-mode=Node,RBAC".to_string(),
        "--enable-admission-plugins=NodeRestriction".to_string(),
        format!(
            "--kubelet-client-certificate={}",
            p("apiserver-kubelet-client.crt")
        ),
        format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
        // As kubeadm sets it: the node proxy (kubectl trellis status) dials
        // the node's InternalIP, lab node names do not resolve.
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".to_string(),
        "--allow-privileged=true".to_string(),
        "--enable-priority-and-fairness=false".to_string(),
        "--profiling=false".to_string(),
    ]);
    if spec.real_nodes {
        // Real kubelets serve with certificates of the cluster CA (the
        // imitation nodes run no kubelet).
        apiserver.arg(format!("--kubelet-certificate-authority={}", p("ca.crt")));
    }
    let mut kcm = Command::new(tools.path("kube-controller-manager")?);
    kcm.args([
        format!(
            "--kubeconfig={}",
            spec.dir.join("controller-manager.kubeconfig").display()
        ),
        // serviceaccount-token fills ServiceAccount token Secrets (linked
        // clusters read each other with one); the namespace controller
        // finishes deleting namespaces (the chart's links namespace); the
        // root CA publisher writes kube-root-ca.crt in every namespace (a
        // link's kubeconfig takes the CA from it). With
        // imitation nodes no more: the node lifecycle controller would
        // taint and evict nodes that have no kubelet. Real nodes get them
        // all (kube-root-ca.crt for every pod's token volume, ReplicaSets,
        // EndpointSlices, ...).
        if spec.real_nodes {
            "--controllers=*".to_string()
        } else {
            "--controllers=node-ipam-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,root-ca-certificate-publisher-controller".to_string()
        },
        format!("--service-account-private-key-file={}", p("sa.key")),
        format!("--root-ca-file={}", p("ca.crt")),
        "--allocate-node-cidrs=true".to_string(),
        format!("--cluster-cidr={}", cidrs.join(",")),
        format!("--service-cluster-ip-range={}", spec.service_ranges()),
        "--leader-elect=false".to_string(),
        "--secure-port=0".to_string(),
        "--use-service-account-credentials=true".to_string(),
    ]);
    // The per-family flags are refused by a single-stack cluster.
    let has_v4 = spec.cluster_cidrs.iter().any(|c| c.addr().is_ipv4());
    let has_v6 = spec.cluster_cidrs.iter().any(|c| c.addr().is_ipv6());
    match (has_v4, has_v6) {
        (true, true) => kcm.args([
            "--node-cidr-mask-size-ipv4=24",
            "--node-cidr-mask-size-ipv6=64",
        ]),
        (true, false) => kcm.arg("--node-cidr-mask-size=24"),
        _ => kcm.arg("--node-cidr-mask-size=64"),
    };
    let mut scheduler = Command::new(tools.path("kube-scheduler")?);
    scheduler.args([
        format!(
            "--kubeconfig={}",
            spec.dir.join("scheduler.kubeconfig").display()
        ),
        "--leader-elect=false".to_string(),
        "--secure-port=0".to_string(),
    ]);
    for (component, name, command) in [
        (Component::Etcd, "etcd", etcd),
        (Component::ApiServer, "kube-apiserver", apiserver),
        (Component::ControllerManager, "kube-controller-manager", kcm),
        (Component::Scheduler, "kube-scheduler", scheduler),
    ] {
        if !components.contains(&component)
            || (component == Component::Scheduler && !spec.real_nodes)
        {
            continue;
        }
        let log = spec.log(name);
        let pid = place.spawn_daemon(command, name, &log)?;
        record(Daemon {
            name: format!("{}/{name}", spec.cluster),
            pid,
            netns: spec.netns.clone(),
            log,
        })?;
    }
    Ok(())
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until the apiserver answers `/readyz` with "ok" through the admin
/// kubeconfig; fails early, with its log, when a daemon dies.
pub async fn wait_ready(
    spec: &ControlPlaneSpec,
    daemons: &[Daemon],
    timeout: Duration,
) -> Result<kube::Client, ControlPlaneError> {
    let client = kubeconfig::client(&spec.admin_kubeconfig()).await?;
    let mut progress = Progress::new(
        format!("apiserver of cluster {}", spec.cluster),
        Duration::from_secs(15),
    );
    loop {
        for d in daemons {
            if !netns::alive(d.pid) {
                return Err(ControlPlaneError::Died {
                    name: d.name.clone(),
                    log: d.log.clone(),
                    tail: log_tail(&d.log, 20),
                });
            }
        }
        let request = http_get("/readyz");
        let last = match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(client),
            Ok(body) => failing_checks(&body),
            Err(e) => failing_checks(&e.to_string()),
        };
        if progress.elapsed() > timeout {
            return Err(ControlPlaneError::NotReady {
                url: spec.apiserver_url(),
                seconds: timeout.as_secs(),
                last,
                dir: spec.dir.clone(),
            });
        }
        progress.tick(timeout, || last.clone());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The checks a `/readyz` answer (or an error quoting it, with escaped
/// newlines) says failed, as `a, b`; the text itself when it names none.
fn failing_checks(text: &str) -> String {
    let mut failed: Vec<&str> = Vec::new();
    for name in text
        .split("[-]")
        .skip(1)
        .filter_map(|part| part.split_once(" failed").map(|(name, _)| name.trim()))
    {
        // An error quotes the answer more than once.
        if !failed.contains(&name) {
            failed.push(name);
        }
    }
    if failed.is_empty() {
        text.chars().take(300).collect()
    } else {
        format!("failing: {}", failed.join(", "))
    }
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .expect("a GET with a literal path is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ranges_follow_the_pod_families() {
        let v4: IpNet = "10.244.0.0/16".parse().unwrap();
        let v6: IpNet = "fd00:10:244::/56".parse().unwrap();
        let ranges = |cidrs: &[IpNet]| -> Vec<String> {
            service_cidrs(cidrs).iter().map(|c| c.to_string()).collect()
        };
        assert_eq!(ranges(&[v4]), ["10.96.0.0/16"]);
        assert_eq!(ranges(&[v6]), ["fd00:10:96::/112"]);
        assert_eq!(ranges(&[v4, v6]), ["10.96.0.0/16", "fd00:10:96::/112"]);
        assert_eq!(service_cidr(&[v6]).to_string(), "fd00:10:96::/112");
        assert_eq!(service_cidr(&[v4, v6]).to_string(), "10.96.0.0/16");
    }

    #[test]
    fn readyz_answers_shrink_to_the_failing_checks() {
        let body = "[+]ping ok\n[-]informer-sync failed: reason withheld\n[+]log ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\nreadyz check failed";
        assert_eq!(
            failing_checks(body),
            "failing: informer-sync, poststarthook/rbac/bootstrap-roles"
        );
        let escaped = body.replace('\n', "\\n");
        assert_eq!(failing_checks(&escaped), failing_checks(body));
        let twice = format!("{escaped} (details: {escaped})");
        assert_eq!(failing_checks(&twice), failing_checks(body));
        assert_eq!(failing_checks("connection refused"), "connection refused");
    }
}
