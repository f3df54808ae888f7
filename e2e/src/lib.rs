//! The Trellis lab: a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager) and a multi-node network on one machine, with
//! nodes, pods and NAT routers as network namespaces on a bridged underlay.
//! Used by the end-to-end tests, the `make` targets and the `trellis-lab`
//! command.
//!
//! Every lab is recorded in a state file as it is built, and every
//! namespace it creates carries the lab's name, so `down` removes a lab even
//! when the process that built it was killed.

pub mod bench;
pub mod chart;
pub mod cluster_dns;
pub mod cmd;
pub mod control_plane;
pub mod daemonset;
pub mod deadline;
pub mod kubeconfig;
pub mod kubelet;
pub mod lab;
pub mod machine;
pub mod mesh;
pub mod nat;
pub mod netns;
pub mod node;
pub mod ping;
pub mod pki;
pub mod plan;
pub mod plugin;
pub mod pod;
pub mod real_node;
pub mod state;
pub mod teardown;
pub mod tools;
pub mod underlay;

pub use lab::{Lab, LabError, LabOptions};
pub use nat::NatMode;
pub use plan::IpFamily;
pub use teardown::{down, DownReport};

/// Fails the calling test loudly unless it runs as root (root-only tests are
/// `#[ignore = "needs root"]`; `make test` includes them when it is root).
pub fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces): run `make test` as root"
    );
}
