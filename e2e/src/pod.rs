//! Pods: a network namespace per pod, wired by calling the node's CNI
//! configuration through `cnitool` (libcni, the library container runtimes
//! use), run on the node with its own CNI directories, exactly as a runtime
//! would: CNI_PATH, the network configuration list, CNI_ARGS as a kubelet
//! sends them.

use std::path::Path;

use crate::cmd::{self, CommandError};
use crate::lab::{Lab, LabError};
use crate::netns;
use crate::node::private_dir;
use crate::state::PodState;

/// The interface name runtimes give a pod's network interface.
pub const POD_IFNAME: &str = "eth0";

/// The network the runtime would pick on a node: the `name` of the first
/// configuration file (in lexical order) in the node's CNI conf dir.
pub fn default_network(conf_dir: &Path) -> Result<String, LabError> {
    let mut files: Vec<_> = std::fs::read_dir(conf_dir)
        .map_err(|source| LabError::Io {
            context: format!("reading {}", conf_dir.display()),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    let first = files.first().ok_or_else(|| LabError::Invalid {
        what: "CNI configuration directory",
        name: conf_dir.display().to_string(),
        problem: "holds no network configuration (is the agent running?)".into(),
    })?;
    let text = std::fs::read_to_string(first).map_err(|source| LabError::Io {
        context: format!("reading {}", first.display()),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| LabError::Invalid {
        what: "CNI configuration",
        name: first.display().to_string(),
        problem: format!("is not JSON: {e}"),
    })?;
    value["name"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| LabError::Invalid {
            what: "CNI configuration",
            name: first.display().to_string(),
            problem: "has no \"name\"".into(),
        })
}

fn cnitool(
    lab: &Lab,
    node: &str,
    verb: &str,
    network: &str,
    pod_netns: &str,
    pod: &str,
) -> Result<String, LabError> {
    let tool = lab.tools.path("cnitool")?;
    let mut command = lab.node_command(node, &tool)?;
    let ns_path = netns::netns_path(pod_netns);
    command
        .args([verb, network, &ns_path.to_string_lossy()])
        .env("CNI_PATH", trellis_mesh::names::DEFAULT_CNI_BIN_DIR)
        .env("NETCONFPATH", trellis_mesh::names::DEFAULT_CNI_CONF_DIR)
        .env("CNI_IFNAME", POD_IFNAME)
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
        );
    let shown = format!("cnitool {verb} {network} {} (on {node})", ns_path.display());
    Ok(cmd::output_of(command, shown)?)
}

/// A pod of [`Lab::one_pod_per_node`]: where it runs and its addresses.
#[derive(Debug, Clone)]
pub struct NodePod {
    pub node: String,
    pub cluster: String,
    pub netns: String,
    pub v4: String,
    pub v6: String,
}

impl Lab {
    /// Creates pod `p0` on every node of a dual-stack lab (each node's
    /// default network), in the order of the nodes.
    pub fn one_pod_per_node(&mut self) -> Result<Vec<NodePod>, LabError> {
        let mut pods = Vec::new();
        for node in self.state.nodes.clone() {
            let result = self.add_pod(&node.name, "p0", None)?;
            let address = |v4| {
                result_address(&result, v4).ok_or_else(|| LabError::Invalid {
                    what: "pod",
                    name: format!("{}/p0", node.name),
                    problem: format!(
                        "got no {} address: {result}",
                        if v4 { "IPv4" } else { "IPv6" }
                    ),
                })
            };
            pods.push(NodePod {
                netns: self.names().pod_netns(&node.name, "p0"),
                v4: address(true)?,
                v6: address(false)?,
                cluster: node.cluster,
                node: node.name,
            });
        }
        Ok(pods)
    }

    /// Creates pod `pod` on `node` and runs CNI ADD for it (with `network`,
    /// or the node's default network); returns the CNI result as JSON.
    pub fn add_pod(
        &mut self,
        node: &str,
        pod: &str,
        network: Option<&str>,
    ) -> Result<serde_json::Value, LabError> {
        crate::plan::validate_node_name(pod)?;
        let node_state = self.node(node)?.clone();
        if self
            .state
            .pods
            .iter()
            .any(|p| p.node == node && p.name == pod)
        {
            return Err(LabError::Invalid {
                what: "pod",
                name: pod.into(),
                problem: format!("exists on {node} already"),
            });
        }
        let network = match network {
            Some(n) => n.to_string(),
            None => default_network(&private_dir(
                &node_state.dir,
                trellis_mesh::names::DEFAULT_CNI_CONF_DIR,
            ))?,
        };
        let pod_netns = self.names().pod_netns(node, pod);
        netns::create(&pod_netns)?;
        self.state.pods.push(PodState {
            name: pod.into(),
            node: node.into(),
            netns: pod_netns.clone(),
            container_id: String::new(),
            ifname: POD_IFNAME.into(),
            network: network.clone(),
        });
        self.state.save()?;
        let out = cnitool(self, node, "add", &network, &pod_netns, pod)?;
        serde_json::from_str(&out).map_err(|e| LabError::Invalid {
            what: "CNI result for pod",
            name: pod.into(),
            problem: format!("is not JSON ({e}): {out}"),
        })
    }

    /// Runs CNI DEL for a pod and removes its namespace. Keeps going when
    /// DEL fails, so the namespace is never leaked; reports the DEL error.
    pub fn delete_pod(&mut self, node: &str, pod: &str) -> Result<(), LabError> {
        let Some(state) = self
            .state
            .pods
            .iter()
            .find(|p| p.node == node && p.name == pod)
            .cloned()
        else {
            return Err(LabError::Invalid {
                what: "pod",
                name: pod.into(),
                problem: format!("is not on {node}"),
            });
        };
        let del = cnitool(self, node, "del", &state.network, &state.netns, pod);
        netns::kill_all_in(
            std::slice::from_ref(&state.netns),
            std::time::Duration::from_secs(2),
        );
        netns::delete(&state.netns)?;
        self.state
            .pods
            .retain(|p| !(p.node == node && p.name == pod));
        self.state.save()?;
        del.map(drop)
    }

    /// A command that runs `program` inside a pod's namespace.
    pub fn pod_command(
        &self,
        node: &str,
        pod: &str,
        program: &str,
    ) -> Result<std::process::Command, LabError> {
        let state = self
            .state
            .pods
            .iter()
            .find(|p| p.node == node && p.name == pod)
            .ok_or_else(|| LabError::Invalid {
                what: "pod",
                name: pod.into(),
                problem: format!("is not on {node}"),
            })?;
        Ok(netns::Placement::netns(&state.netns).command(program)?)
    }
}

/// The first address of a family in a CNI result (without its prefix).
pub fn result_address(result: &serde_json::Value, v4: bool) -> Option<String> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| {
            ip["address"]
                .as_str()?
                .split('/')
                .next()
                .map(str::to_string)
        })
        .find(|a| a.contains('.') == v4)
}

