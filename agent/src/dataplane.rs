//! The node's dataplane behind one trait: read everything back into a
//! `mesh::Observed`, apply a `mesh::Plan`. [`NodeDataplane`] is the real
//! one (a WireGuard device, rtnetlink, nftables); a recording fake
//! (`dataplane::fake`, compiled for tests only) stands in for unit tests.
//!
//! nftables is read back from the kernel: after loading the masquerade
//! table the agent lists it (`nft list table`) and records that listing
//! with the ruleset it loaded; at each observe it lists the table again. A
//! table that is missing, or lists otherwise than recorded (a rule edited,
//! added or deleted inside `inet trellis` by someone else), is loaded
//! again by the next plan. The `nft` program stays for now: its text is
//! the stable form of a ruleset that both loading and reading back share.
//! Of the crates that speak nftables over netlink, `nftnl` binds libnftnl
//! (a C library the static image would need), `rustables` (pure Rust since
//! 0.8) is GPL-3.0 and calls itself rough and built by trial and error, and
//! `nf_tables` is at 0.1; none is yet the maintained base this deserves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use trellis_mesh::{Observed, ObservedPeer, Plan};

use crate::echo::EchoProber;
use crate::key::PrivateKey;
use crate::netlink::{Netlink, NetlinkError};
use crate::wg::{DeviceState, DeviceUpdate, WgError, WireGuard};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    WireGuard(#[from] WgError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("nftables: {0}")]
    Nft(String),
    #[error("{0}")]
    Other(String),
}

/// What observing returns: the state to plan against, the device's
/// per-peer statistics (handshakes, bytes) for metrics, and when each
/// address sent echo requests last answered.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub observed: Observed,
    pub device: DeviceState,
    pub echo_answers: BTreeMap<IpAddr, SystemTime>,
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
    /// Keeps ICMP echo requests going to each of `targets`, and to no
    /// other address, until the next call; their answers are observed
    /// (see [`crate::echo`]).
    async fn echo(&mut self, targets: &[IpAddr]);
    /// Whether the mesh interface exists, is up and has carrier (a
    /// persistent TUN with no device attached has none; a failed look
    /// counts as not up).
    async fn interface_up(&mut self) -> bool;
    /// The MTU of the interface holding `address` (the underlay's).
    async fn underlay_mtu(&mut self, address: IpAddr) -> Option<u32>;
}

#[cfg(test)]
pub mod fake;

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
    pub netlink: Netlink,
    pub interface: String,
    pub private_key: PrivateKey,
    pub nft_table: String,
    /// The ruleset last loaded and the kernel's listing of it right after.
    /// Kept in `nft_record` too, so that a restarted agent does not load
    /// an unchanged table again.
    pub last_nft: Option<NftRecord>,
    /// Where the record is kept (in the state dir).
    pub nft_record: Option<std::path::PathBuf>,
    /// Whether creating the interface is ours to do (kernel) or the
    /// userspace device's.
    pub creates_interface: bool,
    /// The device was just given the node's key: a new device (a
    /// restarted userspace device, a new interface), whose peers still
    /// hold sessions with the one before it. The first peers written to it
    /// are probed at once, so that it starts a handshake with each: a peer
    /// then drops the old session at once instead of sending into it until
    /// its own rekey timeout (~15 s) or the next rekey (2 min).
    pub new_device: bool,
    /// The echo prober, opened at the first `echo` call.
    pub echoes: Option<EchoProber>,
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

/// A masquerade ruleset as loaded, and as the kernel listed it then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NftRecord {
    pub loaded: String,
    pub kernel: String,
}

impl NftRecord {
    /// What to plan against, given the kernel's listing now (`None`: no
    /// table): the loaded ruleset while the kernel still lists it as it
    /// did, else the listing itself, which no desired ruleset equals.
    pub fn observed(record: Option<&NftRecord>, listing: Option<String>) -> Option<String> {
        let listing = listing?;
        Some(match record {
            Some(r) if r.kernel == listing => r.loaded.clone(),
            _ => listing,
        })
    }
}

impl NodeDataplane {
    /// Reads the record a previous agent kept (nothing if none or from an
    /// older agent: the table is then loaded once more).
    pub fn load_nft_record(&mut self) {
        if let Some(path) = &self.nft_record {
            self.last_nft = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
        }
    }

    fn record_nft(&self, record: &NftRecord) {
        let Some(path) = &self.nft_record else { return };
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string(record).expect("record serializes");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            // Only costs a reload of the same ruleset after a restart.
            tracing::warn!(path = %path.display(), error = %e, "recording the loaded ruleset");
        }
    }

    /// The kernel's listing of our table (`None`: there is none).
    async fn nft_listing(&self) -> Option<String> {
        run_nft(&["list", "table", "inet", &self.nft_table], None)
            .await
            .ok()
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
            self.new_device = true;
            self.wg.write(&DeviceUpdate {
                private_key: Some(self.private_key.clone()),
                ..Default::default()
            })?;
            state = self.wg.read()?;
        }
        Ok(state)
    }
}

