//! Unit tests, against the recording fake, of what ADD (and CHECK and DEL)
//! must not do to a pod or to the host: cut an alias past the kernel's
//! limit, take over a veth that is live in another pod, or wire the
//! plugin's own network namespace.

use std::path::PathBuf;

use serde_json::json;

use crate::plugin_tests::{error_code, json_of, vars, Fixture};
use crate::podnet::{self, MAX_ALIAS_BYTES};

fn details(o: &crate::Outcome) -> String {
    json_of(o)["details"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_long_container_id_adds_with_the_alias_cut_to_the_kernel_limit() {
    let mut f = Fixture::new("longid");
    let cid = "0123456789abcdef".repeat(19);
    let out = f.call(
        &vars("ADD", &cid, "/run/netns/pod1"),
        &f.conf("1.1.0", json!({})),
    );
    assert!(out.success, "{}", out.stdout);
    let alias = &f.net.wired[0].alias;
    assert_eq!(alias.len(), MAX_ALIAS_BYTES, "{alias}");
    assert!(alias.starts_with(&podnet::network_alias_prefix("trellis")));
}

#[test]
fn add_of_the_same_container_and_ifname_into_a_second_namespace_keeps_the_first_pod() {
    let mut f = Fixture::new("twice");
    let conf = f.conf("1.1.0", json!({}));
    let first = f.call(&vars("ADD", "c1", "/run/netns/pod1"), &conf);
    assert!(first.success, "{}", first.stdout);
    let again = f.call(&vars("ADD", "c1", "/run/netns/pod2"), &conf);
    assert_eq!(error_code(&again), 102);
    let text = details(&again);
    assert!(
        text.contains("/run/netns/pod1") && text.contains("DEL"),
        "{text}"
    );
    assert_eq!(f.net.wired.len(), 1);
    assert_eq!(f.net.wired[0].netns, PathBuf::from("/run/netns/pod1"));
    assert_eq!(f.allocations(), 2, "the first pod keeps its addresses");
    let wires = f
        .net
        .calls
        .iter()
        .filter(|c| c.starts_with("wire "))
        .count();
    assert_eq!(
        wires, 1,
        "nothing was wired for the second ADD: {:?}",
        f.net.calls
    );
}

#[test]
fn a_host_end_whose_namespace_is_gone_is_replaced() {
    let mut f = Fixture::new("stale");
    let conf = f.conf("1.1.0", json!({}));
    assert!(f.call(&vars("ADD", "c1", "/run/netns/pod1"), &conf).success);
    f.net
        .namespaces
        .retain(|n| n != &PathBuf::from("/run/netns/pod1"));
    let out = f.call(&vars("ADD", "c1", "/run/netns/pod2"), &conf);
    assert!(out.success, "{}", out.stdout);
    assert_eq!(f.net.wired.len(), 1);
    assert_eq!(f.net.wired[0].netns, PathBuf::from("/run/netns/pod2"));
    assert_eq!(f.allocations(), 2);
}

#[test]
fn the_plugins_own_namespace_is_refused_and_del_spares_its_interfaces() {
    let mut f = Fixture::new("ownns");
    let own = "/proc/self/ns/net";
    f.net.own_netns = vec![PathBuf::from(own)];
    f.net.namespaces.push(PathBuf::from(own));
    let conf = f.conf("1.1.0", json!({}));
    let add = f.call(&vars("ADD", "c1", own), &conf);
    assert_eq!(error_code(&add), 4);
    let text = details(&add);
    assert!(
        text.contains("CNI_NETNS") && text.contains("own network namespace"),
        "{text}"
    );
    assert_eq!(f.allocations(), 0);
    assert!(f.net.wired.is_empty());
    let prev = json!({"cniVersion":"1.1.0","interfaces":[],"ips":[],"routes":[],"dns":{}});
    let check = f.call(
        &vars("CHECK", "c1", own),
        &f.conf("1.1.0", json!({"prevResult": prev})),
    );
    assert_eq!(error_code(&check), 4);
    // DEL cleans up what is ours (the host end, the addresses) but never
    // deletes a host interface that happens to carry CNI_IFNAME.
    f.net.calls.clear();
    let del = f.call(&vars("DEL", "c1", own), &conf);
    assert!(del.success, "{}", del.stdout);
    let host = podnet::host_ifname("c1", "eth0");
    let unwires: Vec<&String> = f
        .net
        .calls
        .iter()
        .filter(|c| c.starts_with("unwire"))
        .collect();
    assert_eq!(unwires, vec![&format!("unwire {host} - eth0")]);
}
