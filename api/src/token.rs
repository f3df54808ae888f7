//! The link credential: a bound, short-lived ServiceAccount token
//! (TokenRequest), read from its JWT claims without verifying them (the
//! API server that issued it does that). The claims say everything a
//! renewal needs — whose token it is, what object it is bound to, when it
//! was issued and when it expires — so a link Secret carries nothing but
//! its kubeconfig, and one written by `kubectl trellis cluster export` is
//! renewed like any other. [`renew_at`] says when the agents renew it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;

/// Why a token is not one the agents can renew.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT (three base64url parts separated by '.')")]
    NotJwt,
    #[error("the token's claims do not parse: {0}")]
    BadClaims(String),
    #[error("the token never expires (a legacy ServiceAccount token Secret's): link the clusters again with a current `kubectl trellis cluster link` for a short-lived token that renews itself")]
    NoExpiry,
    #[error("the token is not a ServiceAccount's (no kubernetes.io claims)")]
    NotServiceAccount,
    #[error("the token expires before it was issued (iat {iat}, exp {exp})")]
    Backwards { iat: u64, exp: u64 },
}

/// What a ServiceAccount token says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub issued: SystemTime,
    pub expires: SystemTime,
    pub namespace: String,
    pub service_account: String,
    /// The Secret the token is bound to (name, uid): deleting it revokes
    /// the token at once.
    pub bound_secret: Option<(String, String)>,
}

#[derive(Deserialize)]
struct RawClaims {
    iat: Option<u64>,
    exp: Option<u64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<RawKubernetes>,
}

#[derive(Deserialize)]
struct RawKubernetes {
    namespace: String,
    serviceaccount: RawObject,
    secret: Option<RawObject>,
}

#[derive(Deserialize)]
struct RawObject {
    name: String,
    uid: String,
}

impl TokenClaims {
    /// The claims of `token`.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::NotJwt);
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| TokenError::NotJwt)?;
        let raw: RawClaims =
            serde_json::from_slice(&bytes).map_err(|e| TokenError::BadClaims(e.to_string()))?;
        let exp = raw.exp.ok_or(TokenError::NoExpiry)?;
        let k = raw.kubernetes.ok_or(TokenError::NotServiceAccount)?;
        let iat = raw.iat.unwrap_or(exp);
        if exp < iat {
            return Err(TokenError::Backwards { iat, exp });
        }
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        Ok(TokenClaims {
            issued: at(iat),
            expires: at(exp),
            namespace: k.namespace,
            service_account: k.serviceaccount.name,
            bound_secret: k.secret.map(|s| (s.name, s.uid)),
        })
    }

    /// How long the token was issued for.
    pub fn lifetime(&self) -> Duration {
        self.expires.duration_since(self.issued).unwrap_or_default()
    }
}

/// The share of a token's lifetime after which it is renewed: a quarter,
/// so that a linked cluster unreachable for up to three quarters of it
/// (9 h of the default 12 h) costs no link.
pub const RENEW_AT_FRACTION: u32 = 4;

/// When the agents renew a token with `claims`: a quarter into its
/// lifetime, or `renew_after` its issue when that is sooner, plus
/// `spread` (a per-node share of a tenth of the lifetime, so that the
/// agents of a cluster do not all ask at once; one renewal wins, the
/// others see the new token).
pub fn renew_at(claims: &TokenClaims, renew_after: Option<Duration>, spread: f64) -> SystemTime {
    let lifetime = claims.lifetime();
    let base = lifetime / RENEW_AT_FRACTION;
    let base = renew_after.map_or(base, |r| r.min(base));
    let jitter = (lifetime / 10).mul_f64(spread.clamp(0.0, 1.0));
    let jitter = match renew_after {
        Some(r) => jitter.min(r / 2),
        None => jitter,
    };
    claims.issued + base + jitter
}

/// A share in [0, 1) from `name`, the same on every call: a node's place
/// in the renewal spread.
pub fn spread_of(name: &str) -> f64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 1_000_000) as f64 / 1_000_000.0
}

