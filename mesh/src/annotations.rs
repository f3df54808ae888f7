//! The `trellis.dev/` annotations on a Node: parsed and validated into
//! [`NodeAnnotations`], each error naming the annotation, its value and
//! what would be valid; and formatted back for the ones the agent writes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::key::PublicKey;
use crate::names::*;

/// A problem with one annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}={value:?} is invalid: {reason}")]
pub struct AnnotationError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// Where a peer is reached: an address, or a DNS name (resolved by the agent).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

impl Endpoint {
    /// The address, when it is one (not a DNS name to resolve).
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Addr(a) => Some(*a),
            Endpoint::Host { .. } => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

fn valid_dns_name(host: &str) -> bool {
    host.len() <= 253
        && !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !host
            .split('.')
            .next_back()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
}

/// Parses `ip:port`, `[v6]:port` or `host:port`.
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err("port 0 is not a port to send to".into());
        }
        return Ok(Endpoint::Addr(addr));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| "expected ip:port, [ipv6]:port or host:port".to_string())?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    if host.contains(':') || host.starts_with('[') {
        return Err("an IPv6 address needs brackets: [2001:db8::1]:51820".into());
    }
    if !valid_dns_name(host) {
        return Err(format!("{host:?} is neither an IP address nor a DNS name"));
    }
    Ok(Endpoint::Host {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Everything Trellis reads from a Node's annotations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeAnnotations {
    pub public_key: Option<PublicKey>,
    pub endpoint: Option<Endpoint>,
    pub force_endpoint: Option<Endpoint>,
    pub discovered_endpoints: BTreeMap<PublicKey, SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub relay: bool,
    /// `trellis.dev/location`, trimmed; empty counts as none (a hint:
    /// any name is accepted).
    pub location: Option<String>,
}

impl NodeAnnotations {
    /// Parses the node's annotations; the first invalid one is the error.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, AnnotationError> {
        let mut out = NodeAnnotations::default();
        let err = |key: &str, value: &str, reason: String| AnnotationError {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        if let Some(v) = annotations.get(ANNOTATION_PUBLIC_KEY) {
            out.public_key =
                Some(v.parse().map_err(|e: crate::key::KeyError| {
                    err(ANNOTATION_PUBLIC_KEY, v, e.to_string())
                })?);
        }
        if let Some(v) = annotations.get(ANNOTATION_ENDPOINT) {
            out.endpoint = Some(parse_endpoint(v).map_err(|r| err(ANNOTATION_ENDPOINT, v, r))?);
        }
        if let Some(v) = annotations.get(ANNOTATION_FORCE_ENDPOINT) {
            out.force_endpoint =
                Some(parse_endpoint(v).map_err(|r| err(ANNOTATION_FORCE_ENDPOINT, v, r))?);
        }
        if let Some(v) = annotations.get(ANNOTATION_PERSISTENT_KEEPALIVE) {
            let seconds: u16 = v.trim().parse().map_err(|_| {
                err(
                    ANNOTATION_PERSISTENT_KEEPALIVE,
                    v,
                    "expected whole seconds from 0 (off) to 65535".into(),
                )
            })?;
            out.persistent_keepalive = (seconds > 0).then_some(seconds);
        }
        if let Some(v) = annotations.get(ANNOTATION_RELAY) {
            out.relay = match v.trim() {
                "true" => true,
                "false" | "" => false,
                _ => {
                    return Err(err(
                        ANNOTATION_RELAY,
                        v,
                        "expected \"true\" or \"false\"".into(),
                    ))
                }
            };
        }
        out.location = annotations
            .get(ANNOTATION_LOCATION)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        if let Some(v) = annotations.get(ANNOTATION_DISCOVERED_ENDPOINTS) {
            let map: BTreeMap<String, String> = serde_json::from_str(v).map_err(|e| {
                err(
                    ANNOTATION_DISCOVERED_ENDPOINTS,
                    v,
                    format!("expected a JSON object of public key to ip:port ({e})"),
                )
            })?;
            for (k, addr) in map {
                let key: PublicKey = k.parse().map_err(|e: crate::key::KeyError| {
                    err(ANNOTATION_DISCOVERED_ENDPOINTS, v, e.to_string())
                })?;
                let addr: SocketAddr = addr.parse().map_err(|_| {
                    err(
                        ANNOTATION_DISCOVERED_ENDPOINTS,
                        v,
                        format!("{addr:?} is not ip:port"),
                    )
                })?;
                out.discovered_endpoints.insert(key, addr);
            }
        }
        Ok(out)
    }
}

/// The annotations an agent publishes on its own Node: its key, its
/// endpoint and where it sees its peers (`discovered`, always written so
/// that a peer no longer seen disappears from it).
pub fn own_annotations(
    public_key: &PublicKey,
    endpoint: Option<SocketAddr>,
    discovered: &BTreeMap<PublicKey, SocketAddr>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(ANNOTATION_PUBLIC_KEY.to_string(), public_key.to_base64());
    if let Some(e) = endpoint {
        out.insert(ANNOTATION_ENDPOINT.to_string(), e.to_string());
    }
    let seen: BTreeMap<String, String> = discovered
        .iter()
        .map(|(k, a)| (k.to_base64(), a.to_string()))
        .collect();
    out.insert(
        ANNOTATION_DISCOVERED_ENDPOINTS.to_string(),
        serde_json::to_string(&seen).expect("a map of strings serializes"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn endpoints_of_every_form() {
        assert_eq!(
            parse_endpoint("192.0.2.1:51820").unwrap(),
            Endpoint::Addr("192.0.2.1:51820".parse().unwrap())
        );
        assert_eq!(
            parse_endpoint("[2001:db8::1]:51820").unwrap(),
            Endpoint::Addr("[2001:db8::1]:51820".parse().unwrap())
        );
        assert_eq!(
            parse_endpoint("Node-1.Example.com:443").unwrap(),
            Endpoint::Host {
                host: "node-1.example.com".into(),
                port: 443
            }
        );
        for bad in [
            "",
            "192.0.2.1",
            "192.0.2.1:0",
            "192.0.2.1:70000",
            "2001:db8::1:51820",
            "a b:1",
            "-x.com:1",
            "1.2.3.999:5",
            "host:",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_complete_set_parses() {
        let parsed = NodeAnnotations::parse(&map(&[
            (ANNOTATION_PUBLIC_KEY, KEY),
            (ANNOTATION_ENDPOINT, "192.0.2.3:51820"),
            (ANNOTATION_FORCE_ENDPOINT, "gw.example.com:51820"),
            (ANNOTATION_PERSISTENT_KEEPALIVE, "25"),
            (ANNOTATION_RELAY, "true"),
            (
                ANNOTATION_DISCOVERED_ENDPOINTS,
                &format!(r#"{{"{KEY}":"203.0.113.9:40000"}}"#),
            ),
            ("other.io/ignored", "x"),
        ]))
        .unwrap();
        assert_eq!(parsed.public_key.unwrap().to_string(), KEY);
        assert_eq!(parsed.persistent_keepalive, Some(25));
        assert!(parsed.relay);
        assert_eq!(parsed.discovered_endpoints.len(), 1);
        assert!(matches!(parsed.force_endpoint, Some(Endpoint::Host { .. })));
    }

    #[test]
    fn each_bad_annotation_names_itself() {
        let cases = [
            (ANNOTATION_PUBLIC_KEY, "garbage"),
            (ANNOTATION_ENDPOINT, "nowhere"),
            (ANNOTATION_FORCE_ENDPOINT, "1.2.3.4:0"),
            (ANNOTATION_PERSISTENT_KEEPALIVE, "-1"),
            (ANNOTATION_PERSISTENT_KEEPALIVE, "soon"),
            (ANNOTATION_RELAY, "yes"),
            (ANNOTATION_DISCOVERED_ENDPOINTS, "[1]"),
            (ANNOTATION_DISCOVERED_ENDPOINTS, r#"{"bad":"1.2.3.4:5"}"#),
        ];
        for (key, value) in cases {
            let err = NodeAnnotations::parse(&map(&[(key, value)])).unwrap_err();
            assert_eq!(err.key, key);
            assert!(
                err.to_string().contains(key) && err.to_string().contains(&format!("{value:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn keepalive_zero_means_off() {
        let parsed =
            NodeAnnotations::parse(&map(&[(ANNOTATION_PERSISTENT_KEEPALIVE, "0")])).unwrap();
        assert_eq!(parsed.persistent_keepalive, None);
    }

    #[test]
    fn own_annotations_round_trip() {
        let key: PublicKey = KEY.parse().unwrap();
        let seen: BTreeMap<PublicKey, SocketAddr> =
            BTreeMap::from([(PublicKey([7; 32]), "198.51.100.9:4000".parse().unwrap())]);
        let written = own_annotations(&key, Some("192.0.2.3:51820".parse().unwrap()), &seen);
        let parsed = NodeAnnotations::parse(&written).unwrap();
        assert_eq!(parsed.public_key, Some(key));
        assert_eq!(parsed.discovered_endpoints, seen);
        let none = own_annotations(&key, None, &BTreeMap::new());
        assert_eq!(none[ANNOTATION_DISCOVERED_ENDPOINTS], "{}");
        assert_eq!(
            parsed.endpoint,
            Some(Endpoint::Addr("192.0.2.3:51820".parse().unwrap()))
        );
    }
}
