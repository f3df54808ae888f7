//! Node objects as the mesh's plain [`NodeInfo`] (shared by the agent and
//! the kubectl plugin, so both see a cluster the same way).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use trellis_mesh::NodeInfo;

/// An object's creation time in seconds since the epoch; an object without
/// one counts as the newest (it loses every conflict).
pub fn created_seconds(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX)
}

/// A Node as the mesh logic sees it.
pub fn node_info(node: &Node) -> NodeInfo {
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        created: created_seconds(&node.metadata),
        pod_cidrs: node
            .spec
            .as_ref()
            .and_then(|s| {
                s.pod_cidrs
                    .clone()
                    .or_else(|| s.pod_cidr.clone().map(|c| vec![c]))
            })
            .unwrap_or_default(),
        internal_ips: internal_ips(node),
        annotations: node.metadata.annotations.clone().unwrap_or_default(),
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(trellis_mesh::names::LABEL_ZONE))
            .cloned(),
    }
}

/// A Node object as the kubelet and the controller-manager leave it: its
/// pod CIDRs, InternalIP addresses and annotations (how tests and tools
/// make Nodes without a cluster).
pub fn node_object(
    name: &str,
    pod_cidrs: Vec<String>,
    internal_ips: &[IpAddr],
    annotations: std::collections::BTreeMap<String, String>,
) -> Node {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidrs: Some(pod_cidrs),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(
                internal_ips
                    .iter()
                    .map(|ip| NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
    }
}

/// The Node's InternalIP addresses, in the order the Node lists them.
pub fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|list| {
            list.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    #[test]
    fn a_node_becomes_node_info() {
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.annotations =
            Some([("trellis.dev/public-key".to_string(), "k".to_string())].into());
        node.spec = Some(NodeSpec {
            pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00::/64".into()]),
            ..Default::default()
        });
        node.status = Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "n1".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.0.2.3".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "garbage".into(),
                },
            ]),
            ..Default::default()
        });
        let info = node_info(&node);
        assert_eq!(info.name, "n1");
        assert_eq!(info.pod_cidrs.len(), 2);
        assert_eq!(
            info.internal_ips,
            vec!["192.0.2.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(info.annotations.len(), 1);
    }

    #[test]
    fn the_older_pod_cidr_field_is_read_too() {
        let node = Node {
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            node_info(&node).pod_cidrs,
            vec!["10.244.1.0/24".to_string()]
        );
    }
}
