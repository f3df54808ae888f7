//! Unit tests of the verbs against the recording fake kernel and a real
//! IPAM store in a temp dir (no root, no network).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::podnet::{self, fake::FakePodNetwork};
use crate::{run, Outcome};

pub(crate) struct Fixture {
    /// The IPAM store's data dir; removed when the fixture drops.
    pub(crate) dir: TempDir,
    pub(crate) net: FakePodNetwork,
}

impl Fixture {
    pub(crate) fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("trellis-cni-{tag}-"))
            .tempdir()
            .unwrap();
        let net = FakePodNetwork {
            namespaces: vec![
                PathBuf::from("/run/netns/pod1"),
                PathBuf::from("/run/netns/pod2"),
            ],
            ..Default::default()
        };
        Fixture { dir, net }
    }

    pub(crate) fn conf(&self, version: &str, extra: Value) -> Vec<u8> {
        let mut conf = json!({
            "cniVersion": version, "name": "trellis", "type": "trellis-cni", "mtu": 1400,
            "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
            "dataDir": self.dir.path().join("ipam"),
        });
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        serde_json::to_vec(&conf).unwrap()
    }

    pub(crate) fn call(&mut self, vars: &[(&str, &str)], stdin: &[u8]) -> Outcome {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let net = &mut self.net;
        run(|k| map.get(k).cloned(), stdin, || Ok(net))
    }

    pub(crate) fn allocations(&self) -> usize {
        let dir = self.dir.path().join("ipam/trellis");
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .parse::<std::net::IpAddr>()
                            .is_ok()
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

pub(crate) fn vars<'a>(cmd: &'a str, cid: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

pub(crate) fn json_of(o: &Outcome) -> Value {
    serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", o.stdout))
}

pub(crate) fn error_code(o: &Outcome) -> u64 {
    assert!(!o.success, "expected failure, got {}", o.stdout);
    json_of(o)["code"].as_u64().unwrap()
}

#[test]
fn add_wires_and_reports_one_address_per_family() {
    let mut f = Fixture::new("add");
    let out = f.call(
        &vars("ADD", "c1", "/run/netns/pod1"),
        &f.conf("1.1.0", json!({})),
    );
    assert!(out.success, "{}", out.stdout);
    let result = json_of(&out);
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][1]["sandbox"], "/run/netns/pod1");
    assert_eq!(
        result["interfaces"][0]["name"],
        podnet::host_ifname("c1", "eth0")
    );
    assert_eq!(result["interfaces"][1]["mtu"], 1400);
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2);
    assert!(
        ips[0]["address"].as_str().unwrap().starts_with("10.244.1.")
            && ips[0]["address"].as_str().unwrap().ends_with("/32")
    );
    assert_eq!(ips[0]["gateway"], "169.254.1.1");
    assert_eq!(ips[1]["gateway"], "fe80::1");
    assert_eq!(result["routes"].as_array().unwrap().len(), 2);
    assert_eq!(f.net.wired.len(), 1);
    assert_eq!(f.net.wired[0].mtu, 1400);
    assert_eq!(f.allocations(), 2);
}