/// Asks the API server behind `client` for a token of ServiceAccount
/// `namespace/account`, bound to its Secret `bound` (name, uid), valid
/// for `lifetime` (the API server may shorten it: at least 10 minutes,
/// at most its `--service-account-max-token-expiration`). The token's
/// audience is the API server's own.
pub async fn request(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    bound: (&str, &str),
    lifetime: Duration,
) -> Result<String, kube::Error> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(lifetime.as_secs() as i64),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some(bound.0.into()),
                uid: Some(bound.1.into()),
            }),
        },
        ..Default::default()
    };
    let api = kube::Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let answer = api
        .create_token_request(account, &Default::default(), &request)
        .await?;
    Ok(answer.status.map(|s| s.token).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        format!(
            "{}.{}.{}",
            e(br#"{"alg":"RS256"}"#),
            e(claims.to_string().as_bytes()),
            e(b"signature")
        )
    }

    fn bound(iat: u64, exp: u64) -> String {
        jwt(serde_json::json!({
            "iat": iat, "exp": exp, "aud": ["https://kubernetes.default.svc"],
            "kubernetes.io": {
                "namespace": "trellis-links",
                "serviceaccount": {"name": "trellis-remote-reader-b", "uid": "u1"},
                "secret": {"name": "trellis-remote-reader-b-token", "uid": "u2"},
            },
        }))
    }

    #[test]
    fn a_bound_token_says_whose_it_is_and_what_it_is_bound_to() {
        let c = TokenClaims::parse(&bound(1_000, 1_000 + 43_200)).unwrap();
        assert_eq!(c.namespace, "trellis-links");
        assert_eq!(c.service_account, "trellis-remote-reader-b");
        assert_eq!(
            c.bound_secret,
            Some(("trellis-remote-reader-b-token".into(), "u2".into()))
        );
        assert_eq!(c.lifetime(), Duration::from_secs(43_200));
    }

    #[test]
    fn tokens_that_cannot_be_renewed_say_why() {
        assert_eq!(TokenClaims::parse("abc"), Err(TokenError::NotJwt));
        assert_eq!(TokenClaims::parse("a.!!.c"), Err(TokenError::NotJwt));
        let legacy = jwt(serde_json::json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "trellis-links",
        }));
        let e = TokenClaims::parse(&legacy).unwrap_err();
        assert_eq!(e, TokenError::NoExpiry);
        assert!(e.to_string().contains("cluster link"), "{e}");
        let user = jwt(serde_json::json!({"iat": 1, "exp": 2, "sub": "alice"}));
        assert_eq!(
            TokenClaims::parse(&user),
            Err(TokenError::NotServiceAccount)
        );
        assert!(matches!(
            TokenClaims::parse(&bound(10, 5)),
            Err(TokenError::Backwards { .. })
        ));
        assert!(matches!(
            TokenClaims::parse(&jwt(serde_json::json!({"exp": "soon"}))),
            Err(TokenError::BadClaims(_))
        ));
    }

    #[test]
    fn a_token_is_renewed_a_quarter_into_its_life_or_sooner_when_asked() {
        let c = TokenClaims::parse(&bound(0, 43_200)).unwrap();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(renew_at(&c, None, 0.0)), 10_800);
        // The spread adds at most a tenth of the lifetime.
        assert_eq!(secs(renew_at(&c, None, 0.5)), 10_800 + 2_160);
        assert!(secs(renew_at(&c, None, 1.0)) <= 10_800 + 4_320);
        // Asked to renew after 20 s: after 20 s, spread within 10 s.
        let soon = Some(Duration::from_secs(20));
        assert_eq!(secs(renew_at(&c, soon, 0.0)), 20);
        assert!(secs(renew_at(&c, soon, 0.99)) <= 30);
        // Never later than a quarter in, whatever was asked.
        let late = Some(Duration::from_secs(1_000_000));
        assert_eq!(secs(renew_at(&c, late, 0.0)), 10_800);
    }

    #[test]
    fn the_spread_is_stable_and_in_range() {
        for name in ["n1", "n2", "a-very-long-node-name.example.com"] {
            let s = spread_of(name);
            assert!((0.0..1.0).contains(&s), "{s}");
            assert_eq!(s, spread_of(name));
        }
        assert_ne!(spread_of("n1"), spread_of("n2"));
    }
}
