//! The CNI environment (CNI_COMMAND, CNI_CONTAINERID, ...), read into a
//! validated [`Invocation`]; which variables are required depends on the
//! command, as the spec lists.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::CniError;

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(text: &str) -> Result<Self, CniError> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::InvalidEnvironment {
                    var: "CNI_COMMAND",
                    reason: format!("{other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
                })
            }
        })
    }
}

/// The arguments a runtime passes in CNI_ARGS that the plugin understands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniArgs {
    pub ignore_unknown: bool,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
    /// Every pair, including those not interpreted.
    pub all: BTreeMap<String, String>,
}

/// Keys a kubelet / CRI runtime sends that need no action from us.
const KNOWN_KEYS: [&str; 6] = [
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_NETWORK",
];

impl CniArgs {
    /// Parses `KEY=VALUE;KEY=VALUE`. Unknown keys are an error unless
    /// `IgnoreUnknown` is true (1/true), as with the reference plugins.
    pub fn parse(text: &str) -> Result<Self, CniError> {
        let mut args = CniArgs::default();
        let bad = |reason: String| CniError::InvalidEnvironment {
            var: "CNI_ARGS",
            reason,
        };
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("{pair:?} is not KEY=VALUE")))?;
            if key.is_empty() {
                return Err(bad(format!("{pair:?} has an empty key")));
            }
            args.all.insert(key.to_string(), value.to_string());
        }
        if let Some(v) = args.all.get("IgnoreUnknown") {
            args.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => return Err(bad(format!("IgnoreUnknown={v:?} is not a boolean"))),
            };
        }
        args.pod_namespace = args.all.get("K8S_POD_NAMESPACE").cloned();
        args.pod_name = args.all.get("K8S_POD_NAME").cloned();
        args.pod_uid = args.all.get("K8S_POD_UID").cloned();
        args.infra_container_id = args.all.get("K8S_POD_INFRA_CONTAINER_ID").cloned();
        if !args.ignore_unknown {
            if let Some(unknown) = args.all.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
                return Err(bad(format!(
                    "unknown argument {unknown:?} (pass IgnoreUnknown=1 to allow it)"
                )));
            }
        }
        Ok(args)
    }
}

/// A validated CNI call.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

/// The container ID must start with an alphanumeric character, followed by
/// alphanumerics, `_`, `.` or `-` (spec, section 2).
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A Linux interface name: 1-15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace (the kernel's dev_valid_name, plus `:` which aliases use).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("{name:?} is longer than 15 characters"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("{name:?} contains {c:?}"));
    }
    Ok(())
}

