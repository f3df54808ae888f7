//! trellis-cni run as a process, the way a container runtime runs it, for
//! what the binary decides before any kernel work: no root needed.

use std::io::Write;
use std::process::{Command, Stdio};

/// The most configuration the plugin reads (4 MiB).
const LIMIT: usize = 4 << 20;

fn add(stdin: &[u8]) -> (bool, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis-cni"))
        .env_clear()
        .envs([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "big"),
            ("CNI_NETNS", "/run/netns/trellis-cni-test-does-not-exist"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    // The plugin may stop reading early: a broken pipe is fine.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.success(), value)
}

/// A configuration of exactly `size` bytes (padded with a string field).
fn config_of_size(size: usize) -> Vec<u8> {
    let head = r#"{"cniVersion":"1.1.0","name":"trellis","podCIDRs":["10.244.1.0/24"],"dataDir":"/tmp/trellis-cni-process-test","padding":""#;
    let tail = r#""}"#;
    let mut conf = head.as_bytes().to_vec();
    conf.resize(size - tail.len(), b'x');
    conf.extend_from_slice(tail.as_bytes());
    conf
}

#[test]
fn a_configuration_over_4_mib_is_refused_and_says_the_limit() {
    let (success, err) = add(&config_of_size(5 << 20));
    assert!(!success);
    assert_eq!(err["code"], 7, "{err}");
    let details = err["details"].as_str().unwrap();
    assert!(
        details.contains("4 MiB") && details.contains(&LIMIT.to_string()),
        "{details}"
    );
    assert!(!details.contains("EOF"), "{details}");
}

#[test]
fn a_configuration_of_exactly_4_mib_is_read_whole() {
    // Read whole, it parses; the call then fails only on the missing
    // namespace (code 3), not on the size or a cut (codes 7 and 6).
    let (success, err) = add(&config_of_size(LIMIT));
    assert!(!success);
    assert_eq!(err["code"], 3, "{err}");
}
