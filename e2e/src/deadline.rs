//! How long the lab and its tests wait, scaled to the machine they run on.
//!
//! Every deadline in the lab is written for an ordinary machine. Where the
//! machine is slower — the kernel tier's guest runs under software
//! emulation, a CI machine may be loaded — `TRELLIS_DEADLINE_SCALE` (a
//! factor of at least 1) stretches them all alike. The kernel tier sets it
//! from what the guest measures of itself against the host
//! (`tools/kernel/guest.sh`), so a slower guest makes the tier slower, not
//! red. Long waits show their progress ([`Progress`]).

use std::time::{Duration, Instant};

/// The environment variable holding the factor.
pub const SCALE_ENV: &str = "TRELLIS_DEADLINE_SCALE";

/// The largest factor taken: past it, something other than speed is wrong.
const MAX_SCALE: f64 = 50.0;

/// The factor from `raw` (the variable's value): at least 1, at most
/// [`MAX_SCALE`]; anything unreadable counts as 1.
fn parse_scale(raw: Option<&str>) -> f64 {
    raw.and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite())
        .map_or(1.0, |f| f.clamp(1.0, MAX_SCALE))
}

/// The factor in force for this process.
pub fn scale() -> f64 {
    parse_scale(std::env::var(SCALE_ENV).ok().as_deref())
}

/// `base` stretched by [`scale`].
pub fn scaled(base: Duration) -> Duration {
    base.mul_f64(scale())
}

/// Prints, every `every`, how long a wait has lasted and what it is still
/// waiting for, so a long wait is visibly alive.
#[derive(Debug)]
pub struct Progress {
    what: String,
    start: Instant,
    next: Duration,
    every: Duration,
}

impl Progress {
    pub fn new(what: impl Into<String>, every: Duration) -> Self {
        Progress {
            what: what.into(),
            start: Instant::now(),
            next: every,
            every,
        }
    }

    /// Time since the wait began.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints a line when the next interval has passed; `missing` says
    /// what the wait still lacks (called only then).
    pub fn tick(&mut self, deadline: Duration, missing: impl FnOnce() -> String) {
        let elapsed = self.start.elapsed();
        if elapsed >= self.next {
            eprintln!(
                "[lab] {}: still waiting after {} s of at most {} s ({})",
                self.what,
                elapsed.as_secs(),
                deadline.as_secs(),
                missing()
            );
            self.next = elapsed + self.every;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_is_at_least_one_and_bounded() {
        assert_eq!(parse_scale(None), 1.0);
        assert_eq!(parse_scale(Some("")), 1.0);
        assert_eq!(parse_scale(Some("fast")), 1.0);
        assert_eq!(parse_scale(Some("0.2")), 1.0);
        assert_eq!(parse_scale(Some("NaN")), 1.0);
        assert_eq!(parse_scale(Some(" 3.5\n")), 3.5);
        assert_eq!(parse_scale(Some("1e9")), MAX_SCALE);
    }
}
