//! The agent's contact with the API server: Node objects into
//! `mesh::NodeInfo` (from trellis-api), the agent's own annotations (patched only when they
//! change: no heartbeat writes), and Events on its own Node or on the
//! Secret linking a refused cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;
use trellis_mesh::{ClusterRejection, Rejection};

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
        // different objects are different events. A linked cluster's
        // objects are not in this API server: they are named in the note.
        let (api_version, kind) = if r.object.is_node() {
            ("v1", "Node")
        } else {
            ("trellis.dev/v1alpha1", "Peer")
        };
        let related = r.object.cluster().is_none().then(|| ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            name: Some(r.object.name().to_string()),
            ..Default::default()
        });
        let event = Event {
            type_: EventType::Warning,
            reason: reason_name(r.reason).into(),
            note: Some(format!(
                "{} is left out of the mesh: {}",
                r.object.describe(),
                r.message
            )),
            action: "Reconcile".into(),
            secondary: related,
        };
        self.publish(&event, &self.reference).await;
    }

    /// A linked cluster refused as a whole: the Event is about the Secret
    /// that links it (`kubectl describe secret` shows it), from this node.
    pub async fn cluster_refused(&self, secret: &ObjectReference, r: &ClusterRejection) {
        let event = Event {
            type_: EventType::Warning,
            reason: "LinkedClusterRefused".into(),
            note: Some(format!(
                "linked cluster {} is left out of the mesh: {}",
                r.cluster, r.message
            )),
            action: "Reconcile".into(),
            secondary: Some(self.reference.clone()),
        };
        self.publish(&event, secret).await;
    }

    /// A link Secret that cannot be used (bad name or kubeconfig).
    pub async fn link_unusable(&self, secret: &ObjectReference, problem: &str) {
        let event = Event {
            type_: EventType::Warning,
            reason: "LinkedClusterUnusable".into(),
            note: Some(format!("cannot follow this linked cluster: {problem}")),
            action: "Reconcile".into(),
            secondary: Some(self.reference.clone()),
        };
        self.publish(&event, secret).await;
    }

    async fn publish(&self, event: &Event, regarding: &ObjectReference) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(event, regarding).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    }
}

/// The Event reason for a rejection (CamelCase, as Kubernetes reasons are).
pub fn reason_name(reason: trellis_mesh::RejectReason) -> &'static str {
    use trellis_mesh::RejectReason::*;
    match reason {
        InvalidAnnotation => "PeerInvalidAnnotation",
        InvalidPodCidr => "PeerInvalidPodCIDR",
        OverlappingPodCidr => "PeerOverlappingPodCIDR",
        UndeclaredRange => "PeerUndeclaredRange",
        DuplicatePublicKey => "PeerDuplicatePublicKey",
        UnresolvableEndpoint => "PeerUnresolvableEndpoint",
        InvalidPeerSpec => "PeerInvalidSpec",
        OverlappingAllowedIps => "PeerOverlappingAllowedIPs",
        PresharedKeyUnavailable => "PeerPresharedKeyUnavailable",
    }
}
