//! The network configuration the runtime hands the plugin on stdin (one
//! entry of the conflist the agent writes), parsed and validated without
//! side effects.

use std::io::Read;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::CniError;
use crate::version::Version;

/// Where the IPAM store lives unless the configuration says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/trellis/ipam";
/// The most configuration the plugin reads from stdin: 4 MiB.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;
/// MTU when the configuration has none: a 1500-byte underlay minus
/// WireGuard's 80 bytes of overhead (IPv6 outer header).
pub const DEFAULT_MTU: u32 = 1420;

/// One attachment a runtime still considers valid (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Deserialize)]
struct RawConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    mtu: Option<serde_json::Value>,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
    #[serde(rename = "dataDir")]
    data_dir: Option<PathBuf>,
    #[serde(rename = "meshInterface")]
    mesh_interface: Option<String>,
    #[serde(rename = "logFile")]
    log_file: Option<PathBuf>,
    #[serde(rename = "logLevel")]
    log_level: Option<String>,
    ipam: Option<serde_json::Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub mtu: u32,
    /// The node's pod CIDRs, at most one per address family.
    pub pod_cidrs: Vec<IpNet>,
    pub data_dir: PathBuf,
    /// The mesh interface that must be up for the node to be ready.
    pub mesh_interface: Option<String>,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments still valid (`cni.dev/valid-attachments`, or the
    /// older `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Reads the network configuration from stdin: at most
/// [`MAX_CONFIG_BYTES`], and one byte more is an error that states the
/// limit, never a silent cut.
pub fn read_config(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut bytes = Vec::new();
    input
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(CniError::io("reading the network configuration from stdin"))?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(CniError::InvalidConfig(format!(
            "the network configuration on stdin is larger than 4 MiB ({MAX_CONFIG_BYTES} bytes), the most trellis-cni reads"
        )));
    }
    Ok(bytes)
}

/// The version named in a configuration, when it can be read at all: used
/// to write the error object in the version the runtime speaks.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(stdin).ok()?;
    let version = value.get("cniVersion")?.as_str()?;
    Version::parse(version).ok().map(|v| v.as_str().to_string())
}

fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Ranges no pod address may come from: pods need unicast addresses that
/// other nodes can route to ((range, what it is)).
const RESERVED_RANGES: [(&str, &str); 10] = [
    ("0.0.0.0/8", "unspecified (\"this network\")"),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local, which holds the pods' gateway 169.254.1.1",
    ),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "limited broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    (
        "fe80::/10",
        "link-local, which holds the pods' gateway fe80::1",
    ),
    ("ff00::/8", "multicast"),
];

/// Refuses a pod CIDR that is, holds or lies in a range of
/// [`RESERVED_RANGES`].
fn check_cidr_is_unicast(text: &str, net: &IpNet) -> Result<(), CniError> {
    let hint = "pod addresses must be unicast addresses other nodes can route to: use a private range such as 10.244.0.0/16 or fd00:10:244::/56";
    if net.prefix_len() == 0 {
        let family = if net.addr().is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(CniError::InvalidConfig(format!(
            "podCIDRs entry {text} is the whole {family} address space: {hint}"
        )));
    }
    let overlaps: Vec<String> = RESERVED_RANGES
        .iter()
        .filter(|(range, _)| {
            let range: IpNet = range.parse().expect("literal");
            net.contains(&range) || range.contains(net)
        })
        .map(|(range, what)| format!("{range} ({what})"))
        .collect();
    if overlaps.is_empty() {
        return Ok(());
    }
    Err(CniError::InvalidConfig(format!(
        "podCIDRs entry {text} overlaps {}: {hint}",
        overlaps.join(", ")
    )))
}

/// Parses and checks one pod CIDR.
fn parse_cidr(text: &str) -> Result<IpNet, CniError> {
    let net: IpNet = text.parse().map_err(|_| {
        CniError::InvalidConfig(format!(
            "podCIDRs entry {text:?} is not a CIDR (like 10.244.1.0/24)"
        ))
    })?;
    if net.trunc() != net {
        return Err(CniError::InvalidConfig(format!(
            "podCIDRs entry {text} is not a network address: did you mean {}?",
            net.trunc()
        )));
    }
    let host_bits = net.max_prefix_len() - net.prefix_len();
    if host_bits < 2 {
        return Err(CniError::InvalidConfig(format!(
            "podCIDRs entry {text} is too small: pods need at least a /{} ",
            net.max_prefix_len() - 2
        )));
    }
    check_cidr_is_unicast(text, &net)?;
    Ok(net)
}

