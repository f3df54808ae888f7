//! Memory per peer of each userspace device: the device alone in a network
//! namespace, configured with `wg setconf` with N peers (each its own key,
//! endpoint and /32), then one datagram routed to every peer (each starts
//! a handshake and holds the datagram while it waits for an answer that
//! never comes). The figure is (RSS with N peers − RSS with none) / N,
//! each N in a fresh process, read from /proc after the device settles.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use trellis_e2e::bench::rss_kib;
use trellis_e2e::mesh::{wait_for, workspace_binary};
use trellis_e2e::{cmd, netns, tools};

const NETNS: &str = "bmem";
const INTERFACE: &str = "bmem0";
const COUNTS: [usize; 2] = [1000, 5000];

struct Row {
    name: String,
    empty_kib: u64,
    /// (peers, RSS KiB)
    with: Vec<(usize, u64)>,
}

/// A key `wg` takes (any 32 bytes make a public key), distinct per `i`.
fn key(i: usize, salt: u8) -> String {
    use base64::Engine;
    let mut bytes = [salt; 32];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn config(peers: usize) -> String {
    let mut c = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51999\n",
        key(0, 7)
    );
    for i in 0..peers {
        let (a, b) = (i / 250, i % 250 + 1);
        let _ = write!(
            c,
            "\n[Peer]\nPublicKey = {}\nEndpoint = 198.18.{a}.{b}:51820\nAllowedIPs = 10.201.{a}.{b}/32\n",
            key(i, 9)
        );
    }
    c
}

/// Runs `ip [-n NETNS] args...`; a failure ends the bench.
fn ip(netns: Option<&str>, args: &[&str]) {
    if let Err(e) = cmd::ip(netns, args) {
        panic!("{e}");
    }
}

/// Starts `program` as the device, configures `peers` peers, sends each
/// one datagram, and returns the device's RSS.
fn measure(program: &Path, args: &[&str], peers: usize) -> u64 {
    netns::delete(NETNS).expect("remove an old namespace");
    netns::create(NETNS).expect("create the namespace");
    let socket = PathBuf::from(format!("/var/run/wireguard/{INTERFACE}.sock"));
    let mut device: Child = Command::new("ip")
        .args(["netns", "exec", NETNS])
        .arg(program)
        .args(args)
        .arg(INTERFACE)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the device");
    wait_for(
        Duration::from_secs(20),
        || socket.exists(),
        || format!("{} made no UAPI socket", program.display()),
    )
    .unwrap();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), config(peers)).expect("write config");
    let path = file.path().to_str().unwrap();
    cmd::in_netns(NETNS, "wg", &["setconf", INTERFACE, path]).expect("wg setconf");
    ip(
        Some(NETNS),
        &["addr", "add", "10.200.0.1/16", "dev", INTERFACE],
    );
    ip(Some(NETNS), &["link", "set", INTERFACE, "up"]);
    ip(
        Some(NETNS),
        &["route", "add", "10.201.0.0/16", "dev", INTERFACE],
    );
    if peers > 0 {
        // bash writes to /dev/udp itself: one datagram per peer, no process each.
        let script = format!(
            "for ((i=0; i<{peers}; i++)); do echo x 2>/dev/null > /dev/udp/10.201.$((i/250)).$((i%250+1))/9; done"
        );
        cmd::in_netns(NETNS, "bash", &["-c", &script]).expect("datagrams to the peers");
    }
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(device.id() as i32).expect("the device's VmRSS");
    let listed = cmd::in_netns(NETNS, "wg", &["show", INTERFACE, "peers"]).expect("wg show");
    assert_eq!(
        listed.lines().count(),
        peers,
        "{}: peers listed",
        program.display()
    );
    let _ = device.kill();
    let _ = device.wait();
    let _ = netns::delete(NETNS);
    let _ = std::fs::remove_file(&socket);
    rss
}

pub(crate) fn run(static_dir: &Path) -> String {
    let tools = tools::Tools::locate().expect("tools: run `make tools`");
    let current = tools::pinned("WIREGUARD_GO_VERSION");
    let glibc = workspace_binary("trellis-wg").expect("trellis-wg built");
    let devices: Vec<(String, PathBuf, Vec<&str>)> = vec![
        (
            "trellis-wg, the image's static musl build".into(),
            static_dir.join("trellis-wg"),
            vec![],
        ),
        ("trellis-wg, glibc release build".into(), glibc, vec![]),
        (
            format!("wireguard-go {current} (reference)"),
            tools.wireguard_go().expect("current wireguard-go"),
            vec!["-f"],
        ),
        (
            "wireguard-go 0.0.20220316 (Debian)".into(),
            "wireguard-go".into(),
            vec!["-f"],
        ),
    ];
    eprintln!(
        "peers: {} devices, each empty and with {COUNTS:?} peers",
        devices.len()
    );
    let mut rows = Vec::new();
    for (name, program, args) in devices {
        let empty_kib = measure(&program, &args, 0);
        let mut with = Vec::new();
        for n in COUNTS {
            with.push((n, measure(&program, &args, n)));
        }
        eprintln!("  {name}: empty {empty_kib} KiB, with peers {with:?}");
        rows.push(Row {
            name,
            empty_kib,
            with,
        });
    }
    table(&rows)
}

fn per_peer(row: &Row, i: usize) -> f64 {
    let (n, kib) = row.with[i];
    (kib.saturating_sub(row.empty_kib)) as f64 / n as f64
}

fn table(rows: &[Row]) -> String {
    let reference = &rows[2];
    let mut t = format!(
        "Each device alone in a network namespace, configured by `wg setconf` with N peers (own key, endpoint, /32), then one datagram routed to each peer (each starts a handshake that is never answered and holds the datagram); RSS from /proc 3 s later, a fresh process for each N. Per peer: (RSS with N − RSS empty) / N. The reference is current wireguard-go:\n\n| device | empty MiB | {} peers MiB | KiB per peer | vs reference | {} peers MiB | KiB per peer | vs reference |\n|---|---|---|---|---|---|---|---|\n",
        COUNTS[0], COUNTS[1]
    );
    for r in rows {
        let _ = write!(t, "| {} | {:.1} |", r.name, r.empty_kib as f64 / 1024.0);
        for i in 0..COUNTS.len() {
            let _ = write!(
                t,
                " {:.1} | {:.2} | {:.2}x |",
                r.with[i].1 as f64 / 1024.0,
                per_peer(r, i),
                per_peer(r, i) / per_peer(reference, i).max(1e-9)
            );
        }
        t.push('\n');
    }
    t.push_str("\nLower is better: a ratio below 1 is less memory per peer than the reference.\n");
    t
}
