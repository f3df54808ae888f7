//! Running the host's network tools (`ip`, `nft`, ...) with errors that name
//! the command and carry its stderr, so a failed lab step says what failed.

use std::ffi::OsStr;
use std::process::{Command, Output};

/// A command that could not run or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start `{command}`: {source} (is it installed? `make tools` installs it)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Renders a command line for messages.
pub fn display(program: &str, args: &[impl AsRef<OsStr>]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

/// Runs `program args...` to completion; returns its stdout.
pub fn run(program: &str, args: &[impl AsRef<OsStr>]) -> Result<String, CommandError> {
    let mut command = Command::new(program);
    command.args(args);
    output_of(command, display(program, args))
}

/// Runs an already prepared command to completion; returns its stdout.
pub fn output_of(mut command: Command, shown: String) -> Result<String, CommandError> {
    let output = command.output().map_err(|source| CommandError::Spawn {
        command: shown.clone(),
        source,
    })?;
    check(output, shown)
}

fn check(output: Output, command: String) -> Result<String, CommandError> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip -n NETNS args...` (or plain `ip args...` for the host namespace).
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, CommandError> {
    let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = netns {
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs `ip netns exec NETNS program args...`.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> Result<String, CommandError> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("oops"), "{text}");
        assert!(text.contains('3'), "{text}");
    }

    #[test]
    fn missing_program_says_how_to_install() {
        let err = run("trellis-no-such-program", &["x"]).unwrap_err();
        assert!(err.to_string().contains("make tools"), "{err}");
    }

    #[test]
    fn stdout_is_returned() {
        assert_eq!(run("echo", &["hi"]).unwrap(), "hi\n");
    }
}
