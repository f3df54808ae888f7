//! The container runtime of a real node: Debian's containerd 1.6 (CNI 1.0:
//! ADD, DEL, CHECK) or containerd 2 built from the Go module proxy with the
//! runc its release is tested with (CNI 1.1: it also asks the network's
//! STATUS, every time the kubelet asks the runtime's, so a node whose
//! network plugin answers "not ready" turns NotReady). Each renders its own
//! configuration (containerd 2 reads version 3, whose CRI sections moved)
//! and names the binaries a node runs.

use std::path::PathBuf;
use std::process::Command;

use crate::tools::{Tools, ToolsError};

/// Which containerd a real node runs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerRuntime {
    /// containerd 2 (`CONTAINERD_VERSION` in tools/versions.env) with runc
    /// (`RUNC_VERSION`): what a new cluster runs today.
    #[default]
    #[value(name = "containerd2")]
    Containerd2,
    /// Debian's containerd 1.6 with Debian's runc: what older clusters run.
    #[value(name = "containerd1.6")]
    #[serde(rename = "containerd-1.6")]
    Containerd16,
}

/// The sandbox image containerd runs for every pod.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";

/// The paths containerd's configuration names, inside the node's mounts.
const ROOT: &str = "/var/lib/containerd";
const STATE: &str = "/run/containerd";
pub const SOCKET: &str = "/run/containerd/containerd.sock";

impl ContainerRuntime {
    /// The directory of containerd 2's binaries (daemon, shim, ctr, runc),
    /// built by tools/bootstrap.sh beside the other tools; Debian's are on
    /// PATH.
    fn bin_dir(self, tools: &Tools) -> Result<Option<PathBuf>, ToolsError> {
        match self {
            ContainerRuntime::Containerd16 => Ok(None),
            ContainerRuntime::Containerd2 => {
                let daemon =
                    tools.path(&format!("containerd-{}/containerd", containerd2_version()))?;
                Ok(daemon.parent().map(PathBuf::from))
            }
        }
    }

    /// `program` of this runtime (containerd, ctr) as a command whose PATH
    /// finds this runtime's shim and runc first. `wrap` turns a program
    /// into a command run inside the node (see [`super::in_node`]).
    pub fn command(
        self,
        tools: &Tools,
        program: &str,
        wrap: impl FnOnce(PathBuf) -> Command,
    ) -> Result<Command, ToolsError> {
        Ok(match self.bin_dir(tools)? {
            None => wrap(PathBuf::from(program)),
            Some(dir) => {
                let mut c = wrap(dir.join(program));
                let path = std::env::var("PATH").unwrap_or_default();
                c.env("PATH", format!("{}:{path}", dir.display()));
                c
            }
        })
    }

    /// The containerd configuration of a node: everything under the node's
    /// private directories, one CNI configuration (the first in
    /// /etc/cni/net.d, as the kubelet's docs assume), no AppArmor (the lab
    /// loads no profiles), cgroupfs, and for containerd 2 no NRI (its
    /// socket is machine-wide, which nodes would fight over).
    pub fn config(self, runc: Option<PathBuf>) -> String {
        let (version, cri) = match self {
            ContainerRuntime::Containerd16 => (
                2,
                format!(
                    r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "{STATE}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
"#
                ),
            ),
            ContainerRuntime::Containerd2 => {
                let binary = runc
                    .map(|r| format!("\n      BinaryName = \"{}\"", r.display()))
                    .unwrap_or_default();
                (
                    3,
                    format!(
                        r#"[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "{STATE}/runc"{binary}
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
"#
                    ),
                )
            }
        };
        format!(
            r#"version = {version}
root = "{ROOT}"
state = "{STATE}"
[grpc]
  address = "{SOCKET}"
[ttrpc]
  address = "{SOCKET}.ttrpc"
[debug]
  address = "{STATE}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{ROOT}/opt"
{cri}"#
        )
    }

    /// The runc this runtime runs (containerd 2's own; Debian's is found on
    /// PATH).
    pub fn runc(self, tools: &Tools) -> Result<Option<PathBuf>, ToolsError> {
        Ok(self.bin_dir(tools)?.map(|d| d.join("runc")))
    }

    /// What it is, for reports: "containerd v2.4.2 with runc v1.5.3".
    pub fn description(self) -> String {
        match self {
            ContainerRuntime::Containerd16 => "Debian's containerd 1.6 with its runc 1.1".into(),
            ContainerRuntime::Containerd2 => format!(
                "containerd {} with runc {}",
                containerd2_version(),
                crate::tools::pinned("RUNC_VERSION")
            ),
        }
    }

    /// How it shows in `kubectl get nodes -o wide` (CONTAINER-RUNTIME).
    pub fn version_prefix(self) -> &'static str {
        match self {
            ContainerRuntime::Containerd16 => "containerd://1.6.",
            ContainerRuntime::Containerd2 => "containerd://2.",
        }
    }
}

/// `CONTAINERD_VERSION` of tools/versions.env (the directory bootstrap
/// builds containerd 2 into is named by it).
fn containerd2_version() -> &'static str {
    crate::tools::pinned("CONTAINERD_VERSION")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_directory_follows_versions_env() {
        assert!(
            containerd2_version().starts_with("v2."),
            "{}",
            containerd2_version()
        );
        let described = ContainerRuntime::Containerd2.description();
        assert!(
            described.contains("containerd v2.") && described.contains("runc v1."),
            "{described}"
        );
    }

    #[test]
    fn containerd2_reads_version_3_with_the_cri_sections_it_moved() {
        let c = ContainerRuntime::Containerd2.config(Some("/t/runc".into()));
        assert!(c.starts_with("version = 3\n"), "{c}");
        assert!(c.contains(r#"[plugins."io.containerd.cri.v1.runtime".cni]"#));
        assert!(c.contains(r#"BinaryName = "/t/runc""#));
        assert!(c.contains("sandbox = \"registry.k8s.io/pause:3.10.1\""));
        assert!(c.contains("[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true"));
        assert!(!c.contains("io.containerd.grpc.v1.cri"), "{c}");
    }

    #[test]
    fn containerd16_reads_version_2() {
        let c = ContainerRuntime::Containerd16.config(None);
        assert!(c.starts_with("version = 2\n"));
        assert!(c.contains("sandbox_image = \"registry.k8s.io/pause:3.10.1\""));
        assert!(!c.contains("BinaryName"));
    }

    #[test]
    fn state_files_name_the_runtime_in_kebab_case() {
        let json = serde_json::to_string(&ContainerRuntime::Containerd16).unwrap();
        assert_eq!(json, "\"containerd-1.6\"");
        let back: ContainerRuntime = serde_json::from_str("\"containerd2\"").unwrap();
        assert_eq!(back, ContainerRuntime::Containerd2);
    }
}
