//! NAT traversal from what the mesh itself sees. Every agent publishes, as
//! its Node's `trellis.dev/discovered-endpoints`, where its live sessions'
//! packets come from; together these are the
//! [`Sightings`](crate::sightings::Sightings). A node that the
//! others see at another address than the one it published is behind a
//! NAT: the others dial it there (for two endpoint-independent NATs that is
//! hole punching: both sides send to each other's public mapping until the
//! routers let the packets in), and every pair with a node behind NAT — or
//! with an address that is not routed on the Internet — gets a persistent
//! keepalive, which keeps the NAT mappings open and keeps handshakes going
//! so that a path that does not work is noticed (see [`crate::relay`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::key::PublicKey;
use crate::model::Desired;
use crate::session::is_live;

/// Keepalive (seconds) of a pair with a node behind NAT, unless an
/// annotation sets one: below the 30 s most NAT routers keep an idle UDP
/// mapping.
pub const NAT_KEEPALIVE: u16 = 25;

/// What one peer's session looks like on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Where its packets come from now.
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
}

/// What this node publishes as its discovered endpoints: every peer of
/// `desired` with a live session whose endpoint matters to the others — a
/// pair kept alive (NAT in the way, or someone asked for a keepalive) or a
/// peer that roamed away from its configured endpoint. A peer reached
/// through a relay, or whose direct path went silent (see
/// [`crate::health`]), is not seen: no one should relay through it.
pub fn discovered_endpoints(
    desired: &Desired,
    sessions: &BTreeMap<PublicKey, Session>,
    now: SystemTime,
) -> BTreeMap<PublicKey, SocketAddr> {
    desired
        .peers
        .iter()
        .filter_map(|(key, want)| {
            let s = sessions.get(key)?;
            let at = s.endpoint?;
            let matters = want.persistent_keepalive.is_some() || want.endpoint != Some(at);
            let direct = !desired.relayed.contains_key(key) && !desired.silent.contains_key(key);
            (matters && direct && is_live(s.last_handshake, now)).then_some((*key, at))
        })
        .collect()
}

#[cfg(test)]
mod tests;
