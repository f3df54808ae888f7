//! The real parts of an [`Agent`], wired: the node's key, a kube client
//! (in-cluster unless a kubeconfig is given), reflectors on Nodes, Peers
//! and link Secrets, the WireGuard device (kernel or userspace), netlink,
//! the metrics and `/status` endpoint. Runs the agent until SIGTERM or
//! SIGINT and leaves the dataplane running.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::Notify;
use trellis_api::Peer;
use trellis_mesh::names::LABEL_REMOTE_CLUSTER;
use trellis_mesh::ranges::format_list;

use crate::agent::{Agent, Parts, Stores};
use crate::cluster_api::KubeCluster;
use crate::config::{Config, DataplaneMode};
use crate::dataplane::NodeDataplane;
use crate::kernel_wg;
use crate::key::PrivateKey;
use crate::metrics::{self, Metrics, Readiness};
use crate::netlink::{self, Netlink};
use crate::reflectors::spawn_reflector;
use crate::remote::RemoteClusters;
use crate::remote_cache::RemoteCache;
use crate::status::{DeviceReader, StatusBoard};
use crate::wg::{Uapi, WireGuard};

/// How long a starting agent waits for the Peers, and for the link
/// Secrets, to be listed.
const PEERS_WAIT: Duration = Duration::from_secs(20);
/// How long a starting agent waits for a userspace device started beside
/// it (the DaemonSet starts both at once), polling often: every moment
/// without it is a moment without traffic after an upgrade. After that the
/// reconcile loop retries with its backoff.
const DEVICE_WAIT: Duration = Duration::from_secs(10);
const DEVICE_POLL: Duration = Duration::from_millis(100);

/// Waits until the userspace device answers on its UAPI socket, at most
/// [`DEVICE_WAIT`].
async fn wait_for_userspace_device(config: &Config) {
    let uapi = Uapi::new(&config.uapi_socket(), &config.interface);
    let start = std::time::Instant::now();
    while !uapi.exists() {
        if start.elapsed() >= DEVICE_WAIT {
            tracing::warn!(socket = %config.uapi_socket().display(), "no userspace WireGuard device yet (is trellis-wg running?); retrying in the reconcile loop");
            return;
        }
        tokio::time::sleep(DEVICE_POLL).await;
    }
    tracing::info!(
        waited_ms = start.elapsed().as_millis() as u64,
        "userspace WireGuard device answers"
    );
}

fn choose_device(config: &Config) -> anyhow::Result<(Box<dyn WireGuard>, bool)> {
    let uapi = Uapi::new(&config.uapi_socket(), &config.interface);
    let kernel = || -> anyhow::Result<(Box<dyn WireGuard>, bool)> {
        Ok((Box::new(kernel_wg::KernelWg::new(&config.interface)?), true))
    };
    let userspace = || -> (Box<dyn WireGuard>, bool) { (Box::new(uapi.clone()), false) };
    Ok(match config.dataplane {
        DataplaneMode::Kernel => kernel()?,
        DataplaneMode::Userspace => userspace(),
        // A running userspace device wins (it was started for a reason);
        // otherwise the kernel module when loaded.
        DataplaneMode::Auto if uapi.exists() => userspace(),
        DataplaneMode::Auto if kernel_wg::available() => kernel()?,
        DataplaneMode::Auto => userspace(),
    })
}

/// A second handle on the device, for `/status` requests.
fn device_reader(config: &Config, kernel: bool) -> anyhow::Result<DeviceReader> {
    Ok(if kernel {
        let name = config.interface.clone();
        kernel_wg::KernelWg::new(&name)?;
        Arc::new(move || kernel_wg::KernelWg::new(&name)?.read())
    } else {
        let uapi = Uapi::new(&config.uapi_socket(), &config.interface);
        Arc::new(move || uapi.clone().read())
    })
}

