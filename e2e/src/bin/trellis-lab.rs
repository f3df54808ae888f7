//! `trellis-lab`: bring labs up and down, and act on their nodes and pods.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use trellis_e2e::{Lab, LabOptions};

#[derive(Parser)]
#[command(
    version,
    about = "The Trellis lab: a real control plane and nodes as network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Bring a lab up: underlay, control plane, N nodes with pod CIDRs.
    Up {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        #[arg(long, value_enum, default_value_t)]
        ip_family: trellis_e2e::IpFamily,
        /// Cluster CIDRs (comma separated), default per cluster.
        #[arg(long, value_delimiter = ',')]
        cluster_cidr: Vec<IpNet>,
        /// Real nodes: containerd and a kubelet on each (pods scheduled by
        /// kube-scheduler, created through CRI).
        #[arg(long)]
        real_nodes: bool,
        /// The real nodes' container runtime.
        #[arg(long, value_enum, default_value_t, requires = "real_nodes")]
        runtime: trellis_e2e::real_node::ContainerRuntime,
    },
    /// Tear a lab down (works after a killed `up`); --all for every lab.
    Down {
        #[arg(long, required_unless_present = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// List the labs that are up.
    List,
    /// Show a lab's clusters, nodes, pods and processes.
    Status {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Print the path of a cluster's admin kubeconfig.
    Kubeconfig {
        #[arg(long, default_value = "lab")]
        name: String,
        /// Cluster (default: the lab's first).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Print the chart's values for a cluster of real nodes, one `--set`
    /// value per line (API server address, pod ranges, no pulling), for
    /// `helm install trellis charts/trellis --set ...`.
    ChartValues {
        #[arg(long, default_value = "lab")]
        name: String,
        /// Cluster (default: the lab's first).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Import OCI image archives into every real node's containerd (as a
    /// registry pull would bring them).
    ImportImage {
        #[arg(long, default_value = "lab")]
        name: String,
        archives: Vec<std::path::PathBuf>,
    },
    /// Add a second (third, ...) cluster with its own control plane.
    AddCluster {
        #[arg(long, default_value = "lab")]
        name: String,
        cluster: String,
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        #[arg(long, value_delimiter = ',')]
        cluster_cidr: Vec<IpNet>,
    },
    /// Add a node to a cluster.
    AddNode {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Remove a node (its Node object, processes, pods, namespace).
    RemoveNode {
        #[arg(long, default_value = "lab")]
        name: String,
        node: String,
    },
    /// Run a command on a node (its namespace and private directories).
    Exec {
        #[arg(long, default_value = "lab")]
        name: String,
        node: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Create a pod on a node through the node's CNI configuration.
    PodAdd {
        #[arg(long, default_value = "lab")]
        name: String,
        node: String,
        pod: String,
        /// CNI network name (default: the node's first configuration).
        #[arg(long)]
        network: Option<String>,
    },
    /// Delete a pod (CNI DEL, then its namespace).
    PodDel {
        #[arg(long, default_value = "lab")]
        name: String,
        node: String,
        pod: String,
    },
    /// Run Trellis on every node: the WireGuard device, the agent, trellis-cni.
    Mesh {
        #[arg(long, default_value = "lab")]
        name: String,
        /// WireGuard implementation on the nodes.
        #[arg(long, value_enum, default_value = "trellis-wg")]
        device: DeviceArg,
        /// Pods to create on each node once the mesh is up.
        #[arg(long, default_value_t = 0)]
        pods: usize,
        /// Do not print the ping matrix and peers afterwards.
        #[arg(long)]
        quiet: bool,
    },
    /// Show each node's WireGuard peers with handshake ages, and an
    /// all-pairs ping matrix of the pods.
    Show {
        #[arg(long, default_value = "lab")]
        name: String,
        /// Retry the pod pairs that do not answer for up to this many
        /// seconds before printing (paths still being set up).
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Put a node, or a site of several nodes, behind a NAT router.
    Nat {
        #[arg(long, default_value = "lab")]
        name: String,
        /// The node, or several: a site, one private network behind one
        /// router (which does not hairpin unless `--mode hairpin`).
        #[arg(required = true)]
        nodes: Vec<String>,
        #[arg(long, value_enum)]
        mode: trellis_e2e::NatMode,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    /// trellis-wg, the userspace device (gotatun's noise protocol, offloads).
    TrellisWg,
    /// Debian's wireguard-go.
    WireguardGo,
    /// Current wireguard-go (tools/references.env).
    WireguardGoCurrent,
    /// The kernel module (the agent creates the interface).
    Kernel,
}

fn cidrs(list: Vec<IpNet>) -> Option<Vec<IpNet>> {
    (!list.is_empty()).then_some(list)
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Verb::Up {
            name,
            nodes,
            ip_family,
            cluster_cidr,
            real_nodes,
            runtime,
        } => {
            let mut options = LabOptions::new(&name, nodes);
            options.family = ip_family;
            options.cluster_cidrs = cidrs(cluster_cidr);
            options.real_nodes = real_nodes;
            options.runtime = runtime;
            let lab = Lab::up(options)
                .await
                .with_context(|| format!("lab {name} did not come up; `trellis-lab down --name {name}` removes what was built"))?;
            print_status(&lab);
        }
        Verb::Down { name, all } => {
            let labs = if all {
                trellis_e2e::teardown::list_labs()
            } else {
                name.into_iter().collect()
            };
            let mut failed = false;
            for lab in labs {
                let report = trellis_e2e::down(&lab);
                println!(
                    "lab {lab}: stopped {} processes, deleted {} namespaces",
                    report.processes_stopped,
                    report.namespaces_deleted.len()
                );
                for e in &report.errors {
                    eprintln!("  error: {e}");
                    failed = true;
                }
            }
            if failed {
                bail!("some parts could not be removed (see above); run down again");
            }
        }
        Verb::List => {
            for lab in trellis_e2e::teardown::list_labs() {
                println!("{lab}");
            }
        }
        Verb::Status { name } => print_status(&Lab::open(&name)?),
        Verb::Kubeconfig { name, cluster } => {
            let lab = Lab::open(&name)?;
            let cluster = cluster.unwrap_or_else(|| lab.state.clusters[0].name.clone());
            println!("{}", lab.kubeconfig(&cluster)?.display());
        }
        Verb::ChartValues { name, cluster } => {
            let lab = Lab::open(&name)?;
            let cluster = cluster.unwrap_or_else(|| lab.state.clusters[0].name.clone());
            let state = lab
                .state
                .cluster(&cluster)
                .ok_or_else(|| anyhow::anyhow!("lab {name} has no cluster {cluster}"))?;
            for value in trellis_e2e::chart::real_node_values(state) {
                println!("{value}");
            }
        }
        Verb::ImportImage { name, archives } => {
            let lab = Lab::open(&name)?;
            let archives: Vec<std::path::PathBuf> = archives
                .iter()
                .map(std::path::absolute)
                .collect::<Result<_, _>>()?;
            for node in &lab.state.nodes {
                let Some(holder) =
                    trellis_e2e::real_node::holder_of(&lab.state.daemons, &node.name)
                else {
                    continue;
                };
                for archive in &archives {
                    trellis_e2e::real_node::import_image(holder, &node.name, archive)?;
                    println!("{}: imported {}", node.name, archive.display());
                }
            }
        }
        Verb::AddCluster {
            name,
            cluster,
            nodes,
            cluster_cidr,
        } => {
            let mut lab = Lab::open(&name)?;
            lab.add_cluster(&cluster, nodes, cidrs(cluster_cidr))
                .await?;
            print_status(&lab);
        }
        Verb::AddNode { name, cluster } => {
            let mut lab = Lab::open(&name)?;
            let cluster = cluster.unwrap_or_else(|| lab.state.clusters[0].name.clone());
            println!("{}", lab.add_node(&cluster).await?);
        }
        Verb::RemoveNode { name, node } => Lab::open(&name)?.remove_node(&node).await?,
        Verb::Exec {
            name,
            node,
            command,
        } => {
            let lab = Lab::open(&name)?;
            let mut cmd = lab.node_command(&node, &command[0])?;
            let status = cmd
                .args(&command[1..])
                .status()
                .with_context(|| format!("running {}", command[0]))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Verb::PodAdd {
            name,
            node,
            pod,
            network,
        } => {
            let result = Lab::open(&name)?.add_pod(&node, &pod, network.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Verb::PodDel { name, node, pod } => Lab::open(&name)?.delete_pod(&node, &pod)?,
        Verb::Mesh {
            name,
            device,
            pods,
            quiet,
        } => {
            let mut lab = Lab::open(&name)?;
            let device = match device {
                DeviceArg::TrellisWg => trellis_e2e::mesh::Device::TrellisWg,
                DeviceArg::WireguardGo => trellis_e2e::mesh::Device::WireguardGo,
                DeviceArg::WireguardGoCurrent => trellis_e2e::mesh::Device::WireguardGoCurrent,
                DeviceArg::Kernel => trellis_e2e::mesh::Device::Kernel,
            };
            lab.start_mesh(device).await?;
            lab.wait_clusters_meshed(Duration::from_secs(90))?;
            let nodes: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
            for node in &nodes {
                for i in 0..pods {
                    lab.add_pod(node, &format!("p{i}"), None)?;
                }
            }
            if !quiet {
                show_mesh(&lab, Duration::ZERO)?;
            }
        }
        Verb::Show { name, wait } => show_mesh(&Lab::open(&name)?, Duration::from_secs(wait))?,
        Verb::Nat { name, nodes, mode } => {
            let site: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let routers = Lab::open(&name)?.put_site_behind_nat(&site, mode).await?;
            for (node, router) in nodes.iter().zip(routers) {
                println!(
                    "{node} is behind {:?} NAT: public {} private {}",
                    mode, router.public_v4, router.private_v4
                );
            }
        }
    }
    Ok(())
}

/// An all-pairs ping matrix of the pods (pairs that fail retried for up to
/// `wait`), then each node's peers with handshake ages.
fn show_mesh(lab: &Lab, wait: Duration) -> Result<()> {
    let pods = lab.recorded_pods();
    if !pods.is_empty() {
        print!("{}", trellis_e2e::ping::Matrix::measure(&pods, wait));
        println!();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let keys: Vec<(String, String)> = lab
        .state
        .nodes
        .iter()
        .filter_map(|n| Some((lab.wg_public_key(&n.name).ok()?, n.name.clone())))
        .collect();
    for n in &lab.state.nodes {
        println!("{}:", n.name);
        for (key, handshake) in lab.wg_peers(&n.name)? {
            let peer = keys
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, name)| name.clone())
                .unwrap_or(key);
            let age = if handshake == 0 {
                "no handshake yet".to_string()
            } else {
                format!("latest handshake {}s ago", now.saturating_sub(handshake))
            };
            println!("  peer {peer:<12} {age}");
        }
    }
    Ok(())
}

fn print_status(lab: &Lab) {
    let s = &lab.state;
    println!("lab {} (underlay slot {}, {:?})", s.name, s.slot, s.family);
    for c in &s.clusters {
        println!(
            "  cluster {}: apiserver {} cluster CIDRs {:?}",
            c.name,
            c.apiserver_url,
            c.cluster_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
        );
        println!("    kubeconfig {}", c.admin_kubeconfig.display());
        for n in s.nodes_of(&c.name) {
            let mut addrs: Vec<String> = n.v4.iter().map(|a| a.to_string()).collect();
            addrs.extend(n.v6.iter().map(|a| a.to_string()));
            let nat = n
                .nat
                .as_ref()
                .map(|r| format!(" behind {:?} NAT {}", r.mode, r.public_v4))
                .unwrap_or_default();
            println!(
                "    node {} netns {} addresses {}{nat}",
                n.name,
                n.netns,
                addrs.join(" ")
            );
        }
    }
    for p in &s.pods {
        println!("  pod {} on {} ({})", p.name, p.node, p.netns);
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client=off".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
