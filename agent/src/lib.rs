//! The Trellis node agent: turns the cluster's Node objects into a full
//! mesh of direct WireGuard tunnels on this node, and keeps it right. The
//! pure logic lives in `trellis-mesh`; here are the I/O around it. `Peer`
//! objects add external machines as peers of every node.

pub mod agent;
pub mod cluster_api;
pub mod cni_conf;
pub mod config;
pub mod dataplane;
pub mod echo;
pub mod install_cni;
pub mod kernel_wg;
pub mod key;
pub mod kube_io;
pub mod leaks;
pub mod link_tokens;
pub mod metrics;
pub mod netlink;
pub mod peers;
pub mod reconcile;
pub mod reflectors;
pub mod remote;
pub mod remote_cache;
pub mod runtime;
pub mod status;
pub mod wg;

pub use trellis_mesh::names;
