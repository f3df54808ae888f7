//! The agent's configuration: flags and environment, read without side
//! effects. Every path and name has the default ARCHITECTURE.md gives
//! ("Names"), so a lab can run many agents on one machine.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use trellis_mesh::names;
use trellis_mesh::ranges::{self, DeclaredRanges};

/// Which WireGuard implementation drives the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataplaneMode {
    /// Kernel WireGuard when the module is there, else the userspace device.
    Auto,
    /// Kernel WireGuard through netlink.
    Kernel,
    /// A userspace device (trellis-wg or wireguard-go) over its UAPI socket.
    Userspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    version,
    about = "Trellis node agent: a WireGuard mesh from the cluster's Node objects"
)]
pub struct Config {
    /// The Node this agent runs on.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Kubeconfig to use (the pod's in-cluster configuration when absent).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// WireGuard interface name.
    #[arg(long, env = "TRELLIS_INTERFACE", default_value = names::DEFAULT_INTERFACE)]
    pub interface: String,
    /// UDP port WireGuard listens on.
    #[arg(long, env = "TRELLIS_LISTEN_PORT", default_value_t = names::DEFAULT_LISTEN_PORT)]
    pub listen_port: u16,
    /// MTU of the WireGuard interface and of pods (default: underlay MTU - 80).
    #[arg(long, env = "TRELLIS_MTU")]
    pub mtu: Option<u32>,
    /// Address other nodes reach this one at (default: the Node's InternalIP).
    #[arg(long, env = "TRELLIS_ENDPOINT_ADDRESS")]
    pub endpoint_address: Option<IpAddr>,
    #[arg(long, value_enum, env = "TRELLIS_DATAPLANE", default_value_t = DataplaneMode::Auto)]
    pub dataplane: DataplaneMode,
    /// Directory of the node's key and IPAM store.
    #[arg(long, env = "TRELLIS_STATE_DIR", default_value = names::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where the CNI configuration is written.
    #[arg(long, env = "TRELLIS_CNI_CONF_DIR", default_value = names::DEFAULT_CNI_CONF_DIR)]
    pub cni_conf_dir: PathBuf,
    /// Directory of WireGuard UAPI sockets.
    #[arg(long, env = "TRELLIS_WIREGUARD_RUN_DIR", default_value = names::DEFAULT_WIREGUARD_RUN_DIR)]
    pub wireguard_run_dir: PathBuf,
    /// Root of the sysctl tree used to turn IP forwarding on: /proc/sys, or
    /// in a container (where /proc/sys is read-only) the host's
    /// /proc/sys/net mounted writable under DIR/net.
    #[arg(long, env = "TRELLIS_SYSCTL_DIR", default_value = "/proc/sys")]
    pub sysctl_dir: PathBuf,
    /// nftables table (family inet) for masquerading.
    #[arg(long, env = "TRELLIS_NFT_TABLE", default_value = names::DEFAULT_NFT_TABLE)]
    pub nft_table: String,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "TRELLIS_METRICS_ADDRESS", default_value = "0.0.0.0:9473")]
    pub metrics_address: SocketAddr,
    /// Namespace of the Secrets linking other clusters (`kubectl trellis
    /// cluster link` writes them there).
    #[arg(long, env = "TRELLIS_LINKS_NAMESPACE", default_value = names::DEFAULT_LINKS_NAMESPACE)]
    pub links_namespace: String,
    /// The ranges this cluster's pods live in (comma-separated CIDRs):
    /// a Node whose pod CIDR lies outside them is left out of the mesh.
    /// Default: the private ranges (RFC 1918, 100.64.0.0/10, fc00::/7).
    #[arg(long, env = "TRELLIS_POD_RANGES", value_parser = parse_ranges, default_value = DEFAULT_RANGES)]
    pub pod_ranges: RangeList,
    /// The ranges this cluster's external peers (`Peer` objects) live in:
    /// a Peer with an allowed IP outside them is left out.
    #[arg(long, env = "TRELLIS_EXTERNAL_PEER_RANGES", value_parser = parse_ranges, default_value = DEFAULT_RANGES)]
    pub external_peer_ranges: RangeList,
    /// Release a pod address whose pod's host interface is gone once its
    /// allocation is this old (runtimes that never call CNI GC, such as
    /// containerd 1.x, leak the addresses of pods they lose); 0: never.
    #[arg(long, env = "TRELLIS_IPAM_LEAK_GRACE_SECONDS", default_value_t = 300)]
    pub ipam_leak_grace_seconds: u64,
    /// Renew a linked cluster's token this long after it was issued, when
    /// that is sooner than a quarter into its life (the default), as `30m`.
    #[arg(long, env = "TRELLIS_LINK_TOKEN_RENEW_AFTER", value_parser = humantime::parse_duration)]
    pub link_token_renew_after: Option<std::time::Duration>,
    /// Full reconcile at least this often, even with no change.
    #[arg(long, env = "TRELLIS_RESYNC_SECONDS", default_value_t = 30)]
    pub resync_seconds: u64,
    #[arg(long, value_enum, env = "TRELLIS_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// [`ranges::PRIVATE_RANGES`] as one flag value.
