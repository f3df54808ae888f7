//! `trellis-wg`: a userspace WireGuard device for nodes without the kernel
//! module. It serves the standard UAPI socket `/var/run/wireguard/NAME.sock`,
//! so `wg show` and `wg set` work and the agent configures it there. A
//! long-lived process of its own, so agent restarts never stop traffic.
//!
//! Two engines (`--engine`):
//! - `native` (the default): trellis-wg's own device (see `engine`),
//!   gotatun's noise protocol on a data path with TUN offloads and UDP
//!   GSO/GRO; it answers the UAPI socket itself;
//! - `boringtun`: boringtun's device, which speaks a dialect of the UAPI
//!   protocol and cannot change a peer in place (it panics, then hangs):
//!   its own socket is hidden in a private directory, and trellis-wg
//!   answers on the standard one, translating (see `translate`). boringtun
//!   always binds in `/var/run/wireguard`: when the front directory is
//!   elsewhere, the inner socket is simply there; when the front directory
//!   is `/var/run/wireguard` itself, the device thread takes a private
//!   mount namespace to hide it (which needs CAP_SYS_ADMIN). SIGTERM and
//!   SIGINT are boringtun's to take (it reads them through a signalfd).
//!
//! With `--persist`, the interface outlives the process (see `persist`):
//! a restarted trellis-wg attaches to it, routes and addresses kept.
//!
//! With `--dataplane auto`, trellis-wg stays idle on a kernel that has
//! WireGuard (the agent then uses the kernel), so one DaemonSet fits every
//! node.

/// musl's malloc serialises the data path's threads on one lock.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod engine;
mod persist;
mod translate;
mod uapi;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;

use boringtun::device::{DeviceConfig, DeviceHandle};
use clap::Parser;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
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
    /// Worker threads of the boringtun engine. One is fastest on small
    /// nodes: with two cores, one thread moved 0.68 Gbit/s and four 0.36.
    #[arg(long, env = "TRELLIS_WG_THREADS", default_value_t = 1)]
    threads: usize,
    /// One TUN queue per worker thread (boringtun engine).
    #[arg(long, env = "TRELLIS_WG_MULTI_QUEUE", default_value_t = true, action = clap::ArgAction::Set)]
    multi_queue: bool,
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
    /// The WireGuard implementation: trellis-wg's own device (gotatun's
    /// noise protocol on an offloading data path), or boringtun's device.
    #[arg(long, value_enum, env = "TRELLIS_WG_ENGINE", default_value_t = Engine::Native)]
    engine: Engine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    Native,
    Boringtun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Auto,
    Userspace,
}

/// boringtun's fixed socket directory.
const BORINGTUN_RUN_DIR: &str = "/var/run/wireguard";

