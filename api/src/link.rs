//! Linked clusters: the Secret that links a cluster (labelled
//! `trellis.dev/remote-cluster=NAME`, holding a read-only kubeconfig of it)
//! and the names `kubectl trellis cluster link` gives what it creates.
//! Agents and the plugin read a link Secret through [`link_of`].

use k8s_openapi::api::core::v1::Secret;

pub use trellis_mesh::names::LABEL_REMOTE_CLUSTER;

/// Key of the kubeconfig in a link Secret.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
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

/// The cluster a Secret links and its kubeconfig; `None` when the Secret
/// is not a link Secret.
pub fn link_of(secret: &Secret) -> Option<Result<(String, String), LinkError>> {
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
        let text =
            String::from_utf8(bytes.0.clone()).map_err(|_| LinkError::NotText { secret: name })?;
        Ok((cluster.clone(), text))
    })())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(label: Option<&str>, data: Option<&[u8]>) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("trellis-remote-b".into());
        s.metadata.namespace = Some("kube-system".into());
        if let Some(l) = label {
            s.metadata.labels = Some(BTreeMap::from([(LABEL_REMOTE_CLUSTER.into(), l.into())]));
        }
        if let Some(d) = data {
            s.data = Some(BTreeMap::from([(
                KUBECONFIG_KEY.into(),
                ByteString(d.to_vec()),
            )]));
        }
        s
    }

    #[test]
    fn a_link_secret_gives_its_cluster_and_kubeconfig() {
        let got = link_of(&secret(Some("b"), Some(b"apiVersion: v1"))).unwrap();
        assert_eq!(got, Ok(("b".into(), "apiVersion: v1".into())));
        assert!(link_of(&secret(None, Some(b"x"))).is_none(), "not a link");
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
