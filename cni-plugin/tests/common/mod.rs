//! A throwaway node for the plugin's root tests: a network namespace with
//! its own CNI directories (passed by path, as CNI_PATH, NETCONFPATH and
//! dataDir allow), a "trellis" mesh interface, the real trellis-cni binary
//! and the reference plugins, and pods as namespaces. Everything is removed
//! when the node is dropped.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use trellis_e2e::netns::{self, Placement};
use trellis_e2e::{cmd, tools::Tools};

pub const POD_CIDR_V4: &str = "10.244.7.0/24";
pub const POD_CIDR_V6: &str = "fd00:10:244:7::/64";
/// The node's own address (on a bridge named node0), which pods must reach.
pub const NODE_ADDR: &str = "10.255.0.1";

/// `ip` commands making the "trellis" mesh interface: up with carrier, as
/// a WireGuard device is (this kernel has no dummy links; an empty bridge
/// has no carrier), so a veth pair.
pub const MESH_INTERFACE: [&[&str]; 3] = [
    &[
        "link",
        "add",
        "trellis",
        "type",
        "veth",
        "peer",
        "name",
        "mesh-peer",
    ],
    &["link", "set", "mesh-peer", "up"],
    &["link", "set", "trellis", "up"],
];

pub struct Node {
    pub name: String,
    /// The node's CNI directories (conf, bin, state, cache): `tmp`'s path.
    pub dir: PathBuf,
    pub placement: Placement,
    pub pods: Vec<String>,
    /// Owns `dir`: removes it when the node drops, after [`Drop`] has ended
    /// what ran in the node's namespaces.
    tmp: tempfile::TempDir,
}

