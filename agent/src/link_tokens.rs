//! Renewal of the linked clusters' tokens. A link Secret's kubeconfig
//! carries a bound, short-lived token of the other cluster
//! ([`trellis_api::token`]). Every agent checks the link Secrets now and
//! then; once a token is due ([`renew_at`]: a quarter into its life, each
//! node at its own point of a spread), the agent asks the other cluster for
//! a new token with the current one and writes it into the Secret,
//! conditional on the Secret's resourceVersion: when several agents renew
//! at once, one write wins and the others see the new token (a conflict is
//! no error). The links then restart with the new token
//! ([`crate::remote`]), serving what the cluster served last meanwhile.
//!
//! A token that expired (the other cluster was unreachable for the rest of
//! its life) cannot renew itself: the link says so, and must be made again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use trellis_api::kubeconfig::{token_of, with_new_token};
use trellis_api::link::{link_of, KUBECONFIG_KEY};
use trellis_api::token::{renew_at, spread_of, TokenClaims};

/// How often the link Secrets are checked for a token that is due.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// How long a failed renewal waits before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// A link whose token is due for renewal.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub secret: String,
    pub cluster: String,
    pub claims: TokenClaims,
    /// The Secret as read (its resourceVersion makes the write conditional).
    pub object: Arc<Secret>,
    pub kubeconfig: String,
}

/// The links among `secrets` whose token is due at `now` for the node with
/// renewal `spread`, renewing `renew_after` its issue when that is sooner
/// than a quarter into its life. Links that cannot be renewed (no token,
/// a legacy token, an expired one) are left out: their status says why.
pub fn due(
    secrets: &[Arc<Secret>],
    renew_after: Option<Duration>,
    spread: f64,
    now: SystemTime,
) -> Vec<Due> {
    secrets
        .iter()
        .filter_map(|s| {
            let link = link_of(s)?.ok()?;
            let claims = TokenClaims::parse(&token_of(&link.kubeconfig).ok()?).ok()?;
            let at = renew_at(&claims, renew_after, spread);
            (at <= now && claims.expires > now).then(|| Due {
                secret: s.metadata.name.clone().unwrap_or_default(),
                cluster: link.cluster,
                claims,
                object: s.clone(),
                kubeconfig: link.kubeconfig,
            })
        })
        .collect()
}

/// Renews the tokens of the link Secrets in `store` (in the links
/// namespace of `secrets`) as they fall due, for ever.
pub async fn run(
    store: Store<Secret>,
    secrets: Api<Secret>,
    node: String,
    renew_after: Option<Duration>,
) {
    let spread = spread_of(&node);
    let mut failed: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        for due in due(&store.state(), renew_after, spread, SystemTime::now()) {
            if failed.contains_key(&due.secret) {
                continue;
            }
            match renew(&due, &secrets).await {
                Ok(Renewed::Written(expires)) => {
                    let valid = expires
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs();
                    tracing::info!(
                        cluster = due.cluster,
                        secret = due.secret,
                        valid_s = valid,
                        "renewed the linked cluster's token"
                    )
                }
                Ok(Renewed::ByAnother) => {
                    tracing::debug!(
                        cluster = due.cluster,
                        "another node renewed the token first"
                    )
                }
                Err(e) => {
                    let left = due
                        .claims
                        .expires
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs();
                    tracing::warn!(cluster = due.cluster, secret = due.secret, error = %e, expires_in_s = left, "cannot renew the linked cluster's token; trying again");
                    failed.insert(due.secret.clone(), Instant::now());
                }
            }
        }
    }
}

/// What a renewal did.
#[derive(Debug)]
enum Renewed {
    /// The new token is in the Secret; it expires then.
    Written(SystemTime),
    /// The Secret changed since it was read: another agent renewed it.
    ByAnother,
}

