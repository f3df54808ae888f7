//! The connection to a cluster (kubeconfig and context, as kubectl picks
//! them) and a snapshot of what Trellis reads from it: Nodes and Peers, the
//! ranges the cluster declares, and the Nodes of linked clusters.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use trellis_api::Peer;
use trellis_mesh::names::LABEL_REMOTE_CLUSTER;
use trellis_mesh::{
    DeclaredRanges, ExternalPeerInfo, NodeInfo, PresharedKey, PresharedKeySource, RemoteCluster,
};

/// A client for `context` of `kubeconfig` (each defaulting as kubectl does).
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(config(kubeconfig, context).await?)?)
}

/// The configuration for `context` of `kubeconfig`, which may list several
/// files separated by ':' as $KUBECONFIG does (merged the way kubectl
/// merges them: the first file defining a name wins).
pub async fn config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Config> {
    let options = KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    Ok(match kubeconfig {
        Some(paths) => {
            let mut merged: Option<Kubeconfig> = None;
            for path in std::env::split_paths(paths).filter(|p| !p.as_os_str().is_empty()) {
                let kc = Kubeconfig::read_from(&path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                merged = Some(match merged {
                    None => kc,
                    Some(m) => m.merge(kc)?,
                });
            }
            let kc = merged.context("--kubeconfig names no file")?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| match context {
                    Some(c) => format!("using context {c:?}"),
                    None => "using the current context".into(),
                })?
        }
        None => kube::Config::from_kubeconfig(&options)
            .await
            .context("no kubeconfig: pass --kubeconfig or set KUBECONFIG")?,
    })
}

/// Nodes and Peers of one cluster.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub peers: Vec<Peer>,
    /// The linked clusters' Nodes (their Peers left aside), when read.
    pub remotes: Vec<RemoteCluster>,
    /// The ranges the cluster declares (nothing, until read).
    pub declared: DeclaredRanges,
}

/// The ranges cluster `name` declares: its chart's ConfigMap in the links
/// namespace.
pub async fn read_declaration(
    client: &kube::Client,
    links_namespace: &str,
    name: &str,
) -> anyhow::Result<DeclaredRanges> {
    use trellis_api::link::DECLARATION_CONFIGMAP;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), links_namespace);
    let map = maps.get_opt(DECLARATION_CONFIGMAP).await.with_context(|| {
        format!("reading ConfigMap {links_namespace}/{DECLARATION_CONFIGMAP} of cluster {name}")
    })?;
    let map = map.with_context(|| {
        format!("cluster {name} declares no ranges: ConfigMap {links_namespace}/{DECLARATION_CONFIGMAP} is missing (the Trellis chart creates it from its podRanges and externalPeerRanges values: install or upgrade the chart)")
    })?;
    trellis_api::link::declared_of(&map).with_context(|| format!("cluster {name}"))
}

impl Snapshot {
    pub async fn read(client: &kube::Client) -> anyhow::Result<Self> {
        let nodes: Api<Node> = Api::all(client.clone());
        let peers: Api<Peer> = Api::all(client.clone());
        Ok(Snapshot {
            remotes: Vec::new(),
            declared: DeclaredRanges::default(),
            nodes: nodes.list(&Default::default()).await.context("listing Nodes")?.items,
            peers: peers
                .list(&Default::default())
                .await
                .context("listing Peers (is Trellis installed? the peers.trellis.dev CRD comes with its chart)")?
                .items,
        })
    }

    /// [`Snapshot::read`], the ranges the cluster declares, and the Nodes
    /// of every cluster linked by a Secret in `links_namespace`, read with
    /// the Secret's kubeconfig as the agents do. A linked cluster that
    /// cannot be read is left out, saying so on stderr.
    pub async fn read_with_links(
        client: &kube::Client,
        links_namespace: &str,
    ) -> anyhow::Result<Self> {
        let mut snapshot = Self::read(client).await?;
        snapshot.declared = read_declaration(client, links_namespace, "this").await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), links_namespace);
        let params = ListParams::default().labels(LABEL_REMOTE_CLUSTER);
        let Ok(list) = secrets.list(&params).await else {
            return Ok(snapshot);
        };
        for secret in &list.items {
            let Some(link) = trellis_api::link::link_of(secret) else {
                continue;
            };
            let read = async {
                let link = link?;
                let kc = Kubeconfig::from_yaml(&link.kubeconfig)?;
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                let remote: Api<Node> = Api::all(kube::Client::try_from(config)?);
                let nodes =
                    tokio::time::timeout(Duration::from_secs(5), remote.list(&Default::default()))
                        .await
                        .context("no answer within 5 s")??;
                anyhow::Ok(RemoteCluster {
                    name: link.cluster,
                    declared: link.declared,
                    nodes: nodes
                        .items
                        .iter()
                        .map(trellis_api::node::node_info)
                        .collect(),
                    external: Vec::new(),
                })
            };
            match read.await {
                Ok(r) => snapshot.remotes.push(r),
                Err(e) => eprintln!(
                    "warning: linked cluster of Secret {links_namespace}/{} left out: {e:#}",
                    secret.metadata.name.as_deref().unwrap_or_default()
                ),
            }
        }
        Ok(snapshot)
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
