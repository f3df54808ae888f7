//! The Helm chart as the lab uses it: rendered with the real `helm
//! template`, split into objects, and the DaemonSet the lab's nodes run —
//! so a chart change that breaks the agent breaks a test.

use k8s_openapi::api::apps::v1::DaemonSet;
use std::path::{Path, PathBuf};

use crate::cmd::{self, CommandError};

/// The release name and namespace the lab installs Trellis as.
pub const RELEASE: &str = "trellis";
pub const NAMESPACE: &str = "kube-system";
/// The Kubernetes version `helm template` renders for (the lab's).
pub const KUBE_VERSION: &str = "1.34.0";

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("the rendered chart is not YAML: {0}")]
    Yaml(String),
    #[error("the rendered chart has no {0}")]
    Missing(&'static str),
    #[error("the rendered {kind} does not parse: {source}")]
    Object {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The chart's directory in this repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the workspace")
        .join("charts/trellis")
}

/// Runs `helm args...` against `kubeconfig`'s cluster; its stdout.
pub fn helm(helm: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String, ChartError> {
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap_or_default()];
    all.extend_from_slice(args);
    Ok(cmd::run(&helm.display().to_string(), &all)?)
}

/// The `--set` values that install the chart on the lab cluster `cluster`
/// of real nodes from the image imported there: the API server's address
/// (the agent starts before kube-proxy serves 10.96.0.1), the cluster's pod
/// ranges, and no pulling.
pub fn real_node_values(cluster: &crate::state::ClusterState) -> Vec<String> {
    let host = cluster
        .apiserver_url
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or("", |(host, _)| host)
        .trim_matches(['[', ']']);
    let ranges: Vec<String> = cluster
        .cluster_cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    vec![
        format!(
            "apiServer.host={host},apiServer.port={}",
            crate::plan::APISERVER_PORT
        ),
        "image.pullPolicy=Never".into(),
        format!("podRanges={{{}}}", ranges.join(",")),
    ]
}

/// `helm template` of the chart with `values` (`--set key=value` each),
/// CRDs included, as one YAML stream.
pub fn render(helm: &Path, values: &[(String, String)]) -> Result<String, ChartError> {
    let mut args: Vec<String> = vec!["template".into(), RELEASE.into()];
    args.push(chart_dir().display().to_string());
    for a in [
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
    ] {
        args.push(a.into());
    }
    for (key, value) in values {
        args.push("--set".into());
        args.push(format!("{key}={value}"));
    }
    Ok(cmd::run(&helm.display().to_string(), &args)?)
}

/// The objects of a rendered YAML stream (empty documents dropped).
pub fn objects(yaml: &str) -> Result<Vec<serde_json::Value>, ChartError> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| ChartError::Yaml(e.to_string()))?;
    Ok(documents.into_iter().filter(|d| d.is_object()).collect())
}

/// The `kind` of each object, in order.
pub fn kinds(objects: &[serde_json::Value]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| o["kind"].as_str().map(str::to_string))
        .collect()
}

/// The one DaemonSet of the rendered chart.
pub fn daemonset(objects: &[serde_json::Value]) -> Result<DaemonSet, ChartError> {
    let object = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .ok_or(ChartError::Missing("DaemonSet"))?;
    serde_json::from_value(object.clone()).map_err(|source| ChartError::Object {
        kind: "DaemonSet",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_become_objects_and_empty_ones_are_dropped() {
        let yaml = "---\n# Source: x\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: d\nspec:\n  selector: {}\n  template:\n    spec:\n      containers: [{name: agent, image: i}]\n";
        let objects = objects(yaml).unwrap();
        assert_eq!(kinds(&objects), vec!["ServiceAccount", "DaemonSet"]);
        let ds = daemonset(&objects).unwrap();
        let spec = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(spec.containers[0].name, "agent");
    }

    #[test]
    fn a_chart_without_daemonset_says_so() {
        let objects = objects("kind: ServiceAccount\n").unwrap();
        assert!(daemonset(&objects)
            .unwrap_err()
            .to_string()
            .contains("no DaemonSet"));
    }
}