async fn renew(due: &Due, secrets: &Api<Secret>) -> Result<Renewed, String> {
    let client = crate::remote::client_of(&due.kubeconfig).await?;
    let (bound, uid) = due
        .claims
        .bound_secret
        .clone()
        .ok_or("the token is bound to no Secret: link the clusters again with a current `kubectl trellis cluster link`")?;
    let token = trellis_api::token::request(
        &client,
        &due.claims.namespace,
        &due.claims.service_account,
        (&bound, &uid),
        due.claims.lifetime(),
    )
    .await
    .map_err(|e| format!("cluster {} issued no token: {e}", due.cluster))?;
    let claims = TokenClaims::parse(&token)
        .map_err(|e| format!("the token cluster {} issued: {e}", due.cluster))?;
    let kubeconfig = with_new_token(&due.kubeconfig, &token).map_err(|e| e.to_string())?;
    let mut secret = (*due.object).clone();
    secret.metadata.managed_fields = None;
    secret
        .data
        .get_or_insert_with(Default::default)
        .insert(KUBECONFIG_KEY.into(), ByteString(kubeconfig.into_bytes()));
    if let Some(string_data) = secret.string_data.as_mut() {
        string_data.remove(KUBECONFIG_KEY);
    }
    match secrets
        .replace(&due.secret, &PostParams::default(), &secret)
        .await
    {
        Ok(_) => Ok(Renewed::Written(claims.expires)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Renewed::ByAnother),
        Err(e) => Err(format!("writing Secret {}: {e}", due.secret)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::time::UNIX_EPOCH;
    use trellis_api::kubeconfig::{to_json, with_token};
    use trellis_api::link::declaration_data;
    use trellis_mesh::DeclaredRanges;

    fn jwt(iat: u64, exp: Option<u64>) -> String {
        let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let claims = serde_json::json!({
            "iat": iat, "exp": exp,
            "kubernetes.io": {"namespace": "trellis-links",
                "serviceaccount": {"name": "trellis-remote-reader-a", "uid": "1"},
                "secret": {"name": "trellis-remote-reader-a-token", "uid": "2"}},
        });
        format!("x.{}.y", e(claims.to_string().as_bytes()))
    }

    fn link_secret(name: &str, token: &str) -> Arc<Secret> {
        let mut data: BTreeMap<String, ByteString> = declaration_data(&DeclaredRanges::private())
            .into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes())))
            .collect();
        let kc = to_json(&with_token(
            "b",
            "https://192.0.2.9:6443",
            b"CA",
            "r",
            token,
        ));
        data.insert(KUBECONFIG_KEY.into(), ByteString(kc.into_bytes()));
        Arc::new(Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("trellis-links".into()),
                labels: Some(BTreeMap::from([(
                    trellis_api::link::LABEL_REMOTE_CLUSTER.to_string(),
                    "b".to_string(),
                )])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        })
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_token_falls_due_a_quarter_into_its_life_and_not_once_expired() {
        let secrets = vec![link_secret("trellis-remote-b", &jwt(0, Some(4_000)))];
        assert!(due(&secrets, None, 0.0, at(999)).is_empty());
        let d = due(&secrets, None, 0.0, at(1_000));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].secret, "trellis-remote-b");
        assert_eq!(d[0].cluster, "b");
        assert_eq!(d[0].claims.lifetime(), Duration::from_secs(4_000));
        assert!(
            due(&secrets, None, 0.0, at(4_000)).is_empty(),
            "expired: link again"
        );
        let soon = Some(Duration::from_secs(20));
        assert_eq!(due(&secrets, soon, 0.0, at(20)).len(), 1);
    }

    #[test]
    fn links_that_cannot_renew_are_left_alone() {
        let legacy = link_secret("trellis-remote-b", &jwt(0, None));
        let opaque = link_secret("trellis-remote-c", "not-a-jwt");
        let mut unlabelled = (*link_secret("other", &jwt(0, Some(10)))).clone();
        unlabelled.metadata.labels = None;
        let secrets = vec![legacy, opaque, Arc::new(unlabelled)];
        assert!(due(&secrets, None, 0.0, at(5)).is_empty());
    }
}
