//! Network namespaces by identity (the device and inode of the nsfs file),
//! whatever path names them: a runtime's bind mount under /run/netns,
//! `/proc/PID/ns/net`, `/proc/self/ns/net`. Tells whether a path names the
//! plugin's own namespace, and lists the paths that still name the node's
//! other namespaces. Part of the kernel side: [`crate::netlink`] uses it.

use std::collections::HashSet;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where runtimes bind-mount pod network namespaces (containerd, CRI-O,
/// `ip netns`); /var/run is usually a link to /run, which the identities
/// sort out.
pub const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// The identity of a namespace: two paths name the same namespace exactly
/// when their files have the same device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    fn of(meta: &Metadata) -> Self {
        NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The identity of what `path` names (links followed, so
    /// `/proc/self/ns/net` is the caller's namespace).
    pub fn of_path(path: &Path) -> std::io::Result<Self> {
        std::fs::metadata(path).map(|m| Self::of(&m))
    }

    pub fn of_file(file: &File) -> std::io::Result<Self> {
        file.metadata().map(|m| Self::of(&m))
    }
}

/// The namespaces that a path still names, each once, opened, except
/// `own` (the plugin's namespace) and those in `skip`: the bind mounts
/// under [`NETNS_DIRS`] first, then `/proc/PID/ns/net` of each process (a
/// namespace only a process holds, as cri-dockerd passes CNI_NETNS). Only
/// files on the device of `own`, nsfs, are namespaces; the processes are
/// read only if the bind mounts did not have what the caller looks for.
pub fn named_namespaces(own: NetnsId, skip: &[NetnsId]) -> impl Iterator<Item = (PathBuf, File)> {
    let mut seen: HashSet<NetnsId> = skip.iter().copied().chain([own]).collect();
    let bind_mounts = NETNS_DIRS
        .into_iter()
        .flat_map(|dir| sorted_entries(Path::new(dir)));
    let processes = std::iter::once(Path::new("/proc")).flat_map(|proc| {
        sorted_entries(proc)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|p| p.join("ns/net"))
    });
    bind_mounts.chain(processes).filter_map(move |path| {
        let file = File::open(&path).ok()?;
        let id = NetnsId::of_file(&file).ok()?;
        (id.dev == own.dev && seen.insert(id)).then_some((path, file))
    })
}

/// The entries of `dir`, sorted (none when it cannot be read).
fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_the_same_namespace_have_one_identity() {
        let own = NetnsId::of_path(Path::new("/proc/self/ns/net")).unwrap();
        let by_pid = format!("/proc/{}/ns/net", std::process::id());
        assert_eq!(NetnsId::of_path(Path::new(&by_pid)).unwrap(), own);
        let file = File::open("/proc/thread-self/ns/net").unwrap();
        assert_eq!(NetnsId::of_file(&file).unwrap(), own);
        assert_ne!(
            NetnsId::of_path(Path::new("/proc/self/ns/uts")).unwrap(),
            own
        );
        assert!(NetnsId::of_path(Path::new("/proc/self/ns/no-such-namespace")).is_err());
    }

    #[test]
    fn the_own_namespace_is_never_listed_and_none_twice() {
        let own = NetnsId::of_path(Path::new("/proc/self/ns/net")).unwrap();
        let mut ids = HashSet::new();
        for (path, file) in named_namespaces(own, &[]) {
            let id = NetnsId::of_file(&file).unwrap();
            assert_ne!(id, own, "{}", path.display());
            assert!(ids.insert(id), "{} listed twice", path.display());
        }
    }
}
