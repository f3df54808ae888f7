//! Simulated nodes: a network namespace on the underlay, private copies of
//! the directories Trellis writes (bind-mounted over the standard paths for
//! every process run "on" the node), and a Node object registered with the
//! cluster, whose pod CIDRs the controller-manager assigns.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::netns::Placement;
use crate::state::NodeState;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("preparing node directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registering Node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("Node {node} got no pod CIDR within {seconds} s: is kube-controller-manager running? (see its log)")]
    NoPodCidr { node: String, seconds: u64 },
}

/// The node directory that stands in for a standard path: `/var/lib/trellis`
/// becomes `<node dir>/var-lib-trellis`.
pub fn private_dir(node_dir: &Path, standard: &str) -> PathBuf {
    node_dir.join(standard.trim_start_matches('/').replace('/', "-"))
}

/// The placement of a process run on `node`: its namespace and its own
/// directories over the standard paths.
pub fn placement(node: &NodeState) -> Placement {
    Placement {
        netns: node.netns.clone(),
        binds: trellis_mesh::names::NODE_PRIVATE_DIRS
            .iter()
            .map(|std_path| (private_dir(&node.dir, std_path), mount_target(std_path)))
            .collect(),
        read_only: Vec::new(),
    }
}

/// `/var/run` is a symlink to `/run` on current systems; mount on the real
/// directory so the mount is visible through both paths.
pub fn mount_target(standard: &str) -> PathBuf {
    match standard.strip_prefix("/var/run/") {
        Some(rest) => Path::new("/run").join(rest),
        None => PathBuf::from(standard),
    }
}

/// Where a path of the node (a hostPath) is on the machine: under one of the
/// node's private directories when it is or lies below a standard path,
/// else the path itself (`/proc/sys/net`, `/dev/net/tun`).
pub fn host_path(node_dir: &Path, path: &str) -> PathBuf {
    let wanted = mount_target(path);
    for std_path in trellis_mesh::names::NODE_PRIVATE_DIRS {
        if let Ok(rest) = wanted.strip_prefix(mount_target(std_path)) {
            let private = private_dir(node_dir, std_path);
            return match rest.as_os_str().is_empty() {
                true => private,
                false => private.join(rest),
            };
        }
    }
    wanted
}

/// Creates the node's private directories, and the standard paths they are
/// mounted over when the host lacks them. Returns the mount points it had
/// to create (the lab removes them with the last lab). The node's CNI bin
/// dir gets the reference plugins.
pub fn prepare_dirs(node_dir: &Path, cni_plugins: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NodeError::Dir { path, source }
    };
    let mut created = Vec::new();
    for std_path in trellis_mesh::names::NODE_PRIVATE_DIRS {
        let private = private_dir(node_dir, std_path);
        std::fs::create_dir_all(&private).map_err(dir_err(&private))?;
        let target = mount_target(std_path);
        // Record every directory created on the way (`/opt/cni` as well as
        // `/opt/cni/bin`), so that they can all be removed again.
        let missing: Vec<PathBuf> = target
            .ancestors()
            .take_while(|p| !p.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(&target).map_err(dir_err(&target))?;
        created.extend(missing);
    }
    let bin = private_dir(node_dir, trellis_mesh::names::DEFAULT_CNI_BIN_DIR);
    if let Ok(entries) = std::fs::read_dir(cni_plugins) {
        for entry in entries.flatten() {
            let link = bin.join(entry.file_name());
            if !link.exists() {
                std::os::unix::fs::symlink(entry.path(), &link).map_err(dir_err(&link))?;
            }
        }
    }
    Ok(created)
}

/// A Node object as someone with a node credential could register it:
/// `public_key` and `endpoint` annotations and `pod_cidr` as its only pod
/// CIDR (tests of what the agents refuse).
pub fn claiming_node(name: &str, public_key: &str, endpoint: &str, pod_cidr: &str) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": {
            trellis_mesh::names::ANNOTATION_PUBLIC_KEY: public_key,
            trellis_mesh::names::ANNOTATION_ENDPOINT: endpoint,
        }},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    }))
    .expect("a Node from literal fields")
}

