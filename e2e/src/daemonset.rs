//! Trellis on a lab node the way the chart puts it there: the chart is
//! rendered with `helm template`, its objects (ServiceAccount, RBAC,
//! admission policy, CRD) are applied to the lab's apiserver, and the
//! DaemonSet's pod (the installed DaemonSet's, after `helm install`) runs on
//! the node with the identity the chart gives it
//! — a token of the chart's ServiceAccount bound to a Pod on that node, not
//! the admin's — and with the command, args, env and paths of the rendered
//! DaemonSet (see `kubelet`).

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service, ServiceAccount};
use kube::api::Api;

use crate::chart::{self, ChartError};
use crate::cmd;
use crate::kubelet::{self, ContainerRun, PodContext, PodFields};
use crate::lab::{Lab, LabError};
use crate::mesh::{workspace_binary, Device};
use crate::node;
use crate::state::{self, Daemon};

/// The binaries of the image (the Dockerfile's /usr/local/bin).
const IMAGE_BINARIES: [&str; 3] = ["trellis-agent", "trellis-cni", "trellis-wg"];

/// The DaemonSet's pod on one node, ready to run its containers.
#[derive(Debug, Clone)]
pub struct TrellisPod {
    pub node: String,
    pub spec: PodSpec,
    pub fields: PodFields,
    pub dir: PathBuf,
    base_env: Vec<(String, String)>,
}

impl TrellisPod {
    pub fn container(&self, name: &str) -> Option<&Container> {
        self.spec.containers.iter().find(|c| c.name == name)
    }
}

