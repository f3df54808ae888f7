//! The plugin's log: lines appended to the file the configuration names
//! (`logFile`), else to stderr for errors only. Never stdout, which belongs
//! to the CNI result. A plain appender instead of a tracing subscriber: the
//! plugin is a one-shot process that logs a line or two.

use std::io::Write;
use std::path::PathBuf;

#[derive(Debug)]
pub struct Log {
    file: Option<PathBuf>,
    debug: bool,
}

impl Log {
    /// Reads `logFile` and `logLevel` from the configuration, tolerating
    /// any garbage (the configuration is validated elsewhere).
    pub fn from_config(stdin: &[u8]) -> Self {
        let value: serde_json::Value = serde_json::from_slice(stdin).unwrap_or_default();
        Log {
            file: value
                .get("logFile")
                .and_then(|v| v.as_str())
                .map(PathBuf::from),
            debug: value.get("logLevel").and_then(|v| v.as_str()) == Some("debug"),
        }
    }

    /// Writes one line at `level` ("error", "info", "debug").
    pub fn line(&self, level: &str, message: &str) {
        let wanted = level == "error" || (level == "info" && self.file.is_some()) || self.debug;
        if !wanted {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let text = format!(
            "{}.{:03} {level} trellis-cni[{}]: {message}\n",
            now.as_secs(),
            now.subsec_millis(),
            std::process::id()
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