const DEFAULT_RANGES: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7";

/// A flag's comma-separated list of declared ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeList(pub Vec<IpNet>);

fn parse_ranges(text: &str) -> Result<RangeList, String> {
    ranges::parse_list(text)
        .map(RangeList)
        .map_err(|e| e.to_string())
}

impl Config {
    /// What this cluster declares, from the two range flags.
    pub fn declared(&self) -> DeclaredRanges {
        DeclaredRanges {
            pods: self.pod_ranges.0.clone(),
            external_peers: self.external_peer_ranges.0.clone(),
        }
    }

    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_seconds.max(1))
    }

    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("key")
    }

    pub fn cni_conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join("10-trellis.conflist")
    }

    /// The masquerade ruleset last loaded into nftables.
    pub fn nft_record_path(&self) -> PathBuf {
        self.state_dir.join("nft-ruleset")
    }

    /// The last listing of each linked cluster ([`crate::remote_cache`]).
    pub fn linked_clusters_cache_dir(&self) -> PathBuf {
        self.state_dir.join("linked-clusters")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.state_dir.join("ipam")
    }

    pub fn uapi_socket(&self) -> PathBuf {
        self.wireguard_run_dir
            .join(format!("{}.sock", self.interface))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_follow_the_design() {
        let c = Config::try_parse_from(["trellis-agent", "--node-name", "n1"]).unwrap();
        assert_eq!(c.interface, "trellis");
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.key_path(), PathBuf::from("/var/lib/trellis/key"));
        assert_eq!(
            c.cni_conflist_path(),
            PathBuf::from("/etc/cni/net.d/10-trellis.conflist")
        );
        assert_eq!(
            c.uapi_socket(),
            PathBuf::from("/var/run/wireguard/trellis.sock")
        );
        assert_eq!(c.dataplane, DataplaneMode::Auto);
    }

    #[test]
    fn declared_ranges_default_to_the_private_ones_and_refuse_a_default_route() {
        let c = Config::try_parse_from(["trellis-agent", "--node-name", "n1"]).unwrap();
        assert_eq!(c.declared(), DeclaredRanges::private());
        let c = Config::try_parse_from([
            "trellis-agent",
            "--node-name=n1",
            "--pod-ranges=10.244.0.0/16,fd00:10:244::/56",
        ])
        .unwrap();
        assert_eq!(c.declared().pods.len(), 2);
        let err = Config::try_parse_from([
            "trellis-agent",
            "--node-name=n1",
            "--external-peer-ranges=10.99.0.0/16,0.0.0.0/0",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("0.0.0.0/0 is a default route"), "{err}");
    }

    #[test]
    fn a_missing_node_name_is_an_error() {
        let err = Config::try_parse_from(["trellis-agent"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--node-name"), "{err}");
    }
}
