//! Running Trellis on lab nodes: the chart's pod (trellis-cni installed by
//! its init container, the trellis-wg and agent containers; see
//! `daemonset`), or wireguard-go (Debian's or current) in trellis-wg's place; and
//! waiting until the mesh is up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::deadline;
use crate::lab::{Lab, LabError};
use crate::netns;
use crate::node::private_dir;
use crate::state::{Daemon, NodeState};

/// Which WireGuard implementation a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// trellis-wg, a process of its own.
    TrellisWg,
    /// Debian's wireguard-go, a process of its own.
    WireguardGo,
    /// Current wireguard-go (pinned in tools/references.env, built into the
    /// tools cache), a process of its own: the benchmarks' reference.
    WireguardGoCurrent,
    /// The kernel module: no device process, the agent creates the
    /// interface (`--dataplane kernel`).
    Kernel,
}

impl Device {
    /// The agent's `--dataplane` for this device.
    pub fn agent_dataplane(self) -> &'static str {
        match self {
            Device::Kernel => "kernel",
            Device::TrellisWg | Device::WireguardGo | Device::WireguardGoCurrent => "userspace",
        }
    }
}

/// A binary of this workspace, from the target directory the running test
/// or tool was built into.
pub fn workspace_binary(name: &str) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        context: "locating the running binary".into(),
        source,
    })?;
    // target/debug/deps/test-hash or target/debug/trellis-lab
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(LabError::Invalid {
        what: "binary",
        name: name.to_string(),
        problem: format!(
            "is not built next to {}: run `cargo build --workspace` first",
            exe.display()
        ),
    })
}

/// Interface name of the mesh on every lab node.
pub const INTERFACE: &str = "trellis";
/// The agents' nft table (family inet).
pub const NFT_TABLE: &str = trellis_mesh::names::DEFAULT_NFT_TABLE;
/// The chart's containers (and the lab's daemons of the same names).
pub const AGENT: &str = "agent";
pub const TRELLIS_WG: &str = "trellis-wg";
/// The daemon of wireguard-go, started in trellis-wg's place.
pub const WIREGUARD_GO: &str = "wireguard-go";

impl Lab {
    /// Installs trellis-cni into the node's CNI bin dir: the chart's init
    /// containers, run on the node.
    pub async fn install_cni(&self, node: &str, device: Device) -> Result<(), LabError> {
        let pod = self.trellis_pod(node, device).await?;
        self.run_init_containers(&pod)
    }

    /// Starts the userspace WireGuard device on a node and waits for its
    /// UAPI socket: trellis-wg is the chart's container; wireguard-go is
    /// started in its place by hand. The kernel device has no process.
    pub async fn start_device(
        &mut self,
        node: &str,
        device: Device,
    ) -> Result<Option<Daemon>, LabError> {
        let daemon = match device {
            Device::Kernel => return Ok(None),
            Device::TrellisWg => {
                let pod = self.trellis_pod(node, device).await?;
                self.start_container(&pod, TRELLIS_WG)?
            }
            Device::WireguardGo | Device::WireguardGoCurrent => {
                let program = match device {
                    Device::WireguardGoCurrent => self.tools.wireguard_go()?,
                    _ => "wireguard-go".into(),
                };
                let mut command = self.node_command(node, program)?;
                command
                    .args(["-f", INTERFACE])
                    .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
                self.spawn_on_node(node, WIREGUARD_GO, command)?
            }
        };
        let socket = private_dir(
            &self.node(node)?.dir,
            trellis_mesh::names::DEFAULT_WIREGUARD_RUN_DIR,
        )
        .join(format!("{INTERFACE}.sock"));
        wait_for(
            Duration::from_secs(10),
            || socket.exists() && netns::alive(daemon.pid),
            || {
                format!(
                    "the WireGuard device on {node} did not come up; see {}",
                    daemon.log.display()
                )
            },
        )?;
        Ok(Some(daemon))
    }

    /// Starts the agent on `node` for the node's WireGuard `device`: the
    /// chart's agent container with the chart's identity.
    pub async fn start_agent(&mut self, node: &str, device: Device) -> Result<Daemon, LabError> {
        let pod = self.trellis_pod(node, device).await?;
        self.start_container(&pod, AGENT)
    }

    /// Installs trellis-cni, starts the device (if it is a process) and the
    /// agent on `node`.
    pub async fn start_node(&mut self, node: &str, device: Device) -> Result<(), LabError> {
        self.install_cni(node, device).await?;
        self.start_device(node, device).await?;
        self.start_agent(node, device).await?;
        Ok(())
    }