impl Invocation {
    /// Reads the CNI variables from `lookup` (the process environment in the
    /// binary, a map in tests).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |var: &'static str| lookup(var).filter(|v| !v.is_empty());
        let command_text = get("CNI_COMMAND").ok_or(CniError::InvalidEnvironment {
            var: "CNI_COMMAND",
            reason: "is not set".into(),
        })?;
        let command = Command::parse(&command_text)?;
        let required =
            |var: &'static str, commands: &[Command]| -> Result<Option<String>, CniError> {
                match get(var) {
                    Some(v) => Ok(Some(v)),
                    None if commands.contains(&command) => Err(CniError::InvalidEnvironment {
                        var,
                        reason: format!("is required for {command_text}"),
                    }),
                    None => Ok(None),
                }
            };
        use Command::*;
        let container_id = required("CNI_CONTAINERID", &[Add, Del, Check])?;
        if let Some(id) = &container_id {
            if !valid_container_id(id) {
                return Err(CniError::InvalidEnvironment {
                    var: "CNI_CONTAINERID",
                    reason: format!("{id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"),
                });
            }
        }
        let netns = required("CNI_NETNS", &[Add, Check])?.map(PathBuf::from);
        if let Some(ns) = &netns {
            if !ns.is_absolute() {
                return Err(CniError::InvalidEnvironment {
                    var: "CNI_NETNS",
                    reason: format!("{} is not an absolute path", ns.display()),
                });
            }
        }
        let ifname = required("CNI_IFNAME", &[Add, Del, Check])?;
        if let Some(name) = &ifname {
            check_ifname(name).map_err(|reason| CniError::InvalidEnvironment {
                var: "CNI_IFNAME",
                reason,
            })?;
        }
        let path = required("CNI_PATH", &[Gc])?
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let args = match command {
            Version | Status | Gc => CniArgs::default(),
            // DEL is best effort: arguments it cannot read never block cleanup.
            Del => CniArgs::parse(&get("CNI_ARGS").unwrap_or_default()).unwrap_or_default(),
            _ => CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?,
        };
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The container ID (present for ADD, DEL and CHECK after validation).
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    /// The interface name (present for ADD, DEL and CHECK after validation).
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        over: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = base
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| *val != "<unset>").copied());
        v
    }

    #[test]
    fn a_complete_add_parses() {
        let inv = Invocation::from_env(env(&ADD)).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.container_id(), "abc123");
        assert_eq!(inv.path.len(), 2);
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![], "CNI_COMMAND"),
            (with(&ADD, &[("CNI_COMMAND", "ATTACH")]), "CNI_COMMAND"),
            (
                with(&ADD, &[("CNI_CONTAINERID", "<unset>")]),
                "CNI_CONTAINERID",
            ),
            (
                with(&ADD, &[("CNI_CONTAINERID", "-bad")]),
                "CNI_CONTAINERID",
            ),
            (with(&ADD, &[("CNI_CONTAINERID", "a/b")]), "CNI_CONTAINERID"),
            (with(&ADD, &[("CNI_NETNS", "<unset>")]), "CNI_NETNS"),
            (with(&ADD, &[("CNI_NETNS", "relative/ns")]), "CNI_NETNS"),
            (with(&ADD, &[("CNI_IFNAME", "<unset>")]), "CNI_IFNAME"),
            (
                with(&ADD, &[("CNI_IFNAME", "a-very-long-ifname")]),
                "CNI_IFNAME",
            ),
            (with(&ADD, &[("CNI_IFNAME", "et/h0")]), "CNI_IFNAME"),
            (with(&ADD, &[("CNI_IFNAME", "..")]), "CNI_IFNAME"),
            (with(&ADD, &[("CNI_ARGS", "novalue")]), "CNI_ARGS"),
            (with(&ADD, &[("CNI_ARGS", "FOO=bar")]), "CNI_ARGS"),
            (vec![("CNI_COMMAND", "GC")], "CNI_PATH"),
        ];
        for (vars, var) in cases {
            let err = Invocation::from_env(env(&vars)).unwrap_err();
            assert_eq!(err.code(), 4, "{vars:?}: {err}");
            assert!(err.to_string().contains(var), "{vars:?}: {err}");
        }
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing_else() {
        let del = with(&ADD, &[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "<unset>")]);
        assert!(Invocation::from_env(env(&del)).unwrap().netns.is_none());
        Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        Invocation::from_env(env(&[("CNI_COMMAND", "STATUS")])).unwrap();
    }

    #[test]
    fn del_is_not_blocked_by_unreadable_args() {
        let del = with(
            &ADD,
            &[("CNI_COMMAND", "DEL"), ("CNI_ARGS", "FOO=bar;garbage")],
        );
        Invocation::from_env(env(&del)).unwrap();
    }

    #[test]
    fn kubelet_args_are_understood() {
        let args = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;EXTRA=x",
        )
        .unwrap();
        assert!(args.ignore_unknown);
        assert_eq!(args.pod_name.as_deref(), Some("web-0"));
        assert_eq!(args.pod_namespace.as_deref(), Some("default"));
        assert_eq!(args.all["EXTRA"], "x");
        // Known keys alone need no IgnoreUnknown.
        CniArgs::parse("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b").unwrap();
        assert!(CniArgs::parse("IgnoreUnknown=maybe").is_err());
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["eth0", "net1", "a", "abcdefghijklmno"] {
            check_ifname(good).unwrap();
        }
        for bad in [
            "",
            "abcdefghijklmnop",
            ".",
            "..",
            "a b",
            "a:b",
            "a/b",
            "a\tb",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
