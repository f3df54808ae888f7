//! The real agents with `--dataplane kernel` against the real apiserver of a
//! lab started inside the guest: kt-n1 and kt-n2 run kernel WireGuard
//! (created by their agents), kt-n3 runs trellis-wg (interop in one mesh).
//! The trials share the lab and run in order; each starts by checking that
//! the mesh is whole.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use libtest_mimic::Failed;
use trellis_e2e::mesh::{wait_for, Device};
use trellis_e2e::node::private_dir;
use trellis_e2e::pod::{ping_flow, ping_from, result_address};
use trellis_e2e::{netns, Lab, LabOptions};
use trellis_mesh::names::{ANNOTATION_FORCE_ENDPOINT, DEFAULT_WIREGUARD_RUN_DIR};

use trellis_e2e::mesh::WgPeer;

use crate::{check, INTERFACE};

const LAB: &str = "kt";
/// How long the mesh may take to converge on an ordinary machine; every
/// wait is stretched by how slow the guest measured itself
/// (`TRELLIS_DEADLINE_SCALE`, about 10-15 under software emulation).
const CONVERGE: Duration = Duration::from_secs(60);
/// The nodes' underlay MTU in this lab.
const UNDERLAY_MTU: u32 = 1440;

struct Pod {
    node: String,
    netns: String,
    v4: String,
    v6: String,
}

struct Mesh {
    lab: Lab,
    pods: Vec<Pod>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

static MESH: Mutex<Option<Mesh>> = Mutex::new(None);

fn mesh() -> MutexGuard<'static, Option<Mesh>> {
    MESH.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn devices() -> [(String, Device); 3] {
    [
        (format!("{LAB}-n1"), Device::Kernel),
        (format!("{LAB}-n2"), Device::Kernel),
        (format!("{LAB}-n3"), Device::TrellisWg),
    ]
}

/// Stops the lab (after the last trial).
pub(crate) fn tear_down() {
    if mesh().take().is_some() {
        let report = trellis_e2e::down(LAB);
        if !report.is_clean() {
            eprintln!("kernel tier: tearing the lab down left: {report:?}");
        }
    }
}

/// Runs `f` on the shared mesh after checking every node has its peers.
fn with_mesh(f: impl FnOnce(&mut Mesh) -> Result<(), Failed>) -> Result<(), Failed> {
    let mut guard = mesh();
    let mesh = guard
        .as_mut()
        .ok_or("the lab is not up: agent::kernel_and_trellis_wg_nodes_mesh failed first")?;
    mesh.lab
        .wait_mesh(mesh.lab.state.nodes.len() - 1, CONVERGE)?;
    f(mesh)
}

fn link_details(lab: &Lab, node: &str) -> Result<String, Failed> {
    let ns = lab.node(node)?.netns.clone();
    Ok(trellis_e2e::cmd::ip(
        Some(&ns),
        &["-d", "-o", "link", "show", INTERFACE],
    )?)
}

fn uapi_socket_exists(lab: &Lab, node: &str) -> Result<bool, Failed> {
    Ok(private_dir(&lab.node(node)?.dir, DEFAULT_WIREGUARD_RUN_DIR)
        .join(format!("{INTERFACE}.sock"))
        .exists())
}

fn all_pairs_ping(pods: &[Pod]) -> Result<(), Failed> {
    let mut failures = Vec::new();
    for a in pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            for target in [&b.v4, &b.v6] {
                if let Err(e) = ping_from(&a.netns, target) {
                    failures.push(format!("{} -> {} ({target}): {e}", a.node, b.node));
                }
            }
        }
    }
    check(failures.is_empty(), format!("{failures:#?}"))
}

/// The pod CIDRs of every node but `node`, as the routes it should have.
fn expected_routes(lab: &Lab, node: &str) -> Result<Vec<String>, Failed> {
    let client = runtime().block_on(lab.client(&lab.node(node)?.cluster))?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let list = runtime().block_on(nodes.list(&Default::default()))?;
    let mut want: Vec<String> = list
        .items
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(node))
        .flat_map(|n| {
            n.spec
                .clone()
                .unwrap_or_default()
                .pod_cidrs
                .unwrap_or_default()
        })
        .map(|c| format!("{c} dev {INTERFACE}"))
        .collect();
    want.sort();
    Ok(want)
}