    /// Kills the agent and the userspace device (either) on `node`, as a
    /// crash would, deletes the mesh interface (the chart's trellis-wg
    /// keeps its TUN persistent: it would outlive the process) and waits
    /// until it is gone, so that [`Lab::start_node`] starts afresh.
    pub fn stop_node(&mut self, node: &str) -> Result<(), LabError> {
        use nix::sys::signal::Signal::SIGKILL;
        for daemon in [AGENT, TRELLIS_WG, WIREGUARD_GO] {
            self.signal_daemon(node, daemon, SIGKILL);
        }
        let n = self.node(node)?;
        let ns = n.netns.clone();
        // Gone already when the device was not persistent.
        let _ = crate::cmd::ip(Some(&ns), &["link", "del", INTERFACE]);
        let socket = private_dir(&n.dir, trellis_mesh::names::DEFAULT_WIREGUARD_RUN_DIR)
            .join(format!("{INTERFACE}.sock"));
        wait_for(
            Duration::from_secs(5),
            || crate::cmd::ip(Some(&ns), &["link", "show", INTERFACE]).is_err(),
            || format!("the {INTERFACE} device on {node} did not go"),
        )?;
        let _ = std::fs::remove_file(socket);
        Ok(())
    }

    /// Starts Trellis with the same `device` on every node.
    pub async fn start_mesh(&mut self, device: Device) -> Result<(), LabError> {
        let nodes: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        for node in &nodes {
            self.start_node(node, device).await?;
        }
        Ok(())
    }

    /// The peers of a node's WireGuard device (`wg show trellis dump`).
    pub fn wg_dump(&self, node: &str) -> Result<Vec<WgPeer>, LabError> {
        let mut command = self.node_command(node, "wg")?;
        command.args(["show", INTERFACE, "dump"]);
        let out = crate::cmd::output_of(command, format!("wg show {INTERFACE} dump (on {node})"))?;
        Ok(WgPeer::parse_dump(&out))
    }

    /// The peers' public keys and their latest handshake (seconds since the
    /// epoch, 0 for never).
    pub fn wg_peers(&self, node: &str) -> Result<Vec<(String, u64)>, LabError> {
        Ok(self
            .wg_dump(node)?
            .into_iter()
            .map(|p| (p.public_key, p.latest_handshake))
            .collect())
    }

    /// The agent's routes (protocol 84) on a node; see [`mesh_routes_in`].
    pub fn mesh_routes(&self, node: &str) -> Result<Vec<String>, LabError> {
        Ok(mesh_routes_in(&self.node(node)?.netns)?)
    }

    /// The public key a node's WireGuard device has.
    pub fn wg_public_key(&self, node: &str) -> Result<String, LabError> {
        let mut command = self.node_command(node, "wg")?;
        command.args(["show", INTERFACE, "public-key"]);
        Ok(crate::cmd::output_of(
            command,
            format!("wg show {INTERFACE} public-key (on {node})"),
        )?
        .trim()
        .to_string())
    }

    /// Waits until every node's agent has written its CNI configuration and
    /// configured `expected_peers` peers.
    pub fn wait_mesh(&self, expected_peers: usize, timeout: Duration) -> Result<(), LabError> {
        self.wait_mesh_with(|_| expected_peers, timeout)
    }

    /// Like [`Lab::wait_mesh`], each node with the other nodes of its own
    /// cluster as peers (linked clusters not counted).
    pub fn wait_clusters_meshed(&self, timeout: Duration) -> Result<(), LabError> {
        self.wait_mesh_with(
            |node| self.state.nodes_of(&node.cluster).count().saturating_sub(1),
            timeout,
        )
    }

    fn wait_mesh_with(
        &self,
        expected: impl Fn(&NodeState) -> usize,
        timeout: Duration,
    ) -> Result<(), LabError> {
        for node in self.state.nodes.iter() {
            let expected_peers = expected(node);
            let (node, dir) = (&node.name, &node.dir);
            let conflist = private_dir(dir, trellis_mesh::names::DEFAULT_CNI_CONF_DIR)
                .join("10-trellis.conflist");
            wait_for(
                timeout,
                || {
                    conflist.exists()
                        && self
                            .wg_peers(node)
                            .map(|p| p.len() == expected_peers)
                            .unwrap_or(false)
                },
                || {
                    format!(
                    "node {node} did not reach {expected_peers} peers with a CNI configuration: see {}",
                    dir.join("agent.log").display()
                )
                },
            )?;
        }
        Ok(())
    }
}

impl Lab {
    /// Stops a daemon the lab started on a node (by its name, e.g. "agent")
    /// with `signal`; returns whether one was running.
    pub fn signal_daemon(
        &mut self,
        node: &str,
        what: &str,
        signal: nix::sys::signal::Signal,
    ) -> bool {
        let name = format!("{node}/{what}");
        let mut found = false;
        for d in self
            .state
            .daemons
            .iter()
            .filter(|d| d.name == name && netns::alive(d.pid))
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid), signal);
            found = true;
        }
        if signal == nix::sys::signal::Signal::SIGKILL {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && self
                    .state
                    .daemons
                    .iter()
                    .any(|d| d.name == name && netns::alive(d.pid))
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.state.daemons.retain(|d| d.name != name);
            let _ = self.state.save();
        }
        found
    }

    /// The text of a node agent's /metrics.
    pub fn agent_metrics(&self, node: &str) -> Result<String, LabError> {
        self.agent_http(node, "/metrics")
    }

    /// What the agent on `node` reports at `/status` (peers and paths).
    pub fn agent_status(&self, node: &str) -> Result<trellis_api::status::NodeReport, LabError> {
        let answer = self.agent_http(node, "/status")?;
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).map_err(|e| LabError::Invalid {
            what: "agent /status",
            name: node.to_string(),
            problem: format!("is not a node report ({e}): {answer}"),
        })
    }

    /// The whole HTTP answer (status line first) of the agent on `node` to
    /// `GET path`.
    pub fn agent_http(&self, node: &str, path: &str) -> Result<String, LabError> {
        use std::io::{Read, Write};
        let ns = self.node(node)?.netns.clone();
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        netns::run_in(&ns, move || -> std::io::Result<String> {
            let mut conn = std::net::TcpStream::connect("127.0.0.1:9473")?;
            conn.write_all(request.as_bytes())?;
            let mut text = String::new();
            conn.read_to_string(&mut text)?;
            Ok(text)
        })?
        .map_err(|source| LabError::Io {
            context: format!("GET {path} from the agent on {node}"),
            source,
        })
    }
}

