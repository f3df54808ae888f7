//! Pod-to-pod ping matrices: which ordered pairs of pods reach each other,
//! as the failures a test asserts empty, or as the table `trellis-lab show`
//! and `trellis-lab mesh` print.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use crate::pod::{ping_from, NodePod};
use crate::Lab;

/// A pod in a matrix: what to call it, where to ping from, what to ping.
pub trait Pingable {
    /// Its name in failures and in the printed matrix.
    fn label(&self) -> &str;
    /// The network namespace its pings leave from.
    fn netns(&self) -> &str;
    /// The addresses a ping to it tries, each on its own.
    fn addresses(&self) -> Vec<&str>;
}

/// Named after its node (one pod per node), pinged at IPv4 and IPv6.
impl Pingable for NodePod {
    fn label(&self) -> &str {
        &self.node
    }
    fn netns(&self) -> &str {
        &self.netns
    }
    fn addresses(&self) -> Vec<&str> {
        vec![&self.v4, &self.v6]
    }
}

/// The ordered pairs (from, to) of two different pods for which `pair`
/// holds, by index, in order.
fn pairs<P>(pods: &[P], pair: impl Fn(&P, &P) -> bool) -> Vec<(usize, usize)> {
    (0..pods.len())
        .flat_map(|f| (0..pods.len()).map(move |t| (f, t)))
        .filter(|&(f, t)| f != t && pair(&pods[f], &pods[t]))
        .collect()
}

/// The addresses of `to` that a ping from `from` does not reach.
fn unreached<'p, P: Pingable>(from: &P, to: &'p P) -> Vec<&'p str> {
    to.addresses()
        .into_iter()
        .filter(|a| ping_from(from.netns(), a).is_err())
        .collect()
}

/// Pings every address of every other pod from each pod, for the pairs
/// (from, to) that `pair` selects: the failures, `FROM -> TO (ADDRESS)`.
pub fn failures<P: Pingable>(pods: &[P], pair: impl Fn(&P, &P) -> bool) -> Vec<String> {
    pairs(pods, pair)
        .into_iter()
        .flat_map(|(f, t)| {
            let (from, to) = (&pods[f], &pods[t]);
            unreached(from, to)
                .into_iter()
                .map(move |a| format!("{} -> {} ({a})", from.label(), to.label()))
        })
        .collect()
}

/// Waits until every pod pair answers (panics with the failures after
/// `limit`); how long it took.
pub fn wait_all_pairs<P: Pingable>(pods: &[P], limit: Duration) -> Duration {
    let start = Instant::now();
    let mut failed = all_pairs(pods);
    while !failed.is_empty() {
        assert!(start.elapsed() < limit, "{failed:?}");
        std::thread::sleep(Duration::from_secs(1));
        failed = all_pairs(pods);
    }
    start.elapsed()
}

/// [`failures`] of every ordered pair of pods.
pub fn all_pairs<P: Pingable>(pods: &[P]) -> Vec<String> {
    failures(pods, |_, _| true)
}

/// A pod the lab's state records, with the IPv4 address its eth0 has now
/// (empty when it has none).
#[derive(Debug, Clone)]
pub struct RecordedPod {
    /// `NODE/POD`.
    pub name: String,
    pub netns: String,
    pub v4: String,
}

impl Pingable for RecordedPod {
    fn label(&self) -> &str {
        &self.name
    }
    fn netns(&self) -> &str {
        &self.netns
    }
    fn addresses(&self) -> Vec<&str> {
        vec![&self.v4]
    }
}

impl Lab {
    /// Every pod of the lab's state, in order, with its IPv4 address.
    pub fn recorded_pods(&self) -> Vec<RecordedPod> {
        self.state
            .pods
            .iter()
            .map(|p| {
                let addr =
                    crate::cmd::ip(Some(&p.netns), &["-4", "-o", "addr", "show", "dev", "eth0"])
                        .unwrap_or_default();
                let v4 = addr
                    .split_whitespace()
                    .nth(3)
                    .unwrap_or("")
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                RecordedPod {
                    name: format!("{}/{}", p.node, p.name),
                    netns: p.netns.clone(),
                    v4,
                }
            })
            .collect()
    }
}

