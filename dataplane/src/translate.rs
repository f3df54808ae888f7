//! Translation between the standard WireGuard UAPI protocol, as `wg` and
//! the agent speak it, and boringtun's dialect of it:
//!
//! - boringtun answers `get` with `own_public_key` instead of `private_key`,
//!   and with the time *since* the last handshake where the protocol wants
//!   the time *of* it: `wg show` would print "56 years ago";
//! - boringtun reports a handshake only while its session lives: 180 s
//!   (REJECT_AFTER_TIME) after it, an idle peer looks as if it never had
//!   one. [`Handshakes`] keeps the last one, as the kernel does, until the
//!   peer is removed — or re-created, which costs boringtun the session;
//! - boringtun panics, then hangs, when a `set` changes a peer that exists:
//!   such a change becomes "remove the peer, add it again with its merged
//!   configuration" in the same request. A peer re-created that way has
//!   lost its session; [`sessions_to_restart`] names an address behind each
//!   such peer, so that a datagram sent there starts a new handshake at once
//!   (the other side would otherwise keep sending on the old session until
//!   its rekey timeout, about 15 s).
//!
//! Pure functions over key/value lines, tested without a device.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// One `key=value` line.
pub(crate) type Pair = (String, String);

/// Parses the lines of a request or answer (up to the blank line).
pub(crate) fn parse_pairs(text: &str) -> Vec<Pair> {
    text.lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

pub(crate) fn render(pairs: &[Pair]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    }
    out
}

/// A peer's configuration as boringtun reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PeerConfig {
    pub preshared_key: Option<String>,
    pub endpoint: Option<String>,
    pub keepalive: Option<String>,
    pub allowed_ips: Vec<String>,
    /// boringtun reported a handshake: the peer has (or had) a session.
    pub had_session: bool,
}

/// The peers of a `get` answer, by hex public key.
pub(crate) fn peers_of(get: &[Pair]) -> BTreeMap<String, PeerConfig> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for (k, v) in get {
        if k == "public_key" {
            current = Some(v.clone());
            out.insert(v.clone(), PeerConfig::default());
            continue;
        }
        let Some(peer) = current.as_ref().and_then(|c| out.get_mut(c)) else {
            continue;
        };
        match k.as_str() {
            "preshared_key" => peer.preshared_key = Some(v.clone()),
            "endpoint" => peer.endpoint = Some(v.clone()),
            "persistent_keepalive_interval" => peer.keepalive = Some(v.clone()),
            "allowed_ip" => peer.allowed_ips.push(v.clone()),
            "last_handshake_time_sec" => peer.had_session = true,
            _ => {}
        }
    }
    out
}

/// The last handshake of every peer that had one, kept as the kernel keeps
/// it: boringtun stops reporting a peer's handshake when its session
/// expires, `wg show` and the agent want it until the peer is removed.
///
/// What forgets a peer's handshake:
/// - a request boringtun gets (after [`rewrite_set`]) that removes the
///   peer, whether or not it adds it again: boringtun drops the session
///   with the peer, so the handshake no longer stands for one — the
///   agent's remove-then-add updates and the re-creations of in-place
///   changes alike. (Kept, it would make a re-created peer look live: a
///   node given a wrong endpoint would seem to have a session there, and
///   publish it as where it sees that peer.) On the kernel, which changes
///   a peer in place, the session and its handshake both stay;
/// - a `set` with `replace_peers=true` (`wg setconf`): every peer, as on
///   the kernel;
/// - anything else that makes the peer vanish from boringtun's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Handshakes(BTreeMap<String, SystemTime>);

impl Handshakes {
    /// Takes in boringtun's (successful) `get` answer at `now`: the
    /// handshakes it reports, made absolute; the peers it no longer lists
    /// are forgotten.
    pub(crate) fn observe(&mut self, answer: &[Pair], now: SystemTime) {
        let mut listed = BTreeSet::new();
        let mut key: Option<&str> = None;
        let mut since: Option<Duration> = None;
        for (k, v) in answer {
            match k.as_str() {
                "public_key" => {
                    key = Some(v);
                    since = None;
                    listed.insert(v.as_str());
                }
                "last_handshake_time_sec" => since = v.parse().ok().map(Duration::from_secs),
                "last_handshake_time_nsec" => {
                    let ns = v.parse().ok().map(Duration::from_nanos).unwrap_or_default();
                    let at = since.take().and_then(|s| now.checked_sub(s + ns));
                    if let (Some(key), Some(at)) = (key, at) {
                        self.0.insert(key.to_string(), at);
                    }
                }
                _ => {}
            }
        }
        self.0.retain(|k, _| listed.contains(k.as_str()));
    }