/// On the device thread: a mount namespace of its own in which boringtun's
/// fixed socket directory is `inner`, so its socket lands there.
fn hide_inner_socket(run_dir: &Path, inner: &Path) -> nix::Result<()> {
    unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some(inner),
        run_dir,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

/// Where boringtun's own socket lands, and whether the device thread must
/// hide it: only when the front directory is boringtun's directory itself.
fn inner_socket_dir(run_dir: &Path) -> std::io::Result<(PathBuf, bool)> {
    let front = std::fs::canonicalize(run_dir)?;
    match std::fs::canonicalize(BORINGTUN_RUN_DIR) {
        Ok(fixed) if fixed == front => Ok((run_dir.join(".trellis-wg"), true)),
        _ => Ok((PathBuf::from(BORINGTUN_RUN_DIR), false)),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SIGTERM and SIGINT stop the device: boringtun reads them through a
    // signalfd in its event loop, which needs them blocked in every thread
    // (started from here on, all inherit the mask). Its threads then end,
    // and the device thread reports back.
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
    match args.engine {
        Engine::Native => run_native(&args, &signals),
        Engine::Boringtun => run_boringtun(&args),
    }
}

/// Removes the front socket if it is still ours: a device started in our
/// place as soon as the interface went may have bound the same path.
fn remove_own_socket(front_socket: &Path, ours: (u64, u64)) {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(front_socket).is_ok_and(|m| (m.dev(), m.ino()) == ours) {
        let _ = std::fs::remove_file(front_socket);
    }
}

fn say_stopping(args: &Args) {
    if args.persist {
        eprintln!(
            "trellis-wg: stopping; interface {} stays (persistent) for the next device",
            args.interface
        );
    } else {
        eprintln!("trellis-wg: stopping interface {}", args.interface);
    }
}

/// trellis-wg's own device: serves the standard UAPI socket itself.
fn run_native(args: &Args, signals: &SigSet) -> ExitCode {
    let device = match engine::Device::start(&args.interface) {
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
    say_stopping(args);
    remove_own_socket(&front_socket, ours);
    // Exiting closes the TUN queues: the interface goes, unless persistent.
    ExitCode::SUCCESS
}

/// boringtun's device behind the translating proxy.
fn run_boringtun(args: &Args) -> ExitCode {
    let (inner, hide) = match inner_socket_dir(&args.run_dir) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("trellis-wg: cannot resolve {}: {e}", args.run_dir.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&inner) {
        eprintln!("trellis-wg: cannot create {}: {e}", inner.display());
        return ExitCode::FAILURE;
    }
    // Mount on the real directory (/var/run is a symlink to /run).
    let real_run_dir = std::fs::canonicalize(BORINGTUN_RUN_DIR)
        .unwrap_or_else(|_| PathBuf::from(BORINGTUN_RUN_DIR));
    let inner_socket = inner.join(format!("{}.sock", args.interface));
    let front_socket = args.run_dir.join(format!("{}.sock", args.interface));
    let (started_tx, started_rx) = mpsc::channel();
    // Stopping: the device's threads end → main removes the front socket
    // → the device thread closes the interface. In that order, whoever
    // waits for the interface to vanish finds the socket path free.
    let (stopped_tx, stopped_rx) = mpsc::channel::<()>();
    let (unlinked_tx, unlinked_rx) = mpsc::channel::<()>();
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let name = args.interface.clone();
    let config = DeviceConfig {
        n_threads: args.threads.max(1),
        // Connected sockets break roaming and NAT rebinding.
        use_connected_socket: false,
        use_multi_queue: args.multi_queue,
        uapi_fd: -1,
    };
    let inner_for_thread = inner.clone();
    std::thread::spawn(move || {
        let hidden = match hide {
            true => hide_inner_socket(&real_run_dir, &inner_for_thread),
            false => Ok(()),
        };
        if let Err(e) = hidden {
            let _ = started_tx.send(Err(format!(
                "cannot set up the private socket directory: {e}"
            )));
            return;
        }
        match DeviceHandle::new(&name, config) {
            Ok(mut handle) => {
                let _ = started_tx.send(Ok(()));
                handle.wait();
                let _ = stopped_tx.send(());
                let _ = unlinked_rx.recv();
                // Dropping the handle closes the interface and removes
                // boringtun's own socket.
                drop(handle);
                let _ = closed_tx.send(());
            }
            Err(e) => {
                let _ = started_tx.send(Err(format!("{e:?}")));
            }
        }
    });
    match started_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("trellis-wg: cannot create interface {}: {e} (is /dev/net/tun available, and are we root or CAP_NET_ADMIN?)", args.interface);
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("trellis-wg: the device thread died during start-up");
            return ExitCode::FAILURE;
        }
    }
    let ours = match uapi::serve(
        uapi::Proxy::new(inner_socket, &args.interface),
        &front_socket,
    ) {
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
    let _ = stopped_rx.recv();
    say_stopping(args);
    remove_own_socket(&front_socket, ours);
    let _ = unlinked_tx.send(());
    let _ = closed_rx.recv();
    ExitCode::SUCCESS
}
