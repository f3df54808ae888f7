//! `cluster export/link/unlink`: linking two clusters. In each cluster the
//! other gets a read-only identity (a ServiceAccount bound to a ClusterRole
//! that may read Nodes and Peers, and a short-lived bound token of it that
//! the other cluster's agents renew), and a Secret labelled
//! `trellis.dev/remote-cluster` holding a kubeconfig with the other's
//! token and the ranges its cluster declares; the agents follow those
//! Secrets. Linking checks first that the clusters' pod CIDRs and Peers'
//! ranges do not overlap and lie inside what each cluster declares: a link
//! the agents would refuse is never created. Unlinking deletes all of it, on both
//! sides, and counts "already gone" as done.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use trellis_api::kubeconfig;
use trellis_api::link::{
    declaration_data, reader_name, secret_name, validate_cluster_name, KUBECONFIG_KEY,
};
use trellis_api::link::{LABEL_REMOTE_CLUSTER, READER_CLUSTER_ROLE};
use trellis_api::status::LinkState;
use trellis_mesh::ranges::{format_list, outside_declared};
use trellis_mesh::DeclaredRanges;

use crate::cluster::{read_declaration, Snapshot};

const FIELD_MANAGER: &str = "kubectl-trellis";
const TOKEN_WAIT: Duration = Duration::from_secs(30);

/// One side of a link: a client, the name the other side calls it, the
/// API server address the other side's agents use, the links namespace.
#[derive(Clone)]
pub struct Side {
    pub client: kube::Client,
    pub name: String,
    pub api_server: String,
    pub namespace: String,
}

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("name", &self.name)
            .field("api_server", &self.api_server)
            .finish_non_exhaustive()
    }
}

/// A cluster name from a kubeconfig context name: lowercase, anything
/// but letters and digits becomes '-'.
pub fn name_from_context(context: &str) -> String {
    let mapped: String = context
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').chars().take(40).collect()
}

/// The API server address for the other cluster's agents: `explicit`, or
/// the one this kubeconfig uses unless it is loopback (useless elsewhere).
pub fn api_server_for_others(
    explicit: Option<&str>,
    own: &str,
    name: &str,
) -> anyhow::Result<String> {
    if let Some(e) = explicit {
        return Ok(e.trim_end_matches('/').to_string());
    }
    let host = own
        .split("://")
        .nth(1)
        .unwrap_or(own)
        .split('/')
        .next()
        .unwrap_or_default();
    if host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]") {
        bail!(
            "cluster {name}'s API server is {own} in this kubeconfig, which the other cluster's nodes cannot reach: pass the address they can reach (--from-api-server / --to-api-server, or --api-server)"
        );
    }
    Ok(own.trim_end_matches('/').to_string())
}

/// Every range a cluster's mesh holds: Nodes' pod CIDRs and Peers' ranges.
fn ranges(snapshot: &Snapshot) -> Vec<(IpNet, String)> {
    let nodes = snapshot.node_infos().into_iter().flat_map(|n| {
        n.pod_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .map(|c| (c, format!("node {}", n.name)))
            .collect::<Vec<_>>()
    });
    let peers = snapshot.external_infos().into_iter().flat_map(|p| {
        p.allowed_ips
            .iter()
            .filter_map(|c| c.parse().ok())
            .map(|c| (c, format!("peer/{}", p.name)))
            .collect::<Vec<_>>()
    });
    nodes.chain(peers).collect()
}

/// Why clusters `a` and `b` cannot be linked: a range of one overlapping
/// a range of the other.
pub fn overlap(a: (&str, &Snapshot), b: (&str, &Snapshot)) -> Option<String> {
    let theirs = ranges(b.1);
    for (net, owner) in ranges(a.1) {
        if let Some((o, other)) = theirs
            .iter()
            .find(|(o, _)| o.contains(&net.network()) || net.contains(&o.network()))
        {
            return Some(format!(
                "{net} of {owner} in cluster {} overlaps {o} of {other} in cluster {}",
                a.0, b.0
            ));
        }
    }
    None
}

