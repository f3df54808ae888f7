//! Finding the Go-built tools (`make tools` builds them into a cache outside
//! the repository; `$TRELLIS_TOOLS_BIN` points at it).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("{tool} not found at {path}: run `make tools` (or tools/bootstrap.sh) first")]
    Missing { tool: String, path: PathBuf },
    #[error("cannot tell where the tools are: set TRELLIS_TOOLS_BIN or run `make tools` ({0})")]
    Unlocated(String),
}

/// The pinned versions of the lab's tools and of the benchmarks'
/// references, as tools/bootstrap.sh builds them.
const VERSIONS: &str = concat!(
    include_str!("../../tools/versions.env"),
    "\n",
    include_str!("../../tools/references.env")
);

/// The version tools/versions.env or tools/references.env pins as `name`.
pub fn pinned(name: &str) -> &'static str {
    VERSIONS
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .map(str::trim)
        .unwrap_or_else(|| panic!("tools/versions.env or tools/references.env pins {name}"))
}

/// The directory holding kube-apiserver, etcd, helm, cnitool and `cni/`.
#[derive(Debug, Clone)]
pub struct Tools {
    pub bin: PathBuf,
}

impl Tools {
    /// `$TRELLIS_TOOLS_BIN`, or the directory `tools/bootstrap.sh
    /// --print-dir` names (it only computes the path; it installs nothing).
    pub fn locate() -> Result<Self, ToolsError> {
        if let Some(dir) = std::env::var_os("TRELLIS_TOOLS_BIN") {
            return Ok(Tools { bin: dir.into() });
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/bootstrap.sh");
        let out = crate::cmd::run(&script.to_string_lossy(), &["--print-dir"])
            .map_err(|e| ToolsError::Unlocated(e.to_string()))?;
        Ok(Tools {
            bin: PathBuf::from(out.trim()),
        })
    }

    /// The path of `tool`, which must exist.
    pub fn path(&self, tool: &str) -> Result<PathBuf, ToolsError> {
        let path = self.bin.join(tool);
        if path.is_file() {
            Ok(path)
        } else {
            Err(ToolsError::Missing {
                tool: tool.to_string(),
                path,
            })
        }
    }

    /// Current wireguard-go, the benchmarks' reference userspace device
    /// (in a directory named by its pinned version).
    pub fn wireguard_go(&self) -> Result<PathBuf, ToolsError> {
        self.path(&format!(
            "wireguard-go-{}/wireguard-go",
            pinned("WIREGUARD_GO_VERSION")
        ))
    }

    /// The directory of the reference CNI plugins.
    pub fn cni_plugin_dir(&self) -> PathBuf {
        self.bin.join("cni")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_come_from_both_files() {
        assert!(pinned("KUBERNETES_VERSION").starts_with("v1."));
        assert!(pinned("WIREGUARD_GO_VERSION").starts_with("v0.0.0-2026"));
        let tools = Tools {
            bin: PathBuf::from("/nonexistent/tools"),
        };
        let err = tools.wireguard_go().unwrap_err().to_string();
        assert!(err.contains(pinned("WIREGUARD_GO_VERSION")), "{err}");
    }

    #[test]
    fn a_missing_tool_says_to_run_make_tools() {
        let tools = Tools {
            bin: PathBuf::from("/nonexistent/tools"),
        };
        let err = tools.path("kube-apiserver").unwrap_err().to_string();
        assert!(
            err.contains("make tools") && err.contains("kube-apiserver"),
            "{err}"
        );
    }
}
