//! The lab's state file: everything a lab has created, written after every
//! step, so `lab down` can remove it all even after the process that built
//! the lab was killed half-way.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::plan::IpFamily;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading lab state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab state {path} is corrupt ({source}); `trellis-lab down --name NAME` still removes the lab by its names")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing lab state {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where every lab keeps its directory (`$TRELLIS_LAB_ROOT`, by default
/// `/run/trellis-lab`: tmpfs, like `/run/netns`, so both vanish together on
/// reboot).
pub fn lab_root() -> PathBuf {
    std::env::var_os("TRELLIS_LAB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/trellis-lab"))
}

/// A process the lab started and keeps running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Daemon {
    pub name: String,
    pub pid: i32,
    pub netns: String,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    pub name: String,
    pub cluster: String,
    pub netns: String,
    /// Index on the underlay (addresses and switch port), unless behind NAT.
    pub underlay_index: Option<u8>,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// The node's own copies of the directories Trellis writes.
    pub dir: PathBuf,
    /// The NAT router in front of it, if any.
    pub nat: Option<RouterState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouterState {
    pub netns: String,
    pub mode: crate::nat::NatMode,
    pub underlay_index: u8,
    pub public_v4: Ipv4Addr,
    pub private_v4: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterState {
    pub name: String,
    pub index: u8,
    pub netns: String,
    pub underlay_index: u8,
    pub apiserver_url: String,
    pub cluster_cidrs: Vec<IpNet>,
    pub dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    /// Its nodes are real (containerd and a kubelet, see
    /// [`crate::real_node`]) rather than imitations.
    #[serde(default)]
    pub real_nodes: bool,
    /// The container runtime of its real nodes.
    #[serde(default)]
    pub runtime: crate::real_node::ContainerRuntime,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub ifname: String,
    pub network: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    pub name: String,
    pub slot: u8,
    pub family: IpFamily,
    pub dir: PathBuf,
    pub next_underlay_index: u8,
    pub next_router: u8,
    pub clusters: Vec<ClusterState>,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    pub daemons: Vec<Daemon>,
    #[serde(default)]
    pub machines: Vec<MachineState>,
}

/// A machine outside every cluster (a Peer's machine).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineState {
    pub name: String,
    pub netns: String,
    pub underlay_index: u8,
    pub v4: Option<std::net::Ipv4Addr>,
    pub v6: Option<std::net::Ipv6Addr>,
    pub dir: PathBuf,
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the state atomically (temp file + rename), so a kill never
    /// leaves half a file behind.
    pub fn save(&self) -> Result<(), StateError> {
        let path = Self::path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("lab state serializes");
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| StateError::Write { path, source })
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterState> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    pub fn nodes_of<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a NodeState> {
        self.nodes.iter().filter(move |n| n.cluster == cluster)
    }
}

/// An exclusive lock on the lab root, held while labs are created and while
/// the shared mount point record is changed. Released when dropped.
pub fn lock(root: &Path) -> Result<Flock<File>, StateError> {
    let path = root.join(".lock");
    let write_err = |source| StateError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(root).map_err(write_err)?;
    let file = File::create(&path).map_err(write_err)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StateError::Write {
        path: path.clone(),
        source: errno.into(),
    })
}

fn mountpoints_file(root: &Path) -> PathBuf {
    root.join("created-mountpoints.json")
}

/// The mount points labs created on the host (shared by all labs: the last
/// lab to go removes them). Call with the lock held.
pub fn created_mountpoints(root: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string(mountpoints_file(root))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Adds to the record of created mount points. Call with the lock held.
pub fn add_created_mountpoints(root: &Path, created: &[PathBuf]) -> Result<(), StateError> {
    if created.is_empty() {
        return Ok(());
    }
    let mut points = created_mountpoints(root);
    points.extend_from_slice(created);
    set_created_mountpoints(root, &points)
}

/// Replaces the record of created mount points. Call with the lock held.
pub fn set_created_mountpoints(root: &Path, points: &[PathBuf]) -> Result<(), StateError> {
    let path = mountpoints_file(root);
    let result = if points.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        std::fs::write(
            &path,
            serde_json::to_string(points).expect("paths serialize"),
        )
    };
    result.map_err(|source| StateError::Write { path, source })
}

/// Every lab directory under the root that holds a state file.
pub fn existing_labs(root: &Path) -> Vec<LabState> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| LabState::load(&e.path()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: PathBuf) -> LabState {
        LabState {
            name: "t".into(),
            slot: 1,
            family: IpFamily::Dual,
            dir,
            next_underlay_index: 10,
            next_router: 0,
            clusters: vec![],
            nodes: vec![],
            pods: vec![],
            daemons: vec![Daemon {
                name: "etcd".into(),
                pid: 42,
                netns: "tl-t-t-cp".into(),
                log: "/x".into(),
            }],
            machines: vec![],
        }
    }

    #[test]
    fn state_round_trips_and_is_listed() {
        let root = tempfile::TempDir::new().unwrap();
        let root = root.path();
        let state = sample(root.join("t"));
        state.save().unwrap();
        assert_eq!(LabState::load(&state.dir).unwrap(), state);
        assert_eq!(existing_labs(root), vec![state.clone()]);
    }

    #[test]
    fn mountpoint_record_round_trips_and_empties() {
        let root = tempfile::TempDir::new().unwrap();
        let root = root.path();
        let _lock = lock(root).unwrap();
        assert!(created_mountpoints(root).is_empty());
        let points = vec![PathBuf::from("/opt/cni"), PathBuf::from("/opt/cni/bin")];
        set_created_mountpoints(root, &points).unwrap();
        assert_eq!(created_mountpoints(root), points);
        set_created_mountpoints(root, &[]).unwrap();
        assert!(created_mountpoints(root).is_empty());
    }

    #[test]
    fn corrupt_state_says_how_to_recover() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("state.json"), "{not json").unwrap();
        let err = LabState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("down"), "{err}");
    }
}
