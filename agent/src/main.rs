//! `trellis-agent`: parse the configuration, set up logging, run.
//! `trellis-agent install-cni ...` installs the CNI plugin and exits (the
//! chart's init container).

use std::path::PathBuf;

use clap::Parser;
use trellis_agent::config::{Config, LogFormat};
use trellis_agent::install_cni;

/// Installs trellis-cni into the host's CNI bin dir.
#[derive(Debug, Parser)]
#[command(name = "trellis-agent install-cni")]
struct InstallCni {
    /// The plugin binary to install.
    #[arg(long, default_value = "/usr/local/bin/trellis-cni")]
    source: PathBuf,
    /// The host's CNI bin dir, as mounted here.
    #[arg(long, default_value = trellis_agent::names::DEFAULT_CNI_BIN_DIR)]
    bin_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "install-cni")
    {
        let args = InstallCni::parse_from(std::env::args_os().skip(1));
        let done = install_cni::install(&args.source, &args.bin_dir, "trellis-cni")?;
        eprintln!(
            "trellis-agent: trellis-cni in {}: {done:?}",
            args.bin_dir.display()
        );
        return Ok(());
    }
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_client=warn,kube_runtime=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(trellis_agent::runtime::run(config))
}
