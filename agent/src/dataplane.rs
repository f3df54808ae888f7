//! The node's dataplane behind one trait: read everything back into a
//! `mesh::Observed`, apply a `mesh::Plan`. [`NodeDataplane`] is the real
//! one (a WireGuard device, rtnetlink, nftables); [`FakeDataplane`] records
//! plans for unit tests.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use trellis_mesh::{Observed, ObservedPeer, Plan};

use crate::key::PrivateKey;
use crate::link::{LinkError, Links};
use crate::wg::{DeviceState, DeviceUpdate, WgError, WireGuard};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    WireGuard(#[from] WgError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("nftables: {0}")]
    Nft(String),
    #[error("{0}")]
    Other(String),
}

/// What observing returns: the state to plan against, and the device's
/// per-peer statistics (handshakes, bytes) for metrics.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub observed: Observed,
    pub device: DeviceState,
}

#[allow(async_fn_in_trait)]
pub trait Dataplane {
    /// Makes sure the device exists and carries our key, then reads the
    /// device and the kernel back.
    async fn observe(&mut self) -> Result<Observation, DataplaneError>;
    /// Applies a plan.
    async fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError>;
    /// Sends one empty datagram to each address through the mesh
    /// interface: the device starts a handshake with the peer whose
    /// AllowedIPs hold it, if it has no session (see
    /// [`trellis_mesh::relay::probe_address`]). Best effort: a probe that
    /// cannot be sent is only logged.
    async fn probe(&mut self, addresses: &[IpAddr]);
}

/// One empty datagram to the discard port of `address`, out of `interface`.
fn send_probe(interface: &str, address: IpAddr) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::BindToDevice};
    let local: SocketAddr = match address {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local)?;
    setsockopt(&socket, BindToDevice, &std::ffi::OsString::from(interface))?;
    socket.send_to(&[], (address, 9))?;
    Ok(())
}

/// The real dataplane of a node.
pub struct NodeDataplane {
    pub wg: Box<dyn WireGuard>,
    pub links: Links,
    pub interface: String,
    pub private_key: PrivateKey,
    pub nft_table: String,
    /// The ruleset last loaded (the kernel's text differs in form, so we
    /// compare with what we wrote). Kept in `nft_record` too, so that a
    /// restarted agent does not load an unchanged ruleset again.
    pub last_nft: Option<String>,
    /// Where the last loaded ruleset is recorded (in the state dir).
    pub nft_record: Option<std::path::PathBuf>,
    /// Whether creating the interface is ours to do (kernel) or the
    /// userspace device's.
    pub creates_interface: bool,
}

impl std::fmt::Debug for NodeDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeDataplane")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

async fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<String, DataplaneError> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        DataplaneError::Nft(format!("cannot run nft ({e}): is nftables installed?"))
    })?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .await
            .map_err(|e| DataplaneError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| DataplaneError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DataplaneError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

impl NodeDataplane {
    /// Reads the ruleset a previous agent recorded (nothing if none).
    pub fn load_nft_record(&mut self) {
        if let Some(path) = &self.nft_record {
            self.last_nft = std::fs::read_to_string(path).ok();
        }
    }

    fn record_nft(&self, rules: &str) {
        let Some(path) = &self.nft_record else { return };
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, rules).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            // Only costs a reload of the same ruleset after a restart.
            tracing::warn!(path = %path.display(), error = %e, "recording the loaded ruleset");
        }
    }

    fn device(&mut self) -> Result<DeviceState, DataplaneError> {
        let mut state = match self.wg.read() {
            Err(WgError::Missing(_)) if self.creates_interface => {
                self.wg.write(&DeviceUpdate {
                    private_key: Some(self.private_key.clone()),
                    ..Default::default()
                })?;
                self.wg.read()?
            }
            other => other?,
        };
        if state.public_key != Some(self.private_key.public_key()) {
            tracing::info!(interface = %self.interface, "setting the node's key on the device");
            self.wg.write(&DeviceUpdate {
                private_key: Some(self.private_key.clone()),
                ..Default::default()
            })?;
            state = self.wg.read()?;
        }
        Ok(state)
    }
}

impl Dataplane for NodeDataplane {
    async fn observe(&mut self) -> Result<Observation, DataplaneError> {
        let device = self.device()?;
        let link = self
            .links
            .state(&self.interface)
            .await?
            .ok_or_else(|| DataplaneError::NoInterface(self.interface.clone()))?;
        let routes = self.links.mesh_routes().await?;
        let table_exists = run_nft(&["list", "table", "inet", &self.nft_table], None)
            .await
            .is_ok();
        let observed = Observed {
            listen_port: device.listen_port,
            mtu: Some(link.mtu),
            up: link.up,
            addresses: link.addresses,
            peers: device
                .peers
                .iter()
                .map(|(k, p)| {
                    (
                        *k,
                        ObservedPeer {
                            endpoint: p.endpoint,
                            allowed_ips: p.allowed_ips.clone(),
                            persistent_keepalive: p.persistent_keepalive,
                            preshared_key: p.preshared_key,
                        },
                    )
                })
                .collect(),
            routes,
            nft_ruleset: if table_exists {
                Some(self.last_nft.clone().unwrap_or_default())
            } else {
                None
            },
        };
        Ok(Observation { observed, device })
    }

    async fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        let link = self
            .links
            .state(&self.interface)
            .await?
            .ok_or_else(|| DataplaneError::NoInterface(self.interface.clone()))?;
        if plan.set_mtu.is_some() || plan.set_up {
            self.links
                .set_mtu_up(link.index, plan.set_mtu, plan.set_up || link.up)
                .await?;
        }
        for a in &plan.remove_addresses {
            self.links.remove_address(link.index, *a).await?;
        }
        for a in &plan.add_addresses {
            self.links.add_address(link.index, *a).await?;
        }
        if plan.set_listen_port.is_some() || !plan.peers.is_empty() {
            self.wg.write(&DeviceUpdate {
                private_key: None,
                listen_port: plan.set_listen_port,
                peers: plan.peers.clone(),
            })?;
        }
        for r in &plan.remove_routes {
            self.links.remove_route(r).await?;
        }
        for r in &plan.add_routes {
            self.links.add_route(link.index, r).await?;
        }
        if let Some(rules) = &plan.nft_ruleset {
            run_nft(&["-f", "-"], Some(rules)).await?;
            self.last_nft = Some(rules.clone());
            self.record_nft(rules);
        }
        Ok(())
    }

    async fn probe(&mut self, addresses: &[IpAddr]) {
        for address in addresses {
            if let Err(e) = send_probe(&self.interface, *address) {
                tracing::debug!(%address, error = %e, "probe not sent");
            }
        }
    }
}

/// A recording dataplane for unit tests: an in-memory node.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub observed: Observed,
    pub applied: Vec<Plan>,
    /// The addresses of each `probe` call.
    pub probed: Vec<Vec<IpAddr>>,
    /// Makes the next observe fail with this message (the device is gone).
    pub fail_observe: Option<String>,
}

impl Dataplane for FakeDataplane {
    async fn observe(&mut self) -> Result<Observation, DataplaneError> {
        if let Some(msg) = self.fail_observe.take() {
            return Err(DataplaneError::Other(msg));
        }
        Ok(Observation {
            observed: self.observed.clone(),
            device: DeviceState::default(),
        })
    }

    async fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        self.observed = plan.applied_to(&self.observed);
        self.applied.push(plan.clone());
        Ok(())
    }

    async fn probe(&mut self, addresses: &[IpAddr]) {
        self.probed.push(addresses.to_vec());
    }
}
