//! Pure mesh logic of Trellis, with no I/O: the names every component
//! agrees on, the Node annotation schema, the desired state of one node
//! computed from a snapshot of the cluster, and the plan that turns what a
//! node observed into what it should have. The agent feeds it snapshots and
//! observations and applies the plans it returns.

pub mod annotations;
pub mod desired;
pub mod external;
pub mod key;
pub mod names;
pub mod nat;
pub mod nft;
pub mod plan;
pub mod ranges;
pub mod relay;
pub mod remote;
pub mod roaming;

pub use desired::{
    desired, desired_mesh, desired_with_external, Desired, DesiredPeer, LocalNode, MeshInputs,
    NodeInfo, PeerName, Rejection,
};
pub use external::{ExternalPeerInfo, PresharedKeySource};
pub use key::{PresharedKey, PublicKey};
pub use plan::{plan, Observed, ObservedPeer, PeerChange, Plan, Route};
pub use ranges::DeclaredRanges;
pub use remote::{ClusterRejection, RemoteCluster};
