//! `kubectl trellis` as a user runs it in the end-to-end tests: the real
//! kubectl finding the workspace's `kubectl-trellis` on PATH, against the
//! kubeconfig(s) given; and polling until a condition holds.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::mesh::workspace_binary;

/// `kubectl trellis ARGS` with `KUBECONFIG=kubeconfig` (one path, or
/// several joined by ':'): (stdout, stderr) when it succeeds, stderr when
/// it fails.
pub fn kubectl_trellis(kubeconfig: &str, args: &[&str]) -> Result<(String, String), String> {
    let mut full = vec!["trellis"];
    full.extend_from_slice(args);
    kubectl(kubeconfig, &full)
}

/// `kubectl ARGS` as a user runs it, with the workspace's plugins on PATH.
pub fn kubectl(kubeconfig: &str, args: &[&str]) -> Result<(String, String), String> {
    let plugin = workspace_binary("kubectl-trellis").map_err(|e| e.to_string())?;
    let plugin_dir = plugin.parent().expect("a binary has a directory");
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("kubectl")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .map_err(|e| format!("running kubectl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok((stdout, stderr))
    } else {
        Err(stderr)
    }
}

/// Polls `done` every 200 ms; panics naming `what` after `limit`. Returns
/// how long it took.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let limit = crate::deadline::scaled(limit);
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// `kubectl trellis ARGS` with the kubeconfigs of all the lab's clusters;
/// its output, or a panic when it fails.
pub fn lab_trellis(lab: &crate::Lab, args: &[&str]) -> String {
    kubectl_trellis(&lab.all_kubeconfigs(), args)
        .unwrap_or_else(|e| panic!("kubectl trellis {args:?}: {e}"))
        .0
}

/// `kubectl trellis status` of the lab's cluster `context`; panics when it
/// fails.
pub fn lab_status(lab: &crate::Lab, context: &str) -> String {
    lab_trellis(lab, &["status", "--context", context])
}

/// The PATH cell (the 8th column) of a `kubectl trellis status` row.
pub fn path_cell(row: &str) -> String {
    row.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .nth(7)
        .unwrap_or("")
        .to_string()
}

/// The row of `kubectl trellis status` output `table` for `node`'s peer
/// `peer` (as `node` names it); panics when there is none.
pub fn status_row(table: &str, node: &str, peer: &str) -> String {
    table
        .lines()
        .find(|l| {
            let mut cols = l.split("  ").map(str::trim).filter(|c| !c.is_empty());
            cols.next() == Some(node) && cols.next() == Some(peer)
        })
        .unwrap_or_else(|| panic!("no row {node} -> {peer} in\n{table}"))
        .to_string()
}
