//! trellis-wg's own WireGuard device: gotatun's noise protocol (handshakes,
//! sessions, timers, cookies) around a data path built for throughput the
//! way wireguard-go's is:
//!
//! - the TUN interface is opened with `IFF_VNET_HDR` and TSO/USO offloads
//!   (tun-rs), so the kernel hands over up to 64 KiB at a time, which is
//!   split into packets in user space; packets going the other way are
//!   coalesced again (GRO) before they are written;
//! - each batch is encrypted per peer under one lock and sent with UDP GSO;
//!   datagrams are received with UDP GRO and `recvmmsg` (see [`udp`]);
//! - `threads` threads per direction ([`outbound`], [`inbound`]), and one
//!   for timers; the UAPI socket is served on threads of its own
//!   ([`uapi`]). Each outbound thread reads a TUN queue of its own (the
//!   kernel spreads flows over the queues); the inbound threads share the
//!   socket. A peer's packets are encrypted under its lock, so threads
//!   scale with peers, not within one peer's flow.
//!
//! Configuration (`set`) is applied in place, as the kernel applies it: a
//! peer keeps its session when its endpoint, keepalive or allowed IPs
//! change ([`peers`]).

mod inbound;
mod outbound;
pub(crate) mod peers;
pub(crate) mod protocol;
pub(crate) mod uapi;
mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gotatun::packet::WgKind;
use zerocopy::IntoBytes;

use peers::{Config, Indices, Peer};
use protocol::{ProtocolError, SetRequest};
use udp::Udp;

/// How often the noise timers run (rekeys, retries, keepalives).
const TIMER_TICK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    #[error("cannot open the TUN interface {name}: {source} (is /dev/net/tun there, and are we root or CAP_NET_ADMIN?)")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind UDP port {port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

impl EngineError {
    /// The errno a UAPI answer carries.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            EngineError::Protocol(e) => e.errno(),
            EngineError::Bind { source, .. } => source.raw_os_error().unwrap_or(98),
            EngineError::Tun { .. } => 5,
        }
    }
}

/// The running device, shared by its threads.
pub(crate) struct Device {
    tun: tun_rs::SyncDevice,
    config: RwLock<Config>,
    indices: Indices,
    udp: RwLock<Arc<Udp>>,
    /// The TUN interface's MTU, re-read by the timer thread.
    mtu: AtomicU16,
    /// Threads per direction.
    threads: usize,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").finish_non_exhaustive()
    }
}

impl Device {
    /// Opens (or attaches to) the TUN interface `name`, binds a UDP port
    /// and starts the device's threads.
    pub(crate) fn start(name: &str, threads: usize) -> Result<Arc<Device>, EngineError> {
        let tun = tun_rs::DeviceBuilder::new()
            .name(name)
            .offload(true)
            .multi_queue(true)
            .build_sync()
            .map_err(|source| EngineError::Tun {
                name: name.to_string(),
                source,
            })?;
        let udp = Udp::bind(0, 0).map_err(|source| EngineError::Bind { port: 0, source })?;
        let mut config = Config::new();
        config.listen_port = udp.port;
        let mtu = tun.mtu().unwrap_or(1420);
        let indices = Indices::new(config.index_table());
        let device = Arc::new(Device {
            tun,
            config: RwLock::new(config),
            indices,
            udp: RwLock::new(Arc::new(udp)),
            mtu: AtomicU16::new(mtu),
            threads: threads.max(1),
        });
        for i in 0..device.threads {
            let queue = match i {
                0 => None,
                _ => Some(device.tun.try_clone().map_err(|source| EngineError::Tun {
                    name: name.to_string(),
                    source,
                })?),
            };
            let d = device.clone();
            std::thread::Builder::new()
                .name(format!("wg-outbound-{i}"))
                .spawn(move || outbound::run(&d, queue.as_ref().unwrap_or(&d.tun)))
                .expect("spawn an outbound thread");
        }
        device.spawn_inbound();
        let d = device.clone();
        std::thread::Builder::new()
            .name("wg-timers".into())
            .spawn(move || d.run_timers())
            .expect("spawn the timer thread");
        Ok(device)
    }

    /// Starts the inbound threads of the current socket.
    fn spawn_inbound(self: &Arc<Self>) {
        let udp = self.udp();
        for i in 0..self.threads {
            let d = self.clone();
            let udp = udp.clone();
            std::thread::Builder::new()
                .name(format!("wg-inbound-{i}"))
                .spawn(move || inbound::run(&d, &udp))
                .expect("spawn an inbound thread");
        }
    }

    fn udp(&self) -> Arc<Udp> {
        self.udp.read().expect("udp lock").clone()
    }

    fn mtu(&self) -> gotatun::tun::MtuWatcher {
        gotatun::tun::MtuWatcher::new(self.mtu.load(Ordering::Relaxed))
    }

    /// Sends one WireGuard message to `to`, registering the index of a
    /// handshake we send so the answer finds its peer.
    fn send_message(&self, udp: &Udp, peer: &Arc<Peer>, to: SocketAddr, message: WgKind) {
        match &message {
            WgKind::HandshakeInit(p) => self.indices.register(p.sender_idx.get(), peer),
            WgKind::HandshakeResp(p) => self.indices.register(p.sender_idx.get(), peer),
            _ => {}
        }
        let packet: gotatun::packet::Packet = message.into();
        if let Err(e) = udp.send(to, packet.as_bytes(), None) {
            eprintln!("trellis-wg: sending to {to}: {e}");
        }
    }

    /// Applies a parsed `set`; a new listen port is bound before anything
    /// else changes, so a port that is taken changes nothing.
    pub(crate) fn configure(self: &Arc<Self>, set: SetRequest) -> Result<(), EngineError> {
        let mut config = self.config.write().expect("config lock");
        let new_udp = match set.listen_port.filter(|p| *p != config.listen_port) {
            Some(port) => Some(
                Udp::bind(port, set.fwmark.unwrap_or(config.fwmark))
                    .map_err(|source| EngineError::Bind { port, source })?,
            ),
            None => None,
        };
        let (change, removed) = config.apply(set);
        for peer in &removed {
            self.indices.forget(peer);
        }
        if let Some(udp) = new_udp {
            config.listen_port = udp.port;
            *self.udp.write().expect("udp lock") = Arc::new(udp);
            self.spawn_inbound();
        } else if let Some(mark) = change.fwmark {
            if let Err(e) = self.udp().set_mark(mark) {
                eprintln!("trellis-wg: setting fwmark {mark}: {e}");
            }
        }
        Ok(())
    }

    pub(crate) fn view(&self) -> protocol::DeviceView {
        self.config.read().expect("config lock").view()
    }

    fn run_timers(&self) {
        loop {
            std::thread::sleep(TIMER_TICK);
            if let Ok(mtu) = self.tun.mtu() {
                self.mtu.store(mtu, Ordering::Relaxed);
            }
            let udp = self.udp();
            let peers: Vec<Arc<Peer>> = self
                .config
                .read()
                .expect("config lock")
                .peers()
                .cloned()
                .collect();
            for peer in peers {
                let due = match peer.tunn.lock().expect("tunn lock").as_mut() {
                    Some(t) => t.update_timers(),
                    None => continue,
                };
                let endpoint = *peer.endpoint.read().expect("endpoint lock");
                if let (Ok(Some(message)), Some(to)) = (due, endpoint) {
                    self.send_message(&udp, &peer, to, message);
                }
            }
        }
    }
}
