//! `trellis-wg`: a userspace WireGuard device for nodes without the kernel
//! module. It runs boringtun's device — a TUN interface — and serves the
//! standard UAPI socket `/var/run/wireguard/NAME.sock`, so `wg show` and
//! `wg set` work and the agent configures it there. A long-lived process of
//! its own, so agent restarts never stop traffic.
//!
//! boringtun speaks a dialect of the UAPI protocol and cannot change a peer
//! in place (it panics, then hangs): its own socket is hidden in a private
//! directory, and trellis-wg answers on the standard one, translating (see
//! `translate`). The device is created on its own thread, which also holds
//! the private mount namespace that hides the inner socket; that thread's
//! signal mask is left to boringtun.

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

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Userspace WireGuard device serving the standard UAPI socket"
)]
struct Args {
    /// Name of the WireGuard interface to create.
    #[arg(env = "TRELLIS_INTERFACE", default_value = "trellis")]
    interface: String,
    /// Worker threads of the device. One is fastest on small nodes: with
    /// two cores, one thread moved 0.68 Gbit/s and four 0.36 (BENCHMARKS.md).
    #[arg(long, env = "TRELLIS_WG_THREADS", default_value_t = 1)]
    threads: usize,
    /// One TUN queue per worker thread.
    #[arg(long, env = "TRELLIS_WG_MULTI_QUEUE", default_value_t = true, action = clap::ArgAction::Set)]
    multi_queue: bool,
    /// Directory of UAPI sockets.
    #[arg(
        long,
        env = "TRELLIS_WIREGUARD_RUN_DIR",
        default_value = "/var/run/wireguard"
    )]
    run_dir: PathBuf,
}

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

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = std::fs::create_dir_all(&args.run_dir) {
        eprintln!("trellis-wg: cannot create {}: {e}", args.run_dir.display());
        return ExitCode::FAILURE;
    }
    // boringtun writes /var/run/wireguard literally: hide that path.
    let real_run_dir =
        std::fs::canonicalize("/var/run/wireguard").unwrap_or_else(|_| args.run_dir.clone());
    let inner = args.run_dir.join(".trellis-wg");
    if let Err(e) = std::fs::create_dir_all(&inner) {
        eprintln!("trellis-wg: cannot create {}: {e}", inner.display());
        return ExitCode::FAILURE;
    }
    let inner_socket = inner.join(format!("{}.sock", args.interface));
    let front_socket = args.run_dir.join(format!("{}.sock", args.interface));

    // Stop on SIGTERM or SIGINT, taken here.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("trellis-wg: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let (started_tx, started_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
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
        if let Err(e) = hide_inner_socket(&real_run_dir, &inner_for_thread) {
            let _ = started_tx.send(Err(format!(
                "cannot set up the private socket directory: {e}"
            )));
            return;
        }
        match DeviceHandle::new(&name, config) {
            Ok(handle) => {
                let _ = started_tx.send(Ok(()));
                let _ = stop_rx.recv();
                // Dropping the handle stops the device and removes its socket.
                drop(handle);
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
    if let Err(e) = uapi::Proxy::new(inner_socket).serve(&front_socket) {
        eprintln!("trellis-wg: cannot serve {}: {e}", front_socket.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "trellis-wg: interface {} up, UAPI socket {}",
        args.interface,
        front_socket.display()
    );
    let signal = signals.wait();
    eprintln!(
        "trellis-wg: {signal:?}: stopping interface {}",
        args.interface
    );
    let _ = std::fs::remove_file(&front_socket);
    let _ = stop_tx.send(());
    std::thread::sleep(std::time::Duration::from_millis(100));
    ExitCode::SUCCESS
}
