//! Linked clusters: the Secret that links a cluster (labelled
//! `trellis.dev/remote-cluster=NAME`, holding a read-only kubeconfig of it
//! and the ranges that cluster declared when it was linked), the ConfigMap
//! in which a cluster declares its ranges, and the names `kubectl trellis
//! cluster link` gives what it creates. Agents and the plugin read a link
//! Secret through [`link_of`], a declaration through [`declared_of`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use trellis_mesh::ranges::{self, DeclaredRanges, RangeError};

pub use trellis_mesh::names::LABEL_REMOTE_CLUSTER;

/// Key of the kubeconfig in a link Secret.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Key of the declared pod ranges (comma-separated CIDRs), in a link
/// Secret and in the declaration ConfigMap.
pub const POD_RANGES_KEY: &str = "podRanges";
/// Key of the declared external-peer ranges, likewise.
pub const EXTERNAL_PEER_RANGES_KEY: &str = "externalPeerRanges";
/// The ConfigMap, in the links namespace, in which a cluster declares its
/// ranges (the chart writes it from its values).
pub const DECLARATION_CONFIGMAP: &str = "trellis-declared-ranges";
/// The ClusterRole the other cluster's identity is bound to.
pub const READER_CLUSTER_ROLE: &str = "trellis-remote-reader";

/// The link Secret for cluster `cluster`.
pub fn secret_name(cluster: &str) -> String {
    format!("trellis-remote-{cluster}")
}

/// The ServiceAccount (and its binding and token Secret) cluster
/// `reader` uses to read this one.
pub fn reader_name(reader: &str) -> String {
    format!("trellis-remote-reader-{reader}")
}

/// A link Secret that cannot be used, and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("cluster name {0:?} is not a DNS label (lowercase letters, digits and '-', at most 40 characters, starting and ending with a letter or digit)")]
    InvalidName(String),
    #[error("Secret {secret} has no {KUBECONFIG_KEY:?} key: it should hold the linked cluster's kubeconfig (as `kubectl trellis cluster export` writes it)")]
    NoKubeconfig { secret: String },
    #[error("Secret {secret} key {KUBECONFIG_KEY:?} is not UTF-8 text")]
    NotText { secret: String },
    #[error("{object} has no {key:?} key: it declares no ranges, so nothing of its cluster can be trusted (link again with a current `kubectl trellis cluster link`, which copies the cluster's declaration)")]
    NoDeclaration { object: String, key: &'static str },
    #[error("{object} key {key:?}: {source}")]
    BadDeclaration {
        object: String,
        key: &'static str,
        #[source]
        source: RangeError,
    },
}

/// A usable link Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub cluster: String,
    pub kubeconfig: String,
    /// What the linked cluster declared when it was linked.
    pub declared: DeclaredRanges,
}

/// Reads the two declared range lists from `get` (a Secret's or
/// ConfigMap's data), naming `object` in errors.
fn declaration(
    object: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<DeclaredRanges, LinkError> {
    let list = |key: &'static str| {
        let text = get(key).ok_or_else(|| LinkError::NoDeclaration {
            object: object.into(),
            key,
        })?;
        ranges::parse_list(&text).map_err(|source| LinkError::BadDeclaration {
            object: object.into(),
            key,
            source,
        })
    };
    Ok(DeclaredRanges {
        pods: list(POD_RANGES_KEY)?,
        external_peers: list(EXTERNAL_PEER_RANGES_KEY)?,
    })
}

/// The ranges a cluster declares, from its declaration ConfigMap.
pub fn declared_of(map: &ConfigMap) -> Result<DeclaredRanges, LinkError> {
    let object = format!(
        "ConfigMap {}/{}",
        map.metadata.namespace.as_deref().unwrap_or_default(),
        map.metadata.name.as_deref().unwrap_or_default()
    );
    let data = map.data.clone().unwrap_or_default();
    declaration(&object, |k| data.get(k).cloned())
}

/// The data keys a link Secret (or a declaration) carries for `declared`.
pub fn declaration_data(declared: &DeclaredRanges) -> BTreeMap<String, String> {
    BTreeMap::from([
        (POD_RANGES_KEY.into(), ranges::format_list(&declared.pods)),
        (
            EXTERNAL_PEER_RANGES_KEY.into(),
            ranges::format_list(&declared.external_peers),
        ),
    ])
}

/// Checks a cluster name: it names Secrets and ServiceAccounts and
/// prefixes peer names (`b:n1`), so it is a short DNS label.
pub fn validate_cluster_name(name: &str) -> Result<(), LinkError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(LinkError::InvalidName(name.into()))
    }
}