async fn kube_client(config: &Config) -> anyhow::Result<kube::Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        // Explicitly in-cluster: a kubeconfig lying around in $HOME must not
        // give the agent another identity than its pod's.
        None => kube::Config::incluster().context(
            "no --kubeconfig given and no in-cluster configuration (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT and the pod's service-account token)",
        )?,
    };
    Ok(kube::Client::try_from(kube_config)?)
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = PrivateKey::load_or_generate(&config.key_path())?;
    let public_key = key.public_key();
    tracing::info!(node = %config.node_name, public_key = %public_key, interface = %config.interface, "starting");
    let client = kube_client(&config).await?;
    netlink::enable_forwarding(&config.sysctl_dir).context("enabling IP forwarding")?;
    let netlink = Netlink::connect().context("opening netlink")?;
    let (wg, creates_interface) = choose_device(&config)?;
    tracing::info!(kernel = creates_interface, "WireGuard dataplane chosen");

    let metrics = Metrics::default();
    let readiness = Readiness::default();
    readiness.set_not_ready("starting");
    let status = StatusBoard::new(device_reader(&config, creates_interface)?);
    {
        let (m, r, s, addr) = (
            metrics.clone(),
            readiness.clone(),
            status.clone(),
            config.metrics_address,
        );
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, &m, r, s).await {
                tracing::error!(error = %e, address = %addr, "metrics endpoint failed");
            }
        });
    }

    // The reflectors keep the last known objects through API outages.
    let changed = Arc::new(Notify::new());
    let node_reflector = spawn_reflector(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
        "Nodes".into(),
    );
    let peer_reflector = spawn_reflector(
        Api::<Peer>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
        "Peers".into(),
    );
    // Linked clusters: the labelled Secrets in the links namespace.
    let link_reflector = spawn_reflector(
        Api::<Secret>::namespaced(client.clone(), &config.links_namespace),
        watcher::Config::default().labels(LABEL_REMOTE_CLUSTER),
        changed.clone(),
        "linked-cluster Secrets".into(),
    );
    tokio::spawn(crate::link_tokens::run(
        link_reflector.store.clone(),
        Api::<Secret>::namespaced(client.clone(), &config.links_namespace),
        config.node_name.clone(),
        config.link_token_renew_after,
    ));
    node_reflector
        .store
        .wait_until_ready()
        .await
        .context("the Node reflector stopped")?;
    // Without the Peer CRD the node mesh still comes up (external peers
    // join once the CRD exists); waiting a little keeps a restarted agent
    // from dropping external peers it configured before.
    if tokio::time::timeout(PEERS_WAIT, peer_reflector.store.wait_until_ready())
        .await
        .is_err()
    {
        tracing::error!("cannot list Peers (is the peers.trellis.dev CRD installed?); going on with the nodes only");
    }
    // Nor does it drop its linked clusters' peers before it knows the links.
    if tokio::time::timeout(PEERS_WAIT, link_reflector.store.wait_until_ready())
        .await
        .is_err()
    {
        tracing::error!(namespace = %config.links_namespace, "cannot list the linked-cluster Secrets; going on without linked clusters until they list");
    }

    let mut dataplane = NodeDataplane {
        wg,
        netlink,
        interface: config.interface.clone(),
        private_key: key,
        nft_table: config.nft_table.clone(),
        last_nft: None,
        nft_record: Some(config.nft_record_path()),
        creates_interface,
        new_device: false,
        echoes: None,
    };
    dataplane.load_nft_record();
    if !creates_interface {
        wait_for_userspace_device(&config).await;
    }
    let declared = config.declared();
    tracing::info!(pod_ranges = %format_list(&declared.pods), external_peer_ranges = %format_list(&declared.external_peers), "declared ranges");
    let parts = Parts {
        stores: Stores {
            nodes: node_reflector.store.clone(),
            peers: peer_reflector.store.clone(),
            links: link_reflector.store.clone(),
        },
        dataplane,
        cluster: KubeCluster::new(client.clone(), client.default_namespace()),
        linked: RemoteClusters::new(
            changed.clone(),
            Some(RemoteCache::new(config.linked_clusters_cache_dir())),
        ),
        clock: Arc::new(SystemTime::now),
        metrics,
        readiness,
        status,
    };
    let agent = Agent::new(config, public_key, parts);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    agent.run_until(changed, stop).await;
    tracing::info!("stopping; the WireGuard interface, routes and rules stay in place");
    Ok(())
}
