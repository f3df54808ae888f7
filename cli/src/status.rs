//! `status`: every agent's report (`/status` on its metrics port, read
//! through the API server's node proxy, as `kubectl get --raw` would) as
//! one table of nodes and their peers.

use std::fmt::Write as _;
use std::time::Duration;

use trellis_api::status::{NodeReport, PathState, PeerReport};

use crate::cluster::Snapshot;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One node's report, or why it could not be read.
pub type Fetched = (String, Result<NodeReport, String>);

async fn fetch(client: &kube::Client, node: &str, port: u16) -> Result<NodeReport, String> {
    let path = format!("/api/v1/nodes/{node}:{port}/proxy/status");
    let request = http::Request::get(&path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = tokio::time::timeout(FETCH_TIMEOUT, client.request_text(request))
        .await
        .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text)
        .map_err(|e| format!("not a Trellis status report ({e}): {}", text.trim()))
}

/// The reports of every node, in node order.
pub async fn fetch_all(client: &kube::Client, snapshot: &Snapshot, port: u16) -> Vec<Fetched> {
    let mut handles = Vec::new();
    for info in snapshot.node_infos() {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            let report = fetch(&client, &info.name, port).await;
            (info.name, report)
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        if let Ok(item) = h.await {
            out.push(item);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Bytes as a short human figure (KiB, MiB, GiB).
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

/// Seconds as "5s ago", "3m ago", "2h ago".
pub fn ago(seconds: i64) -> String {
    match seconds {
        s if s < 0 => "now".into(),
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s => format!("{}h ago", s / 3600),
    }
}

/// What is wrong with the path to a peer; empty when nothing is (idle and
/// unused paths are not problems: nothing is trying to use them).
fn problem(p: &PeerReport, now: i64) -> String {
    if let Some(silent) = p.silent_for_s {
        let now_on = match p.path {
            PathState::Relayed => "relayed",
            _ => "no relay reaches both ends",
        };
        return format!(
            "the direct path has answered no echo for {silent}s: {now_on}{}",
            tried(p)
        );
    }
    match (p.path, p.last_handshake) {
        (PathState::Down, Some(t)) => format!(
            "handshakes fail (last one {}): is the peer reachable?",
            ago(now - t)
        ),
        (PathState::Down, None) => "no handshake yet: is the peer reachable?".into(),
        (PathState::Relayed, _) => format!("no direct handshake completes (NAT?){}", tried(p)),
        (PathState::Direct | PathState::Lan | PathState::Idle | PathState::Unused, _) => {
            String::new()
        }
    }
}

/// `; tried lan 172.31.0.2:51820, public 198.51.100.7:51820 (now)`: the
/// candidate endpoints of a peer with more than one; empty without.
fn tried(p: &PeerReport) -> String {
    if p.candidates.is_empty() {
        return String::new();
    }
    let each: Vec<String> = p
        .candidates
        .iter()
        .map(|c| {
            let now = if c.current { " (now)" } else { "" };
            format!("{} {}{now}", c.kind, c.endpoint)
        })
        .collect();
    format!("; tried {}", each.join(", "))
}

/// The table `status` prints: the HANDSHAKE column has the age of the last
/// handshake whatever the path (an idle pair had one), "never" without.
pub fn table(fetched: &[Fetched], now: i64) -> String {
    let mut rows: Vec<[String; 9]> = vec![[
        "NODE",
        "PEER",
        "ENDPOINT",
        "DISCOVERED",
        "HANDSHAKE",
        "RX",
        "TX",
        "PATH",
        "PROBLEMS",
    ]
    .map(String::from)];
    let dash = || "-".to_string();
    for (node, report) in fetched {
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                let mut row = [
                    node.clone(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    String::new(),
                ];
                row[8] = format!("agent unreachable: {e}");
                rows.push(row);
                continue;
            }
        };
        if report.behind_nat {
            rows.push([
                node.clone(),
                "(this node)".into(),
                dash(),
                report.public_endpoint.clone().unwrap_or_else(dash),
                dash(),
                dash(),
                dash(),
                "behind NAT".into(),
                "its pairs are kept alive; where the others see it is DISCOVERED".into(),
            ]);
        }
        for p in &report.peers {
            let problem = problem(p, now);
            let path = match &p.relay {
                Some(via) => format!("{} via {via}", p.path.as_str()),
                None => p.path.as_str().into(),
            };
            rows.push([
                node.clone(),
                p.name.clone(),
                p.endpoint.clone().unwrap_or_else(dash),
                p.discovered_endpoint.clone().unwrap_or_else(dash),
                p.last_handshake
                    .map(|t| ago(now - t))
                    .unwrap_or_else(|| "never".into()),
                bytes(p.rx_bytes),
                bytes(p.tx_bytes),
                path,
                problem,
            ]);
        }
        for l in &report.left_out {
            rows.push([
                node.clone(),
                l.name.clone(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                "left out".into(),
                format!("{}: {}", l.reason, l.message),
            ]);
        }
    }
    let mut out = columns(&rows);
    let mut links: Vec<[String; 7]> = Vec::new();
    for (node, report) in fetched {
        for l in report.iter().flat_map(|r| &r.linked_clusters) {
            links.push([
                node.clone(),
                l.name.clone(),
                l.state.as_str().into(),
                l.nodes.to_string(),
                l.peers.to_string(),
                token_cell(l.token_expires_in_s),
                l.message.clone().unwrap_or_default(),
            ]);
        }
    }
    if !links.is_empty() {
        links.insert(
            0,
            [
                "NODE",
                "LINKED CLUSTER",
                "STATE",
                "NODES",
                "PEERS",
                "TOKEN",
                "PROBLEMS",
            ]
            .map(String::from),
        );
        out.push('\n');
        out.push_str(&columns(&links));
    }
    out
}

/// How long a link's token is still valid: `valid 11h58m`, `expired`, or
/// `-` when the token does not say.
fn token_cell(expires_in_s: Option<i64>) -> String {
    match expires_in_s {
        None => "-".into(),
        Some(s) if s <= 0 => "expired".into(),
        Some(s) => {
            let (h, m) = (s / 3600, s % 3600 / 60);
            match h {
                0 => format!("valid {m}m"),
                _ => format!("valid {h}h{m:02}m"),
            }
        }
    }
}

/// Rows as left-aligned columns.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}   ", width = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
