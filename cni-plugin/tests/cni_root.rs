//! Root tests of trellis-cni in throwaway namespaces: the real binary, the
//! real CNI runtime tool (cnitool, i.e. libcni) and reference plugins.
//! Ignored when not root; `make test` runs them as root.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{json, ping, Node, NODE_ADDR};
use serde_json::json;
use trellis_e2e::{cmd, netns};

fn addr_of(result: &serde_json::Value, v4: bool) -> String {
    trellis_e2e::pod::result_address(result, v4).expect("an address of that family")
}

#[test]
#[ignore = "needs root"]
fn cnitool_drives_a_chain_with_portmap_bandwidth_and_tuning() {
    let mut node = Node::new("chain");
    node.write_conflist(
        "1.1.0",
        &[
            json!({"type": "portmap", "backend": "nftables", "capabilities": {"portMappings": true}}),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}),
        ],
    );
    let caps = r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"bandwidth":{"ingressRate":100000000,"ingressBurst":1000000,"egressRate":100000000,"egressBurst":1000000}}"#;
    let p1 = node.pod("p1");
    let p2 = node.pod("p2");
    let add1 = node.cnitool("add", &p1, Some(caps));
    assert!(
        add1.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&add1.stdout),
        String::from_utf8_lossy(&add1.stderr)
    );
    let r1 = json(&add1);
    let add2 = node.cnitool("add", &p2, None);
    assert!(
        add2.status.success(),
        "{}",
        String::from_utf8_lossy(&add2.stderr)
    );
    let r2 = json(&add2);
    let (ns1, ns2) = (node.pod_netns("p1"), node.pod_netns("p2"));

    // Two pods reach each other and the node, over IPv4 and IPv6.
    assert!(ping(&ns1, &addr_of(&r2, true)), "pod to pod, IPv4");
    assert!(ping(&ns1, &addr_of(&r2, false)), "pod to pod, IPv6");
    assert!(ping(&ns2, NODE_ADDR), "pod to node");
    assert!(ping(&node.name, &addr_of(&r1, true)), "node to pod");

    // The pod's interface: MTU from the config, IPv6 address not stalled in
    // duplicate address detection, and the tuning plugin ran after us.
    let link = cmd::ip(Some(&ns1), &["-d", "link", "show", "eth0"]).unwrap();
    assert!(link.contains("mtu 1400"), "{link}");
    let v6 = cmd::ip(Some(&ns1), &["-6", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(!v6.contains("tentative"), "{v6}");
    let arp_notify =
        cmd::in_netns(&ns1, "sysctl", &["-n", "net.ipv4.conf.eth0.arp_notify"]).unwrap();
    assert_eq!(
        arp_notify.trim(),
        "1",
        "tuning got our prevResult and found eth0"
    );

    // Bandwidth shaped the host end found in our result.
    let host_if = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    let qdisc = cmd::ip(
        None,
        &[
            "netns", "exec", &node.name, "tc", "qdisc", "show", "dev", &host_if,
        ],
    )
    .unwrap();
    assert!(qdisc.contains("tbf"), "{qdisc}");

    // The port mapping reaches a server in pod 1, from pod 2 and from the node.
    let listener = netns::run_in(&ns1, || TcpListener::bind("0.0.0.0:80").unwrap()).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            std::io::Write::write_all(&mut conn, b"hello from p1").unwrap();
        }
    });
    for from in [ns2.clone(), node.name.clone()] {
        let got = netns::run_in(&from, || {
            let mut conn = TcpStream::connect_timeout(
                &format!("{NODE_ADDR}:8080").parse().unwrap(),
                Duration::from_secs(3),
            )
            .unwrap();
            let mut text = String::new();
            conn.read_to_string(&mut text).unwrap();
            text
        })
        .unwrap();
        assert_eq!(got, "hello from p1", "through the port mapping from {from}");
    }
    server.join().unwrap();

    // CHECK and STATUS pass; STATUS fails with 50 when the mesh is down,
    // and when it is a TUN no device process is attached to (trellis-wg's
    // persistent interface between one process and the next).
    let check = node.cnitool("check", &p1, Some(caps));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let status = node.cnitool("status", &p1, None);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    cmd::ip(Some(&node.name), &["link", "set", "trellis", "down"]).unwrap();
    let status = node.cnitool("status", &p1, None);
    assert!(!status.status.success());
    let msg = String::from_utf8_lossy(&status.stderr);
    assert!(msg.contains("trellis is down"), "{msg}");
    for args in [
        &["link", "delete", "trellis"][..],
        &[
            "tuntap",
            "add",
            "dev",
            "trellis",
            "mode",
            "tun",
            "multi_queue",
        ],
        &["link", "set", "trellis", "up"],
    ] {
        cmd::ip(Some(&node.name), args).unwrap();
    }
    let status = node.cnitool("status", &p1, None);
    assert!(!status.status.success());
    let msg = String::from_utf8_lossy(&status.stderr);
    assert!(msg.contains("trellis has no carrier"), "{msg}");
    cmd::ip(Some(&node.name), &["link", "delete", "trellis"]).unwrap();
    for args in common::MESH_INTERFACE {
        cmd::ip(Some(&node.name), args).unwrap();
    }

    // DEL, twice: addresses released, host link gone.
    assert_eq!(node.allocations().len(), 4);
    for _ in 0..2 {
        let del = node.cnitool("del", &p1, Some(caps));
        assert!(
            del.status.success(),
            "{}",
            String::from_utf8_lossy(&del.stderr)
        );
    }
    assert_eq!(node.allocations().len(), 2);
    assert!(!node.host_links().contains(&host_if));

    // GC through libcni with no valid attachment: p2 goes too.
    let gc = node.cnitool("gc", &p2, None);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(node.allocations().is_empty());
    assert!(node.host_links().is_empty(), "{:?}", node.host_links());
}