    /// Forgets the peers a `set` request (the lines after `set=1`, as
    /// boringtun gets them) removes; see the type's documentation.
    pub(crate) fn forget_removed(&mut self, request: &[Pair]) {
        let mut removed: BTreeMap<&str, bool> = BTreeMap::new();
        let mut key: Option<&str> = None;
        for (k, v) in request {
            match (k.as_str(), v.as_str(), key) {
                ("replace_peers", "true", None) => self.0.clear(),
                ("public_key", _, _) => {
                    key = Some(v);
                    removed.entry(v).or_insert(false);
                }
                ("remove", "true", Some(key)) => {
                    removed.insert(key, true);
                }
                _ => {}
            }
        }
        for (key, _) in removed.into_iter().filter(|(_, gone)| *gone) {
            self.0.remove(key);
        }
    }

    /// The last handshake with the peer of hex public key `key`.
    pub(crate) fn of(&self, key: &str) -> Option<SystemTime> {
        self.0.get(key).copied()
    }
}

/// Appends a handshake time in the standard form (seconds and nanoseconds
/// since the epoch).
fn push_handshake(out: &mut Vec<Pair>, at: Option<SystemTime>) {
    let Some(at) = at else { return };
    let epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    out.push((
        "last_handshake_time_sec".into(),
        epoch.as_secs().to_string(),
    ));
    out.push((
        "last_handshake_time_nsec".into(),
        epoch.subsec_nanos().to_string(),
    ));
}

