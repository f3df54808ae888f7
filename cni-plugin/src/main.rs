//! `trellis-cni`: executed by the container runtime for every pod. A thin
//! shell around [`trellis_cni::run`]: read stdin, run, print, exit. A panic
//! (a bug) still ends in a CNI error object, never in a bare crash.

use std::io::Write;
use std::process::ExitCode;

use trellis_cni::error::CniError;

fn main() -> ExitCode {
    let stdin = trellis_cni::config::read_config(std::io::stdin().lock());
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &stdin {
        Ok(stdin) => trellis_cni::run(
            |k| std::env::var(k).ok(),
            stdin,
            trellis_cni::netlink::Netlink::new,
        ),
        Err(e) => error_outcome(e),
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

/// The error object of a failure outside [`trellis_cni::run`] (stdin could
/// not be read, or a panic), in the latest version; the error goes to
/// stderr too, as the configuration's log file is unknown.
fn error_outcome(e: &CniError) -> trellis_cni::Outcome {
    let cni_args = std::env::var("CNI_ARGS").ok();
    trellis_cni::log::Log::new(b"", cni_args.as_deref()).line("error", &e.to_string());
    trellis_cni::Outcome {
        stdout: format!(
            "{}\n",
            serde_json::to_string(&e.to_object(trellis_cni::version::LATEST)).unwrap_or_default()
        ),
        success: false,
    }
}