/// The chart's values for a lab cluster: the apiserver's own address (the
/// lab has no kube-proxy), the cluster's CIDRs as its declared pod ranges,
/// a quicker resync, text logs, and the dataplane the node's `device`
/// needs.
pub fn lab_values(
    apiserver_url: &str,
    cluster_cidrs: &[IpNet],
    device: Device,
) -> Result<Vec<(String, String)>, LabError> {
    let uri: http::Uri = apiserver_url.parse().map_err(|e| LabError::Invalid {
        what: "apiserver URL",
        name: apiserver_url.to_string(),
        problem: format!("does not parse: {e}"),
    })?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443).to_string();
    let dataplane = match device {
        Device::Kernel => "kernel",
        Device::TrellisWg | Device::WireguardGo | Device::WireguardGoCurrent => "userspace",
    };
    Ok([
        ("dataplane", dataplane.to_string()),
        ("apiServer.host", host),
        ("apiServer.port", port),
        ("resyncSeconds", "10".to_string()),
        // Linked clusters' tokens renew all through the tests.
        ("links.tokenRenewAfter", "20s".to_string()),
        // Lab tests lose pods on purpose and wait for their addresses.
        ("ipamLeakGraceSeconds", "20".to_string()),
        (
            "podRanges",
            format!("{{{}}}", trellis_mesh::ranges::format_list(cluster_cidrs)),
        ),
        ("logFormat", "text".to_string()),
        // `--set` splits on commas: escape them.
        (
            "logLevel",
            "info\\,kube_client=warn\\,kube_runtime=warn".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}

impl Lab {
    /// Renders the chart for `node`'s cluster and `device`: the YAML and
    /// its objects.
    pub fn render_chart(
        &self,
        node: &str,
        device: Device,
    ) -> Result<(String, Vec<serde_json::Value>), LabError> {
        let cluster = self.cluster_of(node)?;
        let values = lab_values(&cluster.apiserver_url, &cluster.cluster_cidrs, device)?;
        let yaml = chart::render(&self.tools.path("helm")?, &values)?;
        let objects = chart::objects(&yaml)?;
        Ok((yaml, objects))
    }

    /// Applies YAML objects to a cluster as its admin would
    /// (`kubectl apply --server-side`); `dry_run` asks the server to check
    /// them without storing them.
    pub fn kubectl_apply(
        &self,
        cluster: &str,
        yaml: &str,
        dry_run: bool,
    ) -> Result<String, LabError> {
        let file = self.state.dir.join(format!("apply-{cluster}.yaml"));
        std::fs::write(&file, yaml).map_err(|source| LabError::Io {
            context: format!("writing {}", file.display()),
            source,
        })?;
        let kubeconfig = self.kubeconfig(cluster)?;
        let mut args: Vec<String> = vec![
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "apply".into(),
            "--server-side".into(),
            "--field-manager=trellis-lab".into(),
            "--force-conflicts".into(),
            "-f".into(),
            file.display().to_string(),
        ];
        if dry_run {
            args.push("--dry-run=server".into());
        }
        Ok(cmd::run("kubectl", &args)?)
    }

    /// The DaemonSet's pod on `node`: the chart's objects are applied to the
    /// cluster when it has none yet (and no DaemonSet is installed), the Pod object is created (bound to
    /// the node), and a fresh token bound to it is written where the
    /// containers find it.
    pub async fn trellis_pod(&self, node: &str, device: Device) -> Result<TrellisPod, LabError> {
        let cluster = self.cluster_of(node)?.clone();
        let client = self.client(&cluster.name).await?;
        // An installed DaemonSet (`helm install`) is run as installed;
        // otherwise the lab applies the chart's other objects (identity,
        // RBAC, policy, CRD) and runs the DaemonSet it rendered for this
        // node's device, so that nodes of one cluster may differ.
        let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), chart::NAMESPACE);
        let daemonset = match daemonsets
            .get_opt(chart::RELEASE)
            .await
            .map_err(api_err(node))?
        {
            Some(installed) => installed,
            None => {
                let (_, objects) = self.render_chart(node, device)?;
                let rendered = chart::daemonset(&objects)?;
                let accounts: Api<ServiceAccount> =
                    Api::namespaced(client.clone(), chart::NAMESPACE);
                let account = rendered
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .and_then(|s| s.service_account_name.clone())
                    .ok_or(ChartError::Missing("DaemonSet serviceAccountName"))?;
                if accounts
                    .get_opt(&account)
                    .await
                    .map_err(api_err(node))?
                    .is_none()
                {
                    let others: Vec<serde_json::Value> = objects
                        .iter()
                        .filter(|o| o["kind"] != "DaemonSet")
                        .cloned()
                        .collect();
                    let list =
                        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": others});
                    self.kubectl_apply(&cluster.name, &list.to_string(), false)?;
                }
                rendered
            }
        };
        let namespace = daemonset
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| chart::NAMESPACE.into());
        let template = daemonset
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .ok_or(ChartError::Missing("DaemonSet spec"))?;
        let account = template
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .ok_or(ChartError::Missing("DaemonSet serviceAccountName"))?;
        let ds_name = daemonset
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| chart::RELEASE.into());
        let pod = kubelet::ensure_pod(
            &client,
            &kubelet::pod_for_node(&template, &ds_name, &namespace, node),
        )
        .await?;
        let token = kubelet::pod_token(&client, &pod).await?;
        let n = self.node(node)?;
        let dir = n
            .dir
            .join("pods")
            .join(pod.metadata.name.as_deref().unwrap_or("trellis"));
        let ca = std::fs::read_to_string(cluster.dir.join("pki/ca.crt")).map_err(|source| {
            LabError::Io {
                context: "reading the cluster's CA".into(),
                source,
            }
        })?;
        kubelet::write_service_account(&dir.join("serviceaccount"), &token, &ca, &namespace)?;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let service_ip = services
            .get("kubernetes")
            .await
            .map_err(api_err(node))?
            .spec
            .and_then(|s| s.cluster_ip)
            .unwrap_or_default();
        let host_ip =
            n.v4.map(|a| a.to_string())
                .or(n.v6.map(|a| a.to_string()))
                .unwrap_or_default();
        Ok(TrellisPod {
            node: node.to_string(),
            spec: pod.spec.clone().unwrap_or_default(),
            fields: PodFields {
                node_name: node.to_string(),
                pod_name: pod.metadata.name.clone().unwrap_or_default(),
                namespace,
                host_ip,
                service_account: account,
            },
            dir,
            base_env: kubelet::kubelet_env(node, &service_ip, 443),
        })
    }

    /// The process of one of the pod's containers (or init containers).
    pub fn container_run(
        &self,
        pod: &TrellisPod,
        container: &Container,
    ) -> Result<ContainerRun, LabError> {
        let n = self.node(&pod.node)?;
        let image_bin = self.image_bin()?;
        let node_placement = node::placement(n);
        let run = kubelet::container_run(
            container,
            &PodContext {
                spec: &pod.spec,
                fields: &pod.fields,
                node_placement: &node_placement,
                node_dir: &n.dir,
                pod_dir: &pod.dir,
                image_bin: &image_bin,
                base_env: &pod.base_env,
            },
        )?;
        let mut missing = Vec::new();
        for (source, target) in &run.placement.binds {
            if !source.exists() {
                std::fs::create_dir_all(source).map_err(|e| LabError::Io {
                    context: format!("creating {}", source.display()),
                    source: e,
                })?;
            }
            missing.extend(
                target
                    .ancestors()
                    .take_while(|p| !p.exists())
                    .map(Path::to_path_buf),
            );
        }
        self.create_mountpoints(&missing)?;
        Ok(run)
    }

    /// Runs the pod's init containers (installing trellis-cni) to the end.
    pub fn run_init_containers(&self, pod: &TrellisPod) -> Result<(), LabError> {
        for container in pod.spec.init_containers.iter().flatten() {
            let run = self.container_run(pod, container)?;
            let mut command = run.command;
            run.placement.apply(&mut command)?;
            cmd::output_of(
                command,
                format!("init container {} on {}", container.name, pod.node),
            )?;
        }
        Ok(())
    }

    /// Starts one of the pod's containers as a daemon on its node, logging
    /// to `<node dir>/<container>.log`.
    pub fn start_container(&mut self, pod: &TrellisPod, name: &str) -> Result<Daemon, LabError> {
        let container = pod.container(name).ok_or_else(|| LabError::Invalid {
            what: "container",
            name: name.to_string(),
            problem: "is not in the chart's DaemonSet".into(),
        })?;
        let run = self.container_run(pod, container)?;
        self.spawn_placed(&pod.node, name, run.command, &run.placement)
    }

    /// What a kubelet does when Trellis's pods go (uninstall): stops their
    /// containers on every node of `cluster` and deletes the Pod objects
    /// at once (there is no kubelet to confirm a graceful deletion). The
    /// dataplane stays, as it does when the agent stops.
    pub async fn delete_trellis_pods(&mut self, cluster: &str) -> Result<(), LabError> {
        let nodes: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.cluster == cluster)
            .map(|n| n.name.clone())
            .collect();
        for node in &nodes {
            for container in [crate::mesh::AGENT, crate::mesh::TRELLIS_WG] {
                self.signal_daemon(node, container, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let client = self.client(cluster).await?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, chart::NAMESPACE);
        let selector = kube::api::ListParams::default().labels("app.kubernetes.io/name=trellis");
        pods.delete_collection(
            &kube::api::DeleteParams::default().grace_period(0),
            &selector,
        )
        .await
        .map_err(api_err(cluster))?;
        Ok(())
    }

    /// A directory standing in for the image's /usr/local/bin: links to this
    /// workspace's binaries (or to those in `image_binaries`).
    fn image_bin(&self) -> Result<PathBuf, LabError> {
        let dir = self.state.dir.join("image-bin");
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        for name in IMAGE_BINARIES {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            let binary = match &self.image_binaries {
                Some(dir) => dir.join(name),
                None => workspace_binary(name)?,
            };
            std::os::unix::fs::symlink(binary, &link).map_err(|source| LabError::Io {
                context: format!("linking {}", link.display()),
                source,
            })?;
        }
        Ok(dir)
    }

    /// Creates mount points missing on the machine, recorded so that the
    /// last lab's `down` removes them again.
    fn create_mountpoints(&self, missing: &[PathBuf]) -> Result<(), LabError> {
        if missing.is_empty() {
            return Ok(());
        }
        let root = state::lab_root();
        let _lock = state::lock(&root)?;
        let mut created = Vec::new();
        for p in missing.iter().rev() {
            if !p.exists() {
                std::fs::create_dir(p).map_err(|source| LabError::Io {
                    context: format!("creating mount point {}", p.display()),
                    source,
                })?;
                created.push(p.clone());
            }
        }
        Ok(state::add_created_mountpoints(&root, &created)?)
    }
}

fn api_err(node: &str) -> impl Fn(kube::Error) -> LabError + '_ {
    move |source| {
        LabError::Kubelet(kubelet::KubeletError::Api {
            pod: format!("trellis on {node}"),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_values_point_at_the_apiserver_and_pick_the_dataplane() {
        let cidrs = [
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ];
        let v = lab_values("https://[fd00::5]:6443", &cidrs, Device::Kernel).unwrap();
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("apiServer.host"), Some("fd00::5"));
        assert_eq!(get("podRanges"), Some("{10.244.0.0/16,fd00:10:244::/56}"));
        assert_eq!(get("apiServer.port"), Some("6443"));
        assert_eq!(get("dataplane"), Some("kernel"));
        let v = lab_values("https://192.0.2.5:6443", &cidrs, Device::WireguardGo).unwrap();
        assert!(v.contains(&("dataplane".into(), "userspace".into())));
        assert!(v.contains(&("apiServer.host".into(), "192.0.2.5".into())));
    }
}
