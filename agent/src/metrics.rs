//! Prometheus metrics (prometheus-client) and the HTTP endpoint serving
//! `/metrics`, `/healthz`, `/readyz` and `/status` (the node's report). Peers are labelled by node name (`peer/NAME` for a Peer object);
//! keys never appear here, private or public.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use trellis_mesh::Desired;

use crate::status::StatusBoard;
use crate::wg::DeviceState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// A peer and how its traffic goes (`lan`, `direct`, `relayed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub peer: String,
    pub path: String,
}

/// A range a peer claimed outside what its cluster declared.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UndeclaredLabel {
    pub peer: String,
    pub range: String,
    /// The declaration, comma-separated; empty for a range that is never
    /// routed (a default route, loopback, an underlay address, ...).
    pub declared: String,
}

/// Every metric of the agent (cheap to clone: handles to shared values).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub peers: Gauge,
    pub relayed: Gauge,
    pub silent: Gauge,
    pub rejected: Family<ReasonLabel, Gauge>,
    pub undeclared: Family<UndeclaredLabel, Gauge>,
    pub handshake_age: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    pub rx_bytes: Family<PeerLabel, Gauge>,
    pub tx_bytes: Family<PeerLabel, Gauge>,
    pub path: Family<PathLabel, Gauge>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Counter,
    pub dataplane_operations: Counter,
    pub leaked_addresses_released: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            peers: Gauge::default(),
            relayed: Gauge::default(),
            silent: Gauge::default(),
            rejected: Family::default(),
            undeclared: Family::default(),
            handshake_age: Family::default(),
            rx_bytes: Family::default(),
            tx_bytes: Family::default(),
            path: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            reconcile_errors: Counter::default(),
            dataplane_operations: Counter::default(),
            leaked_addresses_released: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("trellis");
        r.register(
            "peers",
            "WireGuard peers configured from the mesh",
            self.peers.clone(),
        );
        r.register(
            "relayed_peers",
            "Node peers reached through a relay because no direct handshake completes",
            self.relayed.clone(),
        );
        r.register(
            "silent_paths",
            "Node peers whose direct path answered echoes, then none for 5 s or more",
            self.silent.clone(),
        );
        r.register(
            "rejected_peers",
            "Nodes left out of the mesh, by reason",
            self.rejected.clone(),
        );
        r.register(
            "undeclared_ranges",
            "Ranges peers claimed outside what their cluster declared (1 each), with the declaration",
            self.undeclared.clone(),
        );
        r.register(
            "peer_last_handshake_age_seconds",
            "Seconds since the last handshake with a peer (-1: never)",
            self.handshake_age.clone(),
        );
        r.register(
            "peer_rx_bytes",
            "Bytes received from a peer",
            self.rx_bytes.clone(),
        );
        r.register(
            "peer_tx_bytes",
            "Bytes sent to a peer",
            self.tx_bytes.clone(),
        );
        r.register(
            "peer_path",
            "How traffic to a peer goes (1 for the path in use: lan, direct or relayed)",
            self.path.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            self.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that failed",
            self.reconcile_errors.clone(),
        );
        r.register(
            "leaked_pod_addresses_released",
            "Pod addresses released because their pod's interface was gone and nothing called CNI DEL",
            self.leaked_addresses_released.clone(),
        );
        r.register(
            "dataplane_operations",
            "Dataplane changes applied (peers, routes, addresses, rulesets)",
            self.dataplane_operations.clone(),
        );
        r
    }

    /// Records the state after a reconcile.
    pub fn record_state(&self, desired: &Desired, device: &DeviceState) {
        self.peers.set(desired.peers.len() as i64);
        self.relayed.set(desired.relayed.len() as i64);
        self.silent.set(desired.silent.len() as i64);
        self.rejected.clear();
        self.undeclared.clear();
        for r in &desired.rejected {
            self.rejected
                .get_or_create(&ReasonLabel {
                    reason: r.reason.as_str().into(),
                })
                .inc();
            if let Some(u) = &r.undeclared {
                self.undeclared
                    .get_or_create(&UndeclaredLabel {
                        peer: r.object.to_string(),
                        range: u.range.to_string(),
                        declared: trellis_mesh::ranges::format_list(&u.declared),
                    })
                    .set(1);
            }
        }
        self.handshake_age.clear();
        self.rx_bytes.clear();
        self.tx_bytes.clear();
        self.path.clear();
        let now = SystemTime::now();
        for (key, peer) in &desired.peers {
            let label = PeerLabel {
                peer: peer.name.to_string(),
            };
            let stats = device.peers.get(key);
            let age = stats
                .and_then(|s| s.last_handshake)
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs_f64())
                .unwrap_or(-1.0);
            self.handshake_age.get_or_create(&label).set(age);
            self.rx_bytes
                .get_or_create(&label)
                .set(stats.map(|s| s.rx_bytes as i64).unwrap_or(0));
            self.tx_bytes
                .get_or_create(&label)
                .set(stats.map(|s| s.tx_bytes as i64).unwrap_or(0));
            self.path
                .get_or_create(&PathLabel {
                    peer: peer.name.to_string(),
                    path: desired
                        .path_kind(key, stats.and_then(|s| s.endpoint))
                        .into(),
                })
                .set(1);
        }
    }
}

