//! The configuration the agent writes, run through the version negotiation
//! of the CNI library (libcni, as cnitool links it) in an older and a
//! current version: libcni before 1.2 (containerd 1.6 and 1.7) reads only
//! `cniVersion` and must get 1.0.0 results, which it can read; a current
//! libcni picks 1.1.0 from `cniVersions`. Root only.

mod common;

use std::path::Path;

use common::{json, ping, Node, POD_CIDR_V4, POD_CIDR_V6};

/// The older libcni's cnitool (`tools/versions.env`: CNI_OLD_VERSION).
const OLD_CNITOOL: &str = "cnitool-v1.1.2";

#[test]
#[ignore = "needs root"]
fn the_agents_configuration_suits_old_and_current_libcni() {
    let mut node = Node::new("versions");
    let conflist = trellis_agent::cni_conf::conflist(
        &[POD_CIDR_V4.parse().unwrap(), POD_CIDR_V6.parse().unwrap()],
        1400,
        &node.dir.join("state/ipam"),
        "trellis",
    );
    std::fs::write(
        node.dir.join("conf/10-trellis.conflist"),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();
    for (tool, expected) in [(OLD_CNITOOL, "1.0.0"), ("cnitool", "1.1.0")] {
        let pod = node.pod(if tool == "cnitool" { "new" } else { "old" });
        let ns = pod.file_name().unwrap().to_string_lossy().into_owned();
        let add = run(&node, tool, "add", &pod);
        let result = json(&add);
        assert_eq!(result["cniVersion"], expected, "{tool}: {result}");
        let v4 = trellis_e2e::pod::result_address(&result, true).expect("an IPv4 address");
        let v6 = trellis_e2e::pod::result_address(&result, false).expect("an IPv6 address");
        assert!(ping(&node.name, &v4), "{tool}: node to pod over IPv4");
        assert!(ping(&node.name, &v6), "{tool}: node to pod over IPv6");
        assert!(ping(&ns, common::NODE_ADDR), "{tool}: pod to node");
        // CHECK hands the plugin the cached result back (prevResult) in the
        // negotiated version: it must read it.
        run(&node, tool, "check", &pod);
        run(&node, tool, "del", &pod);
        assert!(!ping(&node.name, &v4), "{tool}: the pod is gone after DEL");
    }
}

/// Runs `tool VERB` for `pod`; panics with its output unless it succeeds.
fn run(node: &Node, tool: &str, verb: &str, pod: &Path) -> std::process::Output {
    let out = node.cnitool_named(tool, verb, pod, None);
    assert!(
        out.status.success(),
        "{tool} {verb}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
