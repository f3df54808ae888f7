//! The cluster-scoped `Peer` (trellis.dev/v1alpha1): a machine outside the
//! cluster that every node has as a WireGuard peer. Its status holds one
//! `Configured` condition per node, each written by that node's agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use trellis_mesh::{ExternalPeerInfo, PresharedKeySource};

/// The condition type each agent sets on a Peer for its own node.
pub const CONDITION_CONFIGURED: &str = "Configured";
/// The key in a Secret's data when `presharedKeySecretRef.key` is not set.
pub const DEFAULT_PRESHARED_KEY_FIELD: &str = "presharedKey";

/// An external WireGuard peer of every node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "trellis.dev",
    version = "v1alpha1",
    kind = "Peer",
    status = "PeerStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    /// The peer's WireGuard public key (base64).
    pub public_key: String,
    /// Where nodes reach the peer (`ip:port`, `[v6]:port`, `host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Addresses routed to the peer, as CIDRs.
    #[serde(rename = "allowedIPs")]
    pub allowed_ips: Vec<String>,
    /// Seconds between keepalives (0 or absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u32>,
    /// A Secret holding a WireGuard preshared key for this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key_secret_ref: Option<SecretKeyRef>,
}

/// A key in a namespaced Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SecretKeyRef {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key in the Secret's data.
    pub fn data_key(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_PRESHARED_KEY_FIELD)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PeerStatus {
    #[serde(default)]
    pub conditions: Vec<NodeCondition>,
}

/// A condition about one node (the list is keyed by type and node, so each
/// agent owns its own entries under server-side apply).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub node: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Peer {
    /// This node's condition of `type_`, if the agent wrote one.
    pub fn condition(&self, type_: &str, node: &str) -> Option<&NodeCondition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.node == node)
    }

    /// What the mesh needs, with the preshared key as the agent read it.
    pub fn external_peer_info(&self, preshared_key: PresharedKeySource) -> ExternalPeerInfo {
        ExternalPeerInfo {
            name: self.metadata.name.clone().unwrap_or_default(),
            created: crate::node::created_seconds(&self.metadata),
            public_key: self.spec.public_key.clone(),
            endpoint: self.spec.endpoint.clone(),
            allowed_ips: self.spec.allowed_ips.clone(),
            persistent_keepalive: self.spec.persistent_keepalive,
            preshared_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_reads_and_writes_the_crd_field_names() {
        let json = serde_json::json!({
            "apiVersion": "trellis.dev/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": "laptop", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {
                "publicKey": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
                "endpoint": "198.51.100.7:51820",
                "allowedIPs": ["10.99.0.2/32"],
                "persistentKeepalive": 25,
                "presharedKeySecretRef": {"name": "laptop-psk", "namespace": "kube-system"}
            },
            "status": {"conditions": [
                {"type": "Configured", "node": "n1", "status": "True", "reason": "Configured"}
            ]}
        });
        let peer: Peer = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(peer.spec.allowed_ips, vec!["10.99.0.2/32".to_string()]);
        assert_eq!(
            peer.spec
                .preshared_key_secret_ref
                .as_ref()
                .unwrap()
                .data_key(),
            "presharedKey"
        );
        assert_eq!(
            peer.condition(CONDITION_CONFIGURED, "n1").unwrap().status,
            "True"
        );
        assert!(peer.condition(CONDITION_CONFIGURED, "n2").is_none());
        assert_eq!(serde_json::to_value(&peer).unwrap(), json);
        let info = peer.external_peer_info(PresharedKeySource::None);
        assert_eq!(info.name, "laptop");
        assert_eq!(info.created, 1_767_323_045);
        assert_eq!(info.persistent_keepalive, Some(25));
    }
}