/// A node moving from another network plugin: its pods still hold
/// 10.244.1.2 and .3 (host routes to their interfaces). ADD hands out the
/// next free address instead of one whose host route it could not add.
#[test]
fn add_skips_addresses_the_host_routes_to_pods_of_another_network() {
    let mut f = Fixture::new("routed");
    f.net.routed = ["10.244.1.2", "10.244.1.3", "fd00:10:244:1::2"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let out = f.call(
        &vars("ADD", "c1", "/run/netns/pod1"),
        &f.conf("1.1.0", json!({})),
    );
    assert!(out.success, "{}", out.stdout);
    let ips = json_of(&out)["ips"].clone();
    assert_eq!(ips[0]["address"], "10.244.1.4/32");
    assert_eq!(ips[1]["address"], "fd00:10:244:1::3/128");
}

#[test]
fn add_in_an_old_version_writes_the_old_shape() {
    let mut f = Fixture::new("old");
    let out = f.call(
        &vars("ADD", "c1", "/run/netns/pod1"),
        &f.conf("0.3.1", json!({})),
    );
    let result = json_of(&out);
    assert_eq!(result["cniVersion"], "0.3.1");
    assert_eq!(result["ips"][0]["version"], "4");
    assert_eq!(result["ips"][1]["version"], "6");
    assert!(result["interfaces"][1].get("mtu").is_none());
}

#[test]
fn add_of_an_existing_interface_fails_and_keeps_what_was_there() {
    let mut f = Fixture::new("exists");
    let conf = f.conf("1.0.0", json!({}));
    assert!(f.call(&vars("ADD", "c1", "/run/netns/pod1"), &conf).success);
    let again = f.call(&vars("ADD", "c2", "/run/netns/pod1"), &conf);
    assert_eq!(error_code(&again), 102);
    assert_eq!(
        f.allocations(),
        2,
        "the first pod keeps its addresses, the second got none"
    );
    assert_eq!(f.net.wired.len(), 1);
}

#[test]
fn add_in_a_missing_namespace_is_code_3_and_allocates_nothing() {
    let mut f = Fixture::new("nons");
    let out = f.call(
        &vars("ADD", "c1", "/run/netns/gone"),
        &f.conf("1.1.0", json!({})),
    );
    assert_eq!(error_code(&out), 3);
    assert_eq!(f.allocations(), 0);
}

#[test]
fn a_failed_wire_releases_the_addresses_and_unwires() {
    let mut f = Fixture::new("wirefail");
    f.net.fail_wire = Some("EPERM".into());
    let out = f.call(
        &vars("ADD", "c1", "/run/netns/pod1"),
        &f.conf("1.1.0", json!({})),
    );
    assert_eq!(error_code(&out), 103);
    assert!(json_of(&out)["details"].as_str().unwrap().contains("EPERM"));
    assert_eq!(f.allocations(), 0);
    assert!(
        f.net.calls.iter().any(|c| c.starts_with("unwire")),
        "{:?}",
        f.net.calls
    );
}

#[test]
fn add_hands_on_a_prev_result_with_shifted_interface_indices() {
    let mut f = Fixture::new("prev");
    let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"x"}],"ips":[{"address":"192.0.2.9/24","interface":0}],"routes":[],"dns":{}});
    let out = f.call(
        &vars("ADD", "c1", "/run/netns/pod1"),
        &f.conf("1.0.0", json!({"prevResult": prev})),
    );
    let result = json_of(&out);
    assert_eq!(result["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(result["ips"][0]["address"], "192.0.2.9/24");
    assert_eq!(result["ips"][1]["interface"], 2);
}

#[test]
fn add_without_pod_cidrs_says_the_agent_has_not_written_them() {
    let mut f = Fixture::new("nocidr");
    let out = f.call(
        &vars("ADD", "c1", "/run/netns/pod1"),
        &f.conf("1.1.0", json!({"podCIDRs": []})),
    );
    assert_eq!(error_code(&out), 7);
    assert!(json_of(&out)["details"]
        .as_str()
        .unwrap()
        .contains("podCIDRs"));
}

#[test]
fn del_is_idempotent_and_works_without_a_namespace() {
    let mut f = Fixture::new("del");
    let conf = f.conf("1.1.0", json!({}));
    assert!(f.call(&vars("ADD", "c1", "/run/netns/pod1"), &conf).success);
    let mut del = vars("DEL", "c1", "/run/netns/pod1");
    del.retain(|(k, _)| *k != "CNI_NETNS");
    for _ in 0..2 {
        let out = f.call(&del, &conf);
        assert!(out.success, "{}", out.stdout);
        assert!(out.stdout.is_empty());
    }
    assert_eq!(f.allocations(), 0);
    assert!(f.net.wired.is_empty());
}

#[test]
fn del_keeps_going_after_an_error_and_reports_it() {
    let mut f = Fixture::new("delerr");
    let conf = f.conf("1.1.0", json!({}));
    assert!(f.call(&vars("ADD", "c1", "/run/netns/pod1"), &conf).success);
    f.net.fail_unwire = Some("device busy".into());
    let out = f.call(&vars("DEL", "c1", "/run/netns/pod1"), &conf);
    assert_eq!(error_code(&out), 103);
    assert_eq!(
        f.allocations(),
        0,
        "the addresses are released despite the link error"
    );
}

#[test]
fn check_passes_after_add_and_names_every_difference() {
    let mut f = Fixture::new("check");
    let conf = f.conf("1.0.0", json!({}));
    let add = f.call(&vars("ADD", "c1", "/run/netns/pod1"), &conf);
    let prev = json_of(&add);
    let with_prev = f.conf("1.0.0", json!({"prevResult": prev}));
    let out = f.call(&vars("CHECK", "c1", "/run/netns/pod1"), &with_prev);
    assert!(out.success, "{}", out.stdout);
    // The configuration now asks for another MTU than the pod has.
    let other_mtu = f.conf("1.0.0", json!({"prevResult": json_of(&add), "mtu": 1300}));
    let out = f.call(&vars("CHECK", "c1", "/run/netns/pod1"), &other_mtu);
    assert_eq!(error_code(&out), 104);
    assert!(json_of(&out)["details"]
        .as_str()
        .unwrap()
        .contains("MTU 1400"));
    // A released address is a CHECK failure too.
    f.call(&vars("DEL", "c1", "/run/netns/pod1"), &conf);
    let out = f.call(&vars("CHECK", "c1", "/run/netns/pod1"), &with_prev);
    assert_eq!(error_code(&out), 104);
}

#[test]
fn check_needs_a_prev_result_and_version_0_4_0() {
    let mut f = Fixture::new("checkreq");
    let out = f.call(
        &vars("CHECK", "c1", "/run/netns/pod1"),
        &f.conf("1.0.0", json!({})),
    );
    assert_eq!(error_code(&out), 6);
    let out = f.call(
        &vars("CHECK", "c1", "/run/netns/pod1"),
        &f.conf("0.3.1", json!({"prevResult": {}})),
    );
    assert_eq!(error_code(&out), 1);
}

#[test]
fn status_is_ready_only_with_pod_cidrs_and_the_mesh_interface_up() {
    let mut f = Fixture::new("status");
    let status = [("CNI_COMMAND", "STATUS")];
    let out = f.call(
        &status,
        &f.conf("1.1.0", json!({"podCIDRs": [], "meshInterface": "trellis"})),
    );
    assert_eq!(error_code(&out), 50);
    assert!(json_of(&out)["details"]
        .as_str()
        .unwrap()
        .contains("podCIDRs"));
    let conf = f.conf("1.1.0", json!({"meshInterface": "trellis"}));
    let out = f.call(&status, &conf);
    assert_eq!(error_code(&out), 50);
    assert!(json_of(&out)["details"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    f.net
        .host_links
        .push(("trellis".into(), String::new(), false));
    assert!(json_of(&f.call(&status, &conf))["details"]
        .as_str()
        .unwrap()
        .contains("down"));
    f.net.host_links[0].2 = true;
    f.net.no_carrier.push("trellis".into());
    let details = json_of(&f.call(&status, &conf))["details"].clone();
    assert!(
        details.as_str().unwrap().contains("no carrier"),
        "a TUN without its device process: {details}"
    );
    f.net.no_carrier.clear();
    let out = f.call(&status, &conf);
    assert!(out.success, "{}", out.stdout);
    let out = f.call(&status, &f.conf("1.0.0", json!({})));
    assert_eq!(error_code(&out), 1, "STATUS is a 1.1.0 verb");
}

#[test]
fn status_reports_an_exhausted_range() {
    let mut f = Fixture::new("statusfull");
    // A /30 has one address for pods: .0 is the network, .1 the node's mesh
    // address, .3 the broadcast address.
    let conf = f.conf("1.1.0", json!({"podCIDRs": ["10.9.0.0/30"]}));
    assert!(f.call(&[("CNI_COMMAND", "STATUS")], &conf).success);
    assert!(f.call(&vars("ADD", "c1", "/run/netns/pod1"), &conf).success);
    let out = f.call(&[("CNI_COMMAND", "STATUS")], &conf);
    assert_eq!(error_code(&out), 50);
    assert!(json_of(&out)["details"]
        .as_str()
        .unwrap()
        .contains("exhausted"));
}

#[test]
fn gc_releases_and_unlinks_everything_not_valid() {
    let mut f = Fixture::new("gc");
    let conf = f.conf("1.1.0", json!({}));
    assert!(f.call(&vars("ADD", "c1", "/run/netns/pod1"), &conf).success);
    assert!(f.call(&vars("ADD", "c2", "/run/netns/pod2"), &conf).success);
    f.net.host_links.push((
        "tr0000stale".into(),
        podnet::link_alias("trellis", "old", "eth0"),
        true,
    ));
    f.net
        .host_links
        .push(("other0".into(), "someone else's".into(), true));
    let gc_vars = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")];
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let gc = f.conf(
            "1.1.0",
            json!({ key: [{"containerID": "c2", "ifname": "eth0"}] }),
        );
        let out = f.call(&gc_vars, &gc);
        assert!(out.success, "{}", out.stdout);
    }
    assert_eq!(f.allocations(), 2, "only c2's two addresses remain");
    let names: Vec<&str> = f.net.wired.iter().map(|w| w.host_ifname.as_str()).collect();
    assert_eq!(names, vec![podnet::host_ifname("c2", "eth0")]);
    assert!(
        f.net.host_links.iter().any(|(n, _, _)| n == "other0"),
        "links that are not ours stay"
    );
    assert!(!f.net.host_links.iter().any(|(n, _, _)| n == "tr0000stale"));
    // Without a list (libcni's GC with no arguments) nothing is valid.
    let out = f.call(&gc_vars, &conf);
    assert!(out.success, "{}", out.stdout);
    assert_eq!(f.allocations(), 0);
    assert!(f.net.wired.is_empty());
}

#[test]
fn version_answers_without_touching_the_kernel() {
    let map: BTreeMap<String, String> = [("CNI_COMMAND".to_string(), "VERSION".to_string())].into();
    for stdin in [&b""[..], br#"{"cniVersion":"0.4.0"}"#, b"garbage"] {
        let out = run(
            |k| map.get(k).cloned(),
            stdin,
            || -> Result<FakePodNetwork, _> { panic!("VERSION must not open netlink") },
        );
        assert!(out.success);
        let v = json_of(&out);
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}

#[test]
fn errors_are_written_in_the_configurations_version() {
    let mut f = Fixture::new("errver");
    let out = f.call(
        &vars("ADD", "bad/id", "/run/netns/pod1"),
        &f.conf("0.4.0", json!({})),
    );
    assert_eq!(error_code(&out), 4);
    assert_eq!(json_of(&out)["cniVersion"], "0.4.0");
    assert!(json_of(&out)["details"]
        .as_str()
        .unwrap()
        .contains("CNI_CONTAINERID"));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// What the runtime hands the plugin on stdin.
    #[derive(Debug, Clone)]
    enum Stdin {
        /// Any bytes.
        Bytes(Vec<u8>),
        /// A configuration; its data dir, unless a field replaced it, is
        /// the case's own temp dir.
        Conf(Value),
    }

    impl Stdin {
        fn to_bytes(&self, data_dir: &Path) -> Vec<u8> {
            match self {
                Stdin::Bytes(bytes) => bytes.clone(),
                Stdin::Conf(conf) => {
                    let mut conf = conf.clone();
                    conf.as_object_mut()
                        .expect("a configuration is an object")
                        .entry("dataDir")
                        .or_insert_with(|| json!(data_dir));
                    serde_json::to_vec(&conf).unwrap()
                }
            }
        }
    }

    fn command() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("ADD".to_string())),
            Just(Some("DEL".to_string())),
            Just(Some("CHECK".to_string())),
            Just(Some("STATUS".to_string())),
            Just(Some("GC".to_string())),
            Just(Some("VERSION".to_string())),
            ".{0,12}".prop_map(Some),
        ]
    }

    fn stdin() -> impl Strategy<Value = Stdin> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Stdin::Bytes),
            // Valid configurations with fields replaced by arbitrary JSON.
            (
                ".{0,8}",
                prop_oneof![
                    Just(json!(null)),
                    Just(json!(7)),
                    Just(json!("x")),
                    Just(json!([1])),
                    Just(json!({"a": 1}))
                ]
            )
                .prop_map(|(key, value)| {
                    let mut conf =
                        json!({"cniVersion": "1.1.0", "name": "n", "podCIDRs": ["10.1.0.0/24"]});
                    for k in [
                        "cniVersion",
                        "name",
                        "podCIDRs",
                        "mtu",
                        "prevResult",
                        "ipam",
                        "cni.dev/valid-attachments",
                        key.as_str(),
                    ] {
                        if key.len() % 2 == 0 || k == key {
                            conf[k] = value.clone();
                        }
                    }
                    Stdin::Conf(conf)
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Whatever the runtime hands it, the plugin answers with a result
        /// or a CNI error object on stdout: it never panics.
        #[test]
        fn any_input_gets_a_result_or_an_error_object(
            cmd in command(),
            cid in proptest::option::of(".{0,20}"),
            netns in proptest::option::of(prop_oneof![Just("/run/netns/pod1".to_string()), ".{0,20}"]),
            ifname in proptest::option::of(".{0,20}"),
            args in proptest::option::of(".{0,30}"),
            stdin in stdin(),
        ) {
            let mut map = BTreeMap::new();
            for (k, v) in [("CNI_COMMAND", cmd), ("CNI_CONTAINERID", cid), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname), ("CNI_ARGS", args), ("CNI_PATH", Some("/opt/cni/bin".into()))] {
                if let Some(v) = v {
                    map.insert(k.to_string(), v);
                }
            }
            // Each case its own store, removed when the case ends.
            let data_dir = TempDir::new().unwrap();
            let stdin = stdin.to_bytes(data_dir.path());
            let mut net = FakePodNetwork { namespaces: vec![PathBuf::from("/run/netns/pod1")], ..Default::default() };
            let out = run(|k| map.get(k).cloned(), &stdin, || Ok(&mut net));
            if out.success {
                prop_assert!(out.stdout.is_empty() || serde_json::from_str::<Value>(&out.stdout).is_ok());
            } else {
                let err: Value = serde_json::from_str(&out.stdout).expect("an error object");
                prop_assert!(err["code"].as_u64().is_some());
                prop_assert!(!err["details"].as_str().unwrap_or_default().is_empty());
            }
        }
    }
}
