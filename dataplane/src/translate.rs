//! Translation between the standard WireGuard UAPI protocol, as `wg` and
//! the agent speak it, and boringtun's dialect of it:
//!
//! - boringtun answers `get` with `own_public_key` instead of `private_key`,
//!   and with the time *since* the last handshake where the protocol wants
//!   the time *of* it: `wg show` would print "56 years ago";
//! - boringtun panics, then hangs, when a `set` changes a peer that exists:
//!   such a change becomes "remove the peer, add it again with its merged
//!   configuration" in the same request. A peer re-created that way has
//!   lost its session; [`sessions_to_restart`] names an address behind each
//!   such peer, so that a datagram sent there starts a new handshake at once
//!   (the other side would otherwise keep sending on the old session until
//!   its rekey timeout, about 15 s).
//!
//! Pure functions over key/value lines, tested without a device.

use std::collections::BTreeMap;
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

/// Rewrites boringtun's `get` answer into the standard one: the private
/// key when known (it was set through us), absolute handshake times.
pub(crate) fn translate_get(
    answer: &[Pair],
    private_key: Option<&str>,
    now: SystemTime,
) -> Vec<Pair> {
    let mut out = Vec::with_capacity(answer.len() + 1);
    if let Some(key) = private_key {
        out.push(("private_key".to_string(), key.to_string()));
    }
    let mut since: Option<Duration> = None;
    for (k, v) in answer {
        match k.as_str() {
            "own_public_key" if private_key.is_some() => {}
            "last_handshake_time_sec" => since = v.parse().ok().map(Duration::from_secs),
            "last_handshake_time_nsec" => {
                let ns = v.parse().ok().map(Duration::from_nanos).unwrap_or_default();
                if let Some(at) = since.take().and_then(|s| now.checked_sub(s + ns)) {
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
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
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
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<Pair> {
        parse_pairs(text)
    }

    #[test]
    fn handshake_times_become_absolute_and_the_private_key_is_reported() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let answer = pairs("own_public_key=aa\nlisten_port=51820\npublic_key=bb\nlast_handshake_time_sec=5\nlast_handshake_time_nsec=0\nrx_bytes=1\n");
        let out = translate_get(&answer, Some("cc"), now);
        assert_eq!(out[0], ("private_key".into(), "cc".into()));
        assert!(!out.iter().any(|(k, _)| k == "own_public_key"));
        assert!(out.contains(&("last_handshake_time_sec".into(), "1799999995".into())));
        assert!(out.contains(&("rx_bytes".into(), "1".into())));
        let unknown = translate_get(&answer, None, now);
        assert!(
            unknown.iter().any(|(k, _)| k == "own_public_key"),
            "kept when the private key is unknown"
        );
    }

    #[test]
    fn a_peer_without_handshake_has_no_handshake_time() {
        let out = translate_get(
            &pairs("public_key=bb\nrx_bytes=0\n"),
            None,
            SystemTime::now(),
        );
        assert!(!out.iter().any(|(k, _)| k.starts_with("last_handshake")));
    }

    fn texts(requests: &[Vec<Pair>]) -> Vec<String> {
        requests.iter().map(|r| render(r)).collect()
    }

    #[test]
    fn changing_an_existing_peer_becomes_remove_and_merged_add() {
        let existing = peers_of(&pairs("public_key=bb\nendpoint=192.0.2.1:51820\npersistent_keepalive_interval=25\nallowed_ip=10.0.1.0/24\nallowed_ip=fd00:1::/64\n"));
        let (out, key) = rewrite_set(&pairs("private_key=kk\nlisten_port=51820\npublic_key=bb\nendpoint=192.0.2.9:51820\npublic_key=dd\nallowed_ip=10.0.2.0/24\n"), &existing);
        assert_eq!(key.as_deref(), Some("kk"));
        assert_eq!(
            texts(&out),
            vec![
                "private_key=kk\nlisten_port=51820\n".to_string(),
                "public_key=bb\nremove=true\npublic_key=bb\nremove=false\nendpoint=192.0.2.9:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.1.0/24\nallowed_ip=fd00:1::/64\n".to_string(),
                "public_key=dd\nremove=false\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.0.2.0/24\n".to_string(),
            ]
        );
    }

    #[test]
    fn a_re_created_peer_that_had_a_session_is_poked_at_its_first_range() {
        let existing = peers_of(&pairs("public_key=bb\nlast_handshake_time_sec=3\nallowed_ip=10.0.1.0/24\npublic_key=cc\nallowed_ip=10.0.3.0/24\npublic_key=ee\nlast_handshake_time_sec=1\nallowed_ip=fd00:5::/64\n"));
        // bb changes in place (had a session), cc too (never handshook),
        // dd is new, ee is re-added by the agent's remove-then-add.
        let (out, _) = rewrite_set(&pairs("public_key=bb\nendpoint=192.0.2.9:51820\npublic_key=cc\nendpoint=192.0.2.7:51820\npublic_key=dd\nallowed_ip=10.0.2.0/24\npublic_key=ee\nremove=true\npublic_key=ee\nallowed_ip=fd00:6::/64\n"), &existing);
        let pokes: Vec<String> = sessions_to_restart(&out, &existing)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(pokes, ["10.0.1.1", "fd00:6::1"]);
    }

    #[test]
    fn removals_never_leak_into_the_next_peer() {
        let existing = peers_of(&pairs(
            "public_key=bb\nallowed_ip=10.0.1.0/24\npublic_key=ee\nallowed_ip=10.0.5.0/24\n",
        ));
        let (out, _) = rewrite_set(&pairs("public_key=ee\nremove=true\npublic_key=ff\nendpoint=1.2.3.4:5\nallowed_ip=10.0.6.0/24\n"), &existing);
        let t = texts(&out);
        assert_eq!(t[0], "public_key=ee\nremove=true\n");
        assert!(t[1].starts_with("public_key=ff\nremove=false\n"), "{t:?}");
    }

    #[test]
    fn the_agents_remove_then_add_is_one_unit_with_a_fresh_peer() {
        let existing = peers_of(&pairs(
            "public_key=bb\nendpoint=9.9.9.9:9\nallowed_ip=10.0.1.0/24\n",
        ));
        let (out, _) = rewrite_set(&pairs("public_key=bb\nremove=true\npublic_key=bb\nendpoint=1.2.3.4:5\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.0.9.0/24\n"), &existing);
        let t = texts(&out);
        assert_eq!(t[0], "public_key=bb\nremove=true\n");
        assert_eq!(t[1], "public_key=bb\nremove=false\nendpoint=1.2.3.4:5\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.0.9.0/24\n", "nothing of the old peer is merged in");
    }
}
