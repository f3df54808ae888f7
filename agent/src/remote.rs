//! Linked clusters on the agent's side: the link Secrets in the agent's
//! namespace (labelled `trellis.dev/remote-cluster`) are followed — a
//! Node and a Peer reflector per linked cluster, started with the Secret's
//! kubeconfig, restarted when it changes, stopped when the Secret goes —
//! and turned into the mesh's [`RemoteCluster`] inputs. A cluster whose
//! API server becomes unreachable keeps its last known objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::Resource;
use tokio::sync::Notify;
use trellis_api::link::{link_of, Link as LinkSource};
use trellis_api::status::{LinkState, LinkedClusterReport};
use trellis_api::Peer;
use trellis_mesh::{Desired, PresharedKeySource, RemoteCluster};

use crate::reflectors::{spawn_reflector, Reflector};

/// One link Secret and what follows from it.
struct Link {
    cluster: String,
    secret: ObjectReference,
    /// The cluster name, kubeconfig and declared ranges read from the
    /// Secret, or what is wrong.
    source: Result<LinkSource, String>,
    watch: Result<Watch, String>,
}

struct Watch {
    nodes: Reflector<Node>,
    peers: Reflector<Peer>,
}

/// The linked clusters this agent follows.
pub struct RemoteClusters {
    changed: Arc<Notify>,
    /// By Secret name.
    links: BTreeMap<String, Link>,
}

impl std::fmt::Debug for RemoteClusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClusters")
            .field("links", &self.links.keys().collect::<Vec<_>>())
            .finish()
    }
}

async fn client_of(kubeconfig: &str) -> Result<kube::Client, String> {
    let kc = Kubeconfig::from_yaml(kubeconfig)
        .map_err(|e| format!("its kubeconfig does not parse: {e}"))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("its kubeconfig is not usable: {e}"))?;
    kube::Client::try_from(config).map_err(|e| format!("no client from its kubeconfig: {e}"))
}

impl RemoteClusters {
    pub fn new(changed: Arc<Notify>) -> Self {
        RemoteClusters {
            changed,
            links: BTreeMap::new(),
        }
    }

    /// Follows `secrets` (the labelled Secrets): starts watching new links,
    /// restarts changed ones, stops removed ones. Returns the links that
    /// became unusable (Secret reference, cluster and what to fix), once.
    pub async fn follow(&mut self, secrets: &[Arc<Secret>]) -> Vec<(ObjectReference, String)> {
        let mut problems = Vec::new();
        let mut seen = Vec::new();
        for secret in secrets {
            let Some(parsed) = link_of(secret) else {
                continue;
            };
            let name = secret.metadata.name.clone().unwrap_or_default();
            seen.push(name.clone());
            let reference = secret.object_ref(&());
            let source = parsed.map_err(|e| e.to_string());
            if self.links.get(&name).is_some_and(|l| l.source == source) {
                continue;
            }
            let (cluster, watch) = match &source {
                Err(e) => (String::new(), Err(e.clone())),
                Ok(LinkSource {
                    cluster,
                    kubeconfig,
                    ..
                }) => (
                    cluster.clone(),
                    match client_of(kubeconfig).await {
                        Ok(client) => Ok(self.watch(client, cluster)),
                        Err(e) => Err(format!("Secret {name}: {e}")),
                    },
                ),
            };
            match &watch {
                Ok(_) => tracing::info!(cluster, secret = name, "following a linked cluster"),
                Err(e) => {
                    tracing::warn!(secret = name, error = %e, "cannot follow a linked cluster");
                    problems.push((reference.clone(), e.clone()));
                }
            }
            self.links.insert(
                name,
                Link {
                    cluster,
                    secret: reference,
                    source,
                    watch,
                },
            );
        }
        self.links.retain(|name, link| {
            let keep = seen.contains(name);
            if !keep {
                tracing::info!(
                    cluster = link.cluster,
                    secret = name,
                    "unlinked: its peers go"
                );
            }
            keep
        });
        problems
    }

    fn watch(&self, client: kube::Client, cluster: &str) -> Watch {
        Watch {
            nodes: spawn_reflector(
                Api::all(client.clone()),
                watcher::Config::default(),
                self.changed.clone(),
                format!("Nodes of linked cluster {cluster}"),
            ),
            peers: spawn_reflector(
                Api::all(client),
                watcher::Config::default(),
                self.changed.clone(),
                format!("Peers of linked cluster {cluster}"),
            ),
        }
    }

