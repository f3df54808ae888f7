//! What a kubelet does for Trellis's pod on a lab node, done by the lab (its
//! nodes have no kubelet): the Pod object, bound to the node; a
//! service-account token bound to that Pod (so the API server knows which
//! node the agent is on); and each container run as a process on the node
//! with the container's own command, args, env, volumes and capabilities.
//!
//! As in a container: hostPath volumes are the node's directories, an
//! emptyDir is private to the pod, the image's `/usr/local/bin` holds this
//! workspace's binaries, `/proc/sys` is read-only and so is `/` with
//! `readOnlyRootFilesystem`, and the process keeps only the capabilities
//! the container asks for (`setpriv`).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodSpec, PodTemplateSpec, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};

use crate::netns::Placement;
use crate::node;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("container {container}: {what} is not something the lab can run")]
    Unsupported { container: String, what: String },
    #[error("pod {pod}: {source}")]
    Api {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the image's binaries are: `/usr/local/bin` in the Dockerfile.
pub const IMAGE_BIN_DIR: &str = "/usr/local/bin";
/// Where a kubelet mounts the service-account token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A token lives this long; the lab asks for a new one whenever it (re)starts a container.
const TOKEN_SECONDS: i64 = 24 * 3600;

/// The pod fields a container's env may refer to (`fieldRef`).
#[derive(Debug, Clone, Default)]
pub struct PodFields {
    pub node_name: String,
    pub pod_name: String,
    pub namespace: String,
    pub host_ip: String,
    pub service_account: String,
}

impl PodFields {
    fn get(&self, path: &str) -> Option<&str> {
        Some(match path {
            "spec.nodeName" => &self.node_name,
            "metadata.name" => &self.pod_name,
            "metadata.namespace" => &self.namespace,
            "status.hostIP" | "status.podIP" => &self.host_ip,
            "spec.serviceAccountName" => &self.service_account,
            _ => return None,
        })
    }
}

/// Expands `$(NAME)` from `env` as a kubelet does: unknown names stay as
/// written, and `$$` is a literal `$`.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, value)) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: `base` (what a kubelet injects) then the
/// container's own variables in order, each expanded against the ones
/// before it.
pub fn container_env(
    container: &Container,
    fields: &PodFields,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>, KubeletError> {
    let unsupported = |what: String| KubeletError::Unsupported {
        container: container.name.clone(),
        what,
    };
    let mut env: Vec<(String, String)> = base.to_vec();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let field = from.field_ref.as_ref().ok_or_else(|| {
                    unsupported(format!("env {} from anything but a fieldRef", var.name))
                })?;
                fields
                    .get(&field.field_path)
                    .ok_or_else(|| {
                        unsupported(format!("env {} from field {}", var.name, field.field_path))
                    })?
                    .to_string()
            }
            (Some(value), None) => expand(value, &env),
            (None, None) => String::new(),
        };
        env.retain(|(k, _)| k != &var.name);
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// The capabilities the container's process keeps (lower case, as
/// `setpriv` names them): the runtime's defaults unless it drops ALL, plus
/// what it adds, minus what it drops.
pub fn capabilities(container: &Container) -> Vec<String> {
    // containerd's default set for a container.
    const DEFAULT: [&str; 14] = [
        "chown",
        "dac_override",
        "fsetid",
        "fowner",
        "mknod",
        "net_raw",
        "setgid",
        "setuid",
        "setfcap",
        "setpcap",
        "net_bind_service",
        "sys_chroot",
        "kill",
        "audit_write",
    ];
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let norm = |c: &String| c.trim_start_matches("CAP_").to_ascii_lowercase();
    let drop: Vec<String> = caps
        .and_then(|c| c.drop.as_ref())
        .iter()
        .flat_map(|d| d.iter().map(norm))
        .collect();
    let mut keep: Vec<String> = if drop.iter().any(|d| d == "all") {
        Vec::new()
    } else {
        DEFAULT
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for add in caps
        .and_then(|c| c.add.as_ref())
        .iter()
        .flat_map(|a| a.iter().map(norm))
    {
        if !keep.contains(&add) {
            keep.push(add);
        }
    }
    keep
}

/// One mount of a container: `source` on the machine over `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// The container's volume mounts: a hostPath is the node's own path (its
/// private directory for a standard one), an emptyDir a directory of the
/// pod's, and the projected service-account volume the pod's token.
pub fn container_mounts(
    container: &Container,
    volumes: &[Volume],
    node_dir: &Path,
    pod_dir: &Path,
) -> Result<Vec<Mount>, KubeletError> {
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume =
            volumes
                .iter()
                .find(|v| v.name == m.name)
                .ok_or_else(|| KubeletError::Unsupported {
                    container: container.name.clone(),
                    what: format!("volume mount {} of an undeclared volume", m.name),
                })?;
        let source = if let Some(host) = &volume.host_path {
            node::host_path(node_dir, &host.path)
        } else if volume.empty_dir.is_some() {
            pod_dir.join("volumes").join(&volume.name)
        } else if volume.projected.is_some() && m.mount_path == SERVICE_ACCOUNT_DIR {
            // The token volume the API server's ServiceAccount admission
            // added to the Pod (`kube-api-access-*`).
            pod_dir.join("serviceaccount")
        } else {
            return Err(KubeletError::Unsupported {
                container: container.name.clone(),
                what: format!(
                    "volume {} (only hostPath, emptyDir and the service-account token)",
                    volume.name
                ),
            });
        };
        mounts.push(Mount {
            source,
            target: node::mount_target(&m.mount_path),
        });
    }
    Ok(mounts)
}

/// The Pod a DaemonSet's template becomes on `node`: named after both,
/// bound to the node as the scheduler would.
pub fn pod_for_node(
    template: &PodTemplateSpec,
    daemonset: &str,
    namespace: &str,
    node: &str,
) -> Pod {
    let mut pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    };
    pod.metadata.name = Some(format!("{daemonset}-{node}"));
    pod.metadata.namespace = Some(namespace.to_string());
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_string());
    }
    pod
}

