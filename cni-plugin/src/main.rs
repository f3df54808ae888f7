//! `trellis-cni`: executed by the container runtime for every pod. A thin
//! shell around [`trellis_cni::run`]: read stdin, run, print, exit. A panic
//! (a bug) still ends in a CNI error object, never in a bare crash.

use std::io::{Read, Write};
use std::process::ExitCode;

use trellis_cni::error::CniError;

/// The most configuration the plugin reads from stdin.
const MAX_STDIN: u64 = 4 << 20;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin);
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match read {
        Ok(_) => trellis_cni::run(
            |k| std::env::var(k).ok(),
            &stdin,
            trellis_cni::netlink::Netlink::new,
        ),
        Err(e) => error_outcome(&CniError::io(
            "reading the network configuration from stdin",
        )(e)),
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        error_outcome(&CniError::Internal(format!("panic: {what}")))
    });
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn error_outcome(e: &CniError) -> trellis_cni::Outcome {
    trellis_cni::Outcome {
        stdout: format!(
            "{}\n",
            serde_json::to_string(&e.to_object(trellis_cni::version::LATEST)).unwrap_or_default()
        ),
        success: false,
    }
}
