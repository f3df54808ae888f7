//! Kernel WireGuard through netlink (wireguard-control), for nodes whose
//! kernel has the module. Creating the interface is part of applying an
//! update when it does not exist yet.

use std::str::FromStr;

use trellis_mesh::{PeerChange, PresharedKey, PublicKey};
use wireguard_control::{Backend, Device, InterfaceName, Key, PeerConfigBuilder};

use crate::wg::{DeviceState, DeviceUpdate, PeerState, WgError, WireGuard};

/// The kernel module is loaded (or built in).
pub fn available() -> bool {
    std::path::Path::new(trellis_mesh::names::KERNEL_WIREGUARD_MODULE).exists()
}

#[derive(Debug)]
pub struct KernelWg {
    name: InterfaceName,
    display: String,
}

impl KernelWg {
    pub fn new(interface: &str) -> Result<Self, WgError> {
        let name = InterfaceName::from_str(interface)
            .map_err(|e| WgError::Kernel(format!("interface name {interface:?}: {e}")))?;
        Ok(KernelWg {
            name,
            display: interface.to_string(),
        })
    }
}

fn builder(p: &trellis_mesh::DesiredPeer) -> PeerConfigBuilder {
    let mut b = PeerConfigBuilder::new(&Key(p.public_key.0)).replace_allowed_ips();
    if let Some(e) = p.endpoint {
        b = b.set_endpoint(e);
    }
    b = match p.persistent_keepalive {
        Some(s) => b.set_persistent_keepalive_interval(s),
        None => b.unset_persistent_keepalive(),
    };
    // An all-zero key is WireGuard's "no preshared key".
    b = b.set_preshared_key(Key(p.preshared_key.map(|k| k.0).unwrap_or([0; 32])));
    for ip in &p.allowed_ips {
        b = b.add_allowed_ip(ip.addr(), ip.prefix_len());
    }
    b
}

impl WireGuard for KernelWg {
    fn read(&mut self) -> Result<DeviceState, WgError> {
        let device = Device::get(&self.name, Backend::Kernel).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(19) {
                WgError::Missing(self.display.clone())
            } else {
                WgError::Kernel(e.to_string())
            }
        })?;
        let mut state = DeviceState {
            public_key: device.public_key.map(|k| PublicKey(k.0)),
            listen_port: device.listen_port,
            ..Default::default()
        };
        for peer in device.peers {
            let mut allowed: Vec<ipnet::IpNet> = peer
                .config
                .allowed_ips
                .iter()
                .filter_map(|a| ipnet::IpNet::new(a.address, a.cidr).ok())
                .collect();
            allowed.sort();
            state.peers.insert(
                PublicKey(peer.config.public_key.0),
                PeerState {
                    endpoint: peer.config.endpoint,
                    allowed_ips: allowed,
                    persistent_keepalive: peer
                        .config
                        .persistent_keepalive_interval
                        .filter(|s| *s > 0),
                    preshared_key: peer
                        .config
                        .preshared_key
                        .map(|k| PresharedKey(k.0))
                        .filter(|k| !k.is_zero()),
                    last_handshake: peer.stats.last_handshake_time,
                    rx_bytes: peer.stats.rx_bytes,
                    tx_bytes: peer.stats.tx_bytes,
                },
            );
        }
        Ok(state)
    }

    fn write(&mut self, update: &DeviceUpdate) -> Result<(), WgError> {
        let mut u = wireguard_control::DeviceUpdate::new();
        if let Some(key) = &update.private_key {
            u = u.set_private_key(Key(*key.bytes()));
        }
        if let Some(port) = update.listen_port {
            u = u.set_listen_port(port);
        }
        for change in &update.peers {
            u = match change {
                // The kernel changes a peer in place.
                PeerChange::Add(p) | PeerChange::Update { peer: p, .. } => u.add_peer(builder(p)),
                PeerChange::Remove(k) => u.remove_peer_by_key(&Key(k.0)),
            };
        }
        u.apply(&self.name, Backend::Kernel)
            .map_err(|e| WgError::Kernel(e.to_string()))
    }
}
