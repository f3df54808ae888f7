//! `kubectl trellis`: the shell around the library (parse, connect, run).

use clap::Parser;
use kubectl_trellis::args::Cli;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = kubectl_trellis::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
