//! Pure mesh logic of Trellis, with no I/O: the names every component
//! agrees on, the Node annotation schema, the desired state of one node
//! computed from a snapshot of the cluster, and the plan that turns what a
//! node observed into what it should have. The agent feeds it snapshots and
//! observations and applies the plans it returns.
//!
//! Modules depend one way, from the bottom up: `key`, `names`, `ranges`,
//! `annotations`, `session` and `sightings` need nothing of the mesh;
//! [`model`] (the types everything speaks) needs only those; `admission`,
//! `nat`, `nodes`, `external`, `remote` and then [`desired`] compute the
//! desired state; `health`, `upgrade`, `relay`, `roaming`, [`plan`] and `nft`
//! work on it.

pub mod admission;
pub mod annotations;
pub mod desired;
pub mod external;
pub mod health;
pub mod key;
pub mod model;
pub mod names;
pub mod nat;
pub mod nft;
pub mod nodes;
pub mod plan;
pub mod ranges;
pub mod relay;
pub mod remote;
pub mod roaming;
pub mod session;
pub mod sightings;
pub mod upgrade;

#[cfg(test)]
pub(crate) mod testing;

pub use desired::desired_mesh;
pub use key::{PresharedKey, PublicKey};
pub use model::{
    ClusterRejection, Desired, DesiredPeer, ExternalPeerInfo, LocalError, LocalNode, MeshInputs,
    NodeInfo, PeerName, PresharedKeySource, RejectReason, Rejection, RemoteCluster, Route,
};
pub use plan::{plan, Observed, ObservedPeer, PeerChange, Plan};
pub use ranges::DeclaredRanges;
