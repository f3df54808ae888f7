//! `kubectl trellis`: the kubectl plugin (not implemented in this build).

fn main() {
    eprintln!(
        "kubectl-trellis: not implemented in this build (API group {})",
        trellis_mesh::names::API_GROUP
    );
    std::process::exit(2);
}