/// Creates the Node object (labels as a kubelet sets them) and its
/// InternalIP addresses; an existing Node is updated instead.
pub async fn register(
    client: &kube::Client,
    name: &str,
    addresses: &[IpAddr],
) -> Result<(), NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let err = |source| NodeError::Register {
        node: name.to_string(),
        source,
    };
    let mut node = Node::default();
    node.metadata.name = Some(name.to_string());
    node.metadata.labels = Some(BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("trellis.dev/lab".to_string(), "true".to_string()),
    ]));
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(err(e)),
    }
    set_addresses(client, name, addresses).await
}

/// Replaces the Node's addresses (InternalIP per address, plus Hostname).
pub async fn set_addresses(
    client: &kube::Client,
    name: &str,
    addresses: &[IpAddr],
) -> Result<(), NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut list: Vec<NodeAddress> = addresses
        .iter()
        .map(|a| NodeAddress {
            type_: "InternalIP".to_string(),
            address: a.to_string(),
        })
        .collect();
    list.push(NodeAddress {
        type_: "Hostname".to_string(),
        address: name.to_string(),
    });
    let status =
        serde_json::json!({"status": NodeStatus { addresses: Some(list), ..Default::default() }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|source| NodeError::Register {
            node: name.to_string(),
            source,
        })?;
    Ok(())
}

/// Waits until the controller-manager has assigned the Node's pod CIDRs
/// (one per cluster address family); returns them.
pub async fn wait_pod_cidrs(
    client: &kube::Client,
    name: &str,
    families: usize,
    timeout: Duration,
) -> Result<Vec<String>, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        if let Ok(node) = api.get(name).await {
            let cidrs = node.spec.and_then(|s| s.pod_cidrs).unwrap_or_default();
            if cidrs.len() >= families {
                return Ok(cidrs);
            }
        }
        if start.elapsed() > timeout {
            return Err(NodeError::NoPodCidr {
                node: name.to_string(),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &str) -> NodeState {
        NodeState {
            name: "a-n1".into(),
            cluster: "a".into(),
            netns: "tl-a-a-n1".into(),
            underlay_index: Some(3),
            v4: None,
            v6: None,
            dir: dir.into(),
            nat: None,
        }
    }

    #[test]
    fn every_trellis_directory_is_private_to_the_node() {
        let p = placement(&node("/labs/a/nodes/a-n1"));
        assert_eq!(p.netns, "tl-a-a-n1");
        let targets: Vec<_> = p.binds.iter().map(|(_, t)| t.clone()).collect();
        for t in [
            "/var/lib/trellis",
            "/etc/cni/net.d",
            "/opt/cni/bin",
            "/run/wireguard",
        ] {
            assert!(targets.contains(&PathBuf::from(t)), "{t} in {targets:?}");
        }
        for (source, _) in &p.binds {
            assert!(source.starts_with("/labs/a/nodes/a-n1"), "{source:?}");
        }
    }

    #[test]
    fn host_paths_of_a_node_are_its_private_dirs() {
        let n = Path::new("/n");
        assert_eq!(
            host_path(n, "/var/lib/trellis"),
            PathBuf::from("/n/var-lib-trellis")
        );
        assert_eq!(
            host_path(n, "/var/run/wireguard"),
            PathBuf::from("/n/var-run-wireguard")
        );
        assert_eq!(
            host_path(n, "/run/wireguard/x"),
            PathBuf::from("/n/var-run-wireguard/x")
        );
        assert_eq!(
            host_path(n, "/proc/sys/net"),
            PathBuf::from("/proc/sys/net")
        );
        assert_eq!(
            host_path(n, "/var/lib/trellis-other"),
            PathBuf::from("/var/lib/trellis-other")
        );
    }

    #[test]
    fn private_dir_names_follow_the_standard_path() {
        assert_eq!(
            private_dir(Path::new("/n"), "/var/lib/trellis"),
            PathBuf::from("/n/var-lib-trellis")
        );
    }
}
