//! The last known Nodes and Peers of each linked cluster, kept on the node
//! (one JSON file per cluster under the state directory, as the dataplane
//! keeps its state): an agent restarted while a linked cluster's API server
//! does not answer meshes with that cluster's nodes as last seen, instead
//! of dropping cross-cluster traffic that was flowing, until the remote
//! answers again. What the file says is checked like a live listing (the
//! link's declared ranges, overlaps): it only ever held what the cluster
//! itself served.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use trellis_api::Peer;
use trellis_mesh::NodeInfo;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} does not parse ({source}): ignored; it is written again once the cluster answers"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("linked cluster name {0:?} cannot name a file (empty, `.`-led or with `/`)")]
    BadName(String),
}

/// A Node as the mesh reads it ([`NodeInfo`]), in the file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedNode {
    pub name: String,
    pub created: i64,
    pub pod_cidrs: Vec<String>,
    pub internal_ips: Vec<IpAddr>,
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl From<&NodeInfo> for CachedNode {
    fn from(n: &NodeInfo) -> Self {
        CachedNode {
            name: n.name.clone(),
            created: n.created,
            pod_cidrs: n.pod_cidrs.clone(),
            internal_ips: n.internal_ips.clone(),
            annotations: n.annotations.clone(),
            zone: n.zone.clone(),
        }
    }
}

impl From<&CachedNode> for NodeInfo {
    fn from(n: &CachedNode) -> Self {
        NodeInfo {
            name: n.name.clone(),
            created: n.created,
            pod_cidrs: n.pod_cidrs.clone(),
            internal_ips: n.internal_ips.clone(),
            annotations: n.annotations.clone(),
            zone: n.zone.clone(),
        }
    }
}

/// What one linked cluster served last.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<CachedNode>,
    pub peers: Vec<Peer>,
}

/// The directory of the snapshots.
#[derive(Debug, Clone)]
pub struct RemoteCache {
    dir: PathBuf,
}

impl RemoteCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RemoteCache { dir: dir.into() }
    }

    fn path(&self, cluster: &str) -> Result<PathBuf, CacheError> {
        if cluster.is_empty() || cluster.starts_with('.') || cluster.contains('/') {
            return Err(CacheError::BadName(cluster.into()));
        }
        Ok(self.dir.join(format!("{cluster}.json")))
    }

    /// The snapshot of `cluster`; `None` when there is none.
    pub fn load(&self, cluster: &str) -> Result<Option<Snapshot>, CacheError> {
        let path = self.path(cluster)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Read { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| CacheError::Parse { path, source })
    }

    /// Writes `text` (a serialized [`Snapshot`]) as the snapshot of
    /// `cluster`, whole or not at all (a temporary file renamed over it).
    pub fn save(&self, cluster: &str, text: &str) -> Result<(), CacheError> {
        let path = self.path(cluster)?;
        let write = |source| CacheError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(write)?;
        let partial = path.with_extension("json.partial");
        let mut file = std::fs::File::create(&partial).map_err(write)?;
        file.write_all(text.as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        std::fs::rename(&partial, &path).map_err(write)
    }

    /// Writes `token`, the bearer token the link to `cluster` uses, to the
    /// file its client reads it from (readable by its owner only, whole or
    /// not at all); returns that file. A renewed token is written over it,
    /// and the client picks it up within a minute without restarting.
    pub fn save_token(&self, cluster: &str, token: &str) -> Result<PathBuf, CacheError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(cluster)?.with_extension("token");
        let write = |source| CacheError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(write)?;
        let partial = path.with_extension("token.partial");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(write)?;
        file.write_all(token.as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        std::fs::rename(&partial, &path).map_err(write)?;
        Ok(path)
    }

    /// Removes the snapshot and the token file of `cluster` (unlinked);
    /// none is no error.
    pub fn remove(&self, cluster: &str) -> Result<(), CacheError> {
        let path = self.path(cluster)?;
        for path in [path.clone(), path.with_extension("token")] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Remove { path, source }),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            created: 7,
            pod_cidrs: vec!["10.245.1.0/24".into()],
            internal_ips: vec!["192.0.2.21".parse().unwrap()],
            annotations: BTreeMap::from([("trellis.dev/public-key".into(), "k".into())]),
            zone: None,
        }
    }

    #[test]
    fn a_snapshot_comes_back_as_it_was_saved_and_goes_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RemoteCache::new(dir.path().join("linked-clusters"));
        assert!(cache.load("far").unwrap().is_none(), "none yet");
        let snapshot = Snapshot {
            nodes: vec![CachedNode::from(&node("far-n1"))],
            peers: Vec::new(),
        };
        cache
            .save("far", &serde_json::to_string(&snapshot).unwrap())
            .unwrap();
        let back = cache.load("far").unwrap().expect("saved");
        assert_eq!(NodeInfo::from(&back.nodes[0]), node("far-n1"));
        cache.remove("far").unwrap();
        assert!(cache.load("far").unwrap().is_none());
        cache.remove("far").expect("already gone is no error");
    }

    #[test]
    fn a_damaged_file_or_a_name_that_is_no_file_name_is_an_error_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RemoteCache::new(dir.path());
        std::fs::write(dir.path().join("far.json"), "{not json").unwrap();
        let e = cache.load("far").unwrap_err().to_string();
        assert!(
            e.contains("far.json") && e.contains("does not parse"),
            "{e}"
        );
        for bad in ["", "../etc", ".hidden", "a/b"] {
            assert!(
                matches!(cache.load(bad), Err(CacheError::BadName(_))),
                "{bad}"
            );
        }
    }
}
