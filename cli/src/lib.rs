//! kubectl-trellis, the kubectl plugin for Trellis: external peers (`peer
//! add/rm`), node configurations (`showconf`), the mesh's health (`status`,
//! `graph`). It reads the cluster the way the agents do (trellis-api's
//! conversions, trellis-mesh's desired state), so what it prints is what
//! the agents configure.

pub mod args;
pub mod cluster;
pub mod keys;
pub mod peer;
pub mod wgconf;

use args::{Cli, Command, PeerCommand, ShowconfCommand};

/// Runs one command against the cluster of the kubeconfig's context.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = cluster::client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Peer(PeerCommand::Add(add)) => peer::add(&client, &add, &mut out).await,
        Command::Peer(PeerCommand::Rm { name }) => peer::remove(&client, &name).await,
        Command::Showconf(ShowconfCommand::Node { name }) => {
            let snapshot = cluster::Snapshot::read(&client).await?;
            let text = wgconf::node_config(&snapshot, &name)?;
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            Ok(())
        }
        Command::Showconf(ShowconfCommand::Peer { name }) => {
            let snapshot = cluster::Snapshot::read(&client).await?;
            let text = wgconf::external_config(&snapshot, &name, None)?;
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            Ok(())
        }
    }
}
