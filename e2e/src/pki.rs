//! The lab's PKI: one CA per cluster, the apiserver's serving certificate,
//! client certificates (admin, controller-manager) and the service-account
//! signing key, generated with rcgen (ECDSA P-256, which Kubernetes accepts
//! for every one of these uses).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its key, PEM encoded.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A cluster's certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    /// Kept (0600) beside the certificate, as kubeadm keeps ca.key: nodes
    /// that join later get certificates signed by it.
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn gen(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

fn ca_params(common_name: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen("CA"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(gen("CA key"))?;
        let params = ca_params(common_name)?;
        let cert = params.self_signed(&key).map_err(gen("CA certificate"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA [`Ca::new`] made as `common_name`, from its certificate and
    /// key. What it signs names the same issuer and key identifier (the
    /// name is the subject's, the identifier is derived from the key).
    pub fn load(common_name: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(gen("reading the CA key"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer: Issuer::new(ca_params(common_name)?, key),
        })
    }

    /// A serving certificate for the given DNS names and addresses.
    pub fn server_cert(&self, dns_names: &[&str], ips: &[IpAddr]) -> Result<CertPair, PkiError> {
        let mut sans: Vec<String> = dns_names.iter().map(|s| s.to_string()).collect();
        sans.extend(ips.iter().map(|ip| ip.to_string()));
        let mut params = CertificateParams::new(sans).map_err(gen("server certificate"))?;
        params.distinguished_name.push(
            DnType::CommonName,
            dns_names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "server certificate")
    }

    /// A client certificate: Kubernetes takes the user from the common name
    /// and the groups from the organizations.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Result<CertPair, PkiError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(gen("client certificate"))?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, "client certificate")
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        what: &'static str,
    ) -> Result<CertPair, PkiError> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(gen(what))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen(what))?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A key pair for signing service-account tokens: (private PEM, public PEM).
pub fn service_account_key() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(gen("service-account key"))?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// Writes `contents` to `path` with mode 0600 (keys and kubeconfigs).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents.as_bytes())
    };
    write().map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_pem_and_distinct() {
        let ca = Ca::new("lab-ca").unwrap();
        let server = ca
            .server_cert(&["kubernetes"], &["192.0.2.2".parse().unwrap()])
            .unwrap();
        let admin = ca.client_cert("admin", &["system:masters"]).unwrap();
        for pem in [&ca.cert_pem, &server.cert_pem, &admin.cert_pem] {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        assert!(admin.key_pem.contains("PRIVATE KEY"));
        assert_ne!(server.key_pem, admin.key_pem);
        assert_ne!(server.cert_pem, admin.cert_pem);
    }

    #[test]
    fn a_ca_loads_from_its_certificate_and_key() {
        // That what a loaded CA signs chains to the original is shown by
        // the lab: kubelets' certificates, issued after the apiserver
        // started, are accepted by it (real_nodes::…).
        let ca = Ca::new("lab-ca").unwrap();
        assert!(ca.key_pem.contains("PRIVATE KEY"));
        let again = Ca::load("lab-ca", &ca.cert_pem, &ca.key_pem).unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
        let node = again
            .client_cert("system:node:n1", &["system:nodes"])
            .unwrap();
        assert!(node.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let err = Ca::load("lab-ca", &ca.cert_pem, "not a key").err().unwrap();
        assert!(err.to_string().contains("CA key"), "{err}");
    }

    #[test]
    fn service_account_key_has_both_halves() {
        let (private, public) = service_account_key().unwrap();
        assert!(private.contains("PRIVATE KEY"));
        assert!(public.contains("PUBLIC KEY"));
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("key.pem");
        write_private(&path, "secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
