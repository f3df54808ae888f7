//! The kernel tier: Trellis' kernel WireGuard dataplane, for real, in a
//! kernel that has the WireGuard module. `make test-kernel` boots such a
//! kernel under qemu and runs this binary in it as root; it refuses to run
//! anywhere the module cannot be loaded (built only with the `kernel-tier`
//! feature, so `cargo test` elsewhere never sees it).
//!
//! Two groups of trials, run in order:
//! - `dataplane::` drives the agent's reconciler over the real kernel
//!   dataplane directly, with Node descriptions written by the test: exact
//!   checks of what lands in the kernel (in-place peer updates, removal,
//!   recreation);
//! - `agent::` runs the real agents (`--dataplane kernel`) against a real
//!   kube-apiserver of a lab started inside the guest, in a mesh with a
//!   trellis-wg node (interop), with pods wired by trellis-cni.

mod agent;
mod dataplane;

use libtest_mimic::{Arguments, Failed, Trial};
use trellis_e2e::cmd;
use trellis_e2e::mesh::{mesh_routes_in, WgPeer};

/// Name of the WireGuard interface everywhere in this tier.
const INTERFACE: &str = trellis_e2e::mesh::INTERFACE;

/// `Ok` when `holds`, else a failure saying `what` was wrong.
fn check(holds: bool, what: impl std::fmt::Display) -> Result<(), Failed> {
    if holds {
        Ok(())
    } else {
        Err(Failed::from(what))
    }
}

/// The peers of the kernel interface in a namespace.
fn wg_dump(netns: &str) -> Result<Vec<WgPeer>, Failed> {
    Ok(WgPeer::parse_dump(&cmd::in_netns(
        netns,
        "wg",
        &["show", INTERFACE, "dump"],
    )?))
}

/// The agent's routes in a namespace, both families, as sorted `CIDR dev IFACE`.
fn routes(netns: &str) -> Result<Vec<String>, Failed> {
    Ok(mesh_routes_in(netns)?)
}

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    // The agent trials share one lab and follow each other.
    args.test_threads = Some(1);
    if !args.list {
        if let Err(e) = guest_ready() {
            eprintln!("kernel tier: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let trials = vec![
        Trial::test(
            "dataplane::creates_and_configures_the_interface",
            dataplane::creates_and_configures_the_interface,
        ),
        Trial::test(
            "dataplane::updates_a_peer_in_place",
            dataplane::updates_a_peer_in_place,
        ),
        Trial::test(
            "dataplane::removes_and_re_adds_a_peer",
            dataplane::removes_and_re_adds_a_peer,
        ),
        Trial::test(
            "dataplane::recreates_a_deleted_interface",
            dataplane::recreates_a_deleted_interface,
        ),
        Trial::test(
            "dataplane::repairs_an_edited_masquerade_table",
            dataplane::repairs_an_edited_masquerade_table,
        ),
        Trial::test(
            "agent::kernel_and_trellis_wg_nodes_mesh",
            agent::kernel_and_trellis_wg_nodes_mesh,
        ),
        Trial::test(
            "agent::restart_leaves_the_kernel_interface_alone",
            agent::restart_leaves_the_kernel_interface_alone,
        ),
        Trial::test(
            "agent::deleted_interface_is_recreated",
            agent::deleted_interface_is_recreated,
        ),
        Trial::test(
            "agent::endpoint_annotation_updates_the_peer_in_place",
            agent::endpoint_annotation_updates_the_peer_in_place,
        ),
        Trial::test(
            "agent::a_kernel_node_joins_and_leaves",
            agent::a_kernel_node_joins_and_leaves,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    // After a failure the lab stays for its logs (tools/kernel/guest.sh
    // copies them out; the guest's /run goes with the guest).
    if !conclusion.has_failed() {
        agent::tear_down();
    }
    conclusion.exit_code()
}

/// Root, and the WireGuard module loadable: otherwise this is not the
/// kernel tier's guest and nothing here can run.
fn guest_ready() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("needs root (run it through `make test-kernel`)".into());
    }
    // tools/kernel/guest.sh loads the module.
    if !trellis_agent::kernel_wg::available() {
        return Err(
            "this kernel has no WireGuard module; `make test-kernel` boots one that has".into(),
        );
    }
    Ok(())
}
