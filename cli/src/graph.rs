//! `graph`: the mesh as Graphviz DOT or as SVG (drawn here: nodes on a
//! circle, no external program). An edge joins two peers and is marked
//! direct, relayed, down, idle or unused from what both ends report, the
//! most telling first: direct when either end has a live session, down when
//! either end sees its traffic go unanswered (idle at the other end only
//! means nothing tries there). A node whose agent could not be read makes
//! no claims. Idle and unused edges are grey (dashed, dotted): nothing is
//! wrong with them; down ones are bold red. Nodes that the others see at
//! one public address share a site (one private network behind one NAT):
//! they are grouped, a DOT cluster or a dashed box around them in the SVG,
//! labelled with that address. A node without a report of its own (a
//! linked cluster's) is placed where the reporting nodes dial it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use trellis_api::status::PathState;

use crate::status::Fetched;

/// Vertices (name → is a cluster node), undirected edges with a state,
/// and the sites: public address → the nodes seen there (two or more).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    pub vertices: BTreeMap<String, bool>,
    pub edges: BTreeMap<(String, String), PathState>,
    pub unreachable: BTreeSet<String>,
    pub sites: BTreeMap<String, BTreeSet<String>>,
}

/// The address part of an `ip:port` (or `[ip]:port`) endpoint.
fn host_of(endpoint: &str) -> &str {
    endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// How telling a state is, when the two ends of an edge disagree.
fn rank(p: PathState) -> u8 {
    match p {
        PathState::Direct | PathState::Lan => 4,
        PathState::Relayed => 3,
        PathState::Down => 2,
        PathState::Idle => 1,
        PathState::Unused => 0,
    }
}

/// The states in the order of the legend.
const LEGEND: [PathState; 6] = [
    PathState::Direct,
    PathState::Lan,
    PathState::Relayed,
    PathState::Idle,
    PathState::Unused,
    PathState::Down,
];
/// Room for one entry of the legend: its line and its label.
const LEGEND_STEP: f64 = 95.0;

impl Mesh {
    pub fn from_reports(fetched: &[Fetched]) -> Self {
        let mut m = Mesh::default();
        // Where the reporting nodes dial each node peer (not a site-mate's
        // LAN address): how nodes without a report of their own (a linked
        // cluster's, one that could not be read) are placed in sites.
        let mut dialled_at: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for (node, report) in fetched {
            m.vertices.insert(node.clone(), true);
            let Ok(report) = report else {
                m.unreachable.insert(node.clone());
                continue;
            };
            if let Some(public) = &report.public_endpoint {
                m.sites
                    .entry(host_of(public).to_string())
                    .or_default()
                    .insert(node.clone());
            }
            for p in &report.peers {
                let is_node = !p.name.starts_with("peer/");
                m.vertices.entry(p.name.clone()).or_insert(is_node);
                if let (true, true, Some(endpoint)) =
                    (is_node, p.candidates.is_empty(), &p.endpoint)
                {
                    *dialled_at
                        .entry(p.name.clone())
                        .or_default()
                        .entry(host_of(endpoint).to_string())
                        .or_default() += 1;
                }
                let key = if *node < p.name {
                    (node.clone(), p.name.clone())
                } else {
                    (p.name.clone(), node.clone())
                };
                let e = m.edges.entry(key).or_insert(p.path);
                if rank(p.path) > rank(*e) {
                    *e = p.path;
                }
            }
        }
        let reported: BTreeSet<&String> = fetched
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(n, _)| n)
            .collect();
        for (name, hosts) in dialled_at {
            if reported.contains(&name) {
                continue;
            }
            let most = hosts.into_iter().max_by_key(|(_, n)| *n);
            if let Some((host, _)) = most {
                m.sites.entry(host).or_default().insert(name);
            }
        }
        m.sites.retain(|_, nodes| nodes.len() > 1);
        m
    }

    /// The vertices in drawing order: each site's nodes next to each other.
    fn ordered(&self) -> Vec<&str> {
        let site_of = |name: &str| self.sites.iter().position(|(_, n)| n.contains(name));
        let mut names: Vec<&str> = self.vertices.keys().map(String::as_str).collect();
        names.sort_by_key(|name| (site_of(name).map_or(usize::MAX, |i| i), *name));
        names
    }
}

