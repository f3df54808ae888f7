//! Root test of trellis-wg: two real devices in two throwaway network
//! namespaces joined by a veth pair. One ping gives them a handshake, which
//! `get` on the socket — what `wg show` and the agent read — reports on
//! both sides; once the session has expired (REJECT_AFTER_TIME, 180 s) the
//! last handshake is still reported, as the kernel does. A peer changed in
//! place (endpoint, keepalive, allowed IPs) keeps its session and its
//! handshake, as on the kernel; a peer removed and added again is a new
//! peer with none.
//! Ignored when not root; run with `--include-ignored` (about 3 minutes).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Names of everything this test creates (namespaces, interfaces).
const PREFIX: &str = "twghs";
/// The underlay (veth) and overlay (WireGuard) subnets.
const UNDERLAY: &str = "192.168.231";
const OVERLAY: &str = "10.231.0";
/// How long the test leaves the pair idle: REJECT_AFTER_TIME (180 s) and
/// the device's timer rounding (a second) with a margin.
const SESSION_GONE: Duration = Duration::from_secs(195);
/// Test keys, hex (made with `wg genkey` / `wg pubkey`): (private, public).
const KEYS: [(&str, &str); 2] = [
    (
        "b045a8dd3280390f0b580570c1b152d767a2506e198c989ff15ed1a8f1c7967c",
        "9db3af076805c7d4d79b04ef06f3344c4494be4bb9096841dfeb8ebbc8cc744f",
    ),
    (
        "48409d1325e0786ea340f365446b729b5f55d601c8188b55efd3f4443a90245d",
        "37370e942f57c8e58b04f5bb719206f1c94c0e40fe9379161f4262df0b7d3a6b",
    ),
];
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run("ip", args)
}

fn ping(netns: &str, target: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "3", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One UAPI exchange: the answer's `key=value` lines, errno included.
fn uapi(socket: &Path, request: &str) -> Vec<(String, String)> {
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut pairs = Vec::new();
    for line in BufReader::new(&stream).lines() {
        let line = line.unwrap();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            pairs.push((k.to_string(), v.to_string()));
        }
        if line.starts_with("errno=") {
            break;
        }
    }
    pairs
}

fn set(socket: &Path, body: &str) {
    let answer = uapi(socket, &format!("set=1\n{body}\n"));
    assert_eq!(
        answer.last(),
        Some(&("errno".to_string(), "0".to_string())),
        "set {body:?}"
    );
}

/// The last handshake (seconds since the epoch) a `get` on `socket`
/// reports for the peer `public_key`.
fn handshake(socket: &Path, public_key: &str) -> Option<u64> {
    let answer = uapi(socket, "get=1\n\n");
    answer
        .iter()
        .skip_while(|(k, v)| !(k == "public_key" && v == public_key))
        .skip(1)
        .take_while(|(k, _)| k != "public_key")
        .find(|(k, _)| k == "last_handshake_time_sec")
        .and_then(|(_, v)| v.parse().ok())
        // 0: none, as the kernel reports it.
        .filter(|t| *t != 0)
}

/// A namespace with one end of the veth pair and a trellis-wg device;
/// everything goes when it is dropped.
struct Node {
    name: String,
    dir: tempfile::TempDir,
    device: Option<Child>,
}