fn add_env<'a>(node_path: &'a str, cid: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", node_path),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=x",
        ),
    ]
}

#[test]
#[ignore = "needs root"]
fn sixty_four_concurrent_adds_and_dels() {
    let mut node = Node::new("conc");
    let conf = serde_json::to_vec(&node.plugin_conf("1.1.0")).unwrap();
    let path = node.cni_path();
    let pods: Vec<String> = (0..64)
        .map(|i| node.pod(&format!("c{i}")).display().to_string())
        .collect();
    let spawn_all = |command: &str| {
        let children: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let cid = format!("conc{i}");
                let mut env = add_env(&path, &cid, ns);
                env[0].1 = command;
                let mut c = node.plugin_command(&env);
                c.stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                let mut child = c.spawn().unwrap();
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), &conf).unwrap();
                child
            })
            .collect();
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    };
    let outputs = spawn_all("ADD");
    let mut v4 = std::collections::BTreeSet::new();
    for out in &outputs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        v4.insert(addr_of(&json(out), true));
    }
    assert_eq!(v4.len(), 64, "64 distinct IPv4 addresses");
    assert_eq!(node.allocations().len(), 128);
    assert_eq!(node.host_links().len(), 64);
    for out in spawn_all("DEL") {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_links().is_empty(), "{:?}", node.host_links());
}

#[test]
#[ignore = "needs root"]
fn adds_killed_at_random_points_leak_nothing_after_gc() {
    let mut node = Node::new("kill");
    let conf = serde_json::to_vec(&node.plugin_conf("1.1.0")).unwrap();
    let path = node.cni_path();
    let mut survivors = Vec::new();
    let mut killed = 0;
    for i in 0..40 {
        let ns = node.pod(&format!("k{i}")).display().to_string();
        let cid = format!("kill{i}");
        let env = add_env(&path, &cid, &ns);
        let mut c = node.plugin_command(&env);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &conf).unwrap();
        // A pseudo-random delay between 0 and ~6 ms, from the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        std::thread::sleep(Duration::from_micros(u64::from(nanos % 6000)));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            survivors.push(cid);
        } else {
            killed += 1;
        }
    }
    assert!(
        killed > 0,
        "no ADD was killed mid-way: the test proved nothing"
    );
    let valid: Vec<serde_json::Value> = survivors
        .iter()
        .map(|c| json!({"containerID": c, "ifname": "eth0"}))
        .collect();
    let mut gc_conf = node.plugin_conf("1.1.0");
    gc_conf["cni.dev/valid-attachments"] = json!(valid);
    let gc = node.plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", &path)],
        &serde_json::to_vec(&gc_conf).unwrap(),
    );
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stdout)
    );
    assert_eq!(
        node.allocations().len(),
        survivors.len() * 2,
        "only the completed ADDs keep addresses ({killed} killed)"
    );
    let mut links = node.host_links();
    links.sort();
    let mut expected: Vec<String> = survivors
        .iter()
        .map(|c| trellis_cni::podnet::host_ifname(c, "eth0"))
        .collect();
    expected.sort();
    assert_eq!(links, expected);
}

