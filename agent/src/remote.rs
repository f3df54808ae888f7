//! Linked clusters on the agent's side: the link Secrets in the agent's
//! namespace (labelled `trellis.dev/remote-cluster`) are followed — a
//! Node and a Peer reflector per linked cluster, started with the Secret's
//! kubeconfig, restarted when it changes, stopped when the Secret goes —
//! and turned into the mesh's [`RemoteCluster`] inputs. A cluster whose
//! API server becomes unreachable keeps its last known objects; what each
//! cluster served last is also kept on the node ([`crate::remote_cache`]),
//! so that an agent started while the remote does not answer serves that
//! until it does.

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
use trellis_api::token::TokenClaims;
use trellis_api::Peer;
use trellis_mesh::{Desired, PresharedKeySource, RemoteCluster};

use crate::reflectors::{spawn_reflector, Reflector};
use crate::remote_cache::{CachedNode, RemoteCache, Snapshot};

/// One link Secret and what follows from it.
struct Link {
    cluster: String,
    secret: ObjectReference,
    /// The cluster name, kubeconfig and declared ranges read from the
    /// Secret, or what is wrong.
    source: Result<LinkSource, String>,
    watch: Result<Watch, String>,
    /// What the cluster served last, from the node's cache, when there
    /// was one as the link was followed: served until the cluster lists.
    cached: Option<Snapshot>,
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
    cache: Option<RemoteCache>,
    /// The snapshot text last written per cluster (written again only
    /// when it changes).
    written: std::sync::Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for RemoteClusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClusters")
            .field("links", &self.links.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A client of the cluster that `kubeconfig` (a link Secret's) reaches.
pub(crate) async fn client_of(kubeconfig: &str) -> Result<kube::Client, String> {
    let kc = Kubeconfig::from_yaml(kubeconfig)
        .map_err(|e| format!("its kubeconfig does not parse: {e}"))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("its kubeconfig is not usable: {e}"))?;
    kube::Client::try_from(config).map_err(|e| format!("no client from its kubeconfig: {e}"))
}

impl RemoteClusters {
    /// Linked clusters announced on `changed`, each one's last listing
    /// kept in `cache` (none: kept in memory only).
    pub fn new(changed: Arc<Notify>, cache: Option<RemoteCache>) -> Self {
        RemoteClusters {
            changed,
            links: BTreeMap::new(),
            cache,
            written: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The cached snapshot of `cluster`, saying why there is none usable.
    fn load_cached(&self, cluster: &str) -> Option<Snapshot> {
        let cache = self.cache.as_ref()?;
        match cache.load(cluster) {
            Ok(Some(snapshot)) => {
                tracing::info!(
                    cluster,
                    nodes = snapshot.nodes.len(),
                    "the linked cluster's nodes as last seen, from this node's cache: served until it lists"
                );
                Some(snapshot)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(cluster, error = %e, "no cached listing of the linked cluster");
                None
            }
        }
    }

    /// Keeps what `cluster` serves now on the node, when it changed.
    fn save_cached(&self, cluster: &str, nodes: &[trellis_mesh::NodeInfo], peers: &[Arc<Peer>]) {
        let Some(cache) = &self.cache else {
            return;
        };
        let snapshot = Snapshot {
            nodes: nodes.iter().map(CachedNode::from).collect(),
            peers: peers.iter().map(|p| (**p).clone()).collect(),
        };
        let Ok(text) = serde_json::to_string(&snapshot) else {
            return;
        };
        let mut written = self.written.lock().expect("cache lock");
        if written.get(cluster) == Some(&text) {
            return;
        }
        match cache.save(cluster, &text) {
            Ok(()) => {
                written.insert(cluster.to_string(), text);
            }
            Err(e) => {
                tracing::warn!(cluster, error = %e, "cannot keep the linked cluster's listing on this node")
            }
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
            if let Some(link) = self.links.get_mut(&name) {
                if let Some(token) = renewed_token(&link.source, &source) {
                    match self
                        .cache
                        .as_ref()
                        .map(|c| c.save_token(&link.cluster, &token))
                    {
                        Some(Ok(_)) => {
                            tracing::info!(
                                cluster = link.cluster,
                                "the link's token was renewed: its client reads the new one"
                            );
                            link.source = source;
                            continue;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(cluster = link.cluster, error = %e, "cannot write the renewed token; restarting the link with it")
                        }
                        None => {}
                    }
                }
            }
            let (cluster, watch) = match &source {
                Err(e) => (String::new(), Err(e.clone())),
                Ok(LinkSource {
                    cluster,
                    kubeconfig,
                    ..
                }) => (
                    cluster.clone(),
                    match client_of(&self.with_token_file(cluster, kubeconfig)).await {
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
            let cached = match (&watch, &source) {
                (Ok(_), Ok(_)) => self.load_cached(&cluster),
                _ => None,
            };
            self.links.insert(
                name,
                Link {
                    cluster,
                    secret: reference,
                    source,
                    watch,
                    cached,
                },
            );
        }
        let cache = self.cache.clone();
        self.links.retain(|name, link| {
            let keep = seen.contains(name);
            if !keep {
                tracing::info!(
                    cluster = link.cluster,
                    secret = name,
                    "unlinked: its peers go"
                );
                if let Some(Err(e)) = cache.as_ref().map(|c| c.remove(&link.cluster)) {
                    tracing::warn!(cluster = link.cluster, error = %e, "cannot remove the unlinked cluster's cached listing");
                }
            }
            keep
        });
        problems
    }

    /// `kubeconfig` reading its token from a file on the node when there
    /// is a cache (so that a renewed token reaches the running client),
    /// else as it is.
    fn with_token_file(&self, cluster: &str, kubeconfig: &str) -> String {
        let Some(cache) = &self.cache else {
            return kubeconfig.to_string();
        };
        let Ok(token) = trellis_api::kubeconfig::token_of(kubeconfig) else {
            return kubeconfig.to_string();
        };
        let saved = cache.save_token(cluster, &token).map_err(|e| e.to_string());
        match saved.and_then(|path| {
            trellis_api::kubeconfig::with_token_file(kubeconfig, &path).map_err(|e| e.to_string())
        }) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(cluster, error = %e, "cannot keep the link's token in a file: a renewed token restarts the link");
                kubeconfig.to_string()
            }
        }
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
    /// once, and those not listed yet that this node has a cached listing
    /// of (the others are not known yet). Their Peers' preshared keys
    /// live in their cluster: such a Peer is left out here, saying so.
    pub fn remote_clusters(&self) -> Vec<RemoteCluster> {
        let mut out = Vec::new();
        for link in self.links.values() {
            let (Ok(w), Ok(source)) = (&link.watch, &link.source) else {
                continue;
            };
            let (nodes, peers) = if w.nodes.is_ready() {
                let nodes: Vec<_> = w
                    .nodes
                    .store
                    .state()
                    .iter()
                    .map(|n| trellis_api::node::node_info(n))
                    .collect();
                let peers = w.peers.store.state();
                if w.peers.is_ready() {
                    self.save_cached(&link.cluster, &nodes, &peers);
                }
                (nodes, peers.iter().map(|p| (**p).clone()).collect())
            } else if let Some(cached) = &link.cached {
                (
                    cached.nodes.iter().map(Into::into).collect(),
                    cached.peers.clone(),
                )
            } else {
                continue;
            };
            let external = peers
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
                nodes,
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
                    (Ok(w), None) if !w.nodes.is_ready() && link.cached.is_some() => {
                        let cached = link.cached.as_ref().map_or(0, |c| c.nodes.len());
                        let why = w
                            .nodes
                            .health
                            .last_error()
                            .unwrap_or_else(|| "not listed yet".into());
                        (
                            LinkState::Unreachable,
                            cached,
                            Some(format!(
                                "{why}; serving its {cached} nodes as this node last saw them"
                            )),
                        )
                    }
                    (Ok(w), None) => {
                        let nodes = w.nodes.store.len();
                        match w.nodes.health.last_error() {
                            Some(e) => (LinkState::Unreachable, nodes, Some(e)),
                            None if !w.nodes.is_ready() => (LinkState::Connecting, 0, None),
                            None => (LinkState::Linked, nodes, None),
                        }
                    }
                };
                let claims = link.source.as_ref().ok().map(|s| {
                    trellis_api::kubeconfig::token_of(&s.kubeconfig)
                        .map_err(|e| e.to_string())
                        .and_then(|t| TokenClaims::parse(&t).map_err(|e| e.to_string()))
                });
                let now = std::time::SystemTime::now();
                let token_expires_in_s = match &claims {
                    Some(Ok(c)) => Some(match c.expires.duration_since(now) {
                        Ok(left) => left.as_secs() as i64,
                        Err(past) => -(past.duration().as_secs() as i64),
                    }),
                    _ => None,
                };
                let message = match (&claims, token_expires_in_s) {
                    (Some(Ok(c)), Some(left)) if left <= 0 => Some(format!(
                        "its token expired {} s ago (issued for {} s; no node could renew it in time): link the clusters again with `kubectl trellis cluster link`{}",
                        -left,
                        c.lifetime().as_secs(),
                        message.map(|m| format!("; {m}")).unwrap_or_default()
                    )),
                    (Some(Err(e)), _) if state == LinkState::Linked => {
                        Some(format!("its token does not renew itself: {e}"))
                    }
                    _ => message,
                };
                LinkedClusterReport {
                    name: link.cluster.clone(),
                    secret,
                    nodes,
                    peers,
                    state,
                    message,
                    token_expires_in_s,
                }
            })
            .collect()
    }
}

/// The new token, when `new` is `old` with only its token renewed.
fn renewed_token(
    old: &Result<LinkSource, String>,
    new: &Result<LinkSource, String>,
) -> Option<String> {
    use trellis_api::kubeconfig::{token_of, with_new_token};
    let (Ok(old), Ok(new)) = (old, new) else {
        return None;
    };
    let blank = |k: &str| with_new_token(k, "").ok();
    let same = old.cluster == new.cluster
        && old.declared == new.declared
        && blank(&old.kubeconfig).is_some()
        && blank(&old.kubeconfig) == blank(&new.kubeconfig);
    same.then(|| token_of(&new.kubeconfig).ok()).flatten()
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