/// The lab comes up in the guest; kt-n1 and kt-n2 get kernel WireGuard from
/// their agents, kt-n3 trellis-wg; every pod reaches every other over both
/// families; MTU and routes as on userspace nodes.
pub(crate) fn kernel_and_trellis_wg_nodes_mesh() -> Result<(), Failed> {
    trellis_e2e::down(LAB);
    eprintln!("  starting the lab inside the guest (about a minute under emulation)");
    let mut lab = runtime().block_on(Lab::up(LabOptions::new(LAB, 3)))?;
    for (node, device) in devices() {
        // An underlay MTU other than 1500, so that the mesh MTU (underlay
        // minus 80) differs from the kernel's default of 1420.
        let ns = lab.node(&node)?.netns.clone();
        trellis_e2e::cmd::ip(
            Some(&ns),
            &["link", "set", "eth0", "mtu", &UNDERLAY_MTU.to_string()],
        )?;
        runtime().block_on(lab.start_node(&node, device))?;
    }
    lab.wait_mesh(2, CONVERGE)?;
    let mut pods = Vec::new();
    for (node, _) in devices() {
        let result = lab.add_pod(&node, "p0", None)?;
        let address = |v4| result_address(&result, v4).ok_or("a pod address of each family");
        pods.push(Pod {
            netns: lab.names().pod_netns(&node, "p0"),
            v4: address(true)?,
            v6: address(false)?,
            node,
        });
    }
    *mesh() = Some(Mesh { lab, pods });
    with_mesh(|m| {
        for (node, device) in devices() {
            let details = link_details(&m.lab, &node)?;
            let socket = uapi_socket_exists(&m.lab, &node)?;
            match device {
                Device::Kernel => check(
                    details.contains("wireguard") && !socket,
                    format!("{node}: not a kernel WireGuard link made by the agent: {details}"),
                )?,
                _ => check(
                    details.contains("tun") && socket,
                    format!("{node}: not trellis-wg: {details}"),
                )?,
            }
            let mtu = UNDERLAY_MTU - 80;
            check(
                details.contains(&format!("mtu {mtu} ")),
                format!("{node}: MTU should be the underlay's minus 80 ({mtu}): {details}"),
            )?;
            let ns = m.lab.node(&node)?.netns.clone();
            let routes = crate::routes(&ns)?;
            let want = expected_routes(&m.lab, &node)?;
            check(
                routes == want,
                format!("{node}: routes {routes:?}, want {want:?}"),
            )?;
        }
        all_pairs_ping(&m.pods)?;
        for (node, _) in devices() {
            let peers = m.lab.wg_dump(&node)?;
            check(
                peers.len() == 2 && peers.iter().all(|p| p.latest_handshake > 0),
                format!("{node}: every peer should have a handshake: {peers:?}"),
            )?;
        }
        Ok(())
    })
}