/// Creates the Pod, or returns the one already there.
pub async fn ensure_pod(client: &kube::Client, pod: &Pod) -> Result<Pod, KubeletError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let err = |source| KubeletError::Api {
        pod: name.clone(),
        source,
    };
    match api.create(&PostParams::default(), pod).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(status)) if status.code == 409 => api.get(&name).await.map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// A token of the pod's service account, bound to the pod (the kubelet's
/// projected token): the API server adds the pod's node to its identity.
pub async fn pod_token(client: &kube::Client, pod: &Pod) -> Result<String, KubeletError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.clone()),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(TOKEN_SECONDS),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let answer = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|source| KubeletError::Api { pod: name, source })?;
    Ok(answer.status.map(|s| s.token).unwrap_or_default())
}

/// Writes the service-account directory a kubelet projects into the pod.
pub fn write_service_account(
    dir: &Path,
    token: &str,
    ca_pem: &str,
    namespace: &str,
) -> Result<(), KubeletError> {
    let io = |context: String| move |source| KubeletError::Io { context, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    for (file, contents) in [
        ("token", token),
        ("ca.crt", ca_pem),
        ("namespace", namespace),
    ] {
        let path = dir.join(file);
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, contents)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(())
}

/// A container ready to run on its node: the command (under `setpriv`
/// with the container's capabilities) and where it runs.
#[derive(Debug)]
pub struct ContainerRun {
    pub command: Command,
    pub placement: Placement,
}

/// What running one container needs besides the container itself.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    pub spec: &'a PodSpec,
    pub fields: &'a PodFields,
    /// The node's namespace and directories.
    pub node_placement: &'a Placement,
    pub node_dir: &'a Path,
    pub pod_dir: &'a Path,
    /// The image: a directory with this workspace's binaries.
    pub image_bin: &'a Path,
    /// What a kubelet injects (the API server's service address).
    pub base_env: &'a [(String, String)],
}

/// Builds the process for `container`.
pub fn container_run(
    container: &Container,
    pod: &PodContext,
) -> Result<ContainerRun, KubeletError> {
    let unsupported = |what: &str| KubeletError::Unsupported {
        container: container.name.clone(),
        what: what.to_string(),
    };
    let env = container_env(container, pod.fields, pod.base_env)?;
    let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
    argv.extend(container.args.clone().unwrap_or_default());
    let argv: Vec<String> = argv.iter().map(|a| expand(a, &env)).collect();
    if argv.is_empty() {
        return Err(unsupported(
            "a container without command (the image's entrypoint)",
        ));
    }
    let security = container.security_context.as_ref();
    if security.and_then(|s| s.privileged).unwrap_or(false) {
        return Err(unsupported(
            "privileged: true (the chart asks for capabilities instead)",
        ));
    }
    let mut placement = pod.node_placement.clone();
    placement
        .binds
        .push((pod.image_bin.to_path_buf(), PathBuf::from(IMAGE_BIN_DIR)));
    for m in container_mounts(
        container,
        pod.spec.volumes.as_deref().unwrap_or(&[]),
        pod.node_dir,
        pod.pod_dir,
    )? {
        placement.binds.push((m.source, m.target));
    }
    placement.read_only.push(PathBuf::from("/proc/sys"));
    if security
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false)
    {
        placement.read_only.push(PathBuf::from("/"));
    }
    let caps = capabilities(container);
    let caps_arg = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new("setpriv");
    command.args(["--bounding-set", &caps_arg, "--inh-caps", &caps_arg]);
    if security.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        command.arg("--no-new-privs");
    }
    command.arg("--").args(&argv);
    command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    Ok(ContainerRun { command, placement })
}

/// What a kubelet injects into every container: PATH, HOSTNAME (the node's,
/// with host networking) and the API server's service address.
pub fn kubelet_env(node: &str, service_host: &str, service_port: u16) -> Vec<(String, String)> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOSTNAME", node),
        ("KUBERNETES_SERVICE_HOST", service_host),
        ("KUBERNETES_SERVICE_PORT", &service_port.to_string()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[cfg(test)]
mod tests;
