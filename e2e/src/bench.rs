//! Helpers for the benchmark programs of `make bench`: percentiles,
//! polling with a fine grain, a timed node join, and writing a named
//! section of BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::mesh::Device;
use crate::Lab;

/// Kills trellis-wg and the agent on each of `nodes`, then starts them
/// again: each node's mesh from a fresh start (panics if one fails).
pub async fn restart_nodes(lab: &mut Lab, nodes: &[&str]) {
    for node in nodes {
        lab.stop_node(node).expect("stop the mesh on the node");
    }
    for node in nodes {
        lab.start_node(node, Device::TrellisWg)
            .await
            .expect("start the mesh on the node");
    }
}

/// `d` in milliseconds, for tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A row of a timing table, `| label | p50 ms | max ms | ratio |`: the
/// ratio is the p50 of `samples` against `reference_ms`, followed by `of`
/// (which reference, when a table has several; else empty).
pub fn timing_row(label: &str, samples: &[Duration], reference_ms: f64, of: &str) -> String {
    let p50 = ms(percentile(samples, 50.0));
    let ratio = p50 / reference_ms;
    let of = if of.is_empty() {
        String::new()
    } else {
        format!(" {of}")
    };
    format!(
        "| {label} | {p50:.0} | {:.0} | {ratio:.2}x{of} |\n",
        ms(percentile(samples, 100.0))
    )
}

/// CPU time a process used so far (user and system, its own threads; not
/// its children's), in seconds.
/// The resident memory of a process, in KiB (`VmRSS`); `None` when it is
/// gone.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime, in clock ticks (USER_HZ: 100 on Linux).
    (field(11) + field(12)) as f64 / 100.0
}

/// Polls `done` every `every` (panics naming `what` after `limit`); how
/// long it took. Checks that start processes on many nodes cost CPU the
/// nodes need: poll them less often.
pub fn poll(
    what: &str,
    every: Duration,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(every);
    }
    start.elapsed()
}

/// The grain of cheap polls (a ping, an HTTP request to an agent).
pub const FINE: Duration = Duration::from_millis(20);

/// Pings from `netns` to `ip` (one echo, 250 ms to answer) until one
/// answers; panics after `limit`.
pub fn first_ping(netns: &str, ip: &str, limit: Duration) {
    let answered = || crate::cmd::in_netns(netns, "ping", &["-c", "1", "-W", "0.25", ip]).is_ok();
    poll(
        &format!("a ping from {netns} to {ip}"),
        FINE,
        limit,
        answered,
    );
}

/// A node joins `cluster` with trellis-wg and a pod `p0`, timed from its
/// creation to (every other node of the lab has its peer, the first ping
/// from the pod namespace `from` to the new pod answered).
pub async fn timed_join(lab: &mut Lab, cluster: &str, from: &str) -> (Duration, Duration) {
    let start = Instant::now();
    let node = lab.add_node(cluster).await.expect("a new node");
    lab.start_node(&node, Device::TrellisWg)
        .await
        .expect("Trellis on the new node");
    let mut pending: Vec<String> = lab
        .state
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != node)
        .collect();
    let want = pending.len();
    // `wg show` on every node: every 100 ms, and each node until it has it.
    poll(
        &format!("{node} a peer everywhere"),
        Duration::from_millis(100),
        Duration::from_secs(60),
        || {
            pending.retain(|o| lab.wg_peers(o).map(|p| p.len() != want).unwrap_or(true));
            pending.is_empty()
        },
    );
    let peers = start.elapsed();
    let conf_dir = lab
        .node(&node)
        .expect("the new node")
        .dir
        .join("etc-cni-net.d");
    poll(
        "the new node's CNI configuration",
        FINE,
        Duration::from_secs(30),
        || crate::pod::default_network(&conf_dir).is_ok(),
    );
    let result = lab
        .add_pod(&node, "p0", None)
        .expect("a pod on the new node");
    let ip = crate::pod::result_address(&result, true).expect("an IPv4 address");
    first_ping(from, &ip, Duration::from_secs(60));
    (peers, start.elapsed())
}

/// What a bench program starts with: the check that it runs as root, a
/// runtime, and the parts picked with `TRELLIS_BENCH` (comma separated;
/// unset: all).
pub fn start() -> (tokio::runtime::Runtime, Parts) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "make bench needs root (network namespaces)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (
        runtime,
        Parts(std::env::var("TRELLIS_BENCH").unwrap_or_default()),
    )
}

/// The parts of the benchmarks to run (`TRELLIS_BENCH`).
#[derive(Debug)]
pub struct Parts(String);

impl Parts {
    pub fn wanted(&self, part: &str) -> bool {
        self.0.is_empty() || self.0.split(',').any(|p| p == part)
    }
}

/// The `p`-th percentile of `samples` by the nearest-rank method: the
/// smallest sample with at least `p` percent of them at or below it (rank
/// ⌈p/100 · N⌉, counted from 1, at least 1: `p` = 0 is the minimum, 100
/// the maximum). Zero without samples.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len();
    // p·N first: exact for whole percentages (7 / 100 · 100 is 7.000000000000001).
    let rank = (p * n as f64 / 100.0).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Replaces the section between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
/// of the repository's BENCHMARKS.md, appending it under `title` when new.
pub fn update_benchmarks_md(name: &str, title: &str, body: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nFigures written by `make bench` (as root), each against a reference measured in\nthe same run on the same machine. Never asserted in tests.\n".into()
    });
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let when = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let section = format!("{begin}\n_Measured {when} by `make bench` on this machine ({cores} cores)._\n\n{body}{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{}\n\n## {title}\n\n{section}\n", text.trim_end()),
    };
    std::fs::write(&path, new).expect("BENCHMARKS.md written");
    eprintln!("wrote the {name} section of {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_timing_row_gives_p50_max_and_the_ratio_to_its_reference() {
        let s: Vec<Duration> = [900, 1000, 3000].map(millis).to_vec();
        assert_eq!(
            timing_row("a pair", &s, 500.0, ""),
            "| a pair | 1000 | 3000 | 2.00x |\n"
        );
        assert_eq!(
            timing_row("a pair", &s, 4000.0, "of the reference"),
            "| a pair | 1000 | 3000 | 0.25x of the reference |\n"
        );
    }

    #[test]
    fn rss_of_a_live_process_and_of_none() {
        assert!(rss_kib(std::process::id() as i32).is_some_and(|k| k > 0));
        assert_eq!(rss_kib(i32::MAX), None, "no such process");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(millis).collect();
        assert_eq!(percentile(&s, 50.0), millis(50));
        assert_eq!(percentile(&s, 99.0), millis(99));
        assert_eq!(
            percentile(&s, 7.0),
            millis(7),
            "no rounding error in the rank"
        );
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn nearest_rank_of_ten_samples_in_any_order() {
        let mut s: Vec<Duration> = (1..=10).map(millis).collect();
        s.reverse();
        for (p, want) in [
            (0.0, 1),
            (10.0, 1),
            (11.0, 2),
            (50.0, 5),
            (90.0, 9),
            (99.0, 10),
            (100.0, 10),
        ] {
            assert_eq!(percentile(&s, p), millis(want), "p{p}");
        }
    }

    #[test]
    fn one_sample_is_every_percentile() {
        for p in [0.0, 50.0, 99.0, 100.0] {
            assert_eq!(percentile(&[millis(7)], p), millis(7), "p{p}");
        }
    }

    #[test]
    fn no_samples_give_zero() {
        for p in [0.0, 50.0, 100.0] {
            assert_eq!(percentile(&[], p), Duration::ZERO, "p{p}");
        }
    }
}
