//! `trellis-agent`: the node agent (not implemented in this build).

fn main() {
    eprintln!(
        "trellis-agent: not implemented in this build (would manage interface {:?})",
        trellis_agent::names::DEFAULT_INTERFACE
    );
    std::process::exit(2);
}
