//! The CNI configuration list the agent writes for the runtime: trellis-cni
//! with the node's pod CIDRs and MTU, then portmap. Written atomically
//! (temp file + rename), and only when its content changes.

use std::path::Path;

use ipnet::IpNet;
use serde_json::json;

/// The conflist for this node.
pub fn conflist(
    pod_cidrs: &[IpNet],
    mtu: u32,
    ipam_dir: &Path,
    mesh_interface: &str,
) -> serde_json::Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "trellis",
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
    }

    #[test]
    fn written_once_and_atomically() {
        let dir = std::env::temp_dir().join(format!("trellis-conflist-{}", std::process::id()));
        let path = dir.join("10-trellis.conflist");
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