#[test]
#[ignore = "needs root"]
fn bad_inputs_get_the_right_code_and_lose_nothing() {
    let mut node = Node::new("bad");
    let path = node.cni_path();
    let good = serde_json::to_vec(&node.plugin_conf("1.1.0")).unwrap();
    let keeper = node.pod("keeper").display().to_string();
    let kept = node.plugin(&add_env(&path, "keeper", &keeper), &good);
    assert!(kept.status.success());
    let keeper_ip = addr_of(&json(&kept), true);
    let before = node.allocations();

    let spare = node.pod("spare").display().to_string();
    let long_if = "a-very-long-name";
    let mut bad_version = node.plugin_conf("1.1.0");
    bad_version["cniVersion"] = json!("9.9.9");
    let mut garbage_prev = node.plugin_conf("1.1.0");
    garbage_prev["prevResult"] = json!({"ips": "not a list"});
    let with = |over: &[(&'static str, &str)]| {
        let mut env: Vec<(&str, String)> = add_env(&path, "spare", &spare)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        for (k, v) in over {
            env.retain(|(key, _)| key != k);
            if *v != "<unset>" {
                env.push((*k, v.to_string()));
            }
        }
        env
    };
    // (what, environment, stdin, expected code, words the details must hold)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<u8>, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            with(&[]),
            b"{\"cniVersion\":".to_vec(),
            6,
            "network configuration",
        ),
        ("empty stdin", with(&[]), Vec::new(), 6, "empty"),
        (
            "no CNI_COMMAND",
            with(&[("CNI_COMMAND", "<unset>")]),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "bad CNI_COMMAND",
            with(&[("CNI_COMMAND", "EXPLODE")]),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "no CNI_CONTAINERID",
            with(&[("CNI_CONTAINERID", "<unset>")]),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "no CNI_NETNS",
            with(&[("CNI_NETNS", "<unset>")]),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "no CNI_IFNAME",
            with(&[("CNI_IFNAME", "<unset>")]),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname too long",
            with(&[("CNI_IFNAME", long_if)]),
            good.clone(),
            4,
            "longer than 15",
        ),
        (
            "unknown cniVersion",
            with(&[]),
            serde_json::to_vec(&bad_version).unwrap(),
            1,
            "9.9.9",
        ),
        (
            "missing netns",
            with(&[("CNI_NETNS", "/run/netns/tc-bad-does-not-exist")]),
            good.clone(),
            3,
            "does not exist",
        ),
        (
            "garbage prevResult",
            with(&[]),
            serde_json::to_vec(&garbage_prev).unwrap(),
            6,
            "prevResult",
        ),
        (
            "existing interface",
            with(&[("CNI_NETNS", &keeper), ("CNI_CONTAINERID", "other")]),
            good.clone(),
            102,
            "already exists",
        ),
    ];
    for (what, env, stdin, code, needle) in cases {
        let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = node.plugin(&env_refs, &stdin);
        assert!(!out.status.success(), "{what}: succeeded");
        assert!(
            out.stderr.is_empty() || !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "{what}: panicked"
        );
        let err = json(&out);
        assert_eq!(err["code"], code, "{what}: {err}");
        assert!(
            err["details"].as_str().unwrap().contains(needle),
            "{what}: {err}"
        );
        assert!(!err["msg"].as_str().unwrap().is_empty());
        assert_eq!(node.allocations(), before, "{what}: the store changed");
    }

    // An exhausted range: a /30 has one address for pods.
    let mut small = node.plugin_conf("1.1.0");
    small["name"] = json!("small");
    small["podCIDRs"] = json!(["10.9.0.0/30"]);
    let small = serde_json::to_vec(&small).unwrap();
    let ns = node.pod("s1").display().to_string();
    assert!(node
        .plugin(&add_env(&path, "s1", &ns), &small)
        .status
        .success());
    let ns = node.pod("s2").display().to_string();
    let out = node.plugin(&add_env(&path, "s2", &ns), &small);
    let err = json(&out);
    assert_eq!(err["code"], 101, "{err}");
    assert!(
        err["details"].as_str().unwrap().contains("10.9.0.0/30"),
        "{err}"
    );
    assert!(
        !node
            .host_links()
            .contains(&trellis_cni::podnet::host_ifname("s2", "eth0")),
        "no link left by the failed ADD"
    );

    // The pod added before every bad call still works.
    assert_eq!(
        node.allocations()
            .iter()
            .filter(|a| before.contains(a))
            .count(),
        before.len()
    );
    assert!(
        ping(&node.name, &keeper_ip),
        "the earlier pod still reachable"
    );
}