/// An all-pairs matrix: which ordered pairs answered (a pair answers when
/// every address of its target does). Printed, it is a table with a row
/// per pod pinging and a column per pod pinged.
#[derive(Debug, Clone)]
pub struct Matrix {
    labels: Vec<String>,
    answered: BTreeSet<(usize, usize)>,
}

impl Matrix {
    /// Pings every ordered pair; the pairs that do not answer are tried
    /// again every 2 s for up to `wait` (paths still being set up), saying
    /// so on stderr.
    pub fn measure<P: Pingable>(pods: &[P], wait: Duration) -> Matrix {
        let answers = |(f, t): (usize, usize)| unreached(&pods[f], &pods[t]).is_empty();
        let all = pairs(pods, |_, _| true);
        let mut answered: BTreeSet<(usize, usize)> =
            all.iter().copied().filter(|&p| answers(p)).collect();
        let start = Instant::now();
        while answered.len() < all.len() && start.elapsed() < wait {
            eprintln!(
                "  {} of {} pod pairs answer; retrying the others ({:.0} s of {} s)",
                answered.len(),
                all.len(),
                start.elapsed().as_secs_f64(),
                wait.as_secs()
            );
            std::thread::sleep(Duration::from_secs(2));
            let missing: Vec<(usize, usize)> = all
                .iter()
                .copied()
                .filter(|p| !answered.contains(p))
                .collect();
            answered.extend(missing.into_iter().filter(|&p| answers(p)));
        }
        Matrix {
            labels: pods.iter().map(|p| p.label().to_string()).collect(),
            answered,
        }
    }

    /// Whether pod `from` reached pod `to` (by index; a pod reaches itself).
    pub fn answered(&self, from: usize, to: usize) -> bool {
        from == to || self.answered.contains(&(from, to))
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<14}", "ping from\\to")?;
        for name in &self.labels {
            write!(f, " {name:>12}")?;
        }
        writeln!(f)?;
        for (from, name) in self.labels.iter().enumerate() {
            write!(f, "{name:<14}")?;
            for to in 0..self.labels.len() {
                let mark = match (from == to, self.answered(from, to)) {
                    (true, _) => "-",
                    (false, true) => "ok",
                    (false, false) => "FAIL",
                };
                write!(f, " {mark:>12}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(labels: &[&str], answered: &[(usize, usize)]) -> Matrix {
        Matrix {
            labels: labels.iter().map(|l| l.to_string()).collect(),
            answered: answered.iter().copied().collect(),
        }
    }

    #[test]
    fn pairs_are_ordered_distinct_and_selected() {
        let pods = ["a", "b", "c"];
        assert_eq!(
            pairs(&pods, |_, _| true),
            vec![(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
        );
        assert_eq!(
            pairs(&pods, |f, t| *f == "a" || *t == "a"),
            vec![(0, 1), (0, 2), (1, 0), (2, 0)]
        );
        assert!(pairs(&pods[..1], |_, _| true).is_empty());
    }

    #[test]
    fn the_printed_matrix_marks_each_pair() {
        let m = matrix(&["n1/p0", "n2/p0"], &[(0, 1)]);
        assert_eq!(
            m.to_string(),
            format!(
                "{:<14} {:>12} {:>12}\n{:<14} {:>12} {:>12}\n{:<14} {:>12} {:>12}\n",
                "ping from\\to", "n1/p0", "n2/p0", "n1/p0", "-", "ok", "n2/p0", "FAIL", "-"
            )
        );
        assert!(m.answered(1, 1) && m.answered(0, 1) && !m.answered(1, 0));
    }
}
