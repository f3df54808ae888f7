//! `peer add` and `peer rm`: the Peer object, checked first the way the
//! agents will check it (a Peer they would refuse is not created), and the
//! configuration for the machine printed once it exists.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use kube::api::{Api, PostParams};
use trellis_api::peer::CONDITION_CONFIGURED;
use trellis_api::{Peer, PeerSpec};

use crate::args::PeerAdd;
use crate::cluster::Snapshot;
use crate::{keys, wgconf};

const WAIT_LIMIT: Duration = Duration::from_secs(60);

pub async fn add(
    client: &kube::Client,
    add: &PeerAdd,
    links_namespace: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (private_key, public_key) = match (&add.public_key, add.generate) {
        (Some(k), false) => (None, k.clone()),
        (None, true) => {
            let (private, public) = keys::generate();
            (Some(private), public)
        }
        _ => bail!("give either --public-key KEY or --generate"),
    };
    let spec = PeerSpec {
        public_key,
        endpoint: add.endpoint.clone(),
        allowed_ips: add.allowed_ips.clone(),
        persistent_keepalive: add.persistent_keepalive,
        preshared_key_secret_ref: None,
    };
    let peer = Peer::new(&add.name, spec);
    let snapshot = Snapshot::read_with_links(client, links_namespace).await?;
    if snapshot.peer(&add.name).is_some() {
        bail!(
            "Peer {} already exists: `kubectl trellis peer rm {}` first, or choose another name",
            add.name,
            add.name
        );
    }
    let info = peer.external_peer_info(Default::default());
    if let Some(why) = wgconf::refusal(&snapshot, &info) {
        bail!("the nodes would refuse Peer {}: {why}", add.name);
    }
    // The config is computed before creating, so a failure leaves nothing.
    let config = wgconf::external_config_for(
        &snapshot,
        &info,
        private_key.as_deref(),
        add.config_keepalive,
    )?;
    let api: Api<Peer> = Api::all(client.clone());
    api.create(&PostParams::default(), &peer)
        .await
        .with_context(|| format!("creating Peer {}", add.name))?;
    eprintln!("peer/{} created", add.name);
    if add.wait {
        wait_configured(&api, &add.name, &snapshot).await?;
    }
    out.write_all(config.as_bytes())?;
    Ok(())
}

/// Waits until every node in the mesh has set its condition to True;
/// fails at once when one refuses the Peer.
async fn wait_configured(api: &Api<Peer>, name: &str, snapshot: &Snapshot) -> anyhow::Result<()> {
    let nodes: Vec<String> = snapshot
        .node_infos()
        .into_iter()
        .filter(|n| {
            n.annotations
                .contains_key(trellis_mesh::names::ANNOTATION_PUBLIC_KEY)
        })
        .map(|n| n.name)
        .collect();
    let start = std::time::Instant::now();
    loop {
        let peer = api.get(name).await?;
        let mut waiting = Vec::new();
        for node in &nodes {
            match peer.condition(CONDITION_CONFIGURED, node) {
                Some(c) if c.status == "True" => {}
                Some(c) if c.status == "False" => bail!(
                    "node {node} refused Peer {name}: {}",
                    c.message.as_deref().unwrap_or("no reason given")
                ),
                _ => waiting.push(node.as_str()),
            }
        }
        if waiting.is_empty() {
            eprintln!(
                "peer/{name} configured on {} nodes in {:.1} s",
                nodes.len(),
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > WAIT_LIMIT {
            bail!(
                "Peer {name} is not configured on {} after {} s: are the agents running?",
                waiting.join(", "),
                WAIT_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn remove(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Peer> = Api::all(client.clone());
    match api.delete(name, &Default::default()).await {
        Ok(_) => {
            eprintln!("peer/{name} deleted");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            bail!("there is no Peer {name} (kubectl get peers lists them)")
        }
        Err(e) => Err(e).with_context(|| format!("deleting Peer {name}")),
    }
}