/// Why cluster `name` cannot be linked as it stands: a Node's pod CIDR or
/// a Peer's allowed IP outside what the cluster declares (the agents of
/// the other cluster would leave it out).
pub fn undeclared(name: &str, snapshot: &Snapshot) -> Option<String> {
    let declared = &snapshot.declared;
    let pods = format!("the pod ranges cluster {name} declares");
    let external = format!("the external-peer ranges cluster {name} declares");
    for node in snapshot.node_infos() {
        for c in node
            .pod_cidrs
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok())
        {
            if let Some(why) = outside_declared(&c, "pod CIDR", &declared.pods, &pods) {
                return Some(format!("node {}: {why}", node.name));
            }
        }
    }
    for peer in snapshot.external_infos() {
        for c in peer
            .allowed_ips
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok())
        {
            if let Some(why) =
                outside_declared(&c, "allowed IP", &declared.external_peers, &external)
            {
                return Some(format!("peer/{}: {why}", peer.name));
            }
        }
    }
    None
}

/// The Nodes, Peers and declaration of `side`'s cluster, printed; an
/// error when a node or Peer lies outside the declaration (the other
/// cluster's agents would leave it out).
pub async fn declared_snapshot(side: &Side) -> anyhow::Result<Snapshot> {
    let mut snapshot = Snapshot::read(&side.client).await?;
    snapshot.declared = read_declaration(&side.client, &side.namespace, &side.name).await?;
    eprintln!(
        "cluster {} declares pod ranges {} and external-peer ranges {}",
        side.name,
        format_list(&snapshot.declared.pods),
        format_list(&snapshot.declared.external_peers)
    );
    if let Some(why) = undeclared(&side.name, &snapshot) {
        bail!(
            "cluster {}: {why}. The other cluster's agents would leave it out. Nothing was created.",
            side.name
        );
    }
    Ok(snapshot)
}

async fn apply<K>(api: &Api<K>, name: &str, body: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&body))
        .await
        .with_context(|| format!("applying {} {name}", K::kind(&())))
}

