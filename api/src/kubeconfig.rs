//! Kubeconfigs Trellis writes (the lab's admin and agent kubeconfigs, the
//! one `kubectl trellis cluster export` prints for a linked cluster): one
//! cluster, one user and one context named after the cluster, built as
//! kube's typed [`Kubeconfig`] and written as JSON (which every client
//! reads as YAML).

use std::path::Path;

use base64::Engine as _;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

/// A kubeconfig for the API server at `server`, trusted through the CA
/// certificate `ca_pem`, whose user `user` authenticates with the bearer
/// token `token` (a service account's). Its one context, the current one,
/// is named `cluster`.
pub fn with_token(
    cluster: &str,
    server: &str,
    ca_pem: &[u8],
    user: &str,
    token: &str,
) -> Kubeconfig {
    let auth = AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    single(cluster, server, ca_pem, user, auth)
}

/// Like [`with_token`], with a user that authenticates with the client
/// certificate `cert_pem` and its private key `key_pem`.
pub fn with_client_certificate(
    cluster: &str,
    server: &str,
    ca_pem: &[u8],
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Kubeconfig {
    let auth = AuthInfo {
        client_certificate_data: Some(b64(cert_pem.as_bytes())),
        client_key_data: Some(b64(key_pem.as_bytes()).into()),
        ..Default::default()
    };
    single(cluster, server, ca_pem, user, auth)
}

fn single(cluster: &str, server: &str, ca_pem: &[u8], user: &str, auth: AuthInfo) -> Kubeconfig {
    Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: cluster.into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                certificate_authority_data: Some(b64(ca_pem)),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.into(),
            auth_info: Some(auth),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: cluster.into(),
            context: Some(Context {
                cluster: cluster.into(),
                user: Some(user.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(cluster.into()),
        ..Default::default()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The kubeconfig as JSON text, secrets included.
pub fn to_json(config: &Kubeconfig) -> String {
    serde_json::to_string_pretty(config).expect("a kubeconfig serializes")
}

/// Writes the kubeconfig as JSON to `path`; a file it creates is readable
/// by its owner only (mode 0600): a kubeconfig holds credentials.
pub fn write(path: &Path, config: &Kubeconfig) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(to_json(config).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn decoded(data: &serde_json::Value) -> String {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("a string"))
            .expect("base64");
        String::from_utf8(bytes).expect("UTF-8")
    }

    /// Read back as kube reads a kubeconfig file, and written again (the
    /// secrets are kept secret in memory: the text shows them).
    fn read_back(config: &Kubeconfig) -> serde_json::Value {
        let read = Kubeconfig::from_yaml(&to_json(config)).expect("kube reads what it wrote");
        serde_json::from_str(&to_json(&read)).unwrap()
    }

    #[test]
    fn a_token_kubeconfig_has_one_cluster_user_and_current_context() {
        let config = with_token(
            "west",
            "https://192.0.2.2:6443",
            CA.as_bytes(),
            "agent",
            "t0ken",
        );
        let read = read_back(&config);
        assert_eq!(read["apiVersion"], "v1");
        assert_eq!(read["kind"], "Config");
        assert_eq!(read["current-context"], "west");
        assert_eq!(read["clusters"].as_array().unwrap().len(), 1, "{read}");
        let cluster = &read["clusters"][0];
        assert_eq!(cluster["name"], "west");
        assert_eq!(cluster["cluster"]["server"], "https://192.0.2.2:6443");
        assert_eq!(
            decoded(&cluster["cluster"]["certificate-authority-data"]),
            CA
        );
        assert_eq!(read["users"].as_array().unwrap().len(), 1, "{read}");
        let user = &read["users"][0];
        assert_eq!(user["name"], "agent");
        assert_eq!(
            user["user"],
            serde_json::json!({"token": "t0ken"}),
            "a token and nothing else"
        );
        assert_eq!(
            read["contexts"],
            serde_json::json!([{"name": "west", "context": {"cluster": "west", "user": "agent"}}])
        );
    }

    #[test]
    fn a_certificate_kubeconfig_carries_the_pair_as_base64() {
        let config = with_client_certificate(
            "lab",
            "https://[fd00::2]:6443",
            CA.as_bytes(),
            "admin",
            "CERT PEM",
            "KEY PEM",
        );
        let read = read_back(&config);
        let user = &read["users"][0]["user"];
        assert_eq!(decoded(&user["client-certificate-data"]), "CERT PEM");
        assert_eq!(decoded(&user["client-key-data"]), "KEY PEM");
        assert!(user.get("token").is_none(), "{user}");
        assert_eq!(read["contexts"][0]["context"]["user"], "admin");
        assert_eq!(
            read["clusters"][0]["cluster"]["server"],
            "https://[fd00::2]:6443"
        );
    }

    #[test]
    fn written_kubeconfigs_are_0600_and_read_by_kube() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("kubeconfig");
        let config = with_token("lab", "https://192.0.2.2:6443", CA.as_bytes(), "u", "t");
        write(&path, &config).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let read = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(read.current_context.as_deref(), Some("lab"));
        // Writing again replaces the whole file.
        write(&path, &with_token("b", "https://x", b"", "u", "t")).unwrap();
        let read = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(read.current_context.as_deref(), Some("b"));
    }
}
