//! The status table from hand-made reports.

use trellis_api::status::{CandidateReport, LeftOut, LinkState, LinkedClusterReport, PeerReport};

use super::*;

pub(crate) fn report(node: &str, peers: &[(&str, PathState, Option<i64>)]) -> NodeReport {
    NodeReport {
        node: node.into(),
        public_key: "k".into(),
        listen_port: 51820,
        observed_at: 1000,
        peers: peers
            .iter()
            .map(|(name, path, hs)| PeerReport {
                name: name.to_string(),
                public_key: format!("key-{name}"),
                endpoint: Some("192.0.2.12:51820".into()),
                discovered_endpoint: (*name == "n2").then(|| "203.0.113.9:40000".into()),
                allowed_ips: vec!["10.244.2.0/24".into()],
                last_handshake: *hs,
                rx_bytes: 1536,
                tx_bytes: 3 * 1024 * 1024,
                path: *path,
                relay: (*path == PathState::Relayed).then(|| "n2".into()),
                candidates: Vec::new(),
                silent_for_s: None,
            })
            .collect(),
        left_out: vec![],
        linked_clusters: vec![],
        ..Default::default()
    }
}

#[test]
fn the_table_shows_paths_problems_and_unreachable_agents() {
    let mut n1 = report(
        "n1",
        &[
            ("n2", PathState::Direct, Some(995)),
            ("n3", PathState::Down, None),
        ],
    );
    n1.left_out.push(LeftOut {
        name: "peer/bad".into(),
        reason: "PeerInvalidSpec".into(),
        message: "spec.publicKey: x".into(),
    });
    let fetched = vec![
        ("n1".to_string(), Ok(n1)),
        ("n3".to_string(), Err("connection refused".to_string())),
    ];
    let t = table(&fetched, 1000);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("NODE") && lines[0].ends_with("PROBLEMS"),
        "{t}"
    );
    assert!(
        lines[1].contains("203.0.113.9:40000")
            && lines[1].contains("5s ago")
            && lines[1].contains("1.5KiB")
            && lines[1].contains("3.0MiB")
            && lines[1].contains("direct"),
        "{t}"
    );
    assert!(
        lines[2].contains("never")
            && lines[2].contains("down")
            && lines[2].contains("no handshake yet"),
        "{t}"
    );
    assert!(
        lines[3].contains("peer/bad")
            && lines[3].contains("left out")
            && lines[3].contains("PeerInvalidSpec: spec.publicKey"),
        "{t}"
    );
    assert!(
        lines[4].starts_with("n3") && lines[4].contains("agent unreachable: connection refused"),
        "{t}"
    );
    // Columns line up: every row has PATH at the same offset.
    let col = lines[0].find("PATH").unwrap();
    assert_eq!(&lines[1][col..col + 6], "direct", "{t}");
}

#[test]
fn idle_and_unused_pairs_are_no_problem_broken_ones_are() {
    let n1 = report(
        "n1",
        &[
            ("n2", PathState::Idle, Some(1000 - 3600)),
            ("n3", PathState::Down, Some(1000 - 3600)),
            ("n4", PathState::Unused, None),
        ],
    );
    let t = table(&[("n1".to_string(), Ok(n1))], 1000);
    let lines: Vec<&str> = t.lines().collect();
    let problems = lines[0].find("PROBLEMS").unwrap();
    let path = lines[0].find("PATH").unwrap();
    let handshake = lines[0].find("HANDSHAKE").unwrap();
    let cell = |line: &str, at: usize| line[at..].split("   ").next().unwrap().to_string();
    // The idle pair had a session an hour ago: its age shows, no problem.
    assert_eq!(cell(lines[1], handshake), "60m ago", "{t}");
    assert_eq!(cell(lines[1], path), "idle", "{t}");
    assert!(
        lines[1].len() <= problems,
        "no problem for an idle pair: {t}"
    );
    // The broken one: the same age, and a problem.
    assert_eq!(cell(lines[2], handshake), "60m ago", "{t}");
    assert_eq!(cell(lines[2], path), "down", "{t}");
    assert_eq!(
        cell(lines[2], problems),
        "handshakes fail (last one 60m ago): is the peer reachable?",
        "{t}"
    );
    // Never used: no handshake, no problem.
    assert_eq!(cell(lines[3], handshake), "never", "{t}");
    assert_eq!(cell(lines[3], path), "unused", "{t}");
    assert!(lines[3].len() <= problems, "{t}");
}

