//! External peers on the agent's side: `Peer` objects turned into the
//! mesh's inputs (preshared keys read from Secrets in the agent's own
//! namespace, the last good key kept through API errors), and each Peer's
//! `Configured` condition for this node, written by server-side apply —
//! only when it changes, and only this node's entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use trellis_api::peer::CONDITION_CONFIGURED;
use trellis_api::{NodeCondition, Peer, SecretKeyRef};
use trellis_mesh::{Desired, ExternalPeerInfo, PeerName, PresharedKey, PresharedKeySource};

use crate::kube_io::reason_name;

/// Reads what the `Peer` objects refer to.
pub struct PeerInputs {
    secrets: Api<Secret>,
    namespace: String,
    /// The last key read from each (name, key) in `namespace`.
    last_good: BTreeMap<(String, String), PresharedKey>,
}

impl std::fmt::Debug for PeerInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerInputs")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The preshared key in `secret` (None: the Secret does not exist).
pub fn preshared_key_in(secret: Option<&Secret>, r: &SecretKeyRef) -> PresharedKeySource {
    let what = format!("Secret {}/{}", r.namespace, r.name);
    let Some(secret) = secret else {
        return PresharedKeySource::Unavailable(format!("{what} does not exist"));
    };
    let field = r.data_key();
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(field)) else {
        return PresharedKeySource::Unavailable(format!("{what} has no key {field:?}"));
    };
    let text = String::from_utf8_lossy(&bytes.0);
    match PresharedKey::from_base64(&text) {
        Ok(k) => PresharedKeySource::Key(k),
        Err(_) => PresharedKeySource::Unavailable(format!(
            "{what} key {field:?} is not a WireGuard preshared key: expected 44 characters of base64, as `wg genpsk` prints"
        )),
    }
}

impl PeerInputs {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        PeerInputs {
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            last_good: BTreeMap::new(),
        }
    }

    async fn preshared_key(&mut self, r: &SecretKeyRef) -> PresharedKeySource {
        if r.namespace != self.namespace {
            return PresharedKeySource::Unavailable(format!(
                "presharedKeySecretRef names namespace {:?}: agents read preshared keys only from Secrets in {:?}, where Trellis runs",
                r.namespace, self.namespace
            ));
        }
        let cache_key = (r.name.clone(), r.data_key().to_string());
        let source = match self.secrets.get_opt(&r.name).await {
            Ok(secret) => preshared_key_in(secret.as_ref(), r),
            // The API is unreachable: a key read before is still the key.
            Err(e) => match self.last_good.get(&cache_key) {
                Some(k) => PresharedKeySource::Key(*k),
                None => PresharedKeySource::Unavailable(format!(
                    "cannot read Secret {}/{}: {e}",
                    r.namespace, r.name
                )),
            },
        };
        match &source {
            PresharedKeySource::Key(k) => {
                self.last_good.insert(cache_key, *k);
            }
            _ => {
                self.last_good.remove(&cache_key);
            }
        }
        source
    }

    /// Every Peer as the mesh sees it.
    pub async fn external_peers(&mut self, peers: &[Arc<Peer>]) -> Vec<ExternalPeerInfo> {
        let mut out = Vec::with_capacity(peers.len());
        for peer in peers {
            let psk = match &peer.spec.preshared_key_secret_ref {
                None => PresharedKeySource::None,
                Some(r) => self.preshared_key(r).await,
            };
            out.push(peer.external_peer_info(psk));
        }
        out
    }
}

/// This node's `Configured` condition on `peer` after a successful
/// reconcile to `desired`; the transition time stays while the status does.
pub fn configured_condition(
    node: &str,
    peer: &Peer,
    desired: &Desired,
    now: Time,
) -> NodeCondition {
    let name = PeerName::External(peer.metadata.name.clone().unwrap_or_default());
    let (status, reason, message) = if desired.peers.values().any(|p| p.name == name) {
        (
            "True",
            "Configured".to_string(),
            format!("configured on node {node}'s WireGuard interface"),
        )
    } else if let Some(r) = desired.rejected.iter().find(|r| r.object == name) {
        (
            "False",
            reason_name(r.reason).to_string(),
            r.message.clone(),
        )
    } else {
        (
            "Unknown",
            "NotSeen".to_string(),
            format!("node {node} has not seen this Peer yet"),
        )
    };
    let previous = peer.condition(CONDITION_CONFIGURED, node);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => None,
    }
    .or(Some(now));
    NodeCondition {
        type_: CONDITION_CONFIGURED.into(),
        node: node.into(),
        status: status.into(),
        reason: Some(reason),
        message: Some(message),
        last_transition_time,
        observed_generation: peer.metadata.generation,
    }
}

/// Whether `wanted` says something `current` does not (the time aside).
fn differs(current: Option<&NodeCondition>, wanted: &NodeCondition) -> bool {
    current.is_none_or(|c| {
        (&c.status, &c.reason, &c.message, c.observed_generation)
            != (
                &wanted.status,
                &wanted.reason,
                &wanted.message,
                wanted.observed_generation,
            )
    })
}

/// Writes this node's condition on every Peer whose condition changed.
/// Returns how many it wrote; errors are the first one (the others are
/// still tried).
pub async fn publish_conditions(
    api: &Api<Peer>,
    node: &str,
    peers: &[Arc<Peer>],
    desired: &Desired,
) -> Result<usize, kube::Error> {
    let now = Time(jiff_now());
    let manager = format!("trellis-agent-{node}");
    let mut written = 0;
    let mut first_error = None;
    for peer in peers {
        let wanted = configured_condition(node, peer, desired, now.clone());
        if !differs(peer.condition(CONDITION_CONFIGURED, node), &wanted) {
            continue;
        }
        let name = peer.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "apiVersion": "trellis.dev/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": name},
            "status": {"conditions": [wanted]},
        });
        let params = PatchParams::apply(&manager).force();
        match api
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => written += 1,
            // Deleted meanwhile: nothing to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(written),
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests;