#[test]
#[ignore = "needs root"]
fn results_have_the_shape_of_each_supported_version() {
    let mut node = Node::new("shape");
    let path = node.cni_path();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let ns = node.pod(&format!("v{i}")).display().to_string();
        let conf = serde_json::to_vec(&node.plugin_conf(version)).unwrap();
        let out = node.plugin(&add_env(&path, &format!("v{i}"), &ns), &conf);
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let r = json(&out);
        assert_eq!(r["cniVersion"], *version);
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        for ip in ips {
            assert_eq!(
                ip.get("version").is_some(),
                version.starts_with("0."),
                "{version}: {ip}"
            );
            assert_eq!(ip["interface"], 1);
        }
        assert_eq!(
            r["interfaces"][1].get("mtu").is_some(),
            *version == "1.1.0",
            "{version}"
        );
        assert_eq!(r["interfaces"][1]["sandbox"], ns);
        assert!(r["routes"].is_array() && r["dns"].is_object());
        let version_out = node.plugin(
            &[("CNI_COMMAND", "VERSION")],
            format!(r#"{{"cniVersion":"{version}"}}"#).as_bytes(),
        );
        assert_eq!(json(&version_out)["cniVersion"], *version);
    }
}

fn details(output: &std::process::Output) -> String {
    json(output)["details"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_success(what: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The alias the kernel holds for a host link of the node.
fn alias_of(node: &Node, link: &str) -> String {
    let out = cmd::ip(Some(&node.name), &["-j", "link", "show", "dev", link]).unwrap();
    let links: serde_json::Value = serde_json::from_str(&out).unwrap();
    links[0]["ifalias"].as_str().unwrap_or_default().to_string()
}

#[test]
#[ignore = "needs root"]
fn a_long_container_id_gets_its_alias_cut_at_the_kernels_limit() {
    let mut node = Node::new("alias");
    let path = node.cni_path();
    let conf = serde_json::to_vec(&node.plugin_conf("1.1.0")).unwrap();
    let prefix = "trellis-cni:trellis:";
    let long_id = "0123456789abcdef".repeat(19);
    // 20 + 232 + 1 bytes, then a two-byte 'é' across byte 254: it goes whole.
    let straddling_id = "a".repeat(232);
    let cases = [
        (
            long_id.as_str(),
            "eth0",
            format!("{prefix}{long_id}")[..254].to_string(),
        ),
        (
            straddling_id.as_str(),
            "é0",
            format!("{prefix}{straddling_id}/"),
        ),
    ];
    for (i, (cid, ifname, expected)) in cases.iter().enumerate() {
        let ns = node.pod(&format!("a{i}")).display().to_string();
        let mut env = add_env(&path, cid, &ns);
        env[3].1 = *ifname;
        let out = node.plugin(&env, &conf);
        assert_success(
            &format!(
                "ADD of a {}-byte alias",
                prefix.len() + cid.len() + 1 + ifname.len()
            ),
            &out,
        );
        let host = trellis_cni::podnet::host_ifname(cid, ifname);
        let alias = alias_of(&node, &host);
        assert_eq!(
            &alias, expected,
            "the alias is cut at 254 bytes, on a character"
        );
        assert!(cmd::ip(
            Some(&node.pod_netns(&format!("a{i}"))),
            &["link", "show", ifname]
        )
        .is_ok());
        env[0].1 = "DEL";
        assert_success("DEL", &node.plugin(&env, &conf));
        assert!(!node.host_links().contains(&host));
    }
    assert!(node.allocations().is_empty());
}

#[test]
#[ignore = "needs root"]
fn the_same_container_and_ifname_in_a_second_namespace_is_refused_while_the_first_lives() {
    let mut node = Node::new("twice");
    let path = node.cni_path();
    let conf = serde_json::to_vec(&node.plugin_conf("1.1.0")).unwrap();
    let p1 = node.pod("p1").display().to_string();
    let p2 = node.pod("p2").display().to_string();
    let (ns1, ns2) = (node.pod_netns("p1"), node.pod_netns("p2"));
    let first = node.plugin(&add_env(&path, "twice", &p1), &conf);
    assert_success("first ADD", &first);
    let first = json(&first);
    let (v4, v6) = (addr_of(&first, true), addr_of(&first, false));
    let held = node.allocations();
    let first_pod_intact = |node: &Node, what: &str| {
        let addrs = cmd::ip(Some(&ns1), &["addr", "show", "dev", "eth0"])
            .unwrap_or_else(|e| panic!("{what}: the first pod lost eth0: {e}"));
        assert!(
            addrs.contains(&v4) && addrs.contains(&v6),
            "{what}: {addrs}"
        );
        assert!(ping(&node.name, &v4), "{what}: the first pod unreachable");
        assert_eq!(node.allocations(), held, "{what}: the IPAM store changed");
        assert!(
            cmd::ip(Some(&ns2), &["link", "show", "eth0"]).is_err(),
            "{what}: the second namespace got an eth0"
        );
    };

    // Named by a bind mount, as containerd and CRI-O name pod namespaces.
    let again = node.plugin(&add_env(&path, "twice", &p2), &conf);
    assert_eq!(json(&again)["code"], 102, "{}", json(&again));
    let text = details(&again);
    assert!(text.contains(&p1) && text.contains("DEL"), "{text}");
    first_pod_intact(&node, "bind mount");

    // Named only by a process in it, as /proc/PID/ns/net (cri-dockerd).
    let mut holder = trellis_e2e::netns::Placement::netns(&ns1)
        .command("sleep")
        .unwrap()
        .arg("120")
        .spawn()
        .unwrap();
    netns::delete(&ns1).unwrap();
    let again = node.plugin(&add_env(&path, "twice", &p2), &conf);
    let text = details(&again);
    let by_pid = format!("/proc/{}/ns/net", holder.id());
    let named = json(&again)["code"] == 102 && text.contains(&by_pid);
    let still_there = cmd::ip(
        Some(&node.name),
        &[
            "link",
            "show",
            &trellis_cni::podnet::host_ifname("twice", "eth0"),
        ],
    )
    .is_ok();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(named, "{}", json(&again));
    assert!(still_there, "the first pod's veth was deleted");
    assert!(
        cmd::ip(Some(&ns2), &["link", "show", "eth0"]).is_err(),
        "the second namespace got an eth0"
    );

    // Held by nothing that names it (an open file only): the host end is
    // stale, and ADD replaces it.
    let p3 = node.pod("p3").display().to_string();
    let p4 = node.pod("p4").display().to_string();
    assert_success(
        "ADD to p3",
        &node.plugin(&add_env(&path, "stale", &p3), &conf),
    );
    let pinned = std::fs::File::open(&p3).unwrap();
    netns::delete(&node.pod_netns("p3")).unwrap();
    let stale = trellis_cni::podnet::host_ifname("stale", "eth0");
    let stale_before = node.host_links().contains(&stale);
    let out = node.plugin(&add_env(&path, "stale", &p4), &conf);
    drop(pinned);
    assert!(stale_before, "the host end went with the unnamed namespace");
    assert_success("ADD over a stale host end", &out);
    assert!(cmd::ip(Some(&node.pod_netns("p4")), &["link", "show", "eth0"]).is_ok());
    assert_eq!(node.host_links().iter().filter(|l| **l == stale).count(), 1);
}

#[test]
#[ignore = "needs root"]
fn the_plugins_own_namespace_is_refused_as_cni_netns() {
    let node = Node::new("own");
    let path = node.cni_path();
    let conf = serde_json::to_vec(&node.plugin_conf("1.1.0")).unwrap();
    let mut holder = node
        .placement
        .command("sleep")
        .unwrap()
        .arg("120")
        .spawn()
        .unwrap();
    let paths = [
        "/proc/self/ns/net".to_string(),
        netns::netns_path(&node.name).display().to_string(),
        format!("/proc/{}/ns/net", holder.id()),
    ];
    let mut failures = Vec::new();
    for own in &paths {
        let add = node.plugin(&add_env(&path, "own", own), &conf);
        if json(&add)["code"] != 4 || !details(&add).contains("CNI_NETNS") {
            failures.push(format!("ADD {own}: {}", json(&add)));
        }
        let mut check_conf = node.plugin_conf("1.1.0");
        check_conf["prevResult"] =
            json!({"cniVersion": "1.1.0", "interfaces": [], "ips": [], "routes": [], "dns": {}});
        let mut env = add_env(&path, "own", own);
        env[0].1 = "CHECK";
        let check = node.plugin(&env, &serde_json::to_vec(&check_conf).unwrap());
        if json(&check)["code"] != 4 {
            failures.push(format!("CHECK {own}: {}", json(&check)));
        }
    }
    // DEL cleans up what is ours but leaves the node's own interfaces.
    let mut env = add_env(&path, "own", "/proc/self/ns/net");
    env[0].1 = "DEL";
    env[3].1 = "node0";
    let del = node.plugin(&env, &conf);
    let node_addrs = cmd::ip(Some(&node.name), &["addr"]).unwrap();
    let node_routes = cmd::ip(Some(&node.name), &["route"]).unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    assert_success("DEL", &del);
    assert!(
        node_addrs.contains("node0"),
        "DEL deleted the node's node0: {node_addrs}"
    );
    assert!(
        !node_addrs.contains("10.244.7."),
        "pod addresses on the node: {node_addrs}"
    );
    assert!(
        !node_routes.contains("169.254.1.1"),
        "a pod default route on the node: {node_routes}"
    );
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
}

/// A node moving from another network plugin: a pod of that network holds
/// 10.244.7.2 (its host route on a veth of its own). ADD skips it and the
/// next pod gets the next address, its route added, the other pod's route
/// untouched.
#[test]
#[ignore = "needs root"]
fn add_skips_an_address_a_pod_of_another_network_holds() {
    let node = Node::new("foreign");
    for args in [
        &[
            "link", "add", "foreign0", "type", "veth", "peer", "name", "foreign1",
        ][..],
        &["link", "set", "foreign0", "up"],
        &["link", "set", "foreign1", "up"],
        &["route", "add", "10.244.7.2/32", "dev", "foreign0"],
        &["route", "add", "fd00:10:244:7::2/128", "dev", "foreign0"],
    ] {
        cmd::ip(Some(&node.name), args).unwrap();
    }
    let path = node.cni_path();
    let conf = serde_json::to_vec(&node.plugin_conf("1.1.0")).unwrap();
    let mut node = node;
    let p1 = node.pod("p1").display().to_string();
    let add = node.plugin(&add_env(&path, "foreign", &p1), &conf);
    assert_success("ADD beside a foreign pod", &add);
    let result = json(&add);
    assert_eq!(addr_of(&result, true), "10.244.7.3");
    assert_eq!(addr_of(&result, false), "fd00:10:244:7::3");
    let routes = cmd::ip(Some(&node.name), &["route", "show", "10.244.7.2/32"]).unwrap();
    assert!(
        routes.contains("dev foreign0"),
        "the foreign pod's route: {routes}"
    );
    assert!(ping(&node.name, "10.244.7.3"), "node to the new pod");
}
