//! The Trellis node agent library: watches, reconcile and dataplane land
//! here in their own issue. For now it only names what it will own.

pub use trellis_mesh::names;
