//! The WireGuard device, behind one trait: a userspace device over its
//! UAPI socket ([`Uapi`]; trellis-wg or wireguard-go) or the kernel module
//! over netlink ([`crate::kernel_wg`]). Both read the device into a
//! [`DeviceState`] and write a [`DeviceUpdate`] in one transaction.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use trellis_mesh::{DesiredPeer, PeerChange, PresharedKey, PublicKey};

use crate::key::PrivateKey;

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("WireGuard device {0} does not exist (is trellis-wg running? for the kernel: is the module loaded?)")]
    Missing(String),
    #[error("UAPI socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the device refused the configuration (errno {errno}): {context}")]
    Refused { errno: i32, context: String },
    #[error("unreadable answer from the device: {0}")]
    Protocol(String),
    #[error("kernel WireGuard: {0}")]
    Kernel(String),
}

/// A peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerState {
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<PresharedKey>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The device as it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceState {
    pub public_key: Option<PublicKey>,
    pub listen_port: Option<u16>,
    pub peers: BTreeMap<PublicKey, PeerState>,
}

/// Changes to write in one transaction.
#[derive(Debug, Clone, Default)]
pub struct DeviceUpdate {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerChange>,
}

/// A WireGuard device.
pub trait WireGuard: Send {
    /// Reads the device.
    fn read(&mut self) -> Result<DeviceState, WgError>;
    /// Writes changes in one transaction.
    fn write(&mut self, update: &DeviceUpdate) -> Result<(), WgError>;
}

/// A userspace device over `RUN_DIR/NAME.sock`.
#[derive(Debug, Clone)]
pub struct Uapi {
    pub socket: PathBuf,
    pub interface: String,
}

const IO_TIMEOUT: Duration = Duration::from_secs(5);

impl Uapi {
    pub fn new(socket: &Path, interface: &str) -> Self {
        Uapi {
            socket: socket.to_path_buf(),
            interface: interface.to_string(),
        }
    }

    pub fn exists(&self) -> bool {
        UnixStream::connect(&self.socket).is_ok()
    }

    fn exchange(&self, request: &str) -> Result<Vec<(String, String)>, WgError> {
        let sock_err = |source| WgError::Socket {
            path: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::ConnectionRefused
            {
                WgError::Missing(self.interface.clone())
            } else {
                sock_err(e)
            }
        })?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(sock_err)?;
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(sock_err)?;
        stream.write_all(request.as_bytes()).map_err(sock_err)?;
        let mut pairs = Vec::new();
        for line in BufReader::new(&stream).lines() {
            let line = line.map_err(sock_err)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| WgError::Protocol(line.clone()))?;
            pairs.push((k.to_string(), v.to_string()));
        }
        match pairs.last() {
            Some((k, v)) if k == "errno" => {
                let errno: i32 = v
                    .parse()
                    .map_err(|_| WgError::Protocol(format!("errno={v}")))?;
                if errno != 0 {
                    return Err(WgError::Refused {
                        errno,
                        context: request.lines().next().unwrap_or_default().to_string(),
                    });
                }
                pairs.pop();
                Ok(pairs)
            }
            _ => Err(WgError::Protocol("the answer has no errno line".into())),
        }
    }
}

