//! `trellis-wg`: a userspace WireGuard device for nodes without the kernel
//! module. It runs boringtun's device — a TUN interface and the standard
//! UAPI socket `/var/run/wireguard/NAME.sock`, so `wg show` and `wg set`
//! work — and nothing else: the agent configures it over that socket. A
//! long-lived process of its own, so agent restarts never stop traffic.
//!
//! boringtun's device must be created off the main thread (it changes the
//! calling thread's signal mask) and cannot change a peer in place over
//! UAPI (the agent always removes and re-adds a peer in one update).

use std::process::ExitCode;
use std::sync::mpsc;

use boringtun::device::{DeviceConfig, DeviceHandle};
use clap::Parser;
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
    /// Worker threads of the device.
    #[arg(long, env = "TRELLIS_WG_THREADS", default_value_t = 2)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Stop on SIGTERM or SIGINT, received here; every thread started from
    // now on inherits the mask, so no device thread takes them.
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
        use_multi_queue: true,
        uapi_fd: -1,
    };
    std::thread::spawn(move || match DeviceHandle::new(&name, config) {
        Ok(handle) => {
            let _ = started_tx.send(Ok(()));
            let _ = stop_rx.recv();
            // Dropping the handle stops the device and removes its socket.
            drop(handle);
        }
        Err(e) => {
            let _ = started_tx.send(Err(format!("{e:?}")));
        }
    });
    match started_rx.recv() {
        Ok(Ok(())) => eprintln!(
            "trellis-wg: interface {} up, UAPI socket /var/run/wireguard/{}.sock",
            args.interface, args.interface
        ),
        Ok(Err(e)) => {
            eprintln!("trellis-wg: cannot create interface {}: {e} (is /dev/net/tun available, and are we root or CAP_NET_ADMIN?)", args.interface);
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("trellis-wg: the device thread died during start-up");
            return ExitCode::FAILURE;
        }
    }
    let signal = signals.wait();
    eprintln!(
        "trellis-wg: {signal:?}: stopping interface {}",
        args.interface
    );
    let _ = stop_tx.send(());
    // Give the device thread a moment to remove the socket.
    std::thread::sleep(std::time::Duration::from_millis(100));
    ExitCode::SUCCESS
}
