//! Trellis' own Kubernetes resources as Rust types. The CRD itself is the
//! chart's `crds/peers.trellis.dev.yaml` (its schema carries the validation
//! rules); these types are tested against it by the lab's apiserver test
//! (every field written with strict field validation and read back).

pub mod kubeconfig;
pub mod link;
pub mod node;
pub mod peer;
pub mod status;
pub mod token;

pub use peer::{NodeCondition, Peer, PeerSpec, PeerStatus, SecretKeyRef};
