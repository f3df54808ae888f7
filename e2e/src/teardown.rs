//! Tearing a lab down: by its state file when there is one, and by its names
//! in any case, so a lab whose builder was killed half-way is still removed.
//! Keeps going after an error, collects every error, and treats "already
//! gone" as done.

use std::time::Duration;

use tracing::info;

use crate::cmd;
use crate::netns;
use crate::plan::Names;
use crate::state::{self, LabState};

/// What `down` did and what it could not do.
#[derive(Debug, Default)]
pub struct DownReport {
    pub processes_stopped: usize,
    pub namespaces_deleted: Vec<String>,
    pub errors: Vec<String>,
}

impl DownReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Removes every trace of lab `name`: processes in its namespaces (and
/// recorded daemons), the namespaces, the host link, its directory, and the
/// mount points it created when no other lab is left.
pub fn down(name: &str) -> DownReport {
    let mut report = DownReport::default();
    let names = Names::new(name);
    let root = state::lab_root();
    let dir = root.join(name);
    let saved = LabState::load(&dir).ok();

    let namespaces = netns::list_with_prefix(&names.netns_prefix());
    report.processes_stopped = netns::kill_all_in(&namespaces, Duration::from_secs(3));
    // Daemons whose namespace vanished already (an interrupted `down`).
    for daemon in saved.iter().flat_map(|s| &s.daemons) {
        if netns::alive(daemon.pid) && started_by_lab(daemon.pid, &dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            report.processes_stopped += 1;
        }
    }
    // Pods first, then nodes and routers, the switch last.
    let mut ordered = namespaces.clone();
    ordered.sort_by_key(|n| (n == &names.switch_netns(), std::cmp::Reverse(n.len())));
    for ns in ordered {
        match netns::delete(&ns) {
            Ok(()) => report.namespaces_deleted.push(ns),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    // Real nodes' containers live in pod namespaces the lab does not name:
    // their cgroups hold them.
    report.errors.extend(crate::real_node::remove_cgroups(name));
    let host_link = names.host_link();
    if std::path::Path::new("/sys/class/net")
        .join(&host_link)
        .exists()
    {
        if let Err(e) = cmd::ip(None, &["link", "del", &host_link]) {
            report.errors.push(e.to_string());
        }
    }
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            report
                .errors
                .push(format!("removing {}: {e}", dir.display()));
        }
    }
    remove_mountpoints_if_last(name, &mut report);
    info!(
        lab = name,
        stopped = report.processes_stopped,
        namespaces = report.namespaces_deleted.len(),
        errors = report.errors.len(),
        "lab is down"
    );
    report
}

/// Whether `pid` runs something the lab started (its command line names a
/// file under the lab's directory or the tools), to never kill a stranger
/// that reused a recorded pid.
fn started_by_lab(pid: i32, lab_dir: &std::path::Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&cmdline);
    text.contains(&*lab_dir.to_string_lossy())
}

fn remove_mountpoints_if_last(name: &str, report: &mut DownReport) {
    let root = state::lab_root();
    let _lock = match state::lock(&root) {
        Ok(lock) => lock,
        Err(e) => return report.errors.push(e.to_string()),
    };
    if state::existing_labs(&root).iter().any(|l| l.name != name) {
        return; // another lab still mounts over them
    }
    let mut points = state::created_mountpoints(&root);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut kept = Vec::new();
    for p in points {
        // Only ever an empty directory: never anything a person put there.
        match std::fs::remove_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                report
                    .errors
                    .push(format!("removing mount point {}: {e}", p.display()));
                kept.push(p);
            }
        }
    }
    if let Err(e) = state::set_created_mountpoints(&root, &kept) {
        report.errors.push(e.to_string());
    }
}

/// Every lab that is up, or that left namespaces behind.
pub fn list_labs() -> Vec<String> {
    let mut labs: Vec<String> = state::existing_labs(&state::lab_root())
        .into_iter()
        .map(|s| s.name)
        .collect();
    for ns in netns::list_with_prefix(crate::plan::NETNS_PREFIX) {
        if let Some(rest) = ns.strip_prefix(crate::plan::NETNS_PREFIX) {
            if let Some((lab, _)) = rest.split_once('-') {
                if !labs.iter().any(|l| l == lab) {
                    labs.push(lab.to_string());
                }
            }
        }
    }
    labs.sort();
    labs
}