/// The agent on a kernel node stops (SIGTERM) and starts again: the
/// interface (same ifindex), its peers and sessions are untouched, a ping
/// flow through it loses nothing, and the new agent has nothing to apply.
pub(crate) fn restart_leaves_the_kernel_interface_alone() -> Result<(), Failed> {
    with_mesh(|m| {
        let node = format!("{LAB}-n1");
        let ifindex = |lab: &Lab| -> Result<String, Failed> {
            Ok(link_details(lab, &node)?
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string())
        };
        let (index_before, peers_before) = (ifindex(&m.lab)?, m.lab.wg_dump(&node)?);
        let flow = ping_flow(&m.pods[0].netns, &m.pods[1].v4, 12);
        std::thread::sleep(Duration::from_secs(2));
        let old = m
            .lab
            .state
            .daemons
            .iter()
            .filter(|d| d.name == format!("{node}/agent") && netns::alive(d.pid))
            .map(|d| d.pid)
            .collect::<Vec<_>>();
        check(
            old.len() == 1,
            format!("one agent running on {node}: {old:?}"),
        )?;
        m.lab
            .signal_daemon(&node, "agent", nix::sys::signal::Signal::SIGTERM);
        wait_for(
            Duration::from_secs(30),
            || !netns::alive(old[0]),
            || "the agent did not stop on SIGTERM".into(),
        )?;
        check(
            link_details(&m.lab, &node).is_ok(),
            "the interface went away with the agent",
        )?;
        runtime().block_on(m.lab.start_agent(&node, Device::Kernel))?;
        wait_for(
            CONVERGE,
            || {
                m.lab
                    .agent_http(&node, "/readyz")
                    .map(|r| r.contains(" 200 "))
                    .unwrap_or(false)
            },
            || "the restarted agent did not get ready".into(),
        )?;
        let metrics = m.lab.agent_metrics(&node)?;
        check(
            metrics.contains("trellis_dataplane_operations_total 0"),
            format!("the restarted agent changed the dataplane:\n{metrics}"),
        )?;
        let (sent, received) = flow.join().map_err(|_| "ping flow")?;
        check(sent >= 100, format!("the ping flow ran: {sent} sent"))?;
        check(
            sent - received <= sent / 50,
            format!(
                "{received}/{sent} pings through a restart that should not touch the dataplane"
            ),
        )?;
        check(
            ifindex(&m.lab)? == index_before,
            "the interface was re-created",
        )?;
        let peers_after = m.lab.wg_dump(&node)?;
        let config = |p: &[WgPeer]| -> Vec<(String, String, Vec<String>)> {
            p.iter()
                .map(|p| {
                    (
                        p.public_key.clone(),
                        p.endpoint.clone(),
                        p.allowed_ips.clone(),
                    )
                })
                .collect()
        };
        check(
            config(&peers_after) == config(&peers_before),
            format!("peers changed across the restart: {peers_before:?} -> {peers_after:?}"),
        )?;
        // A re-created peer starts again from zero counters and a new
        // handshake. The peer the ping flow runs over keeps its session
        // (same handshake). An idle peer may handshake again on WireGuard's
        // own timers — 15 s after a packet of the previous trial went
        // unanswered, about as long as the restart takes under emulation —
        // but its counters must go on from where they were.
        let flow_peer = m.lab.wg_public_key(&m.pods[1].node)?;
        check(
            peers_after.iter().any(|p| p.public_key == flow_peer),
            format!("the ping flow's peer {flow_peer} is one of {node}'s peers"),
        )?;
        for (b, a) in peers_before.iter().zip(&peers_after) {
            let kept = match a.public_key == flow_peer {
                true => a.latest_handshake == b.latest_handshake,
                false => a.rx_bytes >= b.rx_bytes && a.latest_handshake >= b.latest_handshake,
            };
            check(
                kept,
                format!(
                    "peer {} was re-created across the restart: {b:?} -> {a:?}",
                    a.public_key
                ),
            )?;
        }
        Ok(())
    })
}

/// `ip link del trellis` behind the agent's back: the next reconcile makes
/// it again, complete, and pods on that node reach the others.
pub(crate) fn deleted_interface_is_recreated() -> Result<(), Failed> {
    with_mesh(|m| {
        let node = format!("{LAB}-n1");
        let ns = m.lab.node(&node)?.netns.clone();
        trellis_e2e::cmd::ip(Some(&ns), &["link", "del", INTERFACE])?;
        wait_for(
            CONVERGE,
            || m.lab.wg_dump(&node).map(|p| p.len() == 2).unwrap_or(false),
            || format!("{node}: the interface was not recreated with its peers"),
        )?;
        let details = link_details(&m.lab, &node)?;
        check(details.contains("wireguard"), details.clone())?;
        let want = expected_routes(&m.lab, &node)?;
        wait_for(
            Duration::from_secs(30),
            || crate::routes(&ns).map(|r| r == want).unwrap_or(false),
            || format!("{node}: routes not restored: want {want:?}"),
        )?;
        let from = &m.pods[0];
        for to in &m.pods[1..] {
            for target in [&to.v4, &to.v6] {
                ping_from(&from.netns, target)
                    .map_err(|e| format!("{} -> {} ({target}): {e}", from.node, to.node))?;
            }
        }
        Ok(())
    })
}

