//! The ADD result (section 5 of the spec): built as plain data and written
//! in the shape of the version the configuration asks for; and prevResult,
//! read back for CHECK and handed on in a chain.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::CniError;
use crate::version::Version;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A successful ADD: what the attachment created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// The result as JSON in the shape of `version`: before 1.0.0 each IP
    /// carries `"version": "4"|"6"`; interface MTUs exist from 1.1.0 on.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = serde_json::to_value(i).expect("interfaces serialize");
                if version < Version::V1_1_0 {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("mtu");
                    }
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).expect("ips serialize");
                if version.ips_carry_version() {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    v["version"] = json!(family);
                }
                v
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        out.insert("interfaces".into(), json!(interfaces));
        out.insert("ips".into(), json!(ips));
        out.insert(
            "routes".into(),
            serde_json::to_value(&self.routes).expect("routes serialize"),
        );
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).expect("dns serializes"),
        );
        Value::Object(out)
    }

    /// Reads a prevResult (any supported version's shape).
    pub fn from_prev_result(value: &Value) -> Result<Self, CniError> {
        serde_json::from_value(value.clone()).map_err(|e| CniError::Decode {
            what: "prevResult",
            reason: e.to_string(),
        })
    }

    /// The interfaces of this result inside the sandbox.
    pub fn sandbox_interface_index(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && !i.sandbox.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "tr0123456789ab".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    mtu: Some(1420),
                    sandbox: String::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                    mtu: Some(1420),
                    sandbox: "/run/netns/p".into(),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/32".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00:10:244:1::5/128".parse().unwrap(),
                    gateway: Some("fe80::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("169.254.1.1".parse().unwrap()),
                },
                Route {
                    dst: "::/0".parse().unwrap(),
                    gw: Some("fe80::1".parse().unwrap()),
                },
            ],
            dns: Dns::default(),
        }
    }

    /// Checks `value` against the result shape the spec gives `version`:
    /// the keys each object may have, and the types of their values.
    fn assert_spec_shape(value: &Value, version: Version) {
        let top = value.as_object().expect("result is an object");
        for key in top.keys() {
            assert!(
                ["cniVersion", "interfaces", "ips", "routes", "dns"].contains(&key.as_str()),
                "{version:?}: unexpected key {key}"
            );
        }
        assert_eq!(top["cniVersion"], version.as_str());
        let mut iface_keys = vec!["name", "mac", "sandbox"];
        if version >= Version::V1_1_0 {
            iface_keys.extend(["mtu", "socketPath", "pciID"]);
        }
        let interfaces = top["interfaces"].as_array().unwrap();
        for iface in interfaces {
            for (k, v) in iface.as_object().unwrap() {
                assert!(
                    iface_keys.contains(&k.as_str()),
                    "{version:?}: interface key {k}"
                );
                match k.as_str() {
                    "mtu" => assert!(v.is_u64()),
                    _ => assert!(v.is_string()),
                }
            }
        }
        for ip in top["ips"].as_array().unwrap() {
            let o = ip.as_object().unwrap();
            let allowed: &[&str] = if version.ips_carry_version() {
                &["version", "address", "gateway", "interface"]
            } else {
                &["address", "gateway", "interface"]
            };
            for k in o.keys() {
                assert!(allowed.contains(&k.as_str()), "{version:?}: ip key {k}");
            }
            let addr: IpNet = o["address"]
                .as_str()
                .unwrap()
                .parse()
                .expect("address in CIDR notation");
            if version.ips_carry_version() {
                let expected = if addr.addr().is_ipv4() { "4" } else { "6" };
                assert_eq!(o["version"], expected);
            }
            let index = o["interface"].as_u64().unwrap() as usize;
            assert!(index < interfaces.len(), "interface index in range");
            o["gateway"].as_str().unwrap().parse::<IpAddr>().unwrap();
        }
        for route in top["routes"].as_array().unwrap() {
            let o = route.as_object().unwrap();
            for k in o.keys() {
                assert!(["dst", "gw"].contains(&k.as_str()), "route key {k}");
            }
            o["dst"].as_str().unwrap().parse::<IpNet>().unwrap();
        }
        assert!(top["dns"].is_object());
    }

    #[test]
    fn every_version_gets_its_own_shape() {
        for text in crate::version::SUPPORTED {
            let version = Version::parse(text).unwrap();
            assert_spec_shape(&sample().to_json(version), version);
        }
    }

    #[test]
    fn results_round_trip_through_prev_result() {
        for text in crate::version::SUPPORTED {
            let version = Version::parse(text).unwrap();
            let back = CniResult::from_prev_result(&sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.routes, sample().routes);
            assert_eq!(back.sandbox_interface_index("eth0"), Some(1));
        }
    }

    #[test]
    fn garbage_prev_result_is_a_decoding_error() {
        for bad in [
            json!("x"),
            json!({"ips": [{"address": "not-an-ip"}]}),
            json!({"interfaces": 3}),
        ] {
            assert_eq!(
                CniResult::from_prev_result(&bad).unwrap_err().code(),
                6,
                "{bad}"
            );
        }
    }
}
