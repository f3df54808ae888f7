//! The UAPI protocol (<https://www.wireguard.com/xplatform/>) as plain
//! values: a `set` request parsed into a [`SetRequest`], and the device's
//! state rendered as the answer to `get`. Pure functions; nothing here
//! touches the device.

use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

/// A 32-byte key (private, public or preshared), as the protocol writes
/// it: 64 hex digits.
pub(crate) type Key = [u8; 32];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    #[error("line {0:?} is not key=value")]
    Line(String),
    #[error("{key}={value:?}: {why}")]
    Value {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("{0}= before any public_key= line")]
    NoPeer(String),
    #[error("unknown key {0:?}")]
    UnknownKey(String),
}

impl ProtocolError {
    /// The errno the answer carries: EINVAL for everything a client wrote
    /// wrong, as the kernel and wireguard-go answer.
    pub(crate) fn errno(&self) -> i32 {
        22
    }
}

/// One `set=1` request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SetRequest {
    /// `Some(None)`: the key is removed (an all-zero key).
    pub private_key: Option<Option<Key>>,
    pub listen_port: Option<u16>,
    /// `Some(0)` removes the mark.
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerChange>,
}

/// What a `set` says about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerChange {
    pub public_key: Key,
    pub remove: bool,
    /// Change the peer only if it exists.
    pub update_only: bool,
    /// `Some(None)`: the preshared key is removed.
    pub preshared_key: Option<Option<Key>>,
    pub endpoint: Option<SocketAddr>,
    /// `Some(0)` turns keepalives off.
    pub keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
}

