//! The cluster DNS of real-node clusters: CoreDNS as a Deployment behind the
//! `kube-dns` Service, as kubeadm deploys it (`coredns.yaml`, applied with
//! kubectl when the control plane is up; its pods start once the nodes
//! have a network, like kubeadm's before a CNI is installed). The kubelets
//! point pods at [`service_ip`].

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::cmd::{self, CommandError};

/// kubeadm's manifest with the Service's address and the image filled in.
const MANIFEST: &str = include_str!("cluster_dns/coredns.yaml");

/// The cluster's DNS domain, as on every kubeadm cluster.
pub const DOMAIN: &str = "cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum ClusterDnsError {
    #[error("applying the CoreDNS manifest: {0}")]
    Apply(#[from] CommandError),
    #[error("writing {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The CoreDNS image the lab builds (tools/image/build.sh coredns).
pub fn image() -> String {
    format!(
        "registry.k8s.io/coredns/coredns:{}",
        crate::tools::pinned("COREDNS_VERSION")
    )
}

/// The address of the `kube-dns` Service: the tenth of the service range,
/// as kubeadm picks it (10.96.0.10 for 10.96.0.0/16).
pub fn service_ip(service_cidr: IpNet) -> IpAddr {
    match service_cidr {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 10).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 10).into()),
    }
}

/// The manifest for a cluster whose service range is `service_cidr`.
pub fn manifest(service_cidr: IpNet) -> String {
    MANIFEST
        .replace("@DNS_SERVICE_IP@", &service_ip(service_cidr).to_string())
        .replace("@DOMAIN@", DOMAIN)
        .replace("@IMAGE@", &image())
}

/// Applies the manifest to the cluster of `kubeconfig` (server-side, so a
/// second apply changes nothing).
pub fn apply(
    kubectl: &Path,
    kubeconfig: &Path,
    service_cidr: IpNet,
) -> Result<(), ClusterDnsError> {
    let file = kubeconfig.with_file_name("coredns.yaml");
    std::fs::write(&file, manifest(service_cidr)).map_err(|source| ClusterDnsError::Write {
        path: file.clone(),
        source,
    })?;
    cmd::run(
        &kubectl.display().to_string(),
        &[
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "apply",
            "--server-side",
            "--field-manager=trellis-lab",
            "-f",
            &file.display().to_string(),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_takes_the_tenth_address_of_the_range() {
        assert_eq!(
            service_ip("10.96.0.0/16".parse().unwrap()).to_string(),
            "10.96.0.10"
        );
        assert_eq!(
            service_ip("fd00:10:96::/112".parse().unwrap()).to_string(),
            "fd00:10:96::a"
        );
    }

    #[test]
    fn the_manifest_is_filled_in_and_parses() {
        let text = manifest("10.96.0.0/16".parse().unwrap());
        assert!(!text.contains('@'), "a placeholder is left:\n{text}");
        let objects: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "Deployment",
                "Service"
            ]
        );
        let service = &objects[5];
        assert_eq!(service["metadata"]["name"], "kube-dns");
        assert_eq!(service["spec"]["clusterIP"], "10.96.0.10");
        let deployment = &objects[4];
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["image"],
            image()
        );
        assert!(image().starts_with("registry.k8s.io/coredns/coredns:v"));
        let corefile = objects[3]["data"]["Corefile"].as_str().unwrap();
        assert!(corefile.contains("kubernetes cluster.local in-addr.arpa ip6.arpa"));
    }
}
