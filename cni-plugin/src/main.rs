//! `trellis-cni`: executed by the container runtime for every pod.

fn main() {
    println!("{}", trellis_cni::not_implemented_error("1.1.0"));
    std::process::exit(1);
}
