//! Moving a working pair up. A site-mate reached at a worse candidate than
//! its best (its public mapping through a NAT that hairpins, or a later
//! LAN address) while a better one would work is a pair whose traffic
//! takes the long way: through the site's gateway instead of across the
//! LAN. The candidate ladder of [`crate::relay`] moves only on failure, so
//! this module looks up the ladder while the current path works.
//!
//! Each better candidate's address is *scouted*: the agent sends it echo
//! requests outside the tunnel, on the underlay (see
//! [`Upgrades::scouts`]). Scouting costs nothing to the traffic. Once a
//! scout answers, the pair is put on *trial* at that candidate: the peer's
//! endpoint moves there (over the same session — WireGuard's sessions do not
//! care which path a packet took, and the other end roams to wherever our
//! packets come from) and is set again while the trial lasts, even when
//! the device roamed back ([`crate::model::Desired::pinned`]). If echoes through the tunnel
//! answer at the new endpoint within [`UPGRADE_TRIAL`], the pair stays;
//! otherwise (the address answers pings but not WireGuard: a firewall that
//! lets ICMP through) it goes back to the candidate that worked and that
//! candidate is not scouted again for a while, [`FIRST_BACKOFF`] doubling
//! up to [`MAX_BACKOFF`], so a failing trial costs a few seconds rarely.
//!
//! Only a pair whose echoes answer is moved up (a peer whose echoes never
//! answered cannot show that the new path works), and never while its
//! traffic is relayed (then the ladder cycles through every candidate
//! anyway).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::health::Verdict;
use crate::key::PublicKey;
use crate::model::Candidates;

/// How long a trial at a better candidate may go without an echo answered
/// through the tunnel there before the pair goes back: three path checks.
/// The echoes' verdict at a new endpoint starts at the first check after
/// the move, and goes silent
/// [`SILENT_AFTER`](crate::health::SILENT_AFTER) later: a failed trial ends
/// before that, so it never sends the pair through a relay.
pub const UPGRADE_TRIAL: Duration = Duration::from_secs(6);

/// How recent a scout's answer must be to start a trial.
pub const SCOUT_FRESH: Duration = Duration::from_secs(3);

/// After a first failed trial, how long a candidate is not scouted.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);

/// The longest wait between two trials of one candidate.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// What one path check did about moving a pair up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeStep {
    /// A better candidate answered its scout: the pair is tried there.
    Trying,
    /// Echoes through the tunnel answered at the better candidate: the
    /// pair stays there.
    Worked,
    /// No echo through the tunnel answered there within [`UPGRADE_TRIAL`]:
    /// the pair is back where it worked, and the candidate is left alone
    /// for `retry_in`.
    Failed { retry_in: Duration },
}

/// A pair on trial at a better candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trial {
    /// The candidate that worked, to go back to.
    from: usize,
    /// The candidate tried.
    to: usize,
    since: SystemTime,
}

/// A candidate that failed a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    /// Not scouted before this.
    until: SystemTime,
    /// The wait after its next failure.
    next: Duration,
}

/// The agent's memory of scouts, trials and back-offs, across path checks.
#[derive(Debug, Clone, Default)]
pub struct Upgrades {
    trials: BTreeMap<PublicKey, Trial>,
    backoff: BTreeMap<(PublicKey, SocketAddr), Backoff>,
    scouts: Vec<IpAddr>,
}

/// What the path check knows of one pair with candidates.
#[derive(Debug, Clone, Copy)]
pub struct PairNow<'a> {
    pub key: PublicKey,
    pub candidates: &'a Candidates,
    /// The index of the candidate the peer is set to now.
    pub step: usize,
    /// The echoes' verdict at that candidate.
    pub verdict: Option<Verdict>,
    /// Whether the pair's direct path works (and is not relayed).
    pub direct_works: bool,
}

impl Upgrades {
    /// Starts a path check: forgets pairs without candidates now, and the
    /// scouts of the last check.
    pub fn begin(&mut self, keep: impl Fn(&PublicKey) -> bool) {
        self.trials.retain(|k, _| keep(k));
        self.backoff.retain(|(k, _), _| keep(k));
        self.scouts.clear();
    }

    /// Whether the pair `key` is on trial at a better candidate.
    pub fn on_trial(&self, key: &PublicKey) -> bool {
        self.trials.contains_key(key)
    }

    /// The candidate the pair should be set to after this check, and what
    /// was done about moving it up. `answers` says when each scouted
    /// address last answered (the echo prober's readings).
    pub fn step(
        &mut self,
        pair: PairNow<'_>,
        answers: &BTreeMap<IpAddr, SystemTime>,
        now: SystemTime,
    ) -> (usize, Option<(usize, UpgradeStep)>) {
        let PairNow {
            key, candidates, ..
        } = pair;
        if let Some(trial) = self.trials.get(&key).copied() {
            if pair.step != trial.to {
                // Moved by the ladder meanwhile (the trial candidate's
                // session roamed elsewhere): the trial is over.
                self.trials.remove(&key);
                return (pair.step, None);
            }
            if pair.verdict == Some(Verdict::Answering) {
                self.trials.remove(&key);
                self.backoff
                    .remove(&(key, candidates.list[trial.to].endpoint));
                return (trial.to, Some((trial.to, UpgradeStep::Worked)));
            }
            if now.duration_since(trial.since).unwrap_or_default() < UPGRADE_TRIAL {
                return (trial.to, None);
            }
            self.trials.remove(&key);
            let endpoint = candidates.list[trial.to].endpoint;
            let wait = self
                .backoff
                .get(&(key, endpoint))
                .map_or(FIRST_BACKOFF, |b| b.next);
            self.backoff.insert(
                (key, endpoint),
                Backoff {
                    until: now + wait,
                    next: (wait * 2).min(MAX_BACKOFF),
                },
            );
            return (
                trial.from,
                Some((trial.to, UpgradeStep::Failed { retry_in: wait })),
            );
        }
        if pair.step == 0 || !pair.direct_works || pair.verdict != Some(Verdict::Answering) {
            return (pair.step, None);
        }
        for (i, better) in candidates.list[..pair.step].iter().enumerate() {
            let waiting = self
                .backoff
                .get(&(key, better.endpoint))
                .is_some_and(|b| now < b.until);
            if waiting {
                continue;
            }
            let ip = better.endpoint.ip();
            if !self.scouts.contains(&ip) {
                self.scouts.push(ip);
            }
            let fresh = answers
                .get(&ip)
                .is_some_and(|t| now.duration_since(*t).unwrap_or_default() < SCOUT_FRESH);
            if fresh {
                self.trials.insert(
                    key,
                    Trial {
                        from: pair.step,
                        to: i,
                        since: now,
                    },
                );
                return (i, Some((i, UpgradeStep::Trying)));
            }
        }
        (pair.step, None)
    }

    /// The underlay addresses of better candidates to send echo requests
    /// to, outside the tunnel, as of the last check.
    pub fn scouts(&self) -> &[IpAddr] {
        &self.scouts
    }
}

#[cfg(test)]
mod tests;
