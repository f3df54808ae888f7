//! The plugin's one error type, and the one place that maps errors to CNI
//! error codes and to the error object printed on stdout.

use serde::Serialize;

/// CNI error codes: 1-99 are the spec's, 100 and up are Trellis' own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Unexpected internal failure (a bug: please report it).
    pub const INTERNAL: u32 = 100;
    /// No free address left in a pod CIDR.
    pub const RANGE_EXHAUSTED: u32 = 101;
    /// ADD for an interface name the container already has, here or (its
    /// veth still live) in another network namespace.
    pub const INTERFACE_EXISTS: u32 = 102;
    /// A netlink operation failed.
    pub const NETLINK: u32 = 103;
    /// CHECK found the attachment different from its prevResult.
    pub const CHECK_MISMATCH: u32 = 104;
    /// Several errors during DEL or GC (each one is in the details).
    pub const CLEANUP: u32 = 105;
}

/// Everything that can make a CNI call fail.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("incompatible CNI version {version:?}: this plugin supports {supported}")]
    IncompatibleVersion { version: String, supported: String },
    #[error("unsupported field {key}={value}: {reason}")]
    UnsupportedField {
        key: String,
        value: String,
        reason: String,
    },
    #[error("container network namespace {netns} does not exist: {reason}")]
    UnknownContainer { netns: String, reason: String },
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnvironment { var: &'static str, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("try again later: {0}")]
    TryAgain(String),
    #[error("plugin not ready: {0}")]
    NotAvailable(String),
    #[error("no free address in pod CIDR {cidr} ({in_use} in use): delete pods, or run GC to release stale allocations")]
    RangeExhausted { cidr: String, in_use: usize },
    #[error("interface {ifname} already exists in {netns}: DEL the earlier attachment first")]
    InterfaceExists { ifname: String, netns: String },
    #[error("container {container_id} already has {ifname} attached in network namespace {other_netns} (host end {host_ifname}): DEL that attachment (CNI_NETNS={other_netns}) before adding one in {netns}")]
    AttachedElsewhere {
        container_id: String,
        ifname: String,
        host_ifname: String,
        other_netns: String,
        netns: String,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("CHECK failed: {0}")]
    CheckMismatch(String),
    #[error("{} cleanup step(s) failed: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Cleanup(Vec<CniError>),
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl CniError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CniError {
        let context = context.into();
        move |source| CniError::Io { context, source }
    }

    /// The CNI error code of this error.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            CniError::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            CniError::UnknownContainer { .. } => code::UNKNOWN_CONTAINER,
            CniError::InvalidEnvironment { .. } => code::INVALID_ENVIRONMENT,
            CniError::Io { .. } => code::IO_FAILURE,
            CniError::Decode { .. } => code::DECODING_FAILURE,
            CniError::InvalidConfig(_) => code::INVALID_NETWORK_CONFIG,
            CniError::TryAgain(_) => code::TRY_AGAIN_LATER,
            CniError::NotAvailable(_) => code::NOT_AVAILABLE,
            CniError::RangeExhausted { .. } => code::RANGE_EXHAUSTED,
            CniError::InterfaceExists { .. } | CniError::AttachedElsewhere { .. } => {
                code::INTERFACE_EXISTS
            }
            CniError::Netlink(_) => code::NETLINK,
            CniError::CheckMismatch(_) => code::CHECK_MISMATCH,
            CniError::Cleanup(_) => code::CLEANUP,
            CniError::Internal(_) => code::INTERNAL,
        }
    }

    /// A short message for the error object's `msg`.
    fn summary(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion { .. } => "incompatible CNI version",
            CniError::UnsupportedField { .. } => "unsupported field in network configuration",
            CniError::UnknownContainer { .. } => "container unknown or does not exist",
            CniError::InvalidEnvironment { .. } => "invalid environment variables",
            CniError::Io { .. } => "I/O failure",
            CniError::Decode { .. } => "failed to decode content",
            CniError::InvalidConfig(_) => "invalid network configuration",
            CniError::TryAgain(_) => "try again later",
            CniError::NotAvailable(_) => "plugin not available",
            CniError::RangeExhausted { .. } => "pod CIDR exhausted",
            CniError::InterfaceExists { .. } | CniError::AttachedElsewhere { .. } => {
                "interface already exists"
            }
            CniError::Netlink(_) => "netlink operation failed",
            CniError::CheckMismatch(_) => "attachment differs from prevResult",
            CniError::Cleanup(_) => "cleanup incomplete",
            CniError::Internal(_) => "internal error",
        }
    }

    /// The CNI error object, in the given protocol version.
    pub fn to_object(&self, cni_version: &str) -> ErrorObject {
        ErrorObject {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.summary().to_string(),
            details: self.to_string(),
        }
    }

    /// Folds a list of errors from a best-effort operation into one result.
    pub fn collect(mut errors: Vec<CniError>) -> Result<(), CniError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CniError::Cleanup(errors)),
        }
    }
}

