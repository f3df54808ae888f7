//! The echo prober: ICMP echo requests to a set of addresses, one every
//! [`ECHO_EVERY`] each, from tasks of their own, and when each last
//! answered. The addresses are the mesh addresses of the probed peers
//! (see [`trellis_mesh::health`]); what the answers mean is decided there.
//! Built on `surge-ping` (a raw ICMP socket: the agent has `CAP_NET_RAW`;
//! a datagram "ping" socket where the node allows it), one socket per
//! family, opened in the node's network namespace when first needed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use surge_ping::{Client, Config, IcmpPacket, PingIdentifier, PingSequence, ICMP};
use tokio::task::JoinHandle;
use trellis_mesh::health::{ECHO_EVERY, ECHO_TIMEOUT};

/// When each address last answered an echo.
type Answers = Arc<Mutex<BTreeMap<IpAddr, SystemTime>>>;

/// Sends echo requests to the addresses it is given, until told otherwise.
pub struct EchoProber {
    v4: Option<Client>,
    v6: Option<Client>,
    /// One task per address.
    senders: BTreeMap<IpAddr, JoinHandle<()>>,
    answers: Answers,
}

impl std::fmt::Debug for EchoProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoProber")
            .field("targets", &self.senders.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl EchoProber {
    /// Opens an ICMP socket per family (in the calling thread's network
    /// namespace). A family whose socket cannot be opened is left out, with
    /// a warning: its peers are judged by their handshakes alone.
    pub fn open() -> Self {
        let open = |kind: ICMP, family: &str| match Client::new(
            &Config::builder().kind(kind).build(),
        ) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::warn!(family, %error, "cannot open an ICMP socket: paths are judged by their handshakes alone (is CAP_NET_RAW granted?)");
                None
            }
        };
        EchoProber {
            v4: open(ICMP::V4, "IPv4"),
            v6: open(ICMP::V6, "IPv6"),
            senders: BTreeMap::new(),
            answers: Answers::default(),
        }
    }

    /// Keeps echoes going to exactly `targets`.
    pub fn set_targets(&mut self, targets: &[IpAddr]) {
        self.senders.retain(|address, task| {
            let keep = targets.contains(address);
            if !keep {
                task.abort();
            }
            keep
        });
        self.answers
            .lock()
            .expect("answers lock")
            .retain(|address, _| targets.contains(address));
        for address in targets {
            if self.senders.contains_key(address) {
                continue;
            }
            let client = match address {
                IpAddr::V4(_) => self.v4.clone(),
                IpAddr::V6(_) => self.v6.clone(),
            };
            let Some(client) = client else { continue };
            let task = tokio::spawn(send_echoes(client, *address, self.answers.clone()));
            self.senders.insert(*address, task);
        }
    }

    /// When each target last answered (targets that never did are absent).
    pub fn answers(&self) -> BTreeMap<IpAddr, SystemTime> {
        self.answers.lock().expect("answers lock").clone()
    }
}

impl Drop for EchoProber {
    fn drop(&mut self) {
        for task in self.senders.values() {
            task.abort();
        }
    }
}

/// One echo request every [`ECHO_EVERY`] to `address`, for as long as the
/// task lives; each answer's time goes into `answers`.
async fn send_echoes(client: Client, address: IpAddr, answers: Answers) {
    let mut every = tokio::time::interval(ECHO_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Sequence numbers wrap after 18 hours: then a new pinger, a new identifier.
    loop {
        let mut pinger = client
            .pinger(address, PingIdentifier(rand_identifier(address)))
            .await;
        pinger.timeout(ECHO_TIMEOUT);
        for seq in 0..=u16::MAX {
            every.tick().await;
            match pinger.ping(PingSequence(seq), b"trellis path check").await {
                Ok((packet, _)) if is_echo_reply(&packet) => {
                    let now = SystemTime::now();
                    answers.lock().expect("answers lock").insert(address, now);
                }
                Ok((packet, _)) => {
                    tracing::trace!(%address, ?packet, "an ICMP error, not an answer")
                }
                Err(error) => tracing::trace!(%address, %error, "echo unanswered"),
            }
        }
    }
}

/// Whether `packet` answers an echo request: an ICMP error that quotes the
/// request (host unreachable: a device with no endpoint for the peer says
/// so) is no answer from the peer.
fn is_echo_reply(packet: &IcmpPacket) -> bool {
    const ECHO_REPLY: u8 = 0;
    const ECHO_REPLY_V6: u8 = 129;
    match packet {
        IcmpPacket::V4(p) => p.get_icmp_type().0 == ECHO_REPLY,
        IcmpPacket::V6(p) => p.get_icmpv6_type().0 == ECHO_REPLY_V6,
    }
}

/// An identifier that differs per target and per pinger, so that another
/// pinger in the namespace (or the next one here) does not take these
/// answers for its own.
fn rand_identifier(address: IpAddr) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(address.to_string().as_bytes());
    hasher.write_u32(std::process::id());
    hasher.finish() as u16
}
