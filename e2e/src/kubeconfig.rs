//! Kubeconfig files for the lab's clusters (written by
//! [`trellis_api::kubeconfig`]), and kube clients built from them.

use std::path::Path;

use trellis_api::kubeconfig;

use crate::pki::{CertPair, PkiError};

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
    let config = kubeconfig::with_client_certificate(
        cluster,
        server,
        ca_pem.as_bytes(),
        user,
        &client.cert_pem,
        &client.key_pem,
    );
    write(path, &config)
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
    write(
        path,
        &kubeconfig::with_token(cluster, server, ca_pem.as_bytes(), user, token),
    )
}

/// Writes `config` readable by its owner only.
fn write(path: &Path, config: &kube::config::Kubeconfig) -> Result<(), KubeconfigError> {
    kubeconfig::write(path, config).map_err(|source| {
        PkiError::Write {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
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