/// The cluster a Secret links, its kubeconfig and its declaration; `None`
/// when the Secret is not a link Secret.
pub fn link_of(secret: &Secret) -> Option<Result<Link, LinkError>> {
    let cluster = secret.metadata.labels.as_ref()?.get(LABEL_REMOTE_CLUSTER)?;
    let name = format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    );
    Some((|| {
        validate_cluster_name(cluster)?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(KUBECONFIG_KEY))
            .ok_or_else(|| LinkError::NoKubeconfig {
                secret: name.clone(),
            })?;
        let text = String::from_utf8(bytes.0.clone()).map_err(|_| LinkError::NotText {
            secret: name.clone(),
        })?;
        let declared = declaration(&format!("Secret {name}"), |key| {
            let bytes = secret.data.as_ref()?.get(key)?;
            Some(String::from_utf8_lossy(&bytes.0).into_owned())
        })?;
        Ok(Link {
            cluster: cluster.clone(),
            kubeconfig: text,
            declared,
        })
    })())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn declared() -> DeclaredRanges {
        DeclaredRanges {
            pods: vec!["10.245.0.0/16".parse().unwrap()],
            external_peers: vec!["10.99.0.0/16".parse().unwrap()],
        }
    }

    fn secret(label: Option<&str>, data: Option<&[u8]>) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("trellis-remote-b".into());
        s.metadata.namespace = Some("kube-system".into());
        if let Some(l) = label {
            s.metadata.labels = Some(BTreeMap::from([(LABEL_REMOTE_CLUSTER.into(), l.into())]));
        }
        if let Some(d) = data {
            let mut data: BTreeMap<String, ByteString> = declaration_data(&declared())
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect();
            data.insert(KUBECONFIG_KEY.into(), ByteString(d.to_vec()));
            s.data = Some(data);
        }
        s
    }

    #[test]
    fn a_link_secret_gives_its_cluster_kubeconfig_and_declaration() {
        let got = link_of(&secret(Some("b"), Some(b"apiVersion: v1"))).unwrap();
        assert_eq!(
            got,
            Ok(Link {
                cluster: "b".into(),
                kubeconfig: "apiVersion: v1".into(),
                declared: declared(),
            })
        );
        assert!(link_of(&secret(None, Some(b"x"))).is_none(), "not a link");
    }

    #[test]
    fn a_link_secret_without_a_sound_declaration_is_unusable() {
        let mut s = secret(Some("b"), Some(b"x"));
        s.data.as_mut().unwrap().remove(POD_RANGES_KEY);
        let e = link_of(&s).unwrap().unwrap_err();
        assert!(
            e.to_string()
                .contains("Secret kube-system/trellis-remote-b has no \"podRanges\" key"),
            "{e}"
        );
        s.data.as_mut().unwrap().insert(
            POD_RANGES_KEY.into(),
            ByteString(b"10.245.0.0/16,0.0.0.0/0".to_vec()),
        );
        let e = link_of(&s).unwrap().unwrap_err();
        assert!(
            e.to_string()
                .contains("\"podRanges\": 0.0.0.0/0 is a default route"),
            "{e}"
        );
    }

    #[test]
    fn a_declaration_configmap_gives_the_ranges() {
        let mut map = ConfigMap::default();
        map.metadata.name = Some(DECLARATION_CONFIGMAP.into());
        map.metadata.namespace = Some("trellis-links".into());
        map.data = Some(declaration_data(&declared()));
        assert_eq!(declared_of(&map), Ok(declared()));
        map.data.as_mut().unwrap().remove(EXTERNAL_PEER_RANGES_KEY);
        let e = declared_of(&map).unwrap_err().to_string();
        assert!(
            e.contains(
                "ConfigMap trellis-links/trellis-declared-ranges has no \"externalPeerRanges\""
            ),
            "{e}"
        );
    }

    #[test]
    fn a_bad_link_secret_says_what_to_fix() {
        let e = link_of(&secret(Some("B_1"), Some(b"x")))
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("not a DNS label"), "{e}");
        let e = link_of(&secret(Some("b"), None)).unwrap().unwrap_err();
        assert!(
            e.to_string()
                .contains("kube-system/trellis-remote-b has no \"kubeconfig\""),
            "{e}"
        );
        let e = link_of(&secret(Some("b"), Some(&[0xff, 0xfe])))
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn cluster_names_are_short_dns_labels() {
        for good in ["b", "eu-west-1", "c2"] {
            assert!(validate_cluster_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-b", "b-", "B", "a.b", "a:b", &"x".repeat(41)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad}");
        }
    }
}