/// One peer line of `wg show <interface> dump`.
#[derive(Debug, Clone, PartialEq)]
pub struct WgPeer {
    pub public_key: String,
    /// `(none)` when the device has none.
    pub endpoint: String,
    /// Sorted.
    pub allowed_ips: Vec<String>,
    /// Seconds since the epoch, 0 for never.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    /// Seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
}

impl WgPeer {
    /// The peer lines of a dump (the first line is the interface's).
    pub fn parse_dump(dump: &str) -> Vec<WgPeer> {
        dump.lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                let mut allowed_ips: Vec<String> = f
                    .get(3)?
                    .split(',')
                    .filter(|s| !s.is_empty() && *s != "(none)")
                    .map(str::to_string)
                    .collect();
                allowed_ips.sort();
                Some(WgPeer {
                    public_key: f.first()?.to_string(),
                    endpoint: f.get(2)?.to_string(),
                    allowed_ips,
                    latest_handshake: f.get(4)?.parse().ok()?,
                    rx_bytes: f.get(5)?.parse().ok()?,
                    persistent_keepalive: f.get(7).and_then(|k| k.parse().ok()),
                })
            })
            .collect()
    }
}

/// The agent's routes (protocol 84) in a namespace, IPv4 and IPv6, each as
/// `CIDR dev IFACE`, sorted.
pub fn mesh_routes_in(netns: &str) -> Result<Vec<String>, crate::cmd::CommandError> {
    let proto = trellis_mesh::names::ROUTE_PROTOCOL_MESH.to_string();
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let text = crate::cmd::ip(Some(netns), &[family, "route", "show", "proto", &proto])?;
        out.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        );
    }
    out.sort();
    Ok(out)
}

/// Polls `ready` every 100 ms until it holds or `timeout` (stretched by
/// [`deadline::scaled`]) passes, saying every 30 s that it still waits.
/// The kernel's listing of the masquerade table in `netns`.
pub fn masquerade_table(netns: &str) -> Result<String, crate::cmd::CommandError> {
    crate::cmd::in_netns(netns, "nft", &["list", "table", "inet", NFT_TABLE])
}

/// Edits the masquerade table in `netns` behind the agent's back, as an
/// administrator might: the masquerade rules flushed, a rule of their own
/// added (to 198.51.100.0/24, TEST-NET-2).
pub fn tamper_with_masquerade_table(netns: &str) -> Result<(), crate::cmd::CommandError> {
    let rule = [
        "add",
        "rule",
        "inet",
        NFT_TABLE,
        "postrouting",
        "ip",
        "daddr",
        "198.51.100.0/24",
        "accept",
    ];
    crate::cmd::in_netns(
        netns,
        "nft",
        &["flush", "chain", "inet", NFT_TABLE, "postrouting"],
    )?;
    crate::cmd::in_netns(netns, "nft", &rule)?;
    Ok(())
}

pub fn wait_for(
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
    what: impl Fn() -> String,
) -> Result<(), LabError> {
    let timeout = deadline::scaled(timeout);
    let mut progress = deadline::Progress::new("a lab wait", Duration::from_secs(30));
    while progress.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        progress.tick(timeout, &what);
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(LabError::Invalid {
        what: "wait",
        name: format!("{:.0?}", timeout),
        problem: what(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lines_become_peers_with_sorted_ranges() {
        let dump = "priv\tpub\t51820\toff\n\
                    AAA=\t(none)\t192.0.2.3:51820\tfd00:1::/64,10.0.1.0/24\t1700000000\t364\t500\toff\n\
                    BBB=\t(none)\t(none)\t(none)\t0\t0\t0\t25\n";
        let peers = WgPeer::parse_dump(dump);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].allowed_ips, ["10.0.1.0/24", "fd00:1::/64"]);
        assert_eq!(
            (peers[0].latest_handshake, peers[0].rx_bytes),
            (1_700_000_000, 364)
        );
        assert_eq!(peers[0].endpoint, "192.0.2.3:51820");
        assert!(peers[1].allowed_ips.is_empty() && peers[1].latest_handshake == 0);
        assert_eq!(
            (peers[0].persistent_keepalive, peers[1].persistent_keepalive),
            (None, Some(25))
        );
    }
}