#[test]
fn figures_are_short() {
    assert_eq!(bytes(0), "0B");
    assert_eq!(bytes(1023), "1023B");
    assert_eq!(bytes(1024 * 1024 * 5 / 2), "2.5MiB");
    assert_eq!(ago(5), "5s ago");
    assert_eq!(ago(600), "10m ago");
    assert_eq!(ago(10_000), "2h ago");
}

#[test]
fn linked_clusters_get_a_table_of_their_own() {
    let mut n1 = report("n1", &[("b:n20", PathState::Direct, Some(990))]);
    n1.linked_clusters = vec![
        LinkedClusterReport {
            name: "b".into(),
            secret: "trellis-links/trellis-remote-b".into(),
            nodes: 2,
            peers: 2,
            state: LinkState::Linked,
            message: None,
            token_expires_in_s: Some(43_000),
        },
        LinkedClusterReport {
            name: "c".into(),
            secret: "trellis-links/trellis-remote-c".into(),
            nodes: 0,
            peers: 0,
            state: LinkState::Refused,
            message: Some("pod CIDR 10.244.1.0/24 of node c:n1 overlaps".into()),
            token_expires_in_s: Some(-5),
        },
    ];
    let t = table(&[("n1".to_string(), Ok(n1))], 1000);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[1].starts_with("n1") && lines[1].contains("b:n20"),
        "{t}"
    );
    assert_eq!(lines[2], "");
    assert!(
        lines[3].starts_with("NODE") && lines[3].contains("LINKED CLUSTER"),
        "{t}"
    );
    assert!(
        lines[4].contains(" b ")
            && lines[4].contains("linked")
            && lines[4].contains("valid 11h56m"),
        "{t}"
    );
    assert!(
        lines[5].contains("refused")
            && lines[5].contains("expired")
            && lines[5].contains("overlaps"),
        "{t}"
    );
}

#[test]
fn a_node_behind_nat_and_its_relayed_peers_are_shown() {
    let mut n1 = report(
        "n1",
        &[
            ("n2", PathState::Direct, Some(995)),
            ("n3", PathState::Relayed, None),
        ],
    );
    n1.behind_nat = true;
    n1.public_endpoint = Some("198.51.100.7:51820".into());
    let t = table(&[("n1".to_string(), Ok(n1))], 1000);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[1].contains("(this node)")
            && lines[1].contains("198.51.100.7:51820")
            && lines[1].contains("behind NAT"),
        "{t}"
    );
    assert!(
        lines[3].contains("n3")
            && lines[3].contains("relayed via n2")
            && lines[3].contains("no direct handshake"),
        "{t}"
    );
}

#[test]
fn a_site_mate_on_the_lan_says_lan_and_a_relayed_one_lists_the_candidates_tried() {
    let mut n1 = report(
        "n1",
        &[
            ("n2", PathState::Lan, Some(995)),
            ("n3", PathState::Relayed, None),
        ],
    );
    let candidate = |kind: &str, endpoint: &str, current| CandidateReport {
        kind: kind.into(),
        endpoint: endpoint.into(),
        current,
    };
    n1.peers[1].candidates = vec![
        candidate("lan", "172.31.0.3:51820", false),
        candidate("public", "198.51.100.7:1003", true),
    ];
    let t = table(&[("n1".to_string(), Ok(n1))], 1000);
    let lines: Vec<&str> = t.lines().collect();
    let path = lines[0].find("PATH").unwrap();
    assert_eq!(
        lines[1][path..].split_whitespace().next(),
        Some("lan"),
        "{t}"
    );
    assert!(
        lines[2].contains("relayed via n2")
            && lines[2].contains("tried lan 172.31.0.3:51820, public 198.51.100.7:1003 (now)"),
        "{t}"
    );
}

#[test]
fn a_path_that_went_silent_says_so_and_what_carries_the_traffic_now() {
    let mut n1 = report(
        "n1",
        &[
            ("n2", PathState::Relayed, Some(990)),
            ("n3", PathState::Direct, Some(990)),
        ],
    );
    n1.peers[0].silent_for_s = Some(7);
    n1.peers[1].silent_for_s = Some(12);
    let t = table(&[("n1".to_string(), Ok(n1))], 1000);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[1].contains("relayed via n2")
            && lines[1].ends_with("the direct path has answered no echo for 7s: relayed"),
        "{t}"
    );
    assert!(
        lines[2]
            .ends_with("the direct path has answered no echo for 12s: no relay reaches both ends"),
        "{t}"
    );
}
