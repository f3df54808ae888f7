//! Real nodes: a lab node that runs what a Kubernetes node runs — containerd
//! with runc (containerd 2 or Debian's 1.6, see [`runtime`]), kube-proxy (nftables mode) for Services, and a
//! kubelet v1.34.4 that registers its own Node,
//! turns Ready only once a CNI configuration exists, and creates the pods
//! the scheduler places on it through CRI (so trellis-cni is called by
//! containerd, as on a real cluster).
//!
//! Many such nodes share one machine: each has its network namespace, one
//! mount namespace for all its processes (held by a process of its own, so
//! that containerd sees the volumes the kubelet mounts) and a UTS namespace
//! with the node's name as hostname (hostNetwork pods answer with it, as on
//! a real node), private directories
//! bind-mounted over the standard paths, its own cgroup root in every cgroup
//! v1 controller, its own sockets and logs, and private copies of the
//! global sysctls a kubelet writes at start. Teardown kills what the cgroups
//! hold and removes them ([`remove_cgroups`]).
//!
//! Each kubelet and kube-proxy has its own credentials ([`credentials`]);
//! the kubelet serves with a certificate of the cluster CA and authorizes
//! requests with the API server (webhook), and points pods at the cluster
//! DNS ([`crate::cluster_dns`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use credentials::NodeCredentials;
pub use runtime::{ContainerRuntime, PAUSE_IMAGE};

pub mod credentials;
pub mod runtime;

use crate::deadline;
use crate::node::private_dir;
use crate::state::{Daemon, NodeState};
use crate::tools::Tools;

#[derive(Debug, thiserror::Error)]
pub enum RealNodeError {
    #[error("real node {node}: {what}: {source}")]
    Io {
        node: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("real node {node}: {what} (see {log})")]
    NotUp {
        node: String,
        what: String,
        log: String,
    },
    #[error("real node {node}: importing image {image}: {message}")]
    Image {
        node: String,
        image: String,
        message: String,
    },
    #[error(transparent)]
    Tools(#[from] crate::tools::ToolsError),
    #[error("real node {node}: its credentials: {source}")]
    Credentials {
        node: String,
        #[source]
        source: credentials::CredentialsError,
    },
}

/// Directories of a real node beside Trellis's own, private to it.
const RUNTIME_DIRS: [&str; 5] = [
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/run/containerd",
    "/var/log/pods",
    "/var/log/containers",
];

/// Global sysctls a kubelet writes at start: each node gets its own file.
const SHADOWED_SYSCTLS: [&str; 5] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// The images every real node holds (built here: no registry is reachable).
pub const NODE_IMAGES: [&str; 3] = ["pause", "busybox", "coredns"];

/// How long containerd may take to listen, and the kubelet to register.
const CONTAINERD_UP: Duration = Duration::from_secs(30);
const KUBELET_REGISTERED: Duration = Duration::from_secs(60);

/// The cgroup root of a node (one per lab and node, in every controller).
pub fn cgroup_root(lab: &str, node: &str) -> String {
    format!("trellis-lab-{lab}-{node}")
}

/// Every cgroup v1 controller's mount (and the unified hierarchy runc also
/// writes to).
fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.is_symlink() && p.is_dir())
        .collect()
}

