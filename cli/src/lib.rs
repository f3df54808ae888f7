//! kubectl-trellis, the kubectl plugin for Trellis: external peers (`peer
//! add/rm`), node configurations (`showconf`), the mesh's health (`status`,
//! `graph`). It reads the cluster the way the agents do (trellis-api's
//! conversions, trellis-mesh's desired state), so what it prints is what
//! the agents configure.

pub mod args;
pub mod cluster;
pub mod graph;
pub mod keys;
pub mod link;
pub mod peer;
pub mod status;
pub mod wgconf;

use std::time::Duration;

use args::{Cli, ClusterCommand, Command, GraphFormat, LinkArgs, PeerCommand, ShowconfCommand};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Both sides of `link`/`unlink`.
async fn sides(cli: &Cli, args: &LinkArgs) -> anyhow::Result<(link::Side, link::Side)> {
    let mut out = Vec::new();
    for (context, name, api_server) in [
        (&args.from, &args.from_name, &args.from_api_server),
        (&args.to, &args.to_name, &args.to_api_server),
    ] {
        let config = cluster::config(cli.kubeconfig.as_deref(), Some(context)).await?;
        let name = name
            .clone()
            .unwrap_or_else(|| link::name_from_context(context));
        let api_server = link::api_server_for_others(
            api_server.as_deref(),
            &config.cluster_url.to_string(),
            &name,
        )?;
        out.push(link::Side {
            client: kube::Client::try_from(config)?,
            name,
            api_server,
            namespace: cli.links_namespace.clone(),
        });
    }
    let b = out.pop().expect("two sides");
    let a = out.pop().expect("two sides");
    Ok((a, b))
}

async fn run_cluster(cli: &Cli, command: &ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Export {
            name,
            reader,
            api_server,
            token_lifetime,
        } => {
            let config = cluster::config(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
            let context = cli.context.clone().unwrap_or_else(|| "cluster".into());
            let name = name
                .clone()
                .unwrap_or_else(|| link::name_from_context(&context));
            trellis_api::link::validate_cluster_name(&name)?;
            trellis_api::link::validate_cluster_name(reader)?;
            let side = link::Side {
                api_server: link::api_server_for_others(
                    api_server.as_deref(),
                    &config.cluster_url.to_string(),
                    &name,
                )?,
                client: kube::Client::try_from(config)?,
                name: name.clone(),
                namespace: cli.links_namespace.clone(),
            };
            let declared = link::declared_snapshot(&side)
                .await
                .map_err(|e| e.context(format!("cannot export cluster {name}")))?
                .declared;
            let kubeconfig = link::export(&side, reader, *token_lifetime).await?;
            let secret = link::link_secret(&name, &cli.links_namespace, &kubeconfig, &declared);
            println!("{}", serde_json::to_string_pretty(&secret)?);
            Ok(())
        }
        ClusterCommand::Link(args) => {
            let (a, b) = sides(cli, args).await?;
            link::link(&a, &b, args.token_lifetime).await?;
            eprintln!("linked clusters {} and {}", a.name, b.name);
            if args.wait {
                let start = std::time::Instant::now();
                let na = cluster::Snapshot::read(&a.client).await?.nodes.len();
                let nb = cluster::Snapshot::read(&b.client).await?.nodes.len();
                let timeout = Duration::from_secs(120);
                link::wait_linked(&a, &b.name, nb, args.agent_port, timeout).await?;
                link::wait_linked(&b, &a.name, na, args.agent_port, timeout).await?;
                eprintln!(
                    "every node of {} and {} has the other's nodes as peers ({:.1} s)",
                    a.name,
                    b.name,
                    start.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
        ClusterCommand::Unlink(args) => {
            let (a, b) = sides(cli, args).await?;
            link::unlink(&a, &b).await?;
            eprintln!("unlinked clusters {} and {}", a.name, b.name);
            Ok(())
        }
    }
}

/// Runs one command against the cluster of the kubeconfig's context.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Command::Cluster(command) = &cli.command {
        return run_cluster(&cli, command).await;
    }
    let client = cluster::client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Peer(PeerCommand::Add(add)) => {
            peer::add(&client, &add, &cli.links_namespace, &mut out).await
        }
        Command::Peer(PeerCommand::Rm { name }) => peer::remove(&client, &name).await,
        Command::Showconf(ShowconfCommand::Node { name }) => {
            let snapshot =
                cluster::Snapshot::read_with_links(&client, &cli.links_namespace).await?;
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
        Command::Cluster(_) => unreachable!("handled above"),
        Command::Showconf(ShowconfCommand::Peer { name }) => {
            let snapshot =
                cluster::Snapshot::read_with_links(&client, &cli.links_namespace).await?;
            let text = wgconf::external_config(&snapshot, &name, None)?;
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            Ok(())
        }
    }
}