/// Probes each of `addresses` through `interface` now, then again every
/// [`NEW_DEVICE_PROBE_EVERY`], [`NEW_DEVICE_PROBES`] times in all, in a
/// task of its own (the reconcile goes on): a device started beside the
/// agent (wireguard-go) may bring its peers up only a moment after the
/// interface is, and drop the first datagram; a peer whose handshake never
/// starts goes on sending into its session with the old device until its
/// own rekey timeout (~15 s lost). A probe after the handshake is one
/// datagram the peer drops.
fn probe_new_device_peers(interface: &str, addresses: Vec<IpAddr>) {
    let interface = interface.to_string();
    tokio::spawn(async move {
        for round in 0..NEW_DEVICE_PROBES {
            if round > 0 {
                tokio::time::sleep(NEW_DEVICE_PROBE_EVERY).await;
            }
            for address in &addresses {
                if let Err(e) = send_probe(&interface, *address) {
                    tracing::debug!(%address, error = %e, "probe not sent");
                }
            }
        }
    });
}

/// How often a new device's peers are probed again.
const NEW_DEVICE_PROBE_EVERY: Duration = Duration::from_millis(250);
/// How many times in all (3 s).
const NEW_DEVICE_PROBES: u32 = 12;

impl Dataplane for NodeDataplane {
    async fn observe(&mut self) -> Result<Observation, DataplaneError> {
        let device = self.device()?;
        let iface = self
            .netlink
            .state(&self.interface)
            .await?
            .ok_or_else(|| DataplaneError::NoInterface(self.interface.clone()))?;
        let routes = self.netlink.mesh_routes().await?;
        let listing = self.nft_listing().await;
        let nft_ruleset = NftRecord::observed(self.last_nft.as_ref(), listing);
        if let (Some(seen), Some(record)) = (&nft_ruleset, &self.last_nft) {
            if *seen != record.loaded {
                tracing::warn!(table = %self.nft_table, "the nftables table inet {} is not as the agent loaded it (edited outside Trellis?): loading it again", self.nft_table);
            }
        }
        let observed = Observed {
            listen_port: device.listen_port,
            mtu: Some(iface.mtu),
            up: iface.up,
            addresses: iface.addresses,
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
            nft_ruleset,
        };
        let echo_answers = self
            .echoes
            .as_ref()
            .map(EchoProber::answers)
            .unwrap_or_default();
        Ok(Observation {
            observed,
            device,
            echo_answers,
        })
    }

    async fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        let iface = self
            .netlink
            .state(&self.interface)
            .await?
            .ok_or_else(|| DataplaneError::NoInterface(self.interface.clone()))?;
        if plan.set_mtu.is_some() || plan.set_up {
            self.netlink
                .set_mtu_up(iface.index, plan.set_mtu, plan.set_up || iface.up)
                .await?;
        }
        for a in &plan.remove_addresses {
            self.netlink.remove_address(iface.index, *a).await?;
        }
        for a in &plan.add_addresses {
            self.netlink.add_address(iface.index, *a).await?;
        }
        if plan.set_listen_port.is_some() || !plan.peers.is_empty() {
            self.wg.write(&DeviceUpdate {
                private_key: None,
                listen_port: plan.set_listen_port,
                peers: plan.peers.clone(),
            })?;
        }
        for r in &plan.remove_routes {
            self.netlink.remove_route(r).await?;
        }
        for r in &plan.add_routes {
            self.netlink.add_route(iface.index, r).await?;
        }
        if let Some(rules) = &plan.nft_ruleset {
            run_nft(&["-f", "-"], Some(rules)).await?;
            let record = NftRecord {
                loaded: rules.clone(),
                kernel: self.nft_listing().await.unwrap_or_default(),
            };
            self.record_nft(&record);
            self.last_nft = Some(record);
        }
        if self.new_device {
            let probes: Vec<IpAddr> = plan
                .peers
                .iter()
                .filter_map(|c| match c {
                    trellis_mesh::PeerChange::Add(p) => {
                        trellis_mesh::relay::probe_address(&p.allowed_ips)
                    }
                    _ => None,
                })
                .collect();
            if !probes.is_empty() {
                tracing::info!(interface = %self.interface, peers = probes.len(), "a new device: starting a handshake with each peer, so that none keeps sending into its session with the device before");
                self.new_device = false;
                probe_new_device_peers(&self.interface, probes);
            }
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

    async fn echo(&mut self, targets: &[IpAddr]) {
        if self.echoes.is_none() && targets.is_empty() {
            return;
        }
        self.echoes
            .get_or_insert_with(EchoProber::open)
            .set_targets(targets);
    }

    async fn interface_up(&mut self) -> bool {
        matches!(self.netlink.state(&self.interface).await, Ok(Some(state)) if state.up && state.carrier)
    }

    async fn underlay_mtu(&mut self, address: IpAddr) -> Option<u32> {
        self.netlink
            .mtu_of_interface_with(address)
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::NftRecord;

    #[test]
    fn a_table_listed_as_loaded_is_the_ruleset_loaded_and_any_other_listing_is_not() {
        let record = NftRecord {
            loaded: "table inet trellis\ndelete table inet trellis\n...".into(),
            kernel: "table inet trellis {\n\tchain postrouting {...}\n}\n".into(),
        };
        assert_eq!(
            NftRecord::observed(Some(&record), Some(record.kernel.clone())),
            Some(record.loaded.clone())
        );
        let edited = record.kernel.replace("...", "... accept");
        assert_eq!(
            NftRecord::observed(Some(&record), Some(edited.clone())),
            Some(edited),
            "an edited table is what the plan sees: it differs from every ruleset"
        );
        assert_eq!(NftRecord::observed(Some(&record), None), None, "missing");
        assert_eq!(
            NftRecord::observed(None, Some(record.kernel.clone())),
            Some(record.kernel.clone()),
            "no record (first start, or an older agent's): load once"
        );
    }
}