impl Node {
    /// Node `index` (0 or 1): namespace and interface `PREFIX-a`/`-b`.
    fn new(index: usize) -> Node {
        let name = format!("{PREFIX}-{}", ["a", "b"][index]);
        remove_namespace(&name);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("trellis-wg-test-{name}-"))
            .tempdir()
            .unwrap();
        Node {
            name,
            dir,
            device: None,
        }
    }

    fn front_socket(&self) -> PathBuf {
        self.dir.path().join(format!("{}.sock", self.name))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("trellis-wg.log")).unwrap_or_default()
    }

    /// Starts trellis-wg, serving its socket in the node's directory, and
    /// waits for it.
    fn start_device(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("trellis-wg.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                env!("CARGO_BIN_EXE_trellis-wg"),
            ])
            .arg(&self.name)
            .arg("--run-dir")
            .arg(self.dir.path())
            .args(["--dataplane", "userspace"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start trellis-wg");
        // `ip netns exec` execs the program: the child is trellis-wg.
        self.device = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while UnixStream::connect(self.front_socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "trellis-wg in {} did not come up: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn remove_namespace(name: &str) {
    if Path::new("/run/netns").join(name).exists() {
        let _ = Command::new("ip").args(["netns", "delete", name]).status();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.device.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_namespace(&self.name);
    }
}

/// Two nodes, each a peer of the other, their devices up.
fn two_nodes() -> [Node; 2] {
    let mut nodes = [Node::new(0), Node::new(1)];
    let veth = [format!("{PREFIX}-va"), format!("{PREFIX}-vb")];
    ip(&[
        "link",
        "add",
        &veth[0],
        "netns",
        &nodes[0].name,
        "type",
        "veth",
        "peer",
        "name",
        &veth[1],
        "netns",
        &nodes[1].name,
    ]);
    for (i, node) in nodes.iter_mut().enumerate() {
        let ns = node.name.clone();
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{UNDERLAY}.{}/24", i + 1),
            "dev",
            &veth[i],
        ]);
        ip(&["-n", &ns, "link", "set", &veth[i], "up"]);
        node.start_device();
        let other = 1 - i;
        set(
            &node.front_socket(),
            &format!(
                "private_key={}\nlisten_port=51820\npublic_key={}\nendpoint={UNDERLAY}.{}:51820\nallowed_ip={OVERLAY}.{}/32\n",
                KEYS[i].0,
                KEYS[other].1,
                other + 1,
                other + 1
            ),
        );
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{OVERLAY}.{}/24", i + 1),
            "dev",
            &ns,
        ]);
        ip(&["-n", &ns, "link", "set", &ns, "up"]);
    }
    nodes
}

#[test]
#[ignore = "needs root"]
fn handshakes_are_reported_and_kept_by_changes_in_place() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces): run it as root"
    );
    let nodes = two_nodes();
    let [a, b] = &nodes;
    let (key_of_a, key_of_b) = (KEYS[0].1, KEYS[1].1);
    assert_eq!(handshake(&a.front_socket(), key_of_b), None, "none yet");
    assert!(
        ping(&a.name, &format!("{OVERLAY}.2")),
        "a reaches b through the tunnel: {}\n{}",
        a.log(),
        b.log()
    );
    let first = handshake(&a.front_socket(), key_of_b).expect("a handshake after the ping");
    assert!(handshake(&b.front_socket(), key_of_a).is_some_and(|t| t.abs_diff(first) <= 1));

    // Nothing more is sent: the session expires REJECT_AFTER_TIME (180 s)
    // after the handshake; the handshake is still reported after it.
    eprintln!(
        "waiting {} s for the session to expire",
        SESSION_GONE.as_secs()
    );
    std::thread::sleep(SESSION_GONE);
    for (node, peer) in [(a, key_of_b), (b, key_of_a)] {
        let kept = handshake(&node.front_socket(), peer);
        assert!(
            kept.is_some_and(|t| t.abs_diff(first) <= 1),
            "{}: the last handshake ({first}) is still reported, not {kept:?}",
            node.name
        );
    }

    // One ping later, a new handshake.
    assert!(ping(&a.name, &format!("{OVERLAY}.2")), "{}", a.log());
    let again = handshake(&a.front_socket(), key_of_b).expect("a new handshake");
    assert!(again >= first + 150, "{again} after {first}");

    // Changed in place, as the agent changes a peer whose endpoint,
    // keepalive or allowed IPs move: the session stays, traffic flows on it
    // without a new handshake.
    std::thread::sleep(Duration::from_secs(2));
    set(
        &a.front_socket(),
        &format!("public_key={key_of_b}\nendpoint={UNDERLAY}.2:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip={OVERLAY}.2/32\nallowed_ip=10.232.0.0/24\n"),
    );
    assert!(ping(&a.name, &format!("{OVERLAY}.2")), "{}", a.log());
    assert_eq!(
        handshake(&a.front_socket(), key_of_b),
        Some(again),
        "the session (and its handshake) outlived the change"
    );
    let dump = uapi(&a.front_socket(), "get=1\n\n");
    for want in [
        ("persistent_keepalive_interval", "25"),
        ("allowed_ip", "10.232.0.0/24"),
    ] {
        assert!(
            dump.iter().any(|(k, v)| (k.as_str(), v.as_str()) == want),
            "{want:?} in {dump:?}"
        );
    }

    // Removed, then added again by another request: a new peer, no
    // handshake.
    set(
        &a.front_socket(),
        &format!("public_key={key_of_b}\nremove=true\n"),
    );
    set(
        &a.front_socket(),
        &format!("public_key={key_of_b}\nallowed_ip={OVERLAY}.2/32\n"),
    );
    assert_eq!(handshake(&a.front_socket(), key_of_b), None);
}
