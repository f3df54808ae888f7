//! The names Trellis uses on the API server and on a node (see ARCHITECTURE.md, "Names").
//! Every path here is a default: binaries take flags that override them.

/// API group of Trellis' own resources.
pub const API_GROUP: &str = "trellis.dev";
/// Prefix of every annotation Trellis reads or writes on a Node.
pub const ANNOTATION_PREFIX: &str = "trellis.dev/";
/// Node annotation: the node's WireGuard public key (written by its agent).
pub const ANNOTATION_PUBLIC_KEY: &str = "trellis.dev/public-key";
/// Node annotation: the `ip:port` the node's WireGuard device listens on.
pub const ANNOTATION_ENDPOINT: &str = "trellis.dev/endpoint";
/// Node annotation: JSON map public key → `ip:port` seen in handshakes.
pub const ANNOTATION_DISCOVERED_ENDPOINTS: &str = "trellis.dev/discovered-endpoints";
/// Node annotation set by people: endpoint that overrides the published one.
pub const ANNOTATION_FORCE_ENDPOINT: &str = "trellis.dev/force-endpoint";
/// Node annotation set by people: persistent keepalive in seconds.
pub const ANNOTATION_PERSISTENT_KEEPALIVE: &str = "trellis.dev/persistent-keepalive";
/// Node annotation set by people: `"true"` lets the node relay for others.
pub const ANNOTATION_RELAY: &str = "trellis.dev/relay";
/// Node annotation set by people: where the node is (any name; nodes with
/// the same one are tried on their node addresses first — a hint).
pub const ANNOTATION_LOCATION: &str = "trellis.dev/location";
/// Well-known Node label: the node's zone (nodes of one cluster in the same
/// zone are tried on their node addresses first — a hint).
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Namespace of the Secrets that link other clusters (the chart creates it).
pub const DEFAULT_LINKS_NAMESPACE: &str = "trellis-links";
/// Label on a Secret holding a read-only kubeconfig of a linked cluster.
pub const LABEL_REMOTE_CLUSTER: &str = "trellis.dev/remote-cluster";

/// Name of the WireGuard interface on a node.
pub const DEFAULT_INTERFACE: &str = "trellis";
/// UDP port the WireGuard interface listens on.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// Name of the nftables table Trellis owns (family `inet`).
pub const DEFAULT_NFT_TABLE: &str = "trellis";
/// Directory of the agent's state (key, IPAM store).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/trellis";
/// Directory the CNI runtime reads network configurations from.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Directory the CNI runtime executes plugins from.
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Directory of WireGuard UAPI sockets (shared by `wg` and userspace devices).
pub const DEFAULT_WIREGUARD_RUN_DIR: &str = "/var/run/wireguard";
/// Exists when the running kernel has WireGuard (module loaded or built in):
/// the agent and trellis-wg decide `--dataplane auto` by the same test.
pub const KERNEL_WIREGUARD_MODULE: &str = "/sys/module/wireguard";

/// Route protocol number of the routes the agent owns (to remote pod CIDRs),
/// so that it only ever changes its own routes (`ip route show proto 84`).
pub const ROUTE_PROTOCOL_MESH: u8 = 84;
/// Route protocol number of the host routes the CNI plugin adds to pods.
pub const ROUTE_PROTOCOL_POD: u8 = 85;
// 0-4 are the kernel's own protocols (unspec, redirect, kernel, boot, static).
const _: () = assert!(
    ROUTE_PROTOCOL_MESH > 4 && ROUTE_PROTOCOL_POD > 4 && ROUTE_PROTOCOL_MESH != ROUTE_PROTOCOL_POD
);

/// Every node directory Trellis writes to, so that a lab can give each
/// simulated node a private copy of each one.
pub const NODE_PRIVATE_DIRS: [&str; 4] = [
    DEFAULT_STATE_DIR,
    DEFAULT_CNI_CONF_DIR,
    DEFAULT_CNI_BIN_DIR,
    DEFAULT_WIREGUARD_RUN_DIR,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_annotations_share_the_prefix() {
        for key in [
            ANNOTATION_PUBLIC_KEY,
            ANNOTATION_ENDPOINT,
            ANNOTATION_DISCOVERED_ENDPOINTS,
            ANNOTATION_FORCE_ENDPOINT,
            ANNOTATION_PERSISTENT_KEEPALIVE,
            ANNOTATION_RELAY,
        ] {
            assert!(key.starts_with(ANNOTATION_PREFIX), "{key}");
            assert!(key.len() - ANNOTATION_PREFIX.len() <= 63, "{key}");
        }
    }

    #[test]
    fn interface_name_fits_ifnamsiz() {
        assert!(DEFAULT_INTERFACE.len() <= 15);
    }
}
