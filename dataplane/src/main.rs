//! `trellis-wg`: a userspace WireGuard device for nodes without the kernel
//! module. Its own data path (see `engine`: TUN offloads, UDP GSO/GRO,
//! per-peer batches) around gotatun's noise protocol, serving the standard
//! UAPI socket `/var/run/wireguard/NAME.sock`, so `wg show` and `wg set`
//! work and the agent configures it there. A long-lived process of its
//! own, so agent restarts never stop traffic.
//!
//! With `--persist`, the interface outlives the process (see `persist`):
//! a restarted trellis-wg attaches to it, routes and addresses kept.
//!
//! With `--dataplane auto`, trellis-wg stays idle on a kernel that has
//! WireGuard (the agent then uses the kernel), so one DaemonSet fits every
//! node.

/// musl's malloc serialises the data path's threads on one lock and costs
/// the static build about a fifth of its throughput.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod engine;
mod persist;
mod uapi;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use trellis_mesh::names::KERNEL_WIREGUARD_MODULE;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Userspace WireGuard device serving the standard UAPI socket"
)]
struct Args {
    /// Name of the WireGuard interface to create.
    #[arg(env = "TRELLIS_INTERFACE", default_value = "trellis")]
    interface: String,
    /// Threads per direction; each sending thread reads a TUN queue of its
    /// own. A peer's packets are encrypted under its lock, so more threads
    /// help nodes with many peers and many cores.
    #[arg(long, env = "TRELLIS_WG_THREADS", default_value_t = 1)]
    threads: usize,
    /// Directory of UAPI sockets.
    #[arg(
        long,
        env = "TRELLIS_WIREGUARD_RUN_DIR",
        default_value = "/var/run/wireguard"
    )]
    run_dir: PathBuf,
    /// auto: stay idle when the kernel has WireGuard (the agent uses it);
    /// userspace: always run the device.
    #[arg(long, value_enum, env = "TRELLIS_DATAPLANE", default_value_t = Mode::Userspace)]
    dataplane: Mode,
    /// Keep the interface (its addresses and routes) when trellis-wg stops,
    /// and attach to it when it is there: traffic stops only between one
    /// device process and the next (the chart's DaemonSet sets it).
    #[arg(long, env = "TRELLIS_WG_PERSIST", default_value_t = false, action = clap::ArgAction::Set)]
    persist: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Auto,
    Userspace,
}

/// Removes the front socket if it is still ours: a device started in our
/// place as soon as the interface went may have bound the same path.
fn remove_own_socket(front_socket: &Path, ours: (u64, u64)) {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(front_socket).is_ok_and(|m| (m.dev(), m.ino()) == ours) {
        let _ = std::fs::remove_file(front_socket);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SIGTERM and SIGINT stop the device: blocked in every thread (started
    // from here on, all inherit the mask), taken by main alone.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("trellis-wg: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    if args.dataplane == Mode::Auto && Path::new(KERNEL_WIREGUARD_MODULE).exists() {
        eprintln!(
            "trellis-wg: the kernel has WireGuard ({KERNEL_WIREGUARD_MODULE}): the agent uses it, and trellis-wg stays idle"
        );
        let _ = signals.wait();
        return ExitCode::SUCCESS;
    }
    if let Err(e) = std::fs::create_dir_all(&args.run_dir) {
        eprintln!("trellis-wg: cannot create {}: {e}", args.run_dir.display());
        return ExitCode::FAILURE;
    }
    if args.persist {
        if let Err(e) = persist::make_persistent(&args.interface) {
            eprintln!("trellis-wg: {e}");
            return ExitCode::FAILURE;
        }
    }
    let device = match engine::Device::start(&args.interface, args.threads) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("trellis-wg: {e}");
            return ExitCode::FAILURE;
        }
    };
    let front_socket = args.run_dir.join(format!("{}.sock", args.interface));
    let ours = match uapi::serve(engine::uapi::DeviceAnswer::new(device), &front_socket) {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("trellis-wg: cannot serve {}: {e}", front_socket.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "trellis-wg: interface {} up, UAPI socket {}",
        args.interface,
        front_socket.display()
    );
    let _ = signals.wait();
    if args.persist {
        eprintln!(
            "trellis-wg: stopping; interface {} stays (persistent) for the next device",
            args.interface
        );
    } else {
        eprintln!("trellis-wg: stopping interface {}", args.interface);
    }
    remove_own_socket(&front_socket, ours);
    // Exiting closes the TUN queues: the interface goes, unless persistent.
    ExitCode::SUCCESS
}
