//! CNI protocol versions: which ones the plugin speaks, which verbs each
//! allows, and the VERSION reply.

use serde::Serialize;
use serde_json::Value;

use crate::error::CniError;

/// Every version the plugin accepts in a configuration and writes results in.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version, used where no configuration says otherwise.
pub const LATEST: &str = "1.1.0";

/// A supported protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(text: &str) -> Result<Self, CniError> {
        Ok(match text {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            other => {
                return Err(CniError::IncompatibleVersion {
                    version: other.to_string(),
                    supported: SUPPORTED.join(", "),
                })
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry a `version` on each IP.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }
}

/// The reply to VERSION.
#[derive(Debug, Serialize)]
pub struct VersionReply {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<&'static str>,
}

/// Answers VERSION: echoes the version asked about (the latest when none
/// was given) and lists the supported ones.
pub fn version_reply(requested: Option<&str>) -> VersionReply {
    VersionReply {
        cni_version: requested.unwrap_or(LATEST).to_string(),
        supported_versions: SUPPORTED.to_vec(),
    }
}

/// The whole VERSION call: the reply to print for the configuration on
/// stdin. It needs no kernel access and no valid configuration: the
/// `cniVersion` is read leniently, and anything unreadable asks about none.
pub fn answer(stdin: &[u8]) -> Value {
    let requested = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    serde_json::to_value(version_reply(requested.as_deref())).expect("version reply serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_round_trips_in_order() {
        let parsed: Vec<Version> = SUPPORTED
            .iter()
            .map(|v| Version::parse(v).unwrap())
            .collect();
        let mut sorted = parsed.clone();
        sorted.sort();
        assert_eq!(parsed, sorted);
        for (v, text) in parsed.iter().zip(SUPPORTED) {
            assert_eq!(v.as_str(), text);
        }
    }

    #[test]
    fn unknown_versions_are_code_1_and_list_what_works() {
        for bad in ["0.2.0", "2.0.0", "", "1.1", "latest"] {
            let err = Version::parse(bad).unwrap_err();
            assert_eq!(err.code(), 1);
            assert!(err.to_string().contains("1.1.0"), "{err}");
        }
    }

    #[test]
    fn verb_availability_follows_the_spec() {
        assert!(!Version::V0_3_1.has_check() && Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc() && Version::V1_1_0.has_status_and_gc());
        assert!(Version::V0_4_0.ips_carry_version() && !Version::V1_0_0.ips_carry_version());
    }

    #[test]
    fn version_reply_echoes_the_request() {
        let reply = serde_json::to_value(version_reply(Some("0.4.0"))).unwrap();
        assert_eq!(reply["cniVersion"], "0.4.0");
        assert_eq!(
            reply["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED.len()
        );
        assert_eq!(version_reply(None).cni_version, LATEST);
    }

    #[test]
    fn answer_reads_the_requested_version_leniently() {
        assert_eq!(answer(br#"{"cniVersion":"0.4.0"}"#)["cniVersion"], "0.4.0");
        for stdin in [&b""[..], b"garbage", br#"{"cniVersion":7}"#] {
            assert_eq!(answer(stdin)["cniVersion"], LATEST, "{stdin:?}");
        }
        assert_eq!(
            answer(b"")["supportedVersions"],
            serde_json::json!(SUPPORTED)
        );
    }
}
