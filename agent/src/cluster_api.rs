//! What the agent reads from and writes to its own cluster's API server
//! besides the watched stores, behind one trait ([`ClusterApi`]) so that
//! the agent's loop is unit-tested with a recording fake: its Node's
//! annotations, the `Peer` objects' preshared keys, their `Configured`
//! conditions, and Events. [`KubeCluster`] is the real one.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::Api;
use trellis_api::Peer;
use trellis_mesh::{ClusterRejection, Desired, ExternalPeerInfo, Rejection};

use crate::kube_io::{self, EventSink};
use crate::peers::{self, PeerInputs};

#[allow(async_fn_in_trait)]
pub trait ClusterApi {
    /// Makes `own`'s annotations include `wanted`; whether it wrote.
    async fn publish_annotations(
        &mut self,
        own: &Node,
        wanted: &BTreeMap<String, String>,
    ) -> Result<bool, kube::Error>;
    /// The Peers as the mesh sees them (preshared keys read from Secrets).
    async fn external_peers(&mut self, peers: &[Arc<Peer>]) -> Vec<ExternalPeerInfo>;
    /// Writes this node's condition on every Peer whose condition changed;
    /// how many it wrote.
    async fn publish_conditions(
        &mut self,
        node: &str,
        peers: &[Arc<Peer>],
        desired: &Desired,
    ) -> Result<usize, kube::Error>;
    /// An Event: a node or Peer is left out of the mesh.
    async fn rejected(&mut self, own: &Node, rejection: &Rejection);
    /// An Event on a link Secret: its cluster is refused as a whole.
    async fn cluster_refused(
        &mut self,
        own: &Node,
        secret: &ObjectReference,
        rejection: &ClusterRejection,
    );
    /// An Event on a link Secret that cannot be used.
    async fn link_unusable(&mut self, own: &Node, secret: &ObjectReference, problem: &str);
}

/// The API server, through kube.
pub struct KubeCluster {
    client: kube::Client,
    nodes: Api<Node>,
    peers: Api<Peer>,
    peer_inputs: PeerInputs,
    /// Made once the own Node is known (Events are about it).
    events: Option<EventSink>,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster").finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// `namespace` holds the Secrets with Peers' preshared keys.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        KubeCluster {
            nodes: Api::all(client.clone()),
            peers: Api::all(client.clone()),
            peer_inputs: PeerInputs::new(client.clone(), namespace),
            events: None,
            client,
        }
    }

    fn events(&mut self, own: &Node) -> &EventSink {
        self.events
            .get_or_insert_with(|| EventSink::new(self.client.clone(), own))
    }
}

impl ClusterApi for KubeCluster {
    async fn publish_annotations(
        &mut self,
        own: &Node,
        wanted: &BTreeMap<String, String>,
    ) -> Result<bool, kube::Error> {
        kube_io::publish_annotations(&self.nodes, own, wanted).await
    }

    async fn external_peers(&mut self, peers: &[Arc<Peer>]) -> Vec<ExternalPeerInfo> {
        self.peer_inputs.external_peers(peers).await
    }

    async fn publish_conditions(
        &mut self,
        node: &str,
        peers: &[Arc<Peer>],
        desired: &Desired,
    ) -> Result<usize, kube::Error> {
        peers::publish_conditions(&self.peers, node, peers, desired).await
    }

    async fn rejected(&mut self, own: &Node, rejection: &Rejection) {
        self.events(own).rejected(rejection).await;
    }

    async fn cluster_refused(
        &mut self,
        own: &Node,
        secret: &ObjectReference,
        rejection: &ClusterRejection,
    ) {
        self.events(own).cluster_refused(secret, rejection).await;
    }

    async fn link_unusable(&mut self, own: &Node, secret: &ObjectReference, problem: &str) {
        self.events(own).link_unusable(secret, problem).await;
    }
}
