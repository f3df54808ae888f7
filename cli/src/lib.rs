//! kubectl-trellis, the kubectl plugin for Trellis: external peers (`peer
//! add/rm`), node configurations (`showconf`), the mesh's health (`status`,
//! `graph`). It reads the cluster the way the agents do (trellis-api's
//! conversions, trellis-mesh's desired state), so what it prints is what
//! the agents configure.

pub mod args;
pub mod cluster;
pub mod graph;
pub mod keys;
pub mod peer;
pub mod status;
pub mod wgconf;

use args::{Cli, Command, GraphFormat, PeerCommand, ShowconfCommand};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
        Command::Status { agent_port } => {
            let snapshot = cluster::Snapshot::read(&client).await?;
            let fetched = status::fetch_all(&client, &snapshot, agent_port).await;
            let text = status::table(&fetched, now());
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            Ok(())
        }
        Command::Graph { agent_port, format } => {
            let snapshot = cluster::Snapshot::read(&client).await?;
            let fetched = status::fetch_all(&client, &snapshot, agent_port).await;
            let mesh = graph::Mesh::from_reports(&fetched);
            let text = match format {
                GraphFormat::Dot => graph::dot(&mesh),
                GraphFormat::Svg => graph::svg(&mesh),
            };
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
