//! Pure mesh logic of Trellis: the names every component agrees on, and (as
//! the mesh grows) annotation parsing, the desired state of one node and the
//! plan that turns observed into desired. No I/O lives here.

pub mod names;
