//! `trellis-agent install-cni`: puts trellis-cni into the host's CNI bin dir
//! (the chart's init container) so that a runtime never runs half a file:
//! the binary is written next to the old one under a temporary name, synced,
//! made executable and renamed over it. An identical binary is left alone.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading the plugin {path}: {source} (is it in the image?)")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source} (is the host's CNI bin dir mounted there, writable?)")]
    Target {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `install` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The bin dir already had this very binary.
    Unchanged,
    Written,
}

/// Installs `source` as `bin_dir/name`.
pub fn install(source: &Path, bin_dir: &Path, name: &str) -> Result<Installed, InstallError> {
    let binary = std::fs::read(source).map_err(|e| InstallError::Source {
        path: source.to_path_buf(),
        source: e,
    })?;
    let target = bin_dir.join(name);
    if std::fs::read(&target).is_ok_and(|old| old == binary) {
        return Ok(Installed::Unchanged);
    }
    let temporary = bin_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written =
        write_executable(&temporary, &binary).and_then(|()| std::fs::rename(&temporary, &target));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(InstallError::Target {
            path: target,
            source: e,
        });
    }
    Ok(Installed::Written)
}

fn write_executable(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(contents)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_replaces_and_leaves_an_identical_binary_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let source = dir.join("src");
        let bin = dir.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(&source, b"new plugin").unwrap();
        std::fs::write(bin.join("trellis-cni"), b"old plugin").unwrap();

        assert_eq!(
            install(&source, &bin, "trellis-cni").unwrap(),
            Installed::Written
        );
        let target = bin.join("trellis-cni");
        assert_eq!(std::fs::read(&target).unwrap(), b"new plugin");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let modified = std::fs::metadata(&target).unwrap().modified().unwrap();

        assert_eq!(
            install(&source, &bin, "trellis-cni").unwrap(),
            Installed::Unchanged
        );
        assert_eq!(
            std::fs::metadata(&target).unwrap().modified().unwrap(),
            modified
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&bin)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("trellis-cni")]);
    }

    #[test]
    fn a_missing_source_or_bin_dir_says_what_to_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let err = install(&dir.join("nope"), dir, "trellis-cni")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is it in the image"), "{err}");
        std::fs::write(dir.join("src"), b"x").unwrap();
        let err = install(&dir.join("src"), &dir.join("no-such-dir"), "trellis-cni")
            .unwrap_err()
            .to_string();
        assert!(err.contains("CNI bin dir mounted"), "{err}");
    }
}
