//! Test support shared by the mesh's unit tests: keys, nodes and a local
//! node of a small cluster, and the desired state of nodes and Peers alone
//! (this cluster's private declaration, no linked cluster).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::key::PublicKey;
use crate::model::{Desired, ExternalPeerInfo, LocalError, LocalNode, MeshInputs, NodeInfo};
use crate::names::*;
use crate::ranges::DeclaredRanges;

/// A site-mate's candidates: its LAN address, then its public mapping.
pub(crate) fn site_mate_candidates() -> crate::model::Candidates {
    use crate::model::{Candidate, CandidateKind, Candidates};
    let list = vec![
        Candidate {
            kind: CandidateKind::Lan,
            endpoint: "172.31.0.3:51820".parse().unwrap(),
        },
        Candidate {
            kind: CandidateKind::Public,
            endpoint: "198.51.100.200:40003".parse().unwrap(),
        },
    ];
    Candidates::new(list).expect("two candidates")
}

pub(crate) fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

pub(crate) fn local() -> LocalNode {
    LocalNode {
        name: "n0".into(),
        public_key: key(100),
        interface: "trellis".into(),
        listen_port: 51820,
        mtu: 1420,
    }
}

pub(crate) fn node(i: u8, created: i64) -> NodeInfo {
    let mut annotations = BTreeMap::new();
    annotations.insert(ANNOTATION_PUBLIC_KEY.to_string(), key(i).to_string());
    annotations.insert(
        ANNOTATION_ENDPOINT.to_string(),
        format!("192.0.2.{}:51820", 10 + i),
    );
    NodeInfo {
        name: format!("n{i}"),
        created,
        pod_cidrs: vec![
            format!("10.244.{i}.0/24"),
            format!("fd00:10:244:{i:x}::/64"),
        ],
        internal_ips: vec![format!("192.0.2.{}", 10 + i).parse().unwrap()],
        annotations,
        zone: None,
    }
}

pub(crate) fn no_dns(_: &str, _: u16) -> Option<SocketAddr> {
    None
}

/// The desired state of `local` from this cluster's `nodes` and Peers.
pub(crate) fn desired_of(
    local: &LocalNode,
    nodes: &[NodeInfo],
    external: &[ExternalPeerInfo],
    resolve: &dyn Fn(&str, u16) -> Option<SocketAddr>,
) -> Result<Desired, LocalError> {
    let inputs = MeshInputs {
        nodes,
        external,
        remotes: &[],
        declared: &DeclaredRanges::private(),
    };
    crate::desired::desired_mesh(local, &inputs, resolve)
}