/// The error structure of the CNI spec (section 5).
#[derive(Debug, Serialize, PartialEq)]
pub struct ErrorObject {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_codes_are_used_for_spec_conditions() {
        let cases: Vec<(CniError, u32)> = vec![
            (
                CniError::IncompatibleVersion {
                    version: "9".into(),
                    supported: "1.1.0".into(),
                },
                1,
            ),
            (
                CniError::UnsupportedField {
                    key: "k".into(),
                    value: "v".into(),
                    reason: "r".into(),
                },
                2,
            ),
            (
                CniError::UnknownContainer {
                    netns: "/x".into(),
                    reason: "gone".into(),
                },
                3,
            ),
            (
                CniError::InvalidEnvironment {
                    var: "CNI_IFNAME",
                    reason: "empty".into(),
                },
                4,
            ),
            (CniError::io("reading stdin")(std::io::Error::other("x")), 5),
            (
                CniError::Decode {
                    what: "config",
                    reason: "eof".into(),
                },
                6,
            ),
            (CniError::InvalidConfig("mtu".into()), 7),
            (CniError::TryAgain("lock".into()), 11),
            (CniError::NotAvailable("no pod CIDR".into()), 50),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn own_codes_start_at_100() {
        for err in [
            CniError::RangeExhausted {
                cidr: "10.0.0.0/30".into(),
                in_use: 1,
            },
            CniError::InterfaceExists {
                ifname: "eth0".into(),
                netns: "/x".into(),
            },
            CniError::AttachedElsewhere {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                host_ifname: "tr0123456789ab".into(),
                other_netns: "/run/netns/a".into(),
                netns: "/run/netns/b".into(),
            },
            CniError::Netlink("x".into()),
            CniError::CheckMismatch("x".into()),
            CniError::Cleanup(vec![]),
            CniError::Internal("x".into()),
        ] {
            assert!(err.code() >= 100, "{err}");
        }
    }

    #[test]
    fn the_error_object_names_variable_and_remedy() {
        let err = CniError::InvalidEnvironment {
            var: "CNI_IFNAME",
            reason: "longer than 15 characters".into(),
        };
        let obj = serde_json::to_value(err.to_object("1.0.0")).unwrap();
        assert_eq!(obj["cniVersion"], "1.0.0");
        assert_eq!(obj["code"], 4);
        assert!(obj["details"].as_str().unwrap().contains("CNI_IFNAME"));
        let exhausted = CniError::RangeExhausted {
            cidr: "10.0.0.0/30".into(),
            in_use: 2,
        }
        .to_string();
        assert!(exhausted.contains("10.0.0.0/30") && exhausted.contains("GC"));
    }

    #[test]
    fn collect_keeps_every_error() {
        assert!(CniError::collect(vec![]).is_ok());
        let one = CniError::collect(vec![CniError::Netlink("a".into())]).unwrap_err();
        assert_eq!(one.code(), code::NETLINK);
        let two = CniError::collect(vec![
            CniError::Netlink("a".into()),
            CniError::Internal("b".into()),
        ])
        .unwrap_err();
        assert_eq!(two.code(), code::CLEANUP);
        let text = two.to_string();
        assert!(text.contains("netlink: a") && text.contains("b"), "{text}");
    }
}
