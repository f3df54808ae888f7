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

/// A kubeconfig text that cannot be used as a token kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigError {
    #[error("the kubeconfig does not parse: {0}")]
    Parse(String),
    #[error("the kubeconfig's current context has no user with a bearer token")]
    NoToken,
}

/// The user entry of `config`'s current context (else its only user), as
/// JSON.
fn current_user(config: &mut serde_json::Value) -> Option<&mut serde_json::Value> {
    let current = config["current-context"].as_str().map(str::to_string);
    let user = config["contexts"]
        .as_array()?
        .iter()
        .find(|c| current.is_none() || c["name"].as_str() == current.as_deref())
        .and_then(|c| c["context"]["user"].as_str())
        .map(str::to_string);
    let users = config["users"].as_array_mut()?;
    let only = users.len() == 1;
    users
        .iter_mut()
        .find(|u| only || u["name"].as_str() == user.as_deref())
        .map(|u| &mut u["user"])
}

fn as_json(text: &str) -> Result<serde_json::Value, KubeconfigError> {
    let config = Kubeconfig::from_yaml(text).map_err(|e| KubeconfigError::Parse(e.to_string()))?;
    Ok(serde_json::from_str(&to_json(&config)).expect("a kubeconfig is JSON"))
}

/// The bearer token of the kubeconfig `text`'s current user.
pub fn token_of(text: &str) -> Result<String, KubeconfigError> {
    let mut config = as_json(text)?;
    current_user(&mut config)
        .and_then(|u| u["token"].as_str().map(str::to_string))
        .ok_or(KubeconfigError::NoToken)
}

/// The kubeconfig `text` (as JSON) with its current user's bearer token
/// replaced by `token`; everything else as it was.
pub fn with_new_token(text: &str, token: &str) -> Result<String, KubeconfigError> {
    let mut config = as_json(text)?;
    let user = current_user(&mut config).ok_or(KubeconfigError::NoToken)?;
    if user["token"].as_str().is_none() {
        return Err(KubeconfigError::NoToken);
    }
    user["token"] = token.into();
    Ok(serde_json::to_string_pretty(&config).expect("JSON serializes"))
}

/// The kubeconfig `text` (as JSON) with its current user reading its
/// bearer token from the file `path` (which clients re-read) instead of
/// carrying it.
pub fn with_token_file(text: &str, path: &Path) -> Result<String, KubeconfigError> {
    let mut config = as_json(text)?;
    let user = current_user(&mut config).ok_or(KubeconfigError::NoToken)?;
    let Some(map) = user.as_object_mut() else {
        return Err(KubeconfigError::NoToken);
    };
    map.remove("token").ok_or(KubeconfigError::NoToken)?;
    map.insert("tokenFile".into(), path.display().to_string().into());
    Ok(serde_json::to_string_pretty(&config).expect("JSON serializes"))
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
    fn a_token_is_read_and_replaced_leaving_the_rest() {
        let text = to_json(&with_token(
            "west",
            "https://192.0.2.2:6443",
            CA.as_bytes(),
            "agent",
            "old",
        ));
        assert_eq!(token_of(&text).unwrap(), "old");
        let renewed = with_new_token(&text, "new").unwrap();
        assert_eq!(token_of(&renewed).unwrap(), "new");
        let (a, b) = (
            read_back(&Kubeconfig::from_yaml(&text).unwrap()),
            read_back(&Kubeconfig::from_yaml(&renewed).unwrap()),
        );
        assert_eq!(a["clusters"], b["clusters"]);
        assert_eq!(a["contexts"], b["contexts"]);
        let certs = to_json(&with_client_certificate(
            "lab",
            "https://x",
            b"",
            "admin",
            "C",
            "K",
        ));
        assert_eq!(token_of(&certs), Err(KubeconfigError::NoToken));
        assert_eq!(with_new_token(&certs, "t"), Err(KubeconfigError::NoToken));
        assert!(matches!(token_of("{"), Err(KubeconfigError::Parse(_))));
        let from_file = with_token_file(&text, Path::new("/var/lib/t/b.token")).unwrap();
        let read = read_back(&Kubeconfig::from_yaml(&from_file).unwrap());
        assert_eq!(
            read["users"][0]["user"],
            serde_json::json!({"tokenFile": "/var/lib/t/b.token"})
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