impl PeerChange {
    fn new(public_key: Key) -> Self {
        PeerChange {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

pub(crate) fn parse_key(key: &str, value: &str) -> Result<Key, ProtocolError> {
    let bad = |why| ProtocolError::Value {
        key: key.to_string(),
        value: value.to_string(),
        why,
    };
    if value.len() != 64 {
        return Err(bad("a key is 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&value[2 * i..2 * i + 2], 16)
            .map_err(|_| bad("a key is 64 hex digits"))?;
    }
    Ok(out)
}

pub(crate) fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key that may be removed: all zeroes means none.
fn parse_optional_key(key: &str, value: &str) -> Result<Option<Key>, ProtocolError> {
    let k = parse_key(key, value)?;
    Ok((k != [0u8; 32]).then_some(k))
}

fn parse_value<T: std::str::FromStr>(
    key: &str,
    value: &str,
    why: &'static str,
) -> Result<T, ProtocolError> {
    value.parse().map_err(|_| ProtocolError::Value {
        key: key.to_string(),
        value: value.to_string(),
        why,
    })
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ProtocolError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ProtocolError::Value {
            key: key.to_string(),
            value: value.to_string(),
            why: "true or false",
        }),
    }
}

/// Parses the lines after `set=1`, up to the blank line. Nothing is
/// applied when any line is wrong.
pub(crate) fn parse_set(body: &str) -> Result<SetRequest, ProtocolError> {
    let mut request = SetRequest::default();
    for line in body.lines().take_while(|l| !l.is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| ProtocolError::Line(line.to_string()))?;
        if key == "public_key" {
            request.peers.push(PeerChange::new(parse_key(key, value)?));
            continue;
        }
        if let Some(peer) = request.peers.last_mut() {
            match key {
                "remove" => peer.remove = parse_bool(key, value)?,
                "update_only" => peer.update_only = parse_bool(key, value)?,
                "preshared_key" => peer.preshared_key = Some(parse_optional_key(key, value)?),
                "endpoint" => {
                    peer.endpoint = Some(parse_value(key, value, "an address:port")?);
                }
                "persistent_keepalive_interval" => {
                    peer.keepalive = Some(parse_value(key, value, "seconds, 0 to 65535")?);
                }
                "replace_allowed_ips" => peer.replace_allowed_ips = parse_bool(key, value)?,
                "allowed_ip" => {
                    let net: IpNet = parse_value(key, value, "an address/prefix")?;
                    peer.allowed_ips.push(net.trunc());
                }
                "protocol_version" => {
                    if value != "1" {
                        return Err(ProtocolError::Value {
                            key: key.to_string(),
                            value: value.to_string(),
                            why: "only protocol version 1 exists",
                        });
                    }
                }
                _ => return Err(ProtocolError::UnknownKey(key.to_string())),
            }
            continue;
        }
        match key {
            "private_key" => request.private_key = Some(parse_optional_key(key, value)?),
            "listen_port" => request.listen_port = Some(parse_value(key, value, "a port")?),
            "fwmark" => request.fwmark = Some(parse_value(key, value, "a 32-bit mark")?),
            "replace_peers" => request.replace_peers = parse_bool(key, value)?,
            "remove"
            | "update_only"
            | "preshared_key"
            | "endpoint"
            | "persistent_keepalive_interval"
            | "replace_allowed_ips"
            | "allowed_ip"
            | "protocol_version" => return Err(ProtocolError::NoPeer(key.to_string())),
            _ => return Err(ProtocolError::UnknownKey(key.to_string())),
        }
    }
    Ok(request)
}

/// The device as `get` reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DeviceView {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeerView {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
}

/// The answer to `get=1`, with its `errno=0` and blank line.
pub(crate) fn render_get(view: &DeviceView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(key) = &view.private_key {
        let _ = writeln!(out, "private_key={}", hex(key));
    }
    let _ = writeln!(out, "listen_port={}", view.listen_port);
    if view.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", view.fwmark);
    }
    for peer in &view.peers {
        let _ = writeln!(out, "public_key={}", hex(&peer.public_key));
        if let Some(psk) = &peer.preshared_key {
            let _ = writeln!(out, "preshared_key={}", hex(psk));
        }
        if let Some(endpoint) = &peer.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let (sec, nsec) = peer
            .last_handshake
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()))
            .unwrap_or((0, 0));
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes);
        let _ = writeln!(out, "persistent_keepalive_interval={}", peer.keepalive);
        for net in &peer.allowed_ips {
            let _ = writeln!(out, "allowed_ip={net}");
        }
        let _ = writeln!(out, "protocol_version=1");
    }
    out.push_str("errno=0\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const B: &str = "0202020202020202020202020202020202020202020202020202020202020202";
    const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_set_with_device_and_peer_lines_is_parsed_in_order() {
        let body = format!(
            "private_key={A}\nlisten_port=51820\nreplace_peers=true\npublic_key={B}\npreshared_key={ZERO}\nendpoint=[fd00::1]:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.1.7/24\nallowed_ip=fd10::/64\nprotocol_version=1\npublic_key={A}\nremove=true\n\n"
        );
        let set = parse_set(&body).unwrap();
        assert_eq!(set.private_key, Some(Some([1; 32])));
        assert_eq!(set.listen_port, Some(51820));
        assert!(set.replace_peers);
        assert_eq!(set.peers.len(), 2);
        let first = &set.peers[0];
        assert_eq!(first.public_key, [2; 32]);
        assert_eq!(
            first.preshared_key,
            Some(None),
            "an all-zero key removes it"
        );
        assert_eq!(first.endpoint, Some("[fd00::1]:51820".parse().unwrap()));
        assert_eq!(first.keepalive, Some(25));
        assert!(first.replace_allowed_ips);
        assert_eq!(
            first.allowed_ips,
            vec![
                "10.0.1.0/24".parse::<IpNet>().unwrap(),
                "fd10::/64".parse().unwrap()
            ],
            "host bits are cleared, as the kernel does"
        );
        assert!(set.peers[1].remove);
    }

    #[test]
    fn wrong_lines_are_refused_with_what_to_fix() {
        let cases = [
            ("listen_port=70000", "a port"),
            ("private_key=abc", "64 hex digits"),
            (
                &format!("public_key={B}\nallowed_ip=10.0.0.0/33") as &str,
                "address/prefix",
            ),
            (
                &format!("public_key={B}\nendpoint=somewhere") as &str,
                "address:port",
            ),
            ("endpoint=1.2.3.4:5", "before any public_key"),
            ("colour=blue", "unknown key"),
            ("garbage", "not key=value"),
            (
                &format!("public_key={B}\nprotocol_version=2") as &str,
                "version 1",
            ),
        ];
        for (body, what) in cases {
            let err = parse_set(body).unwrap_err();
            assert!(err.to_string().contains(what), "{body:?}: {err}");
            assert_eq!(err.errno(), 22);
        }
    }

    #[test]
    fn get_renders_what_wg_show_reads() {
        let view = DeviceView {
            private_key: Some([1; 32]),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerView {
                public_key: [2; 32],
                preshared_key: None,
                endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                last_handshake: Some(
                    SystemTime::UNIX_EPOCH + std::time::Duration::new(1700000000, 5),
                ),
                tx_bytes: 10,
                rx_bytes: 20,
                keepalive: 25,
                allowed_ips: vec!["10.0.1.0/24".parse().unwrap()],
            }],
        };
        let text = render_get(&view);
        assert_eq!(
            text,
            format!("private_key={A}\nlisten_port=51820\npublic_key={B}\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\nallowed_ip=10.0.1.0/24\nprotocol_version=1\nerrno=0\n\n")
        );
    }
}
