//! The command line (clap derive): what each command takes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Trellis from kubectl: external peers, node configurations, mesh status.
#[derive(Debug, Parser)]
#[command(name = "kubectl-trellis", version, about)]
pub struct Cli {
    /// The kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the Secrets linking other clusters (the chart's
    /// links.namespace).
    #[arg(long, global = true, default_value = trellis_mesh::names::DEFAULT_LINKS_NAMESPACE)]
    pub links_namespace: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// External WireGuard peers (machines outside the cluster).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Prints a WireGuard configuration as Trellis computes it.
    #[command(subcommand)]
    Showconf(ShowconfCommand),
    /// Linked clusters: every pod of one reaches every pod of the other
    /// over direct tunnels.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Every node's peers: endpoints, handshakes, traffic, path, problems
    /// (each agent's /status, through the API server's node proxy).
    Status {
        /// The agents' metrics port (the chart's metrics.port).
        #[arg(long, default_value_t = 9473)]
        agent_port: u16,
    },
    /// The mesh as a graph, edges marked direct, relayed, idle or down.
    Graph {
        #[arg(long, default_value_t = 9473)]
        agent_port: u16,
        /// dot (Graphviz) or svg (drawn without Graphviz).
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Svg,
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Creates a Peer and prints the WireGuard configuration for the
    /// machine (every node as a peer), ready for wg-quick.
    Add(PeerAdd),
    /// Deletes a Peer: every node removes it.
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct PeerAdd {
    /// Name of the Peer object.
    pub name: String,
    /// Addresses routed to the machine, as CIDRs (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub allowed_ips: Vec<String>,
    /// The machine's WireGuard public key (its private key stays with it).
    #[arg(
        long,
        conflicts_with = "generate",
        required_unless_present = "generate"
    )]
    pub public_key: Option<String>,
    /// Generate a key pair; the private key is printed in the configuration
    /// and stored nowhere else.
    #[arg(long)]
    pub generate: bool,
    /// Where nodes reach the machine (ip:port, [v6]:port, host:port);
    /// without one the machine connects first.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Seconds between the nodes' keepalives to the machine (0: off).
    #[arg(long)]
    pub persistent_keepalive: Option<u32>,
    /// Seconds between the machine's keepalives to the nodes in the printed
    /// configuration (keeps a NAT in front of it open; 0: off).
    #[arg(long, default_value_t = 25)]
    pub config_keepalive: u16,
    /// Wait until every node has the peer configured (or refused it).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum ShowconfCommand {
    /// A node's WireGuard configuration (without its private key).
    Node { name: String },
    /// The configuration for a Peer's machine (without its private key).
    Peer { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Creates a read-only identity in this cluster (--context) for cluster
    /// FOR and prints the Secret that links this cluster, for
    /// `kubectl --context FOR apply -f -`.
    Export {
        /// The name cluster FOR knows this one by (default: the context's name).
        #[arg(long)]
        name: Option<String>,
        /// The cluster that will read this one.
        #[arg(long = "for")]
        reader: String,
        /// This cluster's API server as FOR's nodes reach it (default: the
        /// kubeconfig's, unless it is loopback).
        #[arg(long)]
        api_server: Option<String>,
        /// How long the token is valid, as `90m`, `12h` (at least 10
        /// minutes); FOR's agents renew it a quarter into its life.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "12h")]
        token_lifetime: std::time::Duration,
    },
    /// Links two clusters both ways (each gets a read-only identity and a
    /// link Secret for the other), after checking their ranges do not overlap.
    Link(LinkArgs),
    /// Removes everything `link` created, on both sides.
    Unlink(LinkArgs),
}

#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Context of one cluster.
    #[arg(long)]
    pub from: String,
    /// Context of the other cluster.
    #[arg(long)]
    pub to: String,
    /// Name of the --from cluster (default: its context's name).
    #[arg(long)]
    pub from_name: Option<String>,
    /// Name of the --to cluster (default: its context's name).
    #[arg(long)]
    pub to_name: Option<String>,
    /// The --from cluster's API server as the other's nodes reach it.
    #[arg(long)]
    pub from_api_server: Option<String>,
    /// The --to cluster's API server as the other's nodes reach it.
    #[arg(long)]
    pub to_api_server: Option<String>,
    /// (link) Wait until every node of both clusters has every node of the
    /// other as a peer.
    #[arg(long)]
    pub wait: bool,
    /// (link) How long each cluster's token for the other is valid, as
    /// `90m`, `12h`, `2d` (at least 10 minutes). The agents renew it a
    /// quarter into its life; a cluster unreachable for longer than the
    /// rest of it must be linked again.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "12h")]
    pub token_lifetime: std::time::Duration,
    /// The agents' metrics port, for --wait.
    #[arg(long, default_value_t = 9473)]
    pub agent_port: u16,
}