/// Parses the answer to `get=1`.
pub fn parse_get(pairs: &[(String, String)]) -> Result<DeviceState, WgError> {
    let mut state = DeviceState::default();
    let mut current: Option<(PublicKey, PeerState)> = None;
    let mut handshake_sec: u64 = 0;
    let bad = |k: &str, v: &str| WgError::Protocol(format!("{k}={v}"));
    for (k, v) in pairs {
        match k.as_str() {
            "private_key" => {
                if let Ok(key) = PublicKey::from_hex(v) {
                    // The device has a private key; its public key is what
                    // peers see. The private one is never kept here.
                    let secret = x25519_dalek::StaticSecret::from(key.0);
                    state.public_key =
                        Some(PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes()));
                }
            }
            // trellis-wg reports this until a key was set through it.
            "own_public_key" => {
                state.public_key = Some(PublicKey::from_hex(v).map_err(|_| bad(k, v))?)
            }
            "listen_port" => state.listen_port = Some(v.parse().map_err(|_| bad(k, v))?),
            "public_key" => {
                if let Some((key, peer)) = current.take() {
                    state.peers.insert(key, peer);
                }
                current = Some((
                    PublicKey::from_hex(v).map_err(|_| bad(k, v))?,
                    PeerState::default(),
                ));
                handshake_sec = 0;
            }
            _ => {
                let Some((_, peer)) = current.as_mut() else {
                    continue;
                };
                match k.as_str() {
                    "endpoint" => peer.endpoint = Some(v.parse().map_err(|_| bad(k, v))?),
                    "allowed_ip" => {
                        peer.allowed_ips.push(v.parse().map_err(|_| bad(k, v))?);
                        peer.allowed_ips.sort();
                    }
                    "persistent_keepalive_interval" => {
                        let s: u16 = v.parse().map_err(|_| bad(k, v))?;
                        peer.persistent_keepalive = (s > 0).then_some(s);
                    }
                    "last_handshake_time_sec" => {
                        handshake_sec = v.parse().map_err(|_| bad(k, v))?;
                        peer.last_handshake = (handshake_sec > 0)
                            .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(handshake_sec));
                    }
                    "last_handshake_time_nsec" => {
                        let ns: u64 = v.parse().map_err(|_| bad(k, v))?;
                        if handshake_sec > 0 {
                            peer.last_handshake = Some(
                                SystemTime::UNIX_EPOCH
                                    + Duration::from_secs(handshake_sec)
                                    + Duration::from_nanos(ns),
                            );
                        }
                    }
                    "preshared_key" => {
                        let k = PresharedKey::from_hex(v).map_err(|_| bad(k, "<redacted>"))?;
                        peer.preshared_key = (!k.is_zero()).then_some(k);
                    }
                    "rx_bytes" => peer.rx_bytes = v.parse().map_err(|_| bad(k, v))?,
                    "tx_bytes" => peer.tx_bytes = v.parse().map_err(|_| bad(k, v))?,
                    _ => {}
                }
            }
        }
    }
    if let Some((key, peer)) = current {
        state.peers.insert(key, peer);
    }
    Ok(state)
}

fn peer_lines(out: &mut String, peer: &DesiredPeer) {
    out.push_str(&format!("public_key={}\n", peer.public_key.to_hex()));
    if let Some(e) = peer.endpoint {
        out.push_str(&format!("endpoint={e}\n"));
    }
    out.push_str(&format!(
        "persistent_keepalive_interval={}\n",
        peer.persistent_keepalive.unwrap_or(0)
    ));
    // All zeros removes a preshared key a peer had before.
    out.push_str(&format!(
        "preshared_key={}\n",
        peer.preshared_key
            .map(|k| k.to_hex())
            .unwrap_or_else(|| "0".repeat(64))
    ));
    out.push_str("replace_allowed_ips=true\n");
    for ip in &peer.allowed_ips {
        out.push_str(&format!("allowed_ip={ip}\n"));
    }
}

/// Whether an update can be applied in place: the protocol cannot unset an
/// endpoint, so a peer that loses its endpoint is removed and added again
/// in the same request (and loses its session). Every other change is made
/// in place, as the kernel makes it, keeping the session.
fn in_place(changed: &[trellis_mesh::plan::PeerField]) -> bool {
    !changed.iter().any(|f| {
        matches!(
            f,
            trellis_mesh::plan::PeerField::Endpoint {
                from: Some(_),
                to: None
            }
        )
    })
}

/// The `set=1` request for an update.
pub fn set_request(update: &DeviceUpdate) -> String {
    let mut out = String::from("set=1\n");
    if let Some(key) = &update.private_key {
        out.push_str(&format!("private_key={}\n", key.to_hex()));
    }
    if let Some(port) = update.listen_port {
        out.push_str(&format!("listen_port={port}\n"));
    }
    for change in &update.peers {
        match change {
            PeerChange::Add(p) => peer_lines(&mut out, p),
            PeerChange::Update { peer, changed } => {
                if !in_place(changed) {
                    out.push_str(&format!(
                        "public_key={}\nremove=true\n",
                        peer.public_key.to_hex()
                    ));
                }
                peer_lines(&mut out, peer);
            }
            PeerChange::Remove(k) => {
                out.push_str(&format!("public_key={}\nremove=true\n", k.to_hex()))
            }
        }
    }
    out.push('\n');
    out
}

