//! A real node's credentials, issued by the cluster CA as kubeadm issues
//! them: the kubelet's client certificate (`system:node:NAME` in
//! `system:nodes`, which the Node authorizer and NodeRestriction confine to
//! its own Node and the pods bound to it), the kubelet's serving
//! certificate for the node's name and addresses (the apiserver checks it
//! with `--kubelet-certificate-authority`), and kube-proxy's client
//! certificate (`system:kube-proxy`, which RBAC binds to
//! `system:node-proxier`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::control_plane::{self, ControlPlaneError};
use crate::kubeconfig::{write_cert_kubeconfig, KubeconfigError};
use crate::pki::{self, PkiError};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("the cluster CA: {0}")]
    Ca(#[from] ControlPlaneError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
}

/// Where a node's credentials are, all in the node's directory (0600).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCredentials {
    pub kubelet_kubeconfig: PathBuf,
    pub kube_proxy_kubeconfig: PathBuf,
    /// The CA that signs clients the kubelet accepts (the apiserver's).
    pub client_ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
}

/// What a node's credentials are issued for.
#[derive(Debug, Clone)]
pub struct NodeIdentity<'a> {
    pub cluster: &'a str,
    pub cluster_dir: &'a Path,
    pub apiserver_url: &'a str,
    pub node: &'a str,
    pub addresses: &'a [IpAddr],
    pub node_dir: &'a Path,
}

/// The user a node's kubelet is.
pub fn node_user(node: &str) -> String {
    format!("system:node:{node}")
}

/// Issues (or issues again: the files are overwritten) the credentials of
/// `id.node`.
pub fn issue(id: &NodeIdentity<'_>) -> Result<NodeCredentials, CredentialsError> {
    let ca = control_plane::load_ca(id.cluster, id.cluster_dir)?;
    let creds = NodeCredentials {
        kubelet_kubeconfig: id.node_dir.join("kubelet.kubeconfig"),
        kube_proxy_kubeconfig: id.node_dir.join("kube-proxy.kubeconfig"),
        client_ca: control_plane::pki_dir(id.cluster_dir).join("ca.crt"),
        serving_cert: id.node_dir.join("kubelet.crt"),
        serving_key: id.node_dir.join("kubelet.key"),
    };
    let user = node_user(id.node);
    let kubelet = ca.client_cert(&user, &["system:nodes"])?;
    write_cert_kubeconfig(
        &creds.kubelet_kubeconfig,
        id.cluster,
        id.apiserver_url,
        &ca.cert_pem,
        &user,
        &kubelet,
    )?;
    let proxy = ca.client_cert("system:kube-proxy", &[])?;
    write_cert_kubeconfig(
        &creds.kube_proxy_kubeconfig,
        id.cluster,
        id.apiserver_url,
        &ca.cert_pem,
        "system:kube-proxy",
        &proxy,
    )?;
    let serving = ca.server_cert(&[id.node], id.addresses)?;
    pki::write_private(&creds.serving_cert, &serving.cert_pem)?;
    pki::write_private(&creds.serving_key, &serving.key_pem)?;
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::{write_pki, ControlPlaneSpec};

    #[test]
    fn a_node_gets_its_own_user_and_a_certificate_for_its_addresses() {
        let dir = tempfile::TempDir::new().unwrap();
        let cluster_dir = dir.path().join("cluster");
        let node_dir = dir.path().join("n1");
        std::fs::create_dir_all(&node_dir).unwrap();
        let spec = ControlPlaneSpec {
            cluster: "c".into(),
            netns: "unused".into(),
            dir: cluster_dir.clone(),
            addresses: vec!["192.0.2.2".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            real_nodes: true,
        };
        write_pki(&spec).unwrap();
        let addresses = ["192.0.2.3".parse().unwrap()];
        let id = NodeIdentity {
            cluster: "c",
            cluster_dir: &cluster_dir,
            apiserver_url: "https://192.0.2.2:6443",
            node: "n1",
            addresses: &addresses,
            node_dir: &node_dir,
        };
        let creds = issue(&id).unwrap();
        let kubeconfig = std::fs::read_to_string(&creds.kubelet_kubeconfig).unwrap();
        assert!(kubeconfig.contains("system:node:n1"), "{kubeconfig}");
        let proxy = std::fs::read_to_string(&creds.kube_proxy_kubeconfig).unwrap();
        assert!(proxy.contains("system:kube-proxy"), "{proxy}");
        use std::os::unix::fs::PermissionsExt;
        for f in [&creds.kubelet_kubeconfig, &creds.serving_key] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
        assert!(creds.client_ca.is_file());
        // Without the cluster's CA key no node can be issued for.
        std::fs::remove_file(control_plane::pki_dir(&cluster_dir).join("ca.key")).unwrap();
        let err = issue(&id).unwrap_err().to_string();
        assert!(err.contains("ca.key"), "{err}");
    }
}
