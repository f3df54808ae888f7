//! The connection to a cluster (kubeconfig and context, as kubectl picks
//! them) and a snapshot of what Trellis reads from it: Nodes and Peers.

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use trellis_api::Peer;
use trellis_mesh::{ExternalPeerInfo, NodeInfo, PresharedKey, PresharedKeySource};

/// A client for `context` of `kubeconfig` (each defaulting as kubectl does).
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await?
        }
        None => kube::Config::from_kubeconfig(&options)
            .await
            .context("no kubeconfig: pass --kubeconfig or set KUBECONFIG")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Nodes and Peers of one cluster.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub peers: Vec<Peer>,
}

impl Snapshot {
    pub async fn read(client: &kube::Client) -> anyhow::Result<Self> {
        let nodes: Api<Node> = Api::all(client.clone());
        let peers: Api<Peer> = Api::all(client.clone());
        Ok(Snapshot {
            nodes: nodes.list(&Default::default()).await.context("listing Nodes")?.items,
            peers: peers
                .list(&Default::default())
                .await
                .context("listing Peers (is Trellis installed? the peers.trellis.dev CRD comes with its chart)")?
                .items,
        })
    }

    pub fn node_infos(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .map(trellis_api::node::node_info)
            .collect()
    }

    /// The Peers as the mesh sees them. Preshared keys are not read (they
    /// are the agents' to read): a Peer with one counts as having it.
    pub fn external_infos(&self) -> Vec<ExternalPeerInfo> {
        self.peers
            .iter()
            .map(|p| {
                let psk = match p.spec.preshared_key_secret_ref {
                    Some(_) => PresharedKeySource::Key(PresharedKey([0; 32])),
                    None => PresharedKeySource::None,
                };
                p.external_peer_info(psk)
            })
            .collect()
    }

    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }
}
