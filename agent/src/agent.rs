//! The agent's runtime: watch Nodes, Peers and linked clusters with reflectors, reconcile on every
//! change and on a resync timer, back off after errors, publish the node's
//! own annotations, write the CNI configuration, report Events, metrics and
//! readiness; on SIGTERM stop and leave the dataplane running.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::Notify;
use trellis_api::Peer;
use trellis_mesh::annotations::own_annotations;
use trellis_mesh::names::LABEL_REMOTE_CLUSTER;
use trellis_mesh::{LocalNode, MeshInputs};

use crate::config::{Config, DataplaneMode};
use crate::dataplane::NodeDataplane;
use crate::key::PrivateKey;
use crate::kube_io::{self, EventSink};
use crate::link::{self, Links};
use crate::metrics::{self, Metrics, Readiness};
use crate::peers::{self, PeerInputs};
use crate::reconcile::Reconciler;
use crate::reflectors::spawn_reflector;
use crate::remote::RemoteClusters;
use crate::status::{DeviceReader, StatusBoard};
use crate::wg::{Uapi, WireGuard};
use crate::{cni_conf, kernel_wg};

/// WireGuard's overhead on an IPv6 underlay: 40 (IPv6) + 8 (UDP) + 32.
const WIREGUARD_OVERHEAD: u32 = 80;
const DEFAULT_MTU: u32 = 1420;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const PEERS_WAIT: Duration = Duration::from_secs(20);
/// How often probed pairs' paths are checked (relay fallback and return).
const PATH_CHECK: Duration = Duration::from_secs(2);

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

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
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
    let nodes: Api<Node> = Api::all(client.clone());
    link::enable_forwarding(&config.sysctl_dir).context("enabling IP forwarding")?;
    let links = Links::connect().context("opening netlink")?;
    let (wg, creates_interface) = choose_device(&config)?;
    tracing::info!(kernel = creates_interface, "WireGuard dataplane chosen");

    let metrics = Metrics::default();
    let readiness = Readiness::default();
    readiness.set_not_ready("starting");
    let status_board = StatusBoard::new(device_reader(&config, creates_interface)?);
    {
        let (m, r, s, addr) = (
            metrics.clone(),
            readiness.clone(),
            status_board.clone(),
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
        nodes.clone(),
        watcher::Config::default(),
        changed.clone(),
        "Nodes".into(),
    );
    let node_store = node_reflector.store.clone();
    let peer_api: Api<Peer> = Api::all(client.clone());
    let peer_reflector = spawn_reflector(
        peer_api.clone(),
        watcher::Config::default(),
        changed.clone(),
        "Peers".into(),
    );
    let peer_store = peer_reflector.store.clone();
    // Linked clusters: the labelled Secrets in the links namespace.
    let link_reflector = spawn_reflector(
        Api::<Secret>::namespaced(client.clone(), &config.links_namespace),
        watcher::Config::default().labels(LABEL_REMOTE_CLUSTER),
        changed.clone(),
        "linked-cluster Secrets".into(),
    );
    let mut remotes = RemoteClusters::new(changed.clone());
    node_store
        .wait_until_ready()
        .await
        .context("the Node reflector stopped")?;
    // Without the Peer CRD the node mesh still comes up (external peers
    // join once the CRD exists); waiting a little keeps a restarted agent
    // from dropping external peers it configured before.
    if tokio::time::timeout(PEERS_WAIT, peer_store.wait_until_ready())
        .await
        .is_err()
    {
        tracing::error!("cannot list Peers (is the peers.trellis.dev CRD installed?); going on with the nodes only");
    }
    let mut peer_inputs = PeerInputs::new(client.clone(), client.default_namespace());

    let mut dataplane = NodeDataplane {
        wg,
        links: links.clone(),
        interface: config.interface.clone(),
        private_key: key,
        nft_table: config.nft_table.clone(),
        last_nft: None,
        nft_record: Some(config.nft_record_path()),
        creates_interface,
    };
    dataplane.load_nft_record();
    let mut reconciler: Option<Reconciler<NodeDataplane>> = None;
    let mut pending_dataplane = Some(dataplane);
    let mut events: Option<EventSink> = None;
    let mut backoff = Duration::from_secs(1);
    let mut discovered = std::collections::BTreeMap::new();
    let mut watch_paths = false;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let declared = config.declared();
    let mut leak_collector = (config.ipam_leak_grace_seconds > 0).then(|| {
        crate::leaks::LeakCollector::new(
            &config.ipam_dir(),
            cni_conf::NETWORK,
            Duration::from_secs(config.ipam_leak_grace_seconds),
        )
    });
    tracing::info!(pod_ranges = %trellis_mesh::ranges::format_list(&declared.pods), external_peer_ranges = %trellis_mesh::ranges::format_list(&declared.external_peers), "declared ranges");
    loop {
        let snapshot: Vec<Arc<Node>> = node_store.state();
        let peer_objects: Vec<Arc<Peer>> = peer_store.state();
        let own = snapshot
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(config.node_name.as_str()))
            .cloned();
        let result: anyhow::Result<()> = async {
            let own = own.with_context(|| format!("Node {} is not in the cluster (yet)", config.node_name))?;
            let own_ips = kube_io::internal_ips(&own);
            let endpoint_ip: Option<IpAddr> = config.endpoint_address.or_else(|| own_ips.iter().find(|a| a.is_ipv4()).or(own_ips.first()).copied());
            let endpoint = endpoint_ip.map(|ip| SocketAddr::new(ip, config.listen_port));
            if kube_io::publish_annotations(&nodes, &own, &own_annotations(&public_key, endpoint, &discovered)).await? {
                tracing::info!(?endpoint, discovered = discovered.len(), "published this node's key, endpoint and discovered endpoints");
            }
            if events.is_none() {
                events = Some(EventSink::new(client.clone(), &own));
            }
            let reconciler = match reconciler.as_mut() {
                Some(r) => r,
                None => {
                    let underlay_mtu = match endpoint_ip {
                        Some(ip) => links.mtu_of_interface_with(ip).await.ok().flatten(),
                        None => None,
                    };
                    let mtu = config.mtu.unwrap_or_else(|| underlay_mtu.map(|m| m - WIREGUARD_OVERHEAD).unwrap_or(DEFAULT_MTU));
                    tracing::info!(mtu, ?underlay_mtu, "MTU");
                    let local = LocalNode { name: config.node_name.clone(), public_key, interface: config.interface.clone(), listen_port: config.listen_port, mtu };
                    reconciler.insert(Reconciler::new(local, &config.nft_table, pending_dataplane.take().expect("built once"), metrics.clone()))
                }
            };
            let infos: Vec<_> = snapshot.iter().map(|n| kube_io::node_info(n)).collect();
            let external = peer_inputs.external_peers(&peer_objects).await;
            for (secret, problem) in remotes.follow(&link_reflector.store.state()).await {
                if let Some(sink) = &events {
                    sink.link_unusable(&secret, &problem).await;
                }
            }
            let linked = remotes.remote_clusters();
            let inputs = MeshInputs { nodes: &infos, external: &external, remotes: &linked, declared: &declared };
            let outcome = reconciler.reconcile_mesh(&inputs, &resolve).await?;
            watch_paths = outcome.watches_paths();
            if outcome.discovered != discovered {
                discovered = outcome.discovered.clone();
                changed.notify_one();
            }
            for r in &outcome.new_rejections {
                tracing::warn!(peer = %r.object, reason = r.reason.as_str(), message = %r.message, "left out of the mesh");
                if let Some(sink) = &events {
                    sink.rejected(r).await;
                }
            }
            for r in &outcome.new_cluster_rejections {
                tracing::warn!(cluster = r.cluster, message = %r.message, "linked cluster left out of the mesh");
                if let (Some(sink), Some(secret)) = (&events, remotes.secret_of(&r.cluster)) {
                    sink.cluster_refused(secret, r).await;
                }
            }
            status_board.set(&config.node_name, public_key, outcome.desired.clone(), remotes.reports(&outcome.desired));
            match peers::publish_conditions(&peer_api, &config.node_name, &peer_objects, &outcome.desired).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(peers = n, "updated this node's condition on Peers"),
                Err(e) => tracing::warn!(error = %e, "could not update Peer conditions (retried next reconcile)"),
            }
            // The configuration is what tells a runtime the node can take
            // pods (containerd 1.x never asks the plugin's STATUS): only
            // with the mesh interface up.
            if !interface_up(&links, &config.interface).await {
                anyhow::bail!("the mesh interface {} is not up after reconciling: no CNI configuration until it is", config.interface);
            }
            let conflist = cni_conf::conflist(&outcome.desired.own_pod_cidrs, outcome.desired.mtu, &config.ipam_dir(), &config.interface);
            if cni_conf::write_if_changed(&config.cni_conflist_path(), &conflist).context("writing the CNI configuration")? {
                tracing::info!(path = %config.cni_conflist_path().display(), "wrote the CNI configuration");
            }
            Ok(())
        }
        .await;
        let wait = match result {
            Ok(()) => {
                readiness.set_ready();
                collect_leaks(&mut leak_collector, &metrics).await;
                backoff = Duration::from_secs(1);
                if watch_paths {
                    config.resync().min(PATH_CHECK)
                } else {
                    config.resync()
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "reconcile failed; the dataplane keeps its last state");
                if !interface_up(&links, &config.interface).await {
                    match cni_conf::remove(&config.cni_conflist_path()) {
                        Ok(true) => {
                            tracing::warn!(interface = config.interface, path = %config.cni_conflist_path().display(), "the mesh interface is gone or down: removed the CNI configuration, so the runtime takes no pod this node cannot serve (written again once the interface is back)")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "could not remove the CNI configuration")
                        }
                    }
                }
                readiness.set_not_ready(format!("{e:#}"));
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping; the WireGuard interface, routes and rules stay in place");
    Ok(())
}

