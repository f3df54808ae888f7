//! `graph`: the mesh as Graphviz DOT or as SVG (drawn here: nodes on a
//! circle, no external program). An edge joins two peers and is marked
//! direct, relayed, idle or down from what both ends report (an edge is direct when
//! either end has a live session); a node whose agent could not be read
//! makes no claims.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use trellis_api::status::PathState;

use crate::status::Fetched;

/// Vertices (name → is a cluster node) and undirected edges with a state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    pub vertices: BTreeMap<String, bool>,
    pub edges: BTreeMap<(String, String), PathState>,
    pub unreachable: BTreeSet<String>,
}

fn rank(p: PathState) -> u8 {
    match p {
        PathState::Direct => 3,
        PathState::Relayed => 2,
        PathState::Down => 1,
        PathState::Idle => 0,
    }
}

impl Mesh {
    pub fn from_reports(fetched: &[Fetched]) -> Self {
        let mut m = Mesh::default();
        for (node, report) in fetched {
            m.vertices.insert(node.clone(), true);
            let Ok(report) = report else {
                m.unreachable.insert(node.clone());
                continue;
            };
            for p in &report.peers {
                let is_node = !p.name.starts_with("peer/");
                m.vertices.entry(p.name.clone()).or_insert(is_node);
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
        m
    }
}

fn style(p: PathState) -> (&'static str, &'static str) {
    match p {
        PathState::Direct => ("solid", "#2e7d32"),
        PathState::Idle => ("dashed", "#9e9e9e"),
        PathState::Down => ("dotted", "#c62828"),
        PathState::Relayed => ("dashed", "#ef6c00"),
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
    let (w, h) = (2.0 * cx, 2.0 * cy + 40.0);
    let pos: BTreeMap<&str, (f64, f64)> = m
        .vertices
        .keys()
        .enumerate()
        .map(|(i, name)| {
            let angle = std::f64::consts::TAU * i as f64 / n - std::f64::consts::FRAC_PI_2;
            (
                name.as_str(),
                (cx + radius * angle.cos(), cy + radius * angle.sin()),
            )
        })
        .collect();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"sans-serif\" font-size=\"13\">\n<title>Trellis mesh</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for ((a, b), p) in &m.edges {
        let ((x1, y1), (x2, y2)) = (pos[a.as_str()], pos[b.as_str()]);
        let (line, color) = style(*p);
        let dash = match line {
            "dashed" => " stroke-dasharray=\"8 5\"",
            "dotted" => " stroke-dasharray=\"2 4\"",
            _ => "",
        };
        let _ = writeln!(
            out,
            "<line class=\"edge {}\" x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{color}\" stroke-width=\"2\"{dash}><title>{} – {}: {}</title></line>",
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
    for p in [
        PathState::Direct,
        PathState::Relayed,
        PathState::Idle,
        PathState::Down,
    ] {
        let (line, color) = style(p);
        let dash = match line {
            "dashed" => " stroke-dasharray=\"8 5\"",
            "dotted" => " stroke-dasharray=\"2 4\"",
            _ => "",
        };
        let y = h - 20.0;
        let _ = writeln!(
            out,
            "<g class=\"legend\"><line x1=\"{lx:.0}\" y1=\"{y:.0}\" x2=\"{:.0}\" y2=\"{y:.0}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{:.0}\" y=\"{:.0}\">{}</text></g>",
            lx + 30.0,
            lx + 36.0,
            y + 4.0,
            p.as_str()
        );
        lx += 110.0;
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
                        ("n3", PathState::Idle, None),
                        ("peer/l<a>", PathState::Down, None),
                    ],
                )),
            ),
            (
                "n2".into(),
                Ok(report(
                    "n2",
                    &[
                        ("n1", PathState::Idle, None),
                        ("n3", PathState::Relayed, None),
                    ],
                )),
            ),
            ("n3".into(), Err("timeout".into())),
        ]
    }

    #[test]
    fn edges_take_the_best_news_from_either_end() {
        let m = Mesh::from_reports(&fetched());
        assert_eq!(m.vertices.len(), 4);
        assert!(!m.vertices["peer/l<a>"], "a Peer is not a node");
        assert_eq!(m.edges[&("n1".into(), "n2".into())], PathState::Direct);
        assert_eq!(m.edges[&("n1".into(), "n3".into())], PathState::Idle);
        assert_eq!(m.edges[&("n2".into(), "n3".into())], PathState::Relayed);
        assert_eq!(m.edges[&("n1".into(), "peer/l<a>".into())], PathState::Down);
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
        assert!(d.contains("\"n1\" -- \"peer/l<a>\" [style=dotted"), "{d}");
        assert!(d.contains("\"n3\" [shape=box, style=dashed"), "{d}");
        assert!(d.contains("\"peer/l<a>\" [shape=ellipse]"), "{d}");
        let s = svg(&m);
        assert!(
            s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{s}"
        );
        assert_eq!(s.matches("<line class=\"edge").count(), m.edges.len());
        assert_eq!(s.matches("<g class=\"vertex\">").count(), 4);
        assert_eq!(s.matches("class=\"edge direct\"").count(), 1);
        assert_eq!(s.matches("class=\"edge relayed\"").count(), 1);
        assert!(
            s.contains("peer/l&lt;a&gt;") && !s.contains("l<a>"),
            "names are escaped"
        );
        assert_eq!(s.matches("<svg").count(), s.matches("</svg>").count());
    }
}
