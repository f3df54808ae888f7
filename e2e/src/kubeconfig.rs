//! Kubeconfig files for the lab's clusters (JSON, which every client reads
//! as YAML), and kube clients built from them.

use std::path::Path;

use base64::Engine;

use crate::pki::{write_private, CertPair, PkiError};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error(transparent)]
    Write(#[from] PkiError),
    #[error("reading kubeconfig {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client from {path}: {message}")]
    Client { path: String, message: String },
}

/// Writes a kubeconfig authenticating with a client certificate.
pub fn write_cert_kubeconfig(
    path: &Path,
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    client: &CertPair,
) -> Result<(), KubeconfigError> {
    let credentials = serde_json::json!({
        "client-certificate-data": b64(&client.cert_pem),
        "client-key-data": b64(&client.key_pem),
    });
    write_kubeconfig(path, cluster, server, ca_pem, user, credentials)
}

/// Writes a kubeconfig authenticating with a bearer token (a service
/// account's, as a pod has it).
pub fn write_token_kubeconfig(
    path: &Path,
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> Result<(), KubeconfigError> {
    write_kubeconfig(
        path,
        cluster,
        server,
        ca_pem,
        user,
        serde_json::json!({ "token": token }),
    )
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn write_kubeconfig(
    path: &Path,
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    credentials: serde_json::Value,
) -> Result<(), KubeconfigError> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    });
    let text = serde_json::to_string_pretty(&config).expect("kubeconfig serializes");
    write_private(path, &text)?;
    Ok(())
}

/// A kube client for the kubeconfig at `path`.
pub async fn client(path: &Path) -> Result<kube::Client, KubeconfigError> {
    let shown = path.display().to_string();
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|source| KubeconfigError::Read {
            path: shown.clone(),
            source,
        })?;
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| KubeconfigError::Client {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    kube::Client::try_from(config).map_err(|e| KubeconfigError::Client {
        path: shown,
        message: e.to_string(),
    })
}