impl NetConf {
    /// Parses the configuration from stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        if stdin.iter().all(u8::is_ascii_whitespace) {
            return Err(CniError::Decode {
                what: "network configuration",
                reason: "stdin is empty: the runtime must pass the network configuration on stdin"
                    .into(),
            });
        }
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| CniError::Decode {
            what: "network configuration",
            reason: e.to_string(),
        })?;
        let version_text = raw
            .cni_version
            .ok_or_else(|| CniError::InvalidConfig("cniVersion is missing".into()))?;
        let version = Version::parse(&version_text)?;
        let name = raw
            .name
            .ok_or_else(|| CniError::InvalidConfig("name is missing".into()))?;
        if !valid_network_name(&name) {
            return Err(CniError::InvalidConfig(format!(
                "name {name:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
            )));
        }
        if let Some(t) = &raw.plugin_type {
            if t.is_empty() {
                return Err(CniError::InvalidConfig("type is empty".into()));
            }
        }
        if let Some(ipam) = raw
            .ipam
            .filter(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
        {
            return Err(CniError::UnsupportedField {
                key: "ipam".into(),
                value: ipam.to_string(),
                reason:
                    "trellis-cni allocates addresses itself from podCIDRs; remove the ipam section"
                        .into(),
            });
        }
        let mut pod_cidrs = Vec::new();
        for text in raw.pod_cidrs.unwrap_or_default() {
            let net = parse_cidr(&text)?;
            if pod_cidrs
                .iter()
                .any(|n: &IpNet| n.addr().is_ipv4() == net.addr().is_ipv4())
            {
                return Err(CniError::InvalidConfig(format!(
                    "podCIDRs has more than one {} CIDR ({text}): give at most one per family",
                    if net.addr().is_ipv4() { "IPv4" } else { "IPv6" }
                )));
            }
            pod_cidrs.push(net);
        }
        let has_v6 = pod_cidrs.iter().any(|n| n.addr().is_ipv6());
        let mtu = match raw.mtu {
            None | Some(serde_json::Value::Null) => DEFAULT_MTU,
            Some(v) => {
                let min = if has_v6 { 1280 } else { 576 };
                match v.as_u64() {
                    Some(m) if (min..=65535).contains(&m) => m as u32,
                    _ => {
                        return Err(CniError::InvalidConfig(format!(
                            "mtu {v} must be a whole number from {min} to 65535"
                        )))
                    }
                }
            }
        };
        if let Some(iface) = &raw.mesh_interface {
            crate::env::check_ifname(iface)
                .map_err(|reason| CniError::InvalidConfig(format!("meshInterface {reason}")))?;
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return Err(CniError::InvalidConfig(format!(
                "dataDir {} must be an absolute path",
                data_dir.display()
            )));
        }
        Ok(NetConf {
            version,
            name,
            mtu,
            pod_cidrs,
            data_dir,
            mesh_interface: raw.mesh_interface,
            log_file: raw.log_file,
            log_level: raw.log_level,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NetConf, CniError> {
        NetConf::parse(json.as_bytes())
    }

    #[test]
    fn a_full_configuration_parses() {
        let conf = parse(
            r#"{"cniVersion":"1.1.0","name":"trellis","type":"trellis-cni","mtu":1420,
                "podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"],"dataDir":"/tmp/ipam",
                "meshInterface":"trellis","somethingElse":true}"#,
        )
        .unwrap();
        assert_eq!(conf.version, Version::V1_1_0);
        assert_eq!(conf.pod_cidrs.len(), 2);
        assert_eq!(conf.mtu, 1420);
        assert_eq!(conf.mesh_interface.as_deref(), Some("trellis"));
    }

    #[test]
    fn defaults_apply() {
        let conf = parse(r#"{"cniVersion":"0.3.1","name":"n"}"#).unwrap();
        assert_eq!(conf.mtu, DEFAULT_MTU);
        assert_eq!(conf.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(conf.pod_cidrs.is_empty());
    }

    #[test]
    fn either_attachment_key_is_accepted() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let conf = parse(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","{key}":[{{"containerID":"c1","ifname":"eth0"}}]}}"#
            ))
            .unwrap();
            assert_eq!(conf.valid_attachments.unwrap()[0].container_id, "c1");
        }
    }

    #[test]
    fn bad_configurations_get_the_right_code_and_a_hint() {
        let cases = [
            ("", 6, "empty"),
            ("   ", 6, "empty"),
            ("{not json", 6, "network configuration"),
            (r#"[1,2]"#, 6, "network configuration"),
            (r#"{"name":"n"}"#, 7, "cniVersion"),
            (r#"{"cniVersion":"9.9.9","name":"n"}"#, 1, "9.9.9"),
            (r#"{"cniVersion":"1.0.0"}"#, 7, "name"),
            (r#"{"cniVersion":"1.0.0","name":"bad/name"}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["nope"]}"#,
                7,
                "nope",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.244.1.5/24"]}"#,
                7,
                "10.244.1.0/24",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/31"]}"#,
                7,
                "too small",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24","10.1.0.0/24"]}"#,
                7,
                "one per family",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","mtu":70000}"#, 7, "mtu"),
            (r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#, 7, "mtu"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":1000,"podCIDRs":["fd00::/64"]}"#,
                7,
                "1280",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","dataDir":"rel"}"#,
                7,
                "absolute",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","meshInterface":"way-too-long-name"}"#,
                7,
                "meshInterface",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#,
                2,
                "ipam",
            ),
        ];
        for (input, code, needle) in cases {
            let err = parse(input).unwrap_err();
            assert_eq!(err.code(), code, "{input}: {err}");
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn pod_cidrs_outside_routable_unicast_are_refused_with_the_reason() {
        // (entry, words the error must hold besides the entry)
        let refused = [
            ("0.0.0.0/0", "whole IPv4 address space"),
            ("::/0", "whole IPv6 address space"),
            ("0.0.0.0/8", "unspecified"),
            ("0.0.0.0/24", "0.0.0.0/8"),
            ("0.0.0.0/1", "0.0.0.0/8"),
            ("127.0.0.0/8", "loopback"),
            ("127.0.0.0/24", "127.0.0.0/8"),
            ("126.0.0.0/7", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("169.254.1.0/24", "169.254.0.0/16"),
            ("224.0.0.0/4", "multicast"),
            ("239.1.0.0/16", "224.0.0.0/4"),
            ("128.0.0.0/1", "multicast"),
            ("255.255.255.0/24", "broadcast"),
            ("::/126", "unspecified"),
            ("::/120", "::/128"),
            ("::/64", "unspecified"),
            ("fe80::/10", "link-local"),
            ("fe80::/64", "fe80::/10"),
            ("ff00::/8", "multicast"),
            ("ff02::/64", "ff00::/8"),
            ("8000::/1", "multicast"),
            ("::ffff:0:0/96", "IPv4-mapped"),
            ("::ffff:10.0.0.0/120", "::ffff:0:0/96"),
        ];
        for (cidr, why) in refused {
            let err = parse(&format!(
                r#"{{"cniVersion":"1.0.0","name":"n","podCIDRs":["{cidr}"]}}"#
            ))
            .unwrap_err();
            let text = err.to_string();
            assert_eq!(err.code(), 7, "{cidr}: {text}");
            assert!(text.contains(cidr) && text.contains(why), "{cidr}: {text}");
        }
        for cidr in [
            "10.244.0.0/16",
            "100.64.0.0/10",
            "192.168.0.0/24",
            "1.0.0.0/8",
            "126.0.0.0/8",
            "128.0.0.0/8",
            "fd00:10:244:1::/64",
            "fc00::/7",
            "2001:db8::/64",
            "::2:0/120",
        ] {
            let json = format!(r#"{{"cniVersion":"1.0.0","name":"n","podCIDRs":["{cidr}"]}}"#);
            assert!(parse(&json).is_ok(), "{cidr}: {:?}", parse(&json));
        }
    }

    #[test]
    fn stdin_is_read_up_to_the_limit_and_refused_past_it() {
        let whole = vec![b' '; MAX_CONFIG_BYTES];
        assert_eq!(read_config(&whole[..]).unwrap().len(), MAX_CONFIG_BYTES);
        let over = vec![b' '; MAX_CONFIG_BYTES + 1];
        let err = read_config(&over[..]).unwrap_err();
        assert_eq!(err.code(), 7);
        assert!(err.to_string().contains("4 MiB (4194304 bytes)"), "{err}");
        let five = vec![b' '; 5 << 20];
        assert_eq!(read_config(&five[..]).unwrap_err().code(), 7);
    }

    #[test]
    fn peek_version_only_reports_supported_versions() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(peek_version(br#"{"cniVersion":"7"}"#), None);
        assert_eq!(peek_version(b"garbage"), None);
    }
}