/// Kills every process in the cgroups of `lab`'s real nodes and removes
/// them (deepest first). "Already gone" counts as done; the errors left
/// are returned.
pub fn remove_cgroups(lab: &str) -> Vec<String> {
    let prefix = format!("trellis-lab-{lab}-");
    let mut errors = Vec::new();
    for mount in cgroup_mounts() {
        let Ok(entries) = std::fs::read_dir(&mount) else {
            continue;
        };
        for root in entries.flatten().map(|e| e.path()) {
            let ours = root
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix));
            if !ours || !root.is_dir() {
                continue;
            }
            let mut dirs = Vec::new();
            collect_dirs(&root, &mut dirs);
            for dir in &dirs {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            // Deepest first; a cgroup empties a moment after its last kill.
            for dir in dirs.iter().rev() {
                let mut removed = false;
                for _ in 0..50 {
                    match std::fs::remove_dir(dir) {
                        Ok(()) => removed = true,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed = true,
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                    if removed {
                        break;
                    }
                }
                if !removed {
                    errors.push(format!("cgroup {} would not go", dir.display()));
                }
            }
        }
    }
    errors
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Where the lab keeps the images nodes import (built by
/// `tools/image/build.sh` when missing).
pub fn image_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images")
}

/// The archive of `image`, built when missing.
pub fn image_archive(image: &str) -> Result<PathBuf, RealNodeError> {
    let archive = image_dir().join(format!("{image}.oci.tar"));
    if archive.is_file() {
        return Ok(archive);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/image/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RealNodeError::Io {
            node: String::new(),
            what: format!("running {}", script.display()),
            source,
        })?;
    if !out.status.success() || !archive.is_file() {
        return Err(RealNodeError::Image {
            node: String::new(),
            image: image.into(),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(archive)
}

/// What starting a real node needs to know.
#[derive(Debug, Clone)]
pub struct RealNodeSpec<'a> {
    pub lab: &'a str,
    pub node: &'a NodeState,
    /// The kubelet's and kube-proxy's own credentials.
    pub credentials: &'a NodeCredentials,
    /// The cluster's pod CIDRs (kube-proxy tells pod traffic by them).
    pub cluster_cidrs: &'a [ipnet::IpNet],
    /// The cluster DNS Service's address, the pods' nameserver.
    pub cluster_dns: std::net::IpAddr,
    pub runtime: ContainerRuntime,
}

impl RealNodeSpec<'_> {
    fn dir(&self, standard: &str) -> PathBuf {
        private_dir(&self.node.dir, standard)
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RealNodeError {
        let (node, what) = (self.node.name.clone(), what.into());
        move |source| RealNodeError::Io { node, what, source }
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, RealNodeError> {
        let path = self.node.dir.join(name);
        std::fs::write(&path, text).map_err(self.io(format!("writing {}", path.display())))?;
        Ok(path)
    }

    /// The node's private directories, cgroups and sysctl copies.
    fn prepare(&self) -> Result<(), RealNodeError> {
        for d in RUNTIME_DIRS {
            let dir = self.dir(d);
            std::fs::create_dir_all(&dir)
                .map_err(self.io(format!("creating {}", dir.display())))?;
        }
        for s in SHADOWED_SYSCTLS {
            let copy = self.node.dir.join("sysctl").join(s);
            std::fs::create_dir_all(copy.parent().expect("has a parent"))
                .map_err(self.io("creating the sysctl copies"))?;
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(s)).unwrap_or_default();
            std::fs::write(&copy, value).map_err(self.io(format!("writing {}", copy.display())))?;
        }
        let root = cgroup_root(self.lab, &self.node.name);
        for mount in cgroup_mounts() {
            let dir = mount.join(&root);
            std::fs::create_dir_all(&dir)
                .map_err(self.io(format!("creating cgroup {}", dir.display())))?;
        }
        // A cpuset cgroup takes no task before it has CPUs and memory nodes.
        let cpuset = Path::new("/sys/fs/cgroup/cpuset");
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(cpuset.join(file)) {
                std::fs::write(cpuset.join(&root).join(file), value)
                    .map_err(self.io(format!("filling {file}")))?;
            }
        }
        Ok(())
    }

    /// The script the node's namespace holder runs: the node's hostname,
    /// every private directory and sysctl copy mounted over its standard
    /// path, then it sleeps (its namespaces live as long as it does).
    fn holder_script(&self) -> String {
        // The node's own hostname (its UTS namespace, which containerd's
        // hostNetwork pods share, as on a real node).
        let mut script = format!(
            "set -e\nmount --make-rslave /\nhostname '{}'\n",
            self.node.name
        );
        let trellis = trellis_mesh::names::NODE_PRIVATE_DIRS;
        for d in trellis.iter().chain(RUNTIME_DIRS.iter()) {
            let target = crate::node::mount_target(d);
            script.push_str(&format!(
                "mkdir -p '{t}'\nmount --bind '{s}' '{t}'\n",
                s = self.dir(d).display(),
                t = target.display()
            ));
        }
        for s in SHADOWED_SYSCTLS {
            script.push_str(&format!(
                "mount --bind '{}' '/proc/sys/{s}'\n",
                self.node.dir.join("sysctl").join(s).display()
            ));
        }
        script.push_str("exec sleep infinity\n");
        script
    }

    fn kubelet_config(&self) -> String {
        let address = self
            .node
            .v4
            .map(|a| a.to_string())
            .or(self.node.v6.map(|a| a.to_string()))
            .unwrap_or_else(|| "0.0.0.0".into());
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /{root}
failCgroupV1: false
failSwapOn: false
address: {address}
readOnlyPort: 0
podLogsDir: /var/log/pods
containerRuntimeEndpoint: unix://{socket}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {client_ca}
authorization:
  mode: Webhook
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
localStorageCapacityIsolation: false
resolvConf: /etc/resolv.conf
clusterDNS: [{dns}]
clusterDomain: {domain}
"#,
            root = cgroup_root(self.lab, &self.node.name),
            dns = self.cluster_dns,
            client_ca = self.credentials.client_ca.display(),
            cert = self.credentials.serving_cert.display(),
            key = self.credentials.serving_key.display(),
            domain = crate::cluster_dns::DOMAIN,
            socket = runtime::SOCKET,
        )
    }
}

impl RealNodeSpec<'_> {
    /// kube-proxy in nftables mode; it changes no global sysctl (the
    /// conntrack ones are the machine's, shared by every node).
    fn kube_proxy_config(&self) -> String {
        let cidrs: Vec<String> = self.cluster_cidrs.iter().map(|c| c.to_string()).collect();
        format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node}
clusterCIDR: {cidrs}
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            kubeconfig = self.credentials.kube_proxy_kubeconfig.display(),
            node = self.node.name,
            cidrs = cidrs.join(","),
        )
    }
}