impl Node {
    /// A node namespace `tc-<tag>` with forwarding on, a bridge holding
    /// NODE_ADDR and an up "trellis" mesh interface.
    pub fn new(tag: &str) -> Node {
        trellis_e2e::assert_root();
        let name = format!("tc-{tag}");
        cleanup_prefix(&name);
        netns::create(&name).unwrap();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("trellis-cni-test-{tag}-"))
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        for sub in ["conf", "bin", "state", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // libcni (cnitool) caches results in /var/lib/cni: give the node its
        // own, as a node of its own would have.
        std::fs::create_dir_all("/var/lib/cni").unwrap();
        let tools = Tools::locate().unwrap();
        let bin = dir.join("bin");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_trellis-cni"), bin.join("trellis-cni"))
            .unwrap();
        for plugin in [
            "portmap",
            "bandwidth",
            "tuning",
            "ptp",
            "host-local",
            "bridge",
            "loopback",
        ] {
            std::os::unix::fs::symlink(tools.cni_plugin_dir().join(plugin), bin.join(plugin))
                .unwrap();
        }
        for args in [
            vec!["link", "add", "node0", "type", "bridge"],
            vec!["addr", "add", &format!("{NODE_ADDR}/32"), "dev", "node0"],
            vec!["link", "set", "node0", "up"],
        ]
        .into_iter()
        .chain(MESH_INTERFACE.iter().map(|a| a.to_vec()))
        {
            cmd::ip(Some(&name), &args).unwrap();
        }
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            cmd::in_netns(&name, "sysctl", &["-qw", key]).unwrap();
        }
        let placement = Placement {
            netns: name.clone(),
            binds: vec![(dir.join("cache"), PathBuf::from("/var/lib/cni"))],
            read_only: Vec::new(),
        };
        Node {
            name,
            dir,
            placement,
            pods: Vec::new(),
            tmp,
        }
    }

    /// Writes the conflist the agent would: trellis-cni, then the given
    /// chained plugins.
    pub fn write_conflist(
        &self,
        version: &str,
        chained: &[serde_json::Value],
    ) -> serde_json::Value {
        let mut plugins = vec![serde_json::json!({
            "type": "trellis-cni",
            "mtu": 1400,
            "podCIDRs": [POD_CIDR_V4, POD_CIDR_V6],
            "dataDir": self.dir.join("state/ipam"),
            "meshInterface": "trellis",
            "logFile": self.dir.join("state/cni.log"),
        })];
        plugins.extend(chained.iter().cloned());
        let conflist =
            serde_json::json!({"cniVersion": version, "name": "trellis", "plugins": plugins});
        std::fs::write(
            self.dir.join("conf/10-trellis.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        conflist
    }

    /// The plugin configuration a runtime would hand trellis-cni (the first
    /// plugin of the list, with the list's name and version).
    pub fn plugin_conf(&self, version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": version, "name": "trellis", "type": "trellis-cni", "mtu": 1400,
            "podCIDRs": [POD_CIDR_V4, POD_CIDR_V6], "dataDir": self.dir.join("state/ipam"),
            "meshInterface": "trellis",
        })
    }

    /// Creates a pod namespace (not yet wired); returns its path.
    pub fn pod(&mut self, pod: &str) -> PathBuf {
        let ns = format!("{}-{pod}", self.name);
        netns::create(&ns).unwrap();
        self.pods.push(ns.clone());
        netns::netns_path(&ns)
    }

    pub fn pod_netns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.name)
    }

    /// Runs cnitool on the node: `cnitool VERB trellis NETNS`.
    pub fn cnitool(&self, verb: &str, netns: &Path, cap_args: Option<&str>) -> Output {
        self.cnitool_named("cnitool", verb, netns, cap_args)
    }

    /// [`Node::cnitool`] with the tools' cnitool binary called `tool` (an
    /// older libcni: `cnitool-VERSION`).
    pub fn cnitool_named(
        &self,
        tool: &str,
        verb: &str,
        netns: &Path,
        cap_args: Option<&str>,
    ) -> Output {
        let tools = Tools::locate().unwrap();
        let mut command = self.placement.command(tools.path(tool).unwrap()).unwrap();
        command
            .args([verb, "trellis", &netns.to_string_lossy()])
            .env("CNI_PATH", self.dir.join("bin"))
            .env("NETCONFPATH", self.dir.join("conf"))
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
            );
        if let Some(caps) = cap_args {
            command.env("CAP_ARGS", caps);
        }
        command.output().unwrap()
    }

    /// Runs trellis-cni itself on the node, as a runtime would.
    /// The CNI_PATH of this node.
    pub fn cni_path(&self) -> String {
        self.dir.join("bin").display().to_string()
    }

    pub fn plugin(&self, env: &[(&str, &str)], stdin: &[u8]) -> Output {
        let mut command = self.plugin_command(env);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn plugin_command(&self, env: &[(&str, &str)]) -> Command {
        let mut command = self
            .placement
            .command(env!("CARGO_BIN_EXE_trellis-cni"))
            .unwrap();
        command.env_clear();
        for (k, v) in env {
            command.env(k, v);
        }
        command
    }

    /// The host-side links of our plugin in the node namespace.
    pub fn host_links(&self) -> Vec<String> {
        let out = cmd::ip(Some(&self.name), &["-o", "link", "show"]).unwrap();
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n.starts_with("tr") && n != "trellis")
            .collect()
    }

    /// The allocated addresses in the IPAM store.
    pub fn allocations(&self) -> Vec<String> {
        let dir = self.dir.join("state/ipam/trellis");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn cleanup_prefix(prefix: &str) {
    let names = netns::list_with_prefix(prefix);
    netns::kill_all_in(&names, std::time::Duration::from_secs(2));
    for n in names {
        let _ = netns::delete(&n);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // `tmp` removes the directory once this has run.
        cleanup_prefix(&self.name);
    }
}

/// Parses a CNI result or error object from stdout.
pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?} / stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Pings from a namespace; true when a reply came.
pub fn ping(netns: &str, target: &str) -> bool {
    cmd::in_netns(netns, "ping", &["-c", "1", "-W", "2", target]).is_ok()
}