/// Rewrites boringtun's `get` answer into the standard one: the private
/// key when known (it was set through us), and each peer's last handshake
/// from `handshakes` (which took in this answer before) as an absolute
/// time, where boringtun writes its own: before the counters.
pub(crate) fn translate_get(
    answer: &[Pair],
    private_key: Option<&str>,
    handshakes: &Handshakes,
) -> Vec<Pair> {
    let mut out = Vec::with_capacity(answer.len() + 3);
    if let Some(key) = private_key {
        out.push(("private_key".to_string(), key.to_string()));
    }
    // The handshake of the peer being written, until its place comes.
    let mut pending: Option<SystemTime> = None;
    for (k, v) in answer {
        match k.as_str() {
            "own_public_key" if private_key.is_some() => {}
            "last_handshake_time_sec" | "last_handshake_time_nsec" => {}
            "public_key" => {
                push_handshake(&mut out, pending.take());
                pending = handshakes.of(v);
                out.push((k.clone(), v.clone()));
            }
            "rx_bytes" | "tx_bytes" => {
                push_handshake(&mut out, pending.take());
                out.push((k.clone(), v.clone()));
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    push_handshake(&mut out, pending);
    out
}

/// For each request of [`rewrite_set`] that re-creates a peer which had a
/// session, an address in the peer's AllowedIPs (the first address after
/// the network address of its first range): traffic to it makes boringtun
/// handshake with the peer.
pub(crate) fn sessions_to_restart(
    requests: &[Vec<Pair>],
    existing: &BTreeMap<String, PeerConfig>,
) -> Vec<std::net::IpAddr> {
    let mut removed = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for unit in requests {
        let mut key = None;
        for (k, v) in unit {
            match (k.as_str(), v.as_str()) {
                ("public_key", _) => key = Some(v.as_str()),
                ("remove", "true") => {
                    removed.extend(key);
                }
                ("allowed_ip", range) => {
                    let re_created = key.is_some_and(|k| {
                        removed.contains(k) && existing.get(k).is_some_and(|p| p.had_session)
                    });
                    if let Some(address) = re_created.then(|| first_host(range)).flatten() {
                        out.push(address);
                        removed.remove(key.unwrap_or_default());
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The first address after the network address of `range` (the address
/// itself for a host range).
fn first_host(range: &str) -> Option<std::net::IpAddr> {
    use std::net::IpAddr;
    let (addr, prefix) = range.split_once('/')?;
    let (addr, prefix): (IpAddr, u8) = (addr.parse().ok()?, prefix.parse().ok()?);
    Some(match addr {
        IpAddr::V4(a) if prefix < 32 => IpAddr::V4((u32::from(a) | 1).into()),
        IpAddr::V6(a) if prefix < 128 => IpAddr::V6((u128::from(a) | 1).into()),
        other => other,
    })
}

/// Rewrites a `set` request into the requests to send boringtun, in order.
///
/// - No existing peer is changed in place: such a section becomes a removal
///   followed by the peer's full, merged configuration.
/// - boringtun does not reset a section's settings when the next
///   `public_key` starts: a `remove=true` (or an endpoint, a keepalive)
///   would leak into the next peer. So each peer goes in a request of its
///   own — its removal and re-addition together — and every addition says
///   `remove=false` and its keepalive explicitly.
///
/// Also returns the private key the request sets.
pub(crate) fn rewrite_set(
    request: &[Pair],
    existing: &BTreeMap<String, PeerConfig>,
) -> (Vec<Vec<Pair>>, Option<String>) {
    let mut device = Vec::new();
    let mut private_key = None;
    let mut sections: Vec<(String, Vec<Pair>)> = Vec::new();
    for (k, v) in request {
        if k == "public_key" {
            sections.push((v.clone(), Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push((k.clone(), v.clone()));
        } else {
            if k == "private_key" {
                private_key = Some(v.clone());
            }
            device.push((k.clone(), v.clone()));
        }
    }
    let mut requests: Vec<Vec<Pair>> = Vec::new();
    if !device.is_empty() {
        requests.push(device);
    }
    // A key removed just before in the same request is added afresh.
    let mut removed_just_before: Option<String> = None;
    for (key, lines) in sections {
        let removes = lines.iter().any(|(k, v)| k == "remove" && v == "true");
        if removes {
            requests.push(vec![
                ("public_key".into(), key.clone()),
                ("remove".into(), "true".into()),
            ]);
            removed_just_before = Some(key);
            continue;
        }
        let fresh = removed_just_before.take().as_deref() == Some(key.as_str());
        let mut merged = match existing.get(&key) {
            Some(current) if !fresh => current.clone(),
            _ => PeerConfig::default(),
        };
        let replace = lines
            .iter()
            .any(|(k, v)| k == "replace_allowed_ips" && v == "true");
        if replace {
            merged.allowed_ips.clear();
        }
        for (k, v) in &lines {
            match k.as_str() {
                "allowed_ip" if !merged.allowed_ips.contains(v) => {
                    merged.allowed_ips.push(v.clone())
                }
                "endpoint" => merged.endpoint = Some(v.clone()),
                "persistent_keepalive_interval" => merged.keepalive = Some(v.clone()),
                "preshared_key" => merged.preshared_key = Some(v.clone()),
                _ => {}
            }
        }
        let mut unit = Vec::new();
        let in_place = existing.contains_key(&key) && !fresh;
        if in_place || fresh {
            // Never change a peer in place: remove it, then add it whole.
            unit.push(("public_key".into(), key.clone()));
            unit.push(("remove".into(), "true".into()));
        }
        unit.push(("public_key".into(), key.clone()));
        unit.push(("remove".into(), "false".into()));
        if let Some(psk) = merged.preshared_key {
            unit.push(("preshared_key".into(), psk));
        }
        if let Some(e) = merged.endpoint {
            unit.push(("endpoint".into(), e));
        }
        unit.push((
            "persistent_keepalive_interval".into(),
            merged.keepalive.unwrap_or_else(|| "0".into()),
        ));
        unit.push(("replace_allowed_ips".into(), "true".into()));
        for ip in merged.allowed_ips {
            unit.push(("allowed_ip".into(), ip));
        }
        if fresh {
            // The removal was sent on its own already.
            unit.drain(..2);
        }
        requests.push(unit);
    }
    (requests, private_key)
}

#[cfg(test)]
mod tests;
