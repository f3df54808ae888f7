//! trellis-cni: the CNI 1.1 plugin the container runtime executes for every
//! pod. It wires a veth pair point-to-point (no bridge), allocates addresses
//! from the node's pod CIDRs in its own file store, and answers ADD, DEL,
//! CHECK, STATUS, GC and VERSION for configurations of versions 0.3.0 to
//! 1.1.0.
//!
//! [`run`] is the whole plugin short of the process: environment, stdin and
//! the kernel are handed in, so tests drive it without a process or root.

pub mod config;
pub mod env;
pub mod error;
pub mod ipam;
pub mod log;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod podnet;
pub mod result;
pub mod version;

#[cfg(test)]
mod add_guard_tests;
#[cfg(test)]
mod plugin_tests;

use error::CniError;
use podnet::PodNetwork;

/// What the process prints on stdout and how it exits.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

/// Runs one CNI call. `make_net` builds the kernel access only when the
/// command needs it (VERSION never does).
pub fn run<N: PodNetwork>(
    lookup: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    make_net: impl FnOnce() -> Result<N, CniError>,
) -> Outcome {
    let log = log::Log::new(stdin, lookup("CNI_ARGS").as_deref());
    let result = env::Invocation::from_env(&lookup).and_then(|inv| {
        log.line(
            "info",
            &format!(
                "{:?} container={} ifname={} netns={:?}",
                inv.command,
                inv.container_id(),
                inv.ifname(),
                inv.netns
            ),
        );
        if inv.command == env::Command::Version {
            return Ok(Some(version::answer(stdin)));
        }
        let mut net = make_net()?;
        plugin::handle(&inv, stdin, &mut net)
    });
    match result {
        Ok(Some(value)) => Outcome {
            stdout: format!("{value}\n"),
            success: true,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            success: true,
        },
        Err(e) => {
            log.line("error", &e.to_string());
            let object = e.to_object(&plugin::error_version(stdin));
            Outcome {
                stdout: format!(
                    "{}\n",
                    serde_json::to_string(&object).expect("error object serializes")
                ),
                success: false,
            }
        }
    }
}
