//! The plugin's log: lines appended to the file the configuration names
//! (`logFile`), else to stderr for errors only. Never stdout, which belongs
//! to the CNI result. A plain appender instead of a tracing subscriber: the
//! plugin is a one-shot process that logs a line or two. Each line carries
//! an RFC 3339 UTC time and, when CNI_ARGS names it, the pod:
//! `2026-12-01T21:30:05.123Z info trellis-cni[42] pod=shop/web-0: ...`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest pod namespace or name a line carries (a Kubernetes name has
/// at most 253 characters).
const MAX_POD_PART_CHARS: usize = 253;

#[derive(Debug)]
pub struct Log {
    file: Option<PathBuf>,
    debug: bool,
    /// `namespace/name` of the pod, from CNI_ARGS.
    pod: Option<String>,
}

impl Log {
    /// Reads `logFile` and `logLevel` from the configuration and the pod
    /// from CNI_ARGS, tolerating any garbage in either: both are validated
    /// elsewhere, and logging never fails a call.
    pub fn new(stdin: &[u8], cni_args: Option<&str>) -> Self {
        let value: serde_json::Value = serde_json::from_slice(stdin).unwrap_or_default();
        Log {
            file: value
                .get("logFile")
                .and_then(|v| v.as_str())
                .map(PathBuf::from),
            debug: value.get("logLevel").and_then(|v| v.as_str()) == Some("debug"),
            pod: cni_args.and_then(pod_from_cni_args),
        }
    }

    /// Writes one line at `level` ("error", "info", "debug").
    pub fn line(&self, level: &str, message: &str) {
        let wanted = level == "error" || (level == "info" && self.file.is_some()) || self.debug;
        if !wanted {
            return;
        }
        let text = format_line(
            SystemTime::now(),
            std::process::id(),
            level,
            self.pod.as_deref(),
            message,
        );
        let written = self.file.as_ref().is_some_and(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .is_ok()
        });
        if !written {
            // eprint! (not a raw stderr write) so that tests capture it.
            eprint!("{text}");
        }
    }
}

/// One line of the log, newline included.
pub fn format_line(
    at: SystemTime,
    pid: u32,
    level: &str,
    pod: Option<&str>,
    message: &str,
) -> String {
    let pod = pod.map(|p| format!(" pod={p}")).unwrap_or_default();
    format!(
        "{} {level} trellis-cni[{pid}]{pod}: {message}\n",
        rfc3339_utc_millis(at)
    )
}

/// `namespace/name` from CNI_ARGS' K8S_POD_NAMESPACE and K8S_POD_NAME (`-`
/// for the one missing; `None` when both are). Lenient: what is not
/// KEY=VALUE is skipped, and characters that would break the line become
/// `?`.
pub fn pod_from_cni_args(text: &str) -> Option<String> {
    let mut namespace = None;
    let mut name = None;
    for pair in text.split(';') {
        match pair.split_once('=') {
            Some((key, value)) if !value.is_empty() => match key.trim() {
                "K8S_POD_NAMESPACE" => namespace = Some(value),
                "K8S_POD_NAME" => name = Some(value),
                _ => {}
            },
            _ => {}
        }
    }
    if namespace.is_none() && name.is_none() {
        return None;
    }
    let part = |v: Option<&str>| -> String {
        v.unwrap_or("-")
            .chars()
            .take(MAX_POD_PART_CHARS)
            .map(|c| {
                if c.is_control() || c.is_whitespace() {
                    '?'
                } else {
                    c
                }
            })
            .collect()
    };
    Some(format!("{}/{}", part(namespace), part(name)))
}

/// `at` in RFC 3339, UTC, to the millisecond (`2026-12-01T21:30:05.123Z`).
/// A time before 1970 (a clock gone wrong) reads as 1970-01-01.
pub fn rfc3339_utc_millis(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        since.subsec_millis()
    )
}