/// Creates in `side`'s cluster the read-only identity for cluster `reader`
/// and returns a kubeconfig with a token of it valid for `lifetime`.
///
/// The token is a bound one (TokenRequest), bound to a Secret of its own
/// (`READER-token`): unlinking deletes that Secret, which revokes every
/// token issued for the link at once. The identity may ask for new tokens
/// of itself (`serviceaccounts/token` of its own ServiceAccount, nothing
/// else), which is how the other cluster's agents renew the link.
pub async fn export(side: &Side, reader: &str, lifetime: Duration) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let ns = &side.namespace;
    let account = reader_name(reader);
    let labels = serde_json::json!({"app.kubernetes.io/managed-by": FIELD_MANAGER});
    apply(
        &Api::<ClusterRole>::all(side.client.clone()),
        READER_CLUSTER_ROLE,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": READER_CLUSTER_ROLE, "labels": labels},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["trellis.dev"], "resources": ["peers"], "verbs": ["get", "list", "watch"]},
            ],
        }),
    )
    .await?;
    apply(
        &Api::<ServiceAccount>::namespaced(side.client.clone(), ns),
        &account,
        serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": ns, "labels": labels},
        }),
    )
    .await
    .with_context(|| {
        format!(
            "is Trellis installed in cluster {}? its chart creates namespace {ns}",
            side.name
        )
    })?;
    apply(
        &Api::<ClusterRoleBinding>::all(side.client.clone()),
        &account,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": account, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": READER_CLUSTER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
        }),
    )
    .await?;
    apply(
        &Api::<Role>::namespaced(side.client.clone(), ns),
        &account,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": account, "namespace": ns, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                "resourceNames": [account], "verbs": ["create"]}],
        }),
    )
    .await?;
    apply(
        &Api::<RoleBinding>::namespaced(side.client.clone(), ns),
        &account,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": account, "namespace": ns, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
        }),
    )
    .await?;
    let secrets = Api::<Secret>::namespaced(side.client.clone(), ns);
    let anchor = format!("{account}-token");
    // A link made before tokens were bound has a long-lived token Secret
    // of this name: deleting it revokes that token too.
    if let Some(old) = secrets.get_opt(&anchor).await? {
        if old.type_.as_deref() == Some("kubernetes.io/service-account-token") {
            eprintln!("revoking the long-lived token of an earlier link (Secret {ns}/{anchor})");
            secrets.delete(&anchor, &DeleteParams::default()).await?;
            wait_gone(&secrets, &anchor).await?;
        }
    }
    let bound = apply(
        &secrets,
        &anchor,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": anchor, "namespace": ns, "labels": labels,
                "annotations": {"trellis.dev/purpose": format!(
                    "the tokens cluster {reader} reads this cluster with are bound to this Secret: deleting it revokes them")}},
        }),
    )
    .await?;
    let uid = bound.metadata.uid.unwrap_or_default();
    let token = trellis_api::token::request(&side.client, ns, &account, (&anchor, &uid), lifetime)
        .await
        .with_context(|| {
            format!(
                "requesting a token of ServiceAccount {ns}/{account} in cluster {} (TokenRequest: the API server needs --service-account-issuer and --service-account-signing-key-file)",
                side.name
            )
        })?;
    let claims = trellis_api::token::TokenClaims::parse(&token)
        .with_context(|| format!("the token cluster {} issued", side.name))?;
    eprintln!(
        "cluster {} issued cluster {reader} a token valid for {} s, bound to Secret {ns}/{anchor}; the agents renew it",
        side.name,
        claims.lifetime().as_secs()
    );
    let configmaps = Api::<ConfigMap>::namespaced(side.client.clone(), ns);
    let start = Instant::now();
    let ca = loop {
        let ca = configmaps
            .get_opt("kube-root-ca.crt")
            .await?
            .and_then(|m| m.data?.get("ca.crt").cloned());
        if let Some(ca) = ca {
            break ca;
        }
        if start.elapsed() > TOKEN_WAIT {
            bail!(
                "ConfigMap {ns}/kube-root-ca.crt holds no ca.crt after {} s in cluster {}: is kube-controller-manager running (it publishes the cluster's CA in every namespace)?",
                TOKEN_WAIT.as_secs(),
                side.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let config = kubeconfig::with_token(
        &side.name,
        &side.api_server,
        ca.as_bytes(),
        &account,
        &token,
    );
    Ok(kubeconfig::to_json(&config))
}

/// Waits until Secret `name` is gone (its deletion may take a moment).
async fn wait_gone(secrets: &Api<Secret>, name: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while secrets.get_opt(name).await?.is_some() {
        if start.elapsed() > TOKEN_WAIT {
            bail!(
                "Secret {name} was deleted but is still there after {} s",
                TOKEN_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The link Secret that makes the agents of another cluster follow cluster
/// `cluster` through `kubeconfig`, trusting what it `declared`.
pub fn link_secret(
    cluster: &str,
    namespace: &str,
    kubeconfig: &str,
    declared: &DeclaredRanges,
) -> serde_json::Value {
    let mut data = declaration_data(declared);
    data.insert(KUBECONFIG_KEY.into(), kubeconfig.into());
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": secret_name(cluster), "namespace": namespace,
            "labels": {LABEL_REMOTE_CLUSTER: cluster, "app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "stringData": data,
    })
}

/// Links `a` and `b` both ways, after checking they can be linked; each
/// reads the other with a token valid for `lifetime`, renewed by its agents.
pub async fn link(a: &Side, b: &Side, lifetime: Duration) -> anyhow::Result<()> {
    for side in [a, b] {
        validate_cluster_name(&side.name)
            .map_err(|e| anyhow::anyhow!("{e}: choose one with --from-name/--to-name"))?;
    }
    if a.name == b.name {
        bail!(
            "both clusters are called {}: give them different names with --from-name/--to-name",
            a.name
        );
    }
    let with =
        |e: anyhow::Error| e.context(format!("cannot link clusters {} and {}", a.name, b.name));
    let sa = declared_snapshot(a).await.map_err(with)?;
    let sb = declared_snapshot(b).await.map_err(with)?;
    if let Some(why) = overlap((&a.name, &sa), (&b.name, &sb)) {
        bail!("cannot link clusters {} and {}: {why}; linked clusters need pod CIDRs (kube-controller-manager --cluster-cidr) and Peer ranges that do not overlap. Nothing was created.", a.name, b.name);
    }
    let a_for_b = export(a, &b.name, lifetime).await?;
    let b_for_a = export(b, &a.name, lifetime).await?;
    for (side, cluster, kubeconfig, declared) in [
        (b, &a.name, &a_for_b, &sa.declared),
        (a, &b.name, &b_for_a, &sb.declared),
    ] {
        let secrets = Api::<Secret>::namespaced(side.client.clone(), &side.namespace);
        apply(
            &secrets,
            &secret_name(cluster),
            link_secret(cluster, &side.namespace, kubeconfig, declared),
        )
        .await?;
    }
    Ok(())
}

/// Removes the link between `a` and `b` on both sides; what is already
/// gone counts as removed. Every deletion is tried; the errors are listed.
pub async fn unlink(a: &Side, b: &Side) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
    let mut errors = Vec::new();
    for (side, other) in [(a, b), (b, a)] {
        let ns = &side.namespace;
        let account = reader_name(&other.name);
        let secrets = Api::<Secret>::namespaced(side.client.clone(), ns);
        let results = [
            (
                format!("Secret {ns}/{}", secret_name(&other.name)),
                secrets
                    .delete(&secret_name(&other.name), &DeleteParams::default())
                    .await
                    .map(|_| ()),
            ),
            (
                format!("Secret {ns}/{account}-token"),
                secrets
                    .delete(&format!("{account}-token"), &DeleteParams::default())
                    .await
                    .map(|_| ()),
            ),
            (
                format!("ServiceAccount {ns}/{account}"),
                Api::<ServiceAccount>::namespaced(side.client.clone(), ns)
                    .delete(&account, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            ),
            (
                format!("RoleBinding {ns}/{account}"),
                Api::<RoleBinding>::namespaced(side.client.clone(), ns)
                    .delete(&account, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            ),
            (
                format!("Role {ns}/{account}"),
                Api::<Role>::namespaced(side.client.clone(), ns)
                    .delete(&account, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            ),
            (
                format!("ClusterRoleBinding {account}"),
                Api::<ClusterRoleBinding>::all(side.client.clone())
                    .delete(&account, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            ),
        ];
        for (what, result) in results {
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => errors.push(format!("{what} in cluster {}: {e}", side.name)),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("unlinking left these behind:\n  {}", errors.join("\n  "))
    }
}

/// Waits until every agent of `side` reports cluster `other` linked with
/// a peer for each of `other`'s nodes (`expected`).
pub async fn wait_linked(
    side: &Side,
    other: &str,
    expected: usize,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let snapshot = Snapshot::read(&side.client).await?;
        let fetched = crate::status::fetch_all(&side.client, &snapshot, port).await;
        let mut waiting: BTreeMap<String, String> = BTreeMap::new();
        for (node, report) in &fetched {
            let state = match report {
                Err(e) => format!("agent unreachable: {e}"),
                Ok(r) => match r.linked_clusters.iter().find(|l| l.name == other) {
                    None => "not following it yet".into(),
                    Some(l) if l.state == LinkState::Linked && l.nodes >= expected => continue,
                    Some(l) => format!(
                        "{} {}",
                        l.state.as_str(),
                        l.message.clone().unwrap_or_default()
                    ),
                },
            };
            waiting.insert(node.clone(), state);
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let list: Vec<String> = waiting.iter().map(|(n, s)| format!("{n}: {s}")).collect();
            bail!(
                "cluster {}'s nodes did not all link {other} within {} s:\n  {}",
                side.name,
                timeout.as_secs(),
                list.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_become_cluster_names() {
        assert_eq!(name_from_context("kind-East_1"), "kind-east-1");
        assert_eq!(name_from_context("arn:aws:eks:eu"), "arn-aws-eks-eu");
        assert!(validate_cluster_name(&name_from_context("admin@prod.example")).is_ok());
    }

    #[test]
    fn a_loopback_api_server_needs_an_explicit_address() {
        let e = api_server_for_others(None, "https://127.0.0.1:6443", "a").unwrap_err();
        assert!(e.to_string().contains("--from-api-server"), "{e}");
        assert_eq!(
            api_server_for_others(
                Some("https://10.0.0.1:6443/"),
                "https://127.0.0.1:6443",
                "a"
            )
            .unwrap(),
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            api_server_for_others(None, "https://198.51.100.2:6443", "a").unwrap(),
            "https://198.51.100.2:6443"
        );
    }

    #[test]
    fn overlapping_clusters_are_named_with_the_ranges_that_collide() {
        use crate::wgconf::tests::{node, peer};
        let a = Snapshot {
            nodes: vec![node(1), node(2)],
            peers: vec![peer("laptop", 60, &["10.99.0.2/32"])],
            ..Default::default()
        };
        let b = Snapshot {
            nodes: vec![node(20)],
            ..Default::default()
        };
        assert_eq!(overlap(("a", &a), ("b", &b)), None);
        let c = Snapshot {
            nodes: vec![node(20), node(2)],
            ..Default::default()
        };
        let why = overlap(("a", &a), ("c", &c)).unwrap();
        assert!(why.contains("10.244.2.0/24 of node n2 in cluster a overlaps 10.244.2.0/24 of node n2 in cluster c"), "{why}");
        let d = Snapshot {
            peers: vec![peer("wide", 61, &["10.99.0.0/16"])],
            ..Default::default()
        };
        let why = overlap(("a", &a), ("d", &d)).unwrap();
        assert!(
            why.contains("peer/laptop") && why.contains("peer/wide"),
            "{why}"
        );
    }

    #[test]
    fn the_link_secret_is_labelled_with_the_cluster_and_carries_its_declaration() {
        let s = link_secret("b", "trellis-links", "kc", &DeclaredRanges::private());
        assert_eq!(s["metadata"]["name"], "trellis-remote-b");
        assert_eq!(s["metadata"]["labels"][LABEL_REMOTE_CLUSTER], "b");
        assert_eq!(s["stringData"][KUBECONFIG_KEY], "kc");
        assert_eq!(
            s["stringData"]["podRanges"],
            "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7"
        );
        assert!(s["stringData"]["externalPeerRanges"].is_string());
    }

    #[test]
    fn a_cluster_with_claims_outside_its_declaration_cannot_be_linked() {
        use crate::wgconf::tests::{node, peer};
        let mut a = Snapshot {
            nodes: vec![node(1), node(2)],
            peers: vec![peer("laptop", 60, &["10.99.0.2/32"])],
            declared: DeclaredRanges {
                pods: vec![
                    "10.244.0.0/16".parse().unwrap(),
                    "fd00::/8".parse().unwrap(),
                ],
                external_peers: vec!["10.99.0.0/16".parse().unwrap()],
            },
            ..Default::default()
        };
        assert_eq!(undeclared("a", &a), None);
        a.declared.pods = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ];
        let why = undeclared("a", &a).unwrap();
        assert!(why.starts_with("node n2: pod CIDR 10.244.2.0/24 lies outside the pod ranges cluster a declares (10.244.1.0/24, fd00::/8)"), "{why}");
        a.declared.pods = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ];
        a.peers.push(peer("wide", 61, &["0.0.0.0/1"]));
        let why = undeclared("a", &a).unwrap();
        assert!(why.starts_with("peer/wide: allowed IP 0.0.0.0/1"), "{why}");
    }
}