/// The line (a Graphviz style) and colour of an edge.
fn style(p: PathState) -> (&'static str, &'static str) {
    match p {
        PathState::Direct => ("solid", "#2e7d32"),
        PathState::Lan => ("solid", "#1565c0"),
        PathState::Relayed => ("dashed", "#ef6c00"),
        PathState::Idle => ("dashed", "#9e9e9e"),
        PathState::Unused => ("dotted", "#bdbdbd"),
        PathState::Down => ("bold", "#c62828"),
    }
}

/// The SVG attributes that draw a Graphviz style.
fn svg_stroke(line: &str) -> &'static str {
    match line {
        "dashed" => " stroke-width=\"2\" stroke-dasharray=\"8 5\"",
        "dotted" => " stroke-width=\"2\" stroke-dasharray=\"2 4\"",
        "bold" => " stroke-width=\"3.5\"",
        _ => " stroke-width=\"2\"",
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Graphviz DOT.
pub fn dot(m: &Mesh) -> String {
    let mut out =
        String::from("graph trellis {\n  layout=circo;\n  node [fontname=\"sans-serif\"];\n");
    for (name, is_node) in &m.vertices {
        let shape = if *is_node { "box" } else { "ellipse" };
        let extra = if m.unreachable.contains(name) {
            ", style=dashed, xlabel=\"agent unreachable\""
        } else {
            ""
        };
        let _ = writeln!(out, "  {} [shape={shape}{extra}];", quote(name));
    }
    for (i, (public, nodes)) in m.sites.iter().enumerate() {
        let members: Vec<String> = nodes.iter().map(|n| quote(n)).collect();
        let _ = writeln!(
            out,
            "  subgraph cluster_site_{i} {{ label={}; style=dashed; color=\"#1565c0\"; {}; }}",
            quote(&format!("site {public}")),
            members.join("; ")
        );
    }
    for ((a, b), p) in &m.edges {
        let (line, color) = style(*p);
        let _ = writeln!(
            out,
            "  {} -- {} [style={line}, color=\"{color}\", label={}];",
            quote(a),
            quote(b),
            quote(p.as_str())
        );
    }
    out.push_str("}\n");
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// SVG: vertices evenly on a circle, edges as lines styled by state, a
/// legend.
pub fn svg(m: &Mesh) -> String {
    let n = m.vertices.len().max(1) as f64;
    let radius = 60.0 + 30.0 * n;
    let (cx, cy) = (radius + 120.0, radius + 60.0);
    let legend_width = 20.0 + LEGEND_STEP * LEGEND.len() as f64;
    let (w, h) = ((2.0 * cx).max(legend_width), 2.0 * cy + 40.0);
    let pos: BTreeMap<&str, (f64, f64)> = m
        .ordered()
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let angle = std::f64::consts::TAU * i as f64 / n - std::f64::consts::FRAC_PI_2;
            (name, (cx + radius * angle.cos(), cy + radius * angle.sin()))
        })
        .collect();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"sans-serif\" font-size=\"13\">\n<title>Trellis mesh</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (public, nodes) in &m.sites {
        let at: Vec<(f64, f64)> = nodes.iter().map(|n| pos[n.as_str()]).collect();
        let fold = |f: fn(f64, f64) -> f64, pick: fn(&(f64, f64)) -> f64, start| {
            at.iter().map(pick).fold(start, f)
        };
        let (x0, x1) = (
            fold(f64::min, |p| p.0, f64::MAX) - 70.0,
            fold(f64::max, |p| p.0, f64::MIN) + 70.0,
        );
        let (y0, y1) = (
            fold(f64::min, |p| p.1, f64::MAX) - 40.0,
            fold(f64::max, |p| p.1, f64::MIN) + 28.0,
        );
        let _ = writeln!(
            out,
            "<g class=\"site\"><rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"8\" fill=\"none\" stroke=\"#1565c0\" stroke-dasharray=\"6 4\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1565c0\">site {}</text></g>",
            x1 - x0,
            y1 - y0,
            x0 + 6.0,
            y0 + 15.0,
            xml(public)
        );
    }
    for ((a, b), p) in &m.edges {
        let ((x1, y1), (x2, y2)) = (pos[a.as_str()], pos[b.as_str()]);
        let (line, color) = style(*p);
        let stroke = svg_stroke(line);
        let _ = writeln!(
            out,
            "<line class=\"edge {}\" x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{color}\"{stroke}><title>{} – {}: {}</title></line>",
            p.as_str(),
            xml(a),
            xml(b),
            p.as_str()
        );
    }
    for (name, is_node) in &m.vertices {
        let (x, y) = pos[name.as_str()];
        let width = 16.0 + 7.5 * name.chars().count() as f64;
        let stroke = if m.unreachable.contains(name) {
            " stroke-dasharray=\"4 3\""
        } else {
            ""
        };
        let shape = if *is_node {
            format!("<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"26\" rx=\"3\" fill=\"#e3f2fd\" stroke=\"#1565c0\"{stroke}/>", x - width / 2.0, y - 13.0)
        } else {
            format!("<ellipse cx=\"{x:.1}\" cy=\"{y:.1}\" rx=\"{:.1}\" ry=\"15\" fill=\"#fff3e0\" stroke=\"#ef6c00\"/>", width / 2.0 + 4.0)
        };
        let _ = writeln!(
            out,
            "<g class=\"vertex\">{shape}<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></g>",
            y + 4.5,
            xml(name)
        );
    }
    let mut lx = 20.0;
    for p in LEGEND {
        let (line, color) = style(p);
        let stroke = svg_stroke(line);
        let y = h - 20.0;
        let _ = writeln!(
            out,
            "<g class=\"legend\"><line x1=\"{lx:.0}\" y1=\"{y:.0}\" x2=\"{:.0}\" y2=\"{y:.0}\" stroke=\"{color}\"{stroke}/><text x=\"{:.0}\" y=\"{:.0}\">{}</text></g>",
            lx + 30.0,
            lx + 36.0,
            y + 4.0,
            p.as_str()
        );
        lx += LEGEND_STEP;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::report;

    fn fetched() -> Vec<Fetched> {
        vec![
            (
                "n1".into(),
                Ok(report(
                    "n1",
                    &[
                        ("n2", PathState::Direct, Some(1)),
                        ("n3", PathState::Unused, None),
                        ("peer/l<a>", PathState::Down, None),
                    ],
                )),
            ),
            (
                "n2".into(),
                Ok(report(
                    "n2",
                    &[
                        ("n1", PathState::Idle, Some(1)),
                        ("n3", PathState::Relayed, None),
                        ("n4", PathState::Idle, Some(1)),
                        ("peer/l<a>", PathState::Idle, Some(1)),
                    ],
                )),
            ),
            ("n3".into(), Err("timeout".into())),
            (
                "n4".into(),
                Ok(report("n4", &[("n2", PathState::Down, Some(1))])),
            ),
        ]
    }

    #[test]
    fn nodes_seen_at_one_public_address_are_grouped_as_a_site() {
        let mut reports = fetched();
        for (node, public) in [("n2", "198.51.100.7:1002"), ("n4", "198.51.100.7:1004")] {
            let (_, report) = reports.iter_mut().find(|(n, _)| n == node).unwrap();
            report.as_mut().unwrap().public_endpoint = Some(public.into());
        }
        let (_, n1) = &mut reports[0];
        n1.as_mut().unwrap().public_endpoint = Some("203.0.113.1:51820".into());
        let m = Mesh::from_reports(&reports);
        assert_eq!(
            m.sites,
            BTreeMap::from([(
                "198.51.100.7".to_string(),
                BTreeSet::from(["n2".to_string(), "n4".to_string()])
            )]),
            "n1 alone behind its address is no site of several"
        );
        assert_eq!(m.ordered()[..2], ["n2", "n4"], "site-mates side by side");
        let d = dot(&m);
        assert!(
            d.contains("subgraph cluster_site_0 { label=\"site 198.51.100.7\"; style=dashed; color=\"#1565c0\"; \"n2\"; \"n4\"; }"),
            "{d}"
        );
        let s = svg(&m);
        assert_eq!(s.matches("class=\"site\"").count(), 1, "{s}");
        assert!(s.contains(">site 198.51.100.7</text>"), "{s}");
        assert_eq!(host_of("[fd00::1]:51820"), "fd00::1");
    }

    #[test]
    fn nodes_without_a_report_are_placed_where_the_others_dial_them() {
        let mut reports = fetched();
        let (_, n1) = &mut reports[0];
        let n1 = n1.as_mut().unwrap();
        for (name, endpoint, lan) in [
            ("there:b1", "198.51.100.20:1024", false),
            ("there:b2", "198.51.100.20:1025", false),
            ("there:b3", "203.0.113.9:51820", false),
            // A site-mate dialled at its LAN address: no sign of a site.
            ("there:b4", "172.31.0.5:51820", true),
            ("there:b5", "172.31.0.6:51820", false),
        ] {
            let mut p = n1.peers[0].clone();
            p.name = name.into();
            p.endpoint = Some(endpoint.into());
            if lan {
                p.candidates = vec![trellis_api::status::CandidateReport {
                    kind: "lan".into(),
                    endpoint: endpoint.into(),
                    current: true,
                }];
            }
            n1.peers.push(p);
        }
        let m = Mesh::from_reports(&reports);
        assert_eq!(
            m.sites,
            BTreeMap::from([(
                "198.51.100.20".to_string(),
                BTreeSet::from(["there:b1".to_string(), "there:b2".to_string()])
            )]),
            "b3 alone at its address; b4 at a LAN address does not count"
        );
    }

    fn edge(m: &Mesh, a: &str, b: &str) -> PathState {
        m.edges[&(a.to_string(), b.to_string())]
    }

    #[test]
    fn edges_take_the_most_telling_news_from_either_end() {
        let m = Mesh::from_reports(&fetched());
        assert_eq!(m.vertices.len(), 5);
        assert!(!m.vertices["peer/l<a>"], "a Peer is not a node");
        assert_eq!(edge(&m, "n1", "n2"), PathState::Direct);
        assert_eq!(edge(&m, "n1", "n3"), PathState::Unused);
        assert_eq!(edge(&m, "n2", "n3"), PathState::Relayed);
        assert_eq!(edge(&m, "n1", "peer/l<a>"), PathState::Down);
        assert_eq!(edge(&m, "n2", "peer/l<a>"), PathState::Idle);
        assert_eq!(
            edge(&m, "n2", "n4"),
            PathState::Down,
            "n4's traffic goes unanswered; n2 just sends nothing"
        );
        assert!(m.unreachable.contains("n3"));
    }

    #[test]
    fn dot_and_svg_draw_every_vertex_and_edge() {
        let m = Mesh::from_reports(&fetched());
        let d = dot(&m);
        assert!(
            d.starts_with("graph trellis {") && d.trim_end().ends_with('}'),
            "{d}"
        );
        assert!(d.contains("\"n1\" -- \"n2\" [style=solid"), "{d}");
        assert!(
            d.contains("\"n2\" -- \"n3\" [style=dashed, color=\"#ef6c00\""),
            "{d}"
        );
        assert!(d.contains("\"n3\" [shape=box, style=dashed"), "{d}");
        assert!(d.contains("\"peer/l<a>\" [shape=ellipse]"), "{d}");
        let s = svg(&m);
        assert!(
            s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{s}"
        );
        assert_eq!(s.matches("<line class=\"edge").count(), m.edges.len());
        assert_eq!(s.matches("<g class=\"vertex\">").count(), 5);
        assert_eq!(s.matches("class=\"edge direct\"").count(), 1);
        assert_eq!(s.matches("class=\"edge relayed\"").count(), 1);
        assert!(
            s.contains("peer/l&lt;a&gt;") && !s.contains("l<a>"),
            "names are escaped"
        );
        assert_eq!(s.matches("<svg").count(), s.matches("</svg>").count());
    }

    #[test]
    fn idle_unused_and_down_edges_look_different_and_the_legend_says_so() {
        let m = Mesh::from_reports(&fetched());
        let d = dot(&m);
        assert!(
            d.contains("\"n2\" -- \"peer/l<a>\" [style=dashed, color=\"#9e9e9e\", label=\"idle\"]"),
            "{d}"
        );
        assert!(
            d.contains("\"n1\" -- \"n3\" [style=dotted, color=\"#bdbdbd\", label=\"unused\"]"),
            "{d}"
        );
        assert!(
            d.contains("\"n1\" -- \"peer/l<a>\" [style=bold, color=\"#c62828\", label=\"down\"]"),
            "{d}"
        );
        let s = svg(&m);
        let line_of = |class: &str| {
            let start = s.find(&format!("<line class=\"edge {class}\"")).unwrap();
            let end = start + s[start..].find("><title>").unwrap();
            let attributes = &s[start..end];
            attributes[attributes.find(" stroke=").unwrap()..].to_string()
        };
        let (idle, unused, down) = (line_of("idle"), line_of("unused"), line_of("down"));
        assert!(idle != down && unused != down && idle != unused);
        let legend: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with("<g class=\"legend\">"))
            .collect();
        assert_eq!(legend.len(), 6, "{s}");
        for (class, stroke) in [("idle", &idle), ("unused", &unused), ("down", &down)] {
            assert!(
                legend
                    .iter()
                    .any(|l| l.contains(stroke.as_str()) && l.contains(&format!(">{class}</text>"))),
                "{class} in the legend, drawn as its edges: {s}"
            );
        }
    }
}