/// The (year, month, day) of the Gregorian calendar `days` after
/// 1970-01-01: Howard Hinnant's civil_from_days, for days on or after the
/// epoch. Years run from March, so that the leap day ends the year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01, in eras of 400 years (146097 days).
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 0 is March, 11 is February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::podnet::fake::FakePodNetwork;

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`
    fn is_rfc3339_utc_millis(text: &str) -> bool {
        let b = text.as_bytes();
        b.len() == 24
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                19 => *c == b'.',
                23 => *c == b'Z',
                _ => c.is_ascii_digit(),
            })
    }

    #[test]
    fn each_line_names_the_pod_and_starts_with_an_rfc3339_utc_time() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("cni.log");
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "trellis", "podCIDRs": ["10.244.1.0/24"],
            "dataDir": dir.path().join("ipam"), "logFile": file,
        });
        // DEL reads CNI_ARGS leniently, and so does the log: the garbage in
        // the middle fails neither.
        let env: BTreeMap<&str, &str> = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;garbage;=x;K8S_POD_NAME=web-0",
            ),
        ]
        .into();
        let mut net = FakePodNetwork::default();
        let out = crate::run(
            |k| env.get(k).map(|v| v.to_string()),
            &serde_json::to_vec(&conf).unwrap(),
            || Ok(&mut net),
        );
        assert!(out.success, "{}", out.stdout);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.is_empty());
        for line in text.lines() {
            let (time, rest) = line.split_once(' ').unwrap();
            assert!(is_rfc3339_utc_millis(time), "{line}");
            assert!(
                rest.starts_with(&format!(
                    "info trellis-cni[{}] pod=shop/web-0: Del ",
                    std::process::id()
                )),
                "{line}"
            );
        }
    }

    #[test]
    fn a_line_has_time_level_pid_pod_and_message() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_160_364_429);
        assert_eq!(
            format_line(at, 42, "info", Some("shop/web-0"), "Add container=c1"),
            "2026-12-01T21:26:04.429Z info trellis-cni[42] pod=shop/web-0: Add container=c1\n"
        );
        assert_eq!(
            format_line(UNIX_EPOCH, 7, "error", None, "boom"),
            "1970-01-01T00:00:00.000Z error trellis-cni[7]: boom\n"
        );
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = |ms: u64| rfc3339_utc_millis(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(at(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(253_402_300_799_000), "9999-12-31T23:59:59.000Z");
        assert!(is_rfc3339_utc_millis(
            &rfc3339_utc_millis(SystemTime::now())
        ));
        assert_eq!(
            rfc3339_utc_millis(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn civil_from_days_agrees_with_a_day_by_day_calendar() {
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let (mut y, mut m, mut d) = (1970, 1, 1);
        // 1970 to past 2400: every leap rule (4, 100, 400) comes up.
        for days in 0..160_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let month_len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > month_len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        assert!(y > 2400);
    }

    #[test]
    fn the_pod_is_read_leniently_from_cni_args() {
        let cases = [
            (
                "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
                Some("shop/web-0"),
            ),
            (
                "IgnoreUnknown=1;K8S_POD_NAME=web-0;junk;;=;K8S_POD_NAMESPACE=shop;K8S_POD_UID=u",
                Some("shop/web-0"),
            ),
            ("K8S_POD_NAME=web-0", Some("-/web-0")),
            ("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=", Some("shop/-")),
            ("K8S_POD_NAMESPACE=a b;K8S_POD_NAME=x\ny", Some("a?b/x?y")),
            ("K8S_POD_NAME=a=b", Some("-/a=b")),
            ("", None),
            ("garbage", None),
            (";;;", None),
            ("IgnoreUnknown=1", None),
        ];
        for (args, pod) in cases {
            assert_eq!(pod_from_cni_args(args).as_deref(), pod, "{args:?}");
        }
        let long = format!("K8S_POD_NAME={}", "n".repeat(1000));
        assert_eq!(
            pod_from_cni_args(&long).unwrap().len(),
            2 + MAX_POD_PART_CHARS
        );
    }
}
