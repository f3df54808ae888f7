//! Network namespaces and the processes in them: create and delete named
//! namespaces, run a process inside one (optionally with private bind mounts,
//! as a simulated node needs), start detached daemons, and find and stop
//! every process left in a namespace.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, CommandError};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("network namespace {name} does not exist ({source})")]
    Missing {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid path for a mount: {0}")]
    BadPath(PathBuf),
    #[error("starting {what} in {netns}: {source}")]
    Spawn {
        what: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Creates a namespace (its loopback up); an existing one is an error, so
/// two labs never share a namespace by accident.
pub fn create(name: &str) -> Result<(), NetnsError> {
    cmd::ip(None, &["netns", "add", name])?;
    cmd::ip(Some(name), &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a namespace; one that is already gone is fine.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if !exists(name) {
        return Ok(());
    }
    match cmd::ip(None, &["netns", "delete", name]) {
        Err(_) if !exists(name) => Ok(()),
        other => other.map(drop).map_err(Into::into),
    }
}

/// Every named namespace whose name starts with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The pids of every process whose network namespace is one of `names`.
pub fn pids_in(names: &[String]) -> Vec<i32> {
    let inodes: Vec<(u64, u64)> = names
        .iter()
        .filter_map(|n| std::fs::metadata(netns_path(n)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| inodes.contains(&(m.dev(), m.ino())))
                .unwrap_or(false)
        })
        .collect()
}

/// Stops every process in the given namespaces: SIGTERM, then SIGKILL for
/// whatever still runs after `grace`. Returns how many were found.
pub fn kill_all_in(names: &[String], grace: Duration) -> usize {
    let pids = pids_in(names);
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !pids_in(names).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids_in(names) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !pids_in(names).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids.len()
}

/// Where a process runs: a network namespace and, for a simulated node,
/// private bind mounts of the node's own directories over the standard
/// paths, in a mount namespace of its own.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub netns: String,
    /// (source, target): `source` is mounted over `target`.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Made read-only after the binds, as a container runtime does
    /// (`/proc/sys`; `/` for a read-only root filesystem). Mounts below
    /// them (the binds) stay writable.
    pub read_only: Vec<PathBuf>,
}

impl Placement {
    pub fn netns(name: &str) -> Self {
        Placement {
            netns: name.to_string(),
            ..Default::default()
        }
    }

    /// Prepares `command` to start inside this placement. The namespace file
    /// is opened now, so a missing namespace is reported here and not as an
    /// obscure failure in the child.
    pub fn apply(&self, command: &mut Command) -> Result<(), NetnsError> {
        let ns_file =
            File::open(netns_path(&self.netns)).map_err(|source| NetnsError::Missing {
                name: self.netns.clone(),
                source,
            })?;
        let binds = self
            .binds
            .iter()
            .map(|(s, t)| Ok((c_path(s)?, c_path(t)?)))
            .collect::<Result<Vec<_>, NetnsError>>()?;
        let read_only = self
            .read_only
            .iter()
            .map(|p| c_path(p))
            .collect::<Result<Vec<_>, NetnsError>>()?;
        let sys = c_path(Path::new("/sys"))?;
        let root = c_path(Path::new("/"))?;
        // SAFETY: the closure runs in the forked child before exec; it only
        // makes system calls on data prepared above (no allocation).
        unsafe {
            command.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(ns_file.as_raw_fd());
                setns(fd, CloneFlags::CLONE_NEWNET)?;
                unshare(CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&str>,
                    root.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                // A fresh sysfs shows this namespace's interfaces, as with
                // `ip netns exec`.
                if umount2(sys.as_c_str(), MntFlags::MNT_DETACH).is_ok() {
                    mount(
                        Some("sysfs"),
                        sys.as_c_str(),
                        Some("sysfs"),
                        MsFlags::empty(),
                        None::<&str>,
                    )?;
                }
                for (source, target) in &binds {
                    mount(
                        Some(source.as_c_str()),
                        target.as_c_str(),
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                }
                for path in &read_only {
                    // A path inside a mount (/proc/sys) becomes a mount of
                    // its own first, keeping proc's flags; `/` already is one.
                    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                    if path.as_bytes() != b"/" {
                        mount(
                            Some(path.as_c_str()),
                            path.as_c_str(),
                            None::<&str>,
                            MsFlags::MS_BIND,
                            None::<&str>,
                        )?;
                        flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                    }
                    mount(
                        None::<&str>,
                        path.as_c_str(),
                        None::<&str>,
                        flags,
                        None::<&str>,
                    )?;
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// A command for `program` that will run in this placement.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command, NetnsError> {
        let mut command = Command::new(program);
        self.apply(&mut command)?;
        Ok(command)
    }

    /// Starts `command` as a daemon in this placement: its own session,
    /// stdin closed, stdout and stderr appended to `log`. It keeps running
    /// after the caller exits. Returns its pid.
    pub fn spawn_daemon(
        &self,
        mut command: Command,
        what: &str,
        log: &Path,
    ) -> Result<i32, NetnsError> {
        let spawn_err = |source| NetnsError::Spawn {
            what: what.to_string(),
            netns: self.netns.clone(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        self.apply(&mut command)?;
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let child = command.spawn().map_err(spawn_err)?;
        Ok(child.id() as i32)
    }
}

/// Runs `work` on a new thread that has joined namespace `name`; sockets it
/// opens belong to that namespace. Used by tests to probe the network from a
/// node or pod without an external tool.
pub fn run_in<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let file = File::open(netns_path(name)).map_err(|source| NetnsError::Missing {
        name: name.to_string(),
        source,
    })?;
    let netns = name.to_string();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Spawn {
            what: "setns".into(),
            netns,
            source: e.into(),
        })?;
        Ok(work())
    })
    .join()
    .expect("the work in the namespace panicked")
}

fn c_path(path: &Path) -> Result<CString, NetnsError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| NetnsError::BadPath(path.to_path_buf()))
}

/// Whether a process is still alive (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_reported_before_spawning() {
        let err = Placement::netns("tl-no-such-namespace")
            .command("true")
            .unwrap_err();
        assert!(err.to_string().contains("tl-no-such-namespace"), "{err}");
    }

    #[test]
    fn liveness_of_self_and_of_nothing() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(i32::MAX));
    }

    #[test]
    fn deleting_a_missing_namespace_succeeds() {
        delete("tl-never-created-namespace").unwrap();
    }
}
