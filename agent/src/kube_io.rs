//! The agent's contact with the API server: Node objects into
//! `mesh::NodeInfo` (from trellis-api), the agent's own annotations (patched only when they
//! change: no heartbeat writes), and Events on its own Node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;
use trellis_mesh::{PeerName, Rejection};

pub use trellis_api::node::{internal_ips, node_info};

/// Patches the Node's annotations to include `wanted`, only when one
/// differs. Returns whether it wrote.
pub async fn publish_annotations(
    api: &Api<Node>,
    node: &Node,
    wanted: &BTreeMap<String, String>,
) -> Result<bool, kube::Error> {
    let current = node.metadata.annotations.clone().unwrap_or_default();
    if wanted.iter().all(|(k, v)| current.get(k) == Some(v)) {
        return Ok(false);
    }
    let name = node.metadata.name.clone().unwrap_or_default();
    let patch = serde_json::json!({"metadata": {"annotations": wanted}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

/// Publishes Events about rejected nodes on the agent's own Node. Each
/// Event is created, never patched: the chart's RBAC grants `create` only
/// (a Recorder kept across publishes would PATCH a repeat into a series).
/// Rejections are reported when they are new, so repeats are rare.
#[derive(Clone)]
pub struct EventSink {
    client: kube::Client,
    reporter: Reporter,
    reference: ObjectReference,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl EventSink {
    pub fn new(client: kube::Client, own_node: &Node) -> Self {
        let reporter = Reporter {
            controller: "trellis-agent".into(),
            instance: own_node.metadata.name.clone(),
        };
        EventSink {
            client,
            reporter,
            reference: own_node.object_ref(&()),
        }
    }

    pub async fn rejected(&self, r: &Rejection) {
        // The rejected Node or Peer is the related object: events about
        // different objects are different events.
        let (api_version, kind, what) = match &r.object {
            PeerName::Node(_) => ("v1", "Node", "node"),
            PeerName::External(_) => ("trellis.dev/v1alpha1", "Peer", "peer"),
        };
        let related = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            name: Some(r.object.name().to_string()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: reason_name(r.reason).into(),
            note: Some(format!(
                "{what} {} is left out of the mesh: {}",
                r.object.name(),
                r.message
            )),
            action: "Reconcile".into(),
            secondary: Some(related),
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, &self.reference).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    }
}

/// The Event reason for a rejection (CamelCase, as Kubernetes reasons are).
pub fn reason_name(reason: trellis_mesh::desired::RejectReason) -> &'static str {
    use trellis_mesh::desired::RejectReason::*;
    match reason {
        InvalidAnnotation => "PeerInvalidAnnotation",
        InvalidPodCidr => "PeerInvalidPodCIDR",
        OverlappingPodCidr => "PeerOverlappingPodCIDR",
        DuplicatePublicKey => "PeerDuplicatePublicKey",
        UnresolvableEndpoint => "PeerUnresolvableEndpoint",
        InvalidPeerSpec => "PeerInvalidSpec",
        OverlappingAllowedIps => "PeerOverlappingAllowedIPs",
        PresharedKeyUnavailable => "PeerPresharedKeyUnavailable",
    }
}