/// A person sets `trellis.dev/force-endpoint` on kt-n2 to another of its
/// addresses: kt-n1's kernel peer follows in place (same session), and
/// traffic flows over the new endpoint.
pub(crate) fn endpoint_annotation_updates_the_peer_in_place() -> Result<(), Failed> {
    with_mesh(|m| {
        let (n1, n2) = (format!("{LAB}-n1"), format!("{LAB}-n2"));
        let n2_state = m.lab.node(&n2)?.clone();
        let v4 = n2_state
            .v4
            .ok_or("kt-n2 has an IPv4 underlay address")?
            .octets();
        let second = format!("{}.{}.{}.250", v4[0], v4[1], v4[2]);
        trellis_e2e::cmd::ip(
            Some(&n2_state.netns),
            &["addr", "add", &format!("{second}/24"), "dev", "eth0"],
        )?;
        ping_from(&m.pods[0].netns, &m.pods[1].v4)?;
        let key_n2 = m.lab.wg_public_key(&n2)?;
        let peer_of = |lab: &Lab| -> Result<WgPeer, Failed> {
            lab.wg_dump(&n1)?
                .into_iter()
                .find(|p| p.public_key == key_n2)
                .ok_or_else(|| Failed::from("kt-n1 has no peer kt-n2"))
        };
        let before = peer_of(&m.lab)?;
        let client = runtime().block_on(m.lab.client(&n2_state.cluster))?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        let patch = serde_json::json!({"metadata": {"annotations": {
            ANNOTATION_FORCE_ENDPOINT: format!("{second}:51820")
        }}});
        runtime().block_on(nodes.patch(
            &n2,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        ))?;
        let want = format!("{second}:51820");
        wait_for(
            CONVERGE,
            || peer_of(&m.lab).map(|p| p.endpoint == want).unwrap_or(false),
            || format!("kt-n1's peer kt-n2 did not move to {want}"),
        )?;
        ping_from(&m.pods[0].netns, &m.pods[1].v4)?;
        ping_from(&m.pods[0].netns, &m.pods[1].v6)?;
        let after = peer_of(&m.lab)?;
        // kt-n3 (trellis-wg) changes its peer kt-n2 in place, as the
        // kernel does, keeping the session: kt-n2's kernel, which holds the
        // same session, is not left sending into a dead one until its rekey
        // timeout (about 15 s without answers).
        let n3 = format!("{LAB}-n3");
        let key_n2_on_n3 = key_n2.clone();
        wait_for(
            CONVERGE,
            || {
                m.lab
                    .wg_dump(&n3)
                    .map(|p| {
                        p.iter()
                            .any(|p| p.public_key == key_n2_on_n3 && p.endpoint == want)
                    })
                    .unwrap_or(false)
            },
            || format!("kt-n3's peer kt-n2 did not move to {want}"),
        )?;
        let started = std::time::Instant::now();
        wait_for(
            Duration::from_secs(10),
            || ping_from(&m.pods[1].netns, &m.pods[2].v4).is_ok(),
            || {
                "kt-n2 -> kt-n3 did not flow again within 10 s of kt-n3's peer change (before the 15 s rekey timeout)".into()
            },
        )?;
        eprintln!(
            "  kt-n2 -> kt-n3 (trellis-wg) flowed {:.1?} after kt-n3 changed its peer",
            started.elapsed()
        );
        check(
            after.endpoint == want,
            format!("the endpoint moved back after traffic: {after:?}"),
        )?;
        check(
            after.latest_handshake == before.latest_handshake && after.rx_bytes > before.rx_bytes,
            format!("the peer was re-created, not updated: {before:?} -> {after:?}"),
        )
    })
}

/// A fourth node, kernel WireGuard, joins: every agent adds it, pods on the
/// trellis-wg node and on the kernel nodes reach its pod; it leaves: every
/// agent removes its peer and routes.
pub(crate) fn a_kernel_node_joins_and_leaves() -> Result<(), Failed> {
    with_mesh(|m| {
        let new = runtime().block_on(m.lab.add_node(LAB))?;
        runtime().block_on(m.lab.start_node(&new, Device::Kernel))?;
        m.lab.wait_mesh(3, CONVERGE)?;
        let result = m.lab.add_pod(&new, "p0", None)?;
        for v4 in [true, false] {
            let target = result_address(&result, v4).ok_or("new pod address")?;
            for from in &m.pods {
                ping_from(&from.netns, &target)
                    .map_err(|e| format!("{} -> {new} ({target}): {e}", from.node))?;
            }
        }
        let details = link_details(&m.lab, &new)?;
        check(details.contains("wireguard"), details.clone())?;
        m.lab.delete_pod(&new, "p0")?;
        runtime().block_on(m.lab.remove_node(&new))?;
        m.lab.wait_mesh(2, CONVERGE)?;
        for (node, _) in devices() {
            let ns = m.lab.node(&node)?.netns.clone();
            let want = expected_routes(&m.lab, &node)?;
            wait_for(
                Duration::from_secs(30),
                || crate::routes(&ns).map(|r| r == want).unwrap_or(false),
                || format!("{node}: routes of the node that left remain; want {want:?}"),
            )?;
        }
        all_pairs_ping(&m.pods)
    })
}