/// Pings `target` from a namespace; `Ok` when a reply came back.
pub fn ping_from(netns_name: &str, target: &str) -> Result<(), CommandError> {
    cmd::in_netns(netns_name, "ping", &["-c", "1", "-W", "2", target]).map(drop)
}

/// Pings `target` from `netns_name` every 50 ms for about `seconds` (a
/// count of `20 × seconds`), in a thread; joins to (sent, received).
///
/// A count, not a deadline (`-w`): ping stops at a deadline at once, so an
/// echo still on its way then counts as lost — on a loaded machine, one
/// flow in a few. With a count, ping waits for the last answer (at least
/// one interval, twice the slowest answer) and sends exactly the count.
pub fn ping_flow(
    netns_name: &str,
    target: &str,
    seconds: u32,
) -> std::thread::JoinHandle<(u32, u32)> {
    let count = (seconds * 20).to_string();
    let args: Vec<String> = [
        "netns", "exec", netns_name, "ping", "-q", "-i", "0.05", "-W", "1", "-c", &count, target,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        ping_counts(&out)
    })
}

/// (transmitted, received) from ping's summary line; (0, 0) without one.
fn ping_counts(output: &str) -> (u32, u32) {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default();
    let num = |word: &str| {
        line.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ping_summary_counts() {
        let out = "PING 10.0.0.1\n\n--- 10.0.0.1 ping statistics ---\n20 packets transmitted, 18 received, 10% packet loss, time 950ms\n";
        assert_eq!(ping_counts(out), (20, 18));
        assert_eq!(ping_counts("ping: connect: Network is unreachable"), (0, 0));
    }

    use super::*;

    #[test]
    fn result_addresses_by_family() {
        let r =
            serde_json::json!({"ips": [{"address": "fd00::5/128"}, {"address": "10.0.0.5/32"}]});
        assert_eq!(result_address(&r, true).as_deref(), Some("10.0.0.5"));
        assert_eq!(result_address(&r, false).as_deref(), Some("fd00::5"));
        assert_eq!(result_address(&serde_json::json!({}), true), None);
    }

    #[test]
    fn default_network_is_the_first_file_by_name() {
        let dir = tempfile::TempDir::new().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join("20-b.conflist"), r#"{"name":"second"}"#).unwrap();
        std::fs::write(dir.join("10-a.conflist"), r#"{"name":"first"}"#).unwrap();
        std::fs::write(dir.join("00-ignored.txt"), "x").unwrap();
        assert_eq!(default_network(dir).unwrap(), "first");
    }

    #[test]
    fn an_empty_conf_dir_says_what_is_missing() {
        let dir = tempfile::TempDir::new().unwrap();
        let err = default_network(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no network configuration"), "{err}");
    }
}