/// Whether the agent is ready, and if not, why.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    reason: Arc<Mutex<String>>,
}

impl Readiness {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.ready.store(false, Ordering::SeqCst);
        *self.reason.lock().expect("readiness lock") = reason.into();
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> String {
        self.reason.lock().expect("readiness lock").clone()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Readiness,
    status: StatusBoard,
}

async fn status_json(
    State(state): State<AppState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let board = state.status.clone();
    let report = tokio::task::spawn_blocking(move || board.report())
        .await
        .ok()
        .flatten();
    match report {
        Some(report) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            serde_json::to_string(&report).unwrap_or_default(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain")],
            format!("no report yet: {}\n", state.readiness.reason()),
        ),
    }
}

async fn metrics_text(
    State(state): State<AppState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string(),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", state.readiness.reason()),
        )
    }
}

/// Serves the endpoints until the process ends.
pub async fn serve(
    address: SocketAddr,
    metrics: &Metrics,
    readiness: Readiness,
    status: StatusBoard,
) -> std::io::Result<()> {
    let state = AppState {
        registry: Arc::new(metrics.registry()),
        readiness,
        status,
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::default();
        m.reconcile_errors.inc();
        m.rejected
            .get_or_create(&ReasonLabel {
                reason: "invalid_annotation".into(),
            })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        for name in [
            "trellis_peers",
            "trellis_rejected_peers{reason=\"invalid_annotation\"} 1",
            "trellis_reconcile_errors_total 1",
            "trellis_reconcile_duration_seconds_bucket",
            "trellis_dataplane_operations_total",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }

    #[test]
    fn an_undeclared_range_is_named_with_its_declaration() {
        use trellis_mesh::ranges::Undeclared;
        use trellis_mesh::{RejectReason, Rejection};
        let m = Metrics::default();
        let mut d = Desired::default();
        d.rejected.push(Rejection {
            object: trellis_mesh::PeerName::Node("hijacker".into()),
            reason: RejectReason::UndeclaredRange,
            message: "pod CIDR 8.8.8.0/24 lies outside ...".into(),
            undeclared: Some(Undeclared {
                range: "8.8.8.0/24".parse().unwrap(),
                declared: vec![
                    "10.244.0.0/16".parse().unwrap(),
                    "fd00::/8".parse().unwrap(),
                ],
                message: String::new(),
            }),
        });
        m.record_state(&d, &DeviceState::default());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        assert!(
            text.contains("trellis_undeclared_ranges{peer=\"hijacker\",range=\"8.8.8.0/24\",declared=\"10.244.0.0/16,fd00::/8\"} 1"),
            "{text}"
        );
        assert!(text.contains("trellis_rejected_peers{reason=\"undeclared_range\"} 1"));
        m.record_state(&Desired::default(), &DeviceState::default());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        assert!(!text.contains("hijacker"), "gone once the peer is: {text}");
    }

    #[test]
    fn each_peer_is_exported_with_the_kind_of_path_its_traffic_takes() {
        use trellis_mesh::model::{Candidate, CandidateKind, Candidates, Relayed};
        use trellis_mesh::{DesiredPeer, PeerName, PublicKey};
        let key = |b: u8| PublicKey([b; 32]);
        let peer = |b: u8| DesiredPeer {
            name: PeerName::Node(format!("n{b}")),
            public_key: key(b),
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
            preshared_key: None,
        };
        let mut d = Desired::default();
        for b in 1..=3 {
            d.peers.insert(key(b), peer(b));
        }
        let candidate = |kind, endpoint: &str| Candidate {
            kind,
            endpoint: endpoint.parse().unwrap(),
        };
        d.candidates.insert(
            key(2),
            Candidates::new(vec![
                candidate(CandidateKind::Lan, "172.31.0.2:51820"),
                candidate(CandidateKind::Public, "198.51.100.9:1002"),
            ])
            .unwrap(),
        );
        d.relayed.insert(
            key(3),
            Relayed {
                via: key(1),
                via_name: PeerName::Node("n1".into()),
                allowed_ips: Vec::new(),
            },
        );
        // n2's session is on its LAN address (wherever the set candidate is).
        let mut device = DeviceState::default();
        device.peers.insert(
            key(2),
            crate::wg::PeerState {
                endpoint: Some("172.31.0.2:51820".parse().unwrap()),
                ..Default::default()
            },
        );
        d.candidates.get_mut(&key(2)).unwrap().current = 1;
        let m = Metrics::default();
        m.record_state(&d, &device);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        for line in [
            "trellis_peer_path{peer=\"n1\",path=\"direct\"} 1",
            "trellis_peer_path{peer=\"n2\",path=\"lan\"} 1",
            "trellis_peer_path{peer=\"n3\",path=\"relayed\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }

    #[test]
    fn readiness_carries_its_reason() {
        let r = Readiness::default();
        assert!(!r.is_ready());
        r.set_not_ready("no pod CIDR");
        assert_eq!(r.reason(), "no pod CIDR");
        r.set_ready();
        assert!(r.is_ready());
    }
}