/// Whether the mesh interface exists and is up (a failed look counts as
/// not up).
async fn interface_up(links: &Links, interface: &str) -> bool {
    matches!(links.state(interface).await, Ok(Some(state)) if state.up)
}

/// Runs the leak collector when it is due, off the async threads (it
/// takes the IPAM store's lock), and logs what it released.
async fn collect_leaks(collector: &mut Option<crate::leaks::LeakCollector>, metrics: &Metrics) {
    let Some(mut c) = collector.take_if(|c| c.due(std::time::Instant::now())) else {
        return;
    };
    let joined = tokio::task::spawn_blocking(move || {
        let got = c.collect(crate::leaks::interface_exists);
        (c, got)
    })
    .await;
    let Ok((c, got)) = joined else {
        tracing::error!("the IPAM leak collector panicked: it is off until the agent restarts");
        return;
    };
    *collector = Some(c);
    for (address, owner) in &got.released {
        tracing::warn!(%address, container = owner.container_id, ifname = owner.ifname, "released a leaked pod address: its pod's interface is gone and no CNI DEL came");
    }
    metrics
        .leaked_addresses_released
        .inc_by(got.released.len() as u64);
    for e in &got.errors {
        tracing::warn!(error = %e, "collecting leaked pod addresses");
    }
}