/// Starts `command` as a daemon of the node (its own session, output to
/// `log`).
fn spawn(mut command: Command, log: &Path) -> std::io::Result<i32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    Ok(command.spawn()?.id() as i32)
}

/// A command run inside the node's namespaces (network and mount).
pub fn in_node(holder: i32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--target={holder}"))
        .args(["--mount", "--net", "--uts", "--"])
        .arg(program);
    c
}

/// The pid of a node's mount-namespace holder, from its daemons.
pub fn holder_of<'a>(daemons: impl IntoIterator<Item = &'a Daemon>, node: &str) -> Option<i32> {
    let name = format!("{node}/mounts");
    daemons.into_iter().find(|d| d.name == name).map(|d| d.pid)
}

/// Starts a real node: the namespace holder, containerd (with the node
/// images imported) and the kubelet; `record` persists each daemon as soon
/// as it runs. Returns when containerd answers; the kubelet registers its
/// Node on its own (see [`wait_registered`]).
pub fn start(
    spec: &RealNodeSpec<'_>,
    tools: &Tools,
    mut record: impl FnMut(Daemon) -> Result<(), RealNodeError>,
) -> Result<(), RealNodeError> {
    let node = &spec.node.name;
    spec.prepare()?;
    let script = spec.write("mounts.sh", &spec.holder_script())?;
    let log = |name: &str| spec.node.dir.join(format!("{name}.log"));
    let mut holder = Command::new("nsenter");
    holder
        .arg(format!("--net=/run/netns/{}", spec.node.netns))
        .args([
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "slave",
            "bash",
        ])
        .arg(&script);
    // Starts `command` as the node's daemon `what`, recorded at once.
    let mut launch = |what: &str, command: Command| -> Result<i32, RealNodeError> {
        let pid = spawn(command, &log(what)).map_err(spec.io(format!("starting {what}")))?;
        record(Daemon {
            name: format!("{node}/{what}"),
            pid,
            netns: spec.node.netns.clone(),
            log: log(what),
        })?;
        Ok(pid)
    };
    let holder_pid = launch("mounts", holder)?;
    // The holder execs `sleep` once every mount is in place.
    crate::mesh::wait_for(
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(format!("/proc/{holder_pid}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
        },
        String::new,
    )
    .map_err(|_| RealNodeError::NotUp {
        node: node.clone(),
        what: "the mounts of the node did not come up".into(),
        log: log("mounts").display().to_string(),
    })?;

    let config = spec.write(
        "containerd.toml",
        &spec.runtime.config(spec.runtime.runc(tools)?),
    )?;
    let mut containerd = spec
        .runtime
        .command(tools, "containerd", |p| in_node(holder_pid, p))?;
    containerd.arg("--config").arg(&config);
    launch("containerd", containerd)?;
    let socket = spec.dir("/run/containerd").join("containerd.sock");
    crate::mesh::wait_for(CONTAINERD_UP, || socket.exists(), String::new).map_err(|_| {
        RealNodeError::NotUp {
            node: node.clone(),
            what: "containerd did not listen".into(),
            log: log("containerd").display().to_string(),
        }
    })?;
    for image in NODE_IMAGES {
        import_image(holder_pid, node, &image_archive(image)?)?;
    }

    let kubelet_config = spec.write("kubelet.yaml", &spec.kubelet_config())?;
    let node_ips: Vec<String> = spec
        .node
        .v4
        .map(|a| a.to_string())
        .into_iter()
        .chain(spec.node.v6.map(|a| a.to_string()))
        .collect();
    let mut kubelet = in_node(holder_pid, tools.path("kubelet")?);
    kubelet
        .arg(format!("--config={}", kubelet_config.display()))
        .arg(format!(
            "--kubeconfig={}",
            spec.credentials.kubelet_kubeconfig.display()
        ))
        .arg(format!("--hostname-override={node}"))
        .arg(format!("--node-ip={}", node_ips.join(",")))
        .args(["--root-dir=/var/lib/kubelet", "--v=1"]);
    launch("kubelet", kubelet)?;

    let proxy_config = spec.write("kube-proxy.yaml", &spec.kube_proxy_config())?;
    let mut proxy = in_node(holder_pid, tools.path("kube-proxy")?);
    proxy.arg(format!("--config={}", proxy_config.display()));
    launch("kube-proxy", proxy)?;
    Ok(())
}

/// Imports an OCI archive into the node's containerd (namespace `k8s.io`,
/// where the kubelet's images live). Debian's ctr serves both runtimes:
/// containerd 2 keeps the v1 API it speaks.
pub fn import_image(holder: i32, node: &str, archive: &Path) -> Result<(), RealNodeError> {
    let out = in_node(holder, "ctr")
        .args([
            "--address",
            runtime::SOCKET,
            "-n",
            "k8s.io",
            "images",
            "import",
        ])
        .arg(archive)
        .output()
        .map_err(|source| RealNodeError::Io {
            node: node.into(),
            what: "running ctr".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RealNodeError::Image {
            node: node.into(),
            image: archive.display().to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Waits until the kubelet of `node` registered its Node (it reports a
/// kubelet version).
pub async fn wait_registered(
    client: &kube::Client,
    node: &str,
    log: &Path,
) -> Result<(), RealNodeError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let limit = deadline::scaled(KUBELET_REGISTERED);
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(n)) = api.get_opt(node).await {
            let version = n
                .status
                .and_then(|s| s.node_info)
                .map(|i| i.kubelet_version)
                .unwrap_or_default();
            if !version.is_empty() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(RealNodeError::NotUp {
        node: node.into(),
        what: format!("the kubelet did not register within {} s", limit.as_secs()),
        log: log.display().to_string(),
    })
}

/// The pid of a running container (`containerd://ID` as a pod's status
/// gives it) on the node whose namespace holder is `holder`: a process in
/// the pod's network namespace.
pub fn container_pid(holder: i32, container_id: &str) -> Option<i32> {
    let id = container_id.trim_start_matches("containerd://");
    let out = in_node(holder, "ctr")
        .args(["--address", runtime::SOCKET, "-n", "k8s.io", "tasks", "ls"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == id).then(|| fields.next()?.parse().ok())?
        })
}
