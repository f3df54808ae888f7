//! The CNI configuration list the agent writes for the runtime: trellis-cni
//! with the node's pod CIDRs and MTU, then portmap. Written atomically
//! (temp file + rename), and only when its content changes.
//!
//! Versions: `cniVersion` is 1.0.0, which every libcni since 1.0 reads
//! (containerd 1.6 and 1.7, CRI-O); `cniVersions` lists 1.1.0 too, and a
//! libcni of 1.2 or newer (containerd 2.x) picks the highest version of it
//! that it implements (the CNI 1.1 spec's version selection). A runtime
//! that knows only `cniVersion` never sees 1.1.0, whose results it could
//! not read.

use std::path::Path;

use ipnet::IpNet;
use serde_json::json;

/// The network's name (runtimes and trellis-cni's IPAM store use it).
pub const NETWORK: &str = "trellis";
/// What every runtime reads: libcni before 1.2 knows only this field.
pub const CNI_VERSION: &str = "1.0.0";
/// What newer runtimes choose from (the highest they implement).
pub const CNI_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// The conflist for this node.
pub fn conflist(
    pod_cidrs: &[IpNet],
    mtu: u32,
    ipam_dir: &Path,
    mesh_interface: &str,
) -> serde_json::Value {
    json!({
        "cniVersion": CNI_VERSION,
        "cniVersions": CNI_VERSIONS,
        "name": NETWORK,
        "plugins": [
            {
                "type": "trellis-cni",
                "mtu": mtu,
                "podCIDRs": pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "dataDir": ipam_dir,
                "meshInterface": mesh_interface,
            },
            {"type": "portmap", "backend": "nftables", "snat": true, "capabilities": {"portMappings": true}},
        ]
    })
}

/// Writes `value` to `path` if it differs from what is there; returns
/// whether it wrote.
pub fn write_if_changed(path: &Path, value: &serde_json::Value) -> std::io::Result<bool> {
    let text = serde_json::to_string_pretty(value).expect("conflist serializes") + "\n";
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // The runtime reads every *.conflist: the temp name must not end so.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// Removes the configuration at `path`; returns whether there was one.
pub fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_chains_portmap_after_trellis() {
        let v = conflist(
            &["10.244.1.0/24".parse().unwrap()],
            1420,
            Path::new("/var/lib/trellis/ipam"),
            "trellis",
        );
        assert_eq!(v["plugins"][0]["type"], "trellis-cni");
        assert_eq!(v["plugins"][0]["podCIDRs"][0], "10.244.1.0/24");
        assert_eq!(v["plugins"][0]["mtu"], 1420);
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["cniVersions"], serde_json::json!(["1.0.0", "1.1.0"]));
    }

    #[test]
    fn written_once_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.d/10-trellis.conflist");
        let v = conflist(
            &["10.244.1.0/24".parse().unwrap()],
            1420,
            Path::new("/x"),
            "trellis",
        );
        assert!(write_if_changed(&path, &v).unwrap());
        assert!(!write_if_changed(&path, &v).unwrap());
        assert!(!path.with_extension("tmp").exists());
        let changed = conflist(
            &["10.244.1.0/24".parse().unwrap()],
            1380,
            Path::new("/x"),
            "trellis",
        );
        assert!(write_if_changed(&path, &changed).unwrap());
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap(), "already gone counts as removed");
    }
}