    /// The linked clusters as the mesh sees them: those listed at least
    /// once (the others are not known yet). Their Peers' preshared keys
    /// live in their cluster: such a Peer is left out here, saying so.
    pub fn remote_clusters(&self) -> Vec<RemoteCluster> {
        let mut out = Vec::new();
        for link in self.links.values() {
            let (Ok(w), Ok(source)) = (&link.watch, &link.source) else {
                continue;
            };
            if !w.nodes.is_ready() {
                continue;
            }
            let external = w
                .peers
                .store
                .state()
                .iter()
                .map(|p| {
                    let psk = match &p.spec.preshared_key_secret_ref {
                        None => PresharedKeySource::None,
                        Some(r) => PresharedKeySource::Unavailable(format!(
                            "its preshared key is in Secret {}/{} of cluster {}, which this cluster's agents cannot read: create the Peer in this cluster too, with a Secret here",
                            r.namespace, r.name, link.cluster
                        )),
                    };
                    p.external_peer_info(psk)
                })
                .collect();
            out.push(RemoteCluster {
                name: link.cluster.clone(),
                nodes: w
                    .nodes
                    .store
                    .state()
                    .iter()
                    .map(|n| trellis_api::node::node_info(n))
                    .collect(),
                external,
                declared: source.declared.clone(),
            });
        }
        out
    }

    /// The Secret linking `cluster`.
    pub fn secret_of(&self, cluster: &str) -> Option<&ObjectReference> {
        self.links
            .values()
            .find(|l| l.cluster == cluster)
            .map(|l| &l.secret)
    }

    /// How each linked cluster stands after reconciling to `desired`.
    pub fn reports(&self, desired: &Desired) -> Vec<LinkedClusterReport> {
        self.links
            .values()
            .map(|link| {
                let secret = format!(
                    "{}/{}",
                    link.secret.namespace.as_deref().unwrap_or_default(),
                    link.secret.name.as_deref().unwrap_or_default()
                );
                let peers = desired
                    .peers
                    .values()
                    .filter(|p| p.name.cluster() == Some(link.cluster.as_str()))
                    .count();
                let refused = desired
                    .rejected_clusters
                    .iter()
                    .find(|r| r.cluster == link.cluster);
                let (state, nodes, message) = match (&link.watch, refused) {
                    (Err(e), _) => (LinkState::Refused, 0, Some(e.clone())),
                    (Ok(_), Some(r)) => (LinkState::Refused, 0, Some(r.message.clone())),
                    (Ok(w), None) => {
                        let nodes = w.nodes.store.len();
                        match w.nodes.health.last_error() {
                            Some(e) => (LinkState::Unreachable, nodes, Some(e)),
                            None if !w.nodes.is_ready() => (LinkState::Connecting, 0, None),
                            None => (LinkState::Linked, nodes, None),
                        }
                    }
                };
                LinkedClusterReport {
                    name: link.cluster.clone(),
                    secret,
                    nodes,
                    peers,
                    state,
                    message,
                }
            })
            .collect()
    }
}

/// The linked clusters as the agent's loop uses them: a trait, so that the
/// loop is unit-tested without remote API servers.
#[allow(async_fn_in_trait)]
pub trait LinkedClusters {
    /// Follows the link Secrets; the links that became unusable, once.
    async fn follow(&mut self, secrets: &[Arc<Secret>]) -> Vec<(ObjectReference, String)>;
    /// The linked clusters as the mesh sees them.
    fn remote_clusters(&self) -> Vec<RemoteCluster>;
    /// The Secret linking `cluster`.
    fn secret_of(&self, cluster: &str) -> Option<&ObjectReference>;
    /// How each linked cluster stands after reconciling to `desired`.
    fn reports(&self, desired: &Desired) -> Vec<LinkedClusterReport>;
}

impl LinkedClusters for RemoteClusters {
    async fn follow(&mut self, secrets: &[Arc<Secret>]) -> Vec<(ObjectReference, String)> {
        RemoteClusters::follow(self, secrets).await
    }

    fn remote_clusters(&self) -> Vec<RemoteCluster> {
        RemoteClusters::remote_clusters(self)
    }

    fn secret_of(&self, cluster: &str) -> Option<&ObjectReference> {
        RemoteClusters::secret_of(self, cluster)
    }

    fn reports(&self, desired: &Desired) -> Vec<LinkedClusterReport> {
        RemoteClusters::reports(self, desired)
    }
}