impl WireGuard for Uapi {
    fn read(&mut self) -> Result<DeviceState, WgError> {
        parse_get(&self.exchange("get=1\n\n")?)
    }

    fn write(&mut self, update: &DeviceUpdate) -> Result<(), WgError> {
        self.exchange(&set_request(update)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn peer(n: u8) -> DesiredPeer {
        DesiredPeer {
            name: trellis_mesh::PeerName::Node(format!("n{n}")),
            public_key: key(n),
            endpoint: Some(format!("192.0.2.{n}:51820").parse().unwrap()),
            allowed_ips: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            persistent_keepalive: None,
            preshared_key: None,
        }
    }

    #[test]
    fn updates_are_in_place_unless_the_endpoint_goes() {
        let req = set_request(&DeviceUpdate {
            private_key: None,
            listen_port: Some(51820),
            peers: vec![
                PeerChange::Update {
                    peer: peer(1),
                    changed: vec![trellis_mesh::plan::PeerField::PresharedKey],
                },
                PeerChange::Update {
                    peer: DesiredPeer {
                        endpoint: None,
                        ..peer(4)
                    },
                    changed: vec![trellis_mesh::plan::PeerField::Endpoint {
                        from: Some("192.0.2.4:51820".parse().unwrap()),
                        to: None,
                    }],
                },
                PeerChange::Remove(key(2)),
                PeerChange::Add(peer(3)),
            ],
        });
        let k1 = key(1).to_hex();
        let k4 = key(4).to_hex();
        assert!(req.starts_with("set=1\nlisten_port=51820\n"), "{req}");
        assert!(
            !req.contains(&format!("public_key={k1}\nremove=true\n")),
            "changed in place, session kept: {req}"
        );
        assert!(req.contains(&format!("public_key={k1}\nendpoint=192.0.2.1:51820\n")));
        let remove = req
            .find(&format!("public_key={k4}\nremove=true\n"))
            .expect("an endpoint cannot be unset in place");
        let add = req
            .rfind(&format!("public_key={k4}\npersistent_keepalive_interval"))
            .unwrap();
        assert!(remove < add, "{req}");
        assert!(req.contains(&format!("public_key={}\nremove=true\n", key(2).to_hex())));
        assert!(req.contains("replace_allowed_ips=true\nallowed_ip=10.244.3.0/24\n"));
        assert!(req.ends_with("\n\n"));
    }

    #[test]
    fn the_private_key_appears_only_when_set() {
        let plain = set_request(&DeviceUpdate::default());
        assert!(!plain.contains("private_key"));
        let with = set_request(&DeviceUpdate {
            private_key: Some(PrivateKey::generate()),
            ..Default::default()
        });
        assert!(with.contains("private_key="));
    }

    #[test]
    fn a_get_answer_parses() {
        let text = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20\npersistent_keepalive_interval=25\nallowed_ip=10.244.1.0/24\nallowed_ip=fd00::/64\npublic_key={}\nallowed_ip=10.244.2.0/24\nlast_handshake_time_sec=0\n",
            "11".repeat(32), key(1).to_hex(), key(2).to_hex()
        );
        let pairs: Vec<(String, String)> = text
            .lines()
            .map(|l| {
                let (a, b) = l.split_once('=').unwrap();
                (a.into(), b.into())
            })
            .collect();
        let state = parse_get(&pairs).unwrap();
        assert_eq!(state.listen_port, Some(51820));
        assert!(state.public_key.is_some());
        let p1 = &state.peers[&key(1)];
        assert_eq!(p1.rx_bytes, 10);
        assert_eq!(p1.persistent_keepalive, Some(25));
        assert_eq!(p1.allowed_ips.len(), 2);
        assert!(p1.last_handshake.is_some());
        assert!(state.peers[&key(2)].last_handshake.is_none());
        let bad = vec![("public_key".to_string(), "xyz".to_string())];
        assert!(parse_get(&bad).is_err());
    }

    #[test]
    fn a_missing_socket_says_what_to_start() {
        let mut dev = Uapi::new(Path::new("/nonexistent/trellis.sock"), "trellis");
        let err = dev.read().unwrap_err().to_string();
        assert!(err.contains("trellis-wg"), "{err}");
    }
}
