//! Relay fallback. A node peer this node probes (its pair has a persistent
//! keepalive, so handshakes are tried all the time — see [`crate::nat`])
//! that has no live session after [`DIRECT_DEADLINE`] of trying is reached
//! through a relay: its AllowedIPs move onto the relay's peer, the relay's
//! kernel forwards the packets to the peer over its own direct session.
//! The relay is a node that reports live sessions with both ends (its
//! `discovered-endpoints`): a node marked `trellis.dev/relay=true` first,
//! then the lowest public key. Both ends decide from the same published
//! facts, so they choose the same relay: a packet relayed one way is
//! accepted by the other end (WireGuard checks the inner source against the
//! AllowedIPs of the peer it came from). The peer's own WireGuard peer stays
//! configured with its keepalive and keeps one address, its
//! [`probe_address`]; when a handshake completes on it again, its AllowedIPs
//! move back.
//!
//! A node peer with more than one candidate endpoint (a node of this
//! node's site: its LAN address, then its public mapping — see
//! [`crate::model::Candidates`]) is tried at each in turn, best first, for
//! [`DIRECT_DEADLINE`] each, before it is relayed; while relayed, its own
//! peer goes on cycling through them (it carries no traffic then), so the
//! pair leaves the relay for whichever works first again.
//!
//! A session's handshake says little about a path that broke after it
//! worked: the session stays live for 180 s. So every probed peer is also
//! judged by echoes ([`crate::health`]): a direct path that stops answering
//! is *silent*, and counts as having no session — its traffic goes through
//! a relay at once (and the next candidate is tried), and it is published
//! as seen no more, so that no one picks this node to relay for it. A relay
//! is chosen only among peers whose own direct path is not silent: a relay
//! that stops answering is left for another, or for the direct path. The
//! way back needs the direct path answering again (or, for a peer that
//! never answered an echo, a live session), so a pair does not flap
//! between a relay and a path that only just went quiet. While relayed, a
//! peer's own WireGuard peer keeps its mesh address with its probe address:
//! the echoes go on testing the direct path.
//!
//! Keepalives alone do not keep a peer without a session trying: a fresh
//! userspace peer waits a whole keepalive interval before its first
//! handshake, and gives up after 90 s of failed retries. So the agent sends
//! a datagram to the probe address of every probed peer without a live
//! session ([`PathTracker::probes`]) at each path check: the device starts
//! (or keeps) handshaking with it, relayed or not, as long as it is tried.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

pub use crate::health::probe_address;
use crate::health::{echo_address, PathHealth, PathSigns, Verdict};
use crate::key::PublicKey;
use crate::model::{CandidateKind, Desired, DesiredPeer, PeerName, Relayed};
use crate::session::is_live;
use crate::upgrade::{PairNow, UpgradeStep, Upgrades};

/// How long a probed peer gets to complete a handshake before its traffic
/// goes through a relay: three of WireGuard's 5 s handshake retries.
pub const DIRECT_DEADLINE: Duration = Duration::from_secs(15);

/// Whether `peer` is probed: a node whose pair is kept alive, so that
/// handshakes are tried all the time and a path that fails is noticed.
pub fn is_probed(peer: &DesiredPeer) -> bool {
    peer.name.is_node() && peer.persistent_keepalive.is_some()
}

/// A change of path, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// No handshake within the deadline: traffic goes through `via`.
    Relayed { peer: PeerName, via: PeerName },
    /// A handshake completed: traffic goes direct again.
    Direct { peer: PeerName },
    /// No handshake within the deadline at one candidate endpoint: the
    /// next one is tried.
    Candidate {
        peer: PeerName,
        kind: CandidateKind,
        endpoint: SocketAddr,
    },
    /// Was relayed, but no node reaches both ends any more.
    RelayLost { peer: PeerName },
    /// The direct path at `endpoint` answered echoes, then nothing for
    /// `for_`: it is left.
    Silent {
        peer: PeerName,
        endpoint: Option<SocketAddr>,
        for_: Duration,
    },
    /// Moving a working pair up to a better candidate (see
    /// [`crate::upgrade`]): tried, worked, or failed.
    Upgrade {
        peer: PeerName,
        kind: CandidateKind,
        endpoint: SocketAddr,
        step: UpgradeStep,
    },
}

/// What the device and the echo prober said of the paths, as of one
/// reconcile.
#[derive(Debug, Clone, Default)]
pub struct PathReadings {
    /// Each peer's latest handshake.
    pub handshakes: BTreeMap<PublicKey, SystemTime>,
    /// The bytes the device received from each peer.
    pub rx_bytes: BTreeMap<PublicKey, u64>,
    /// When each echo address last answered.
    pub answers: BTreeMap<IpAddr, SystemTime>,
    /// Each peer's endpoint on the device (where its session roamed to).
    pub endpoints: BTreeMap<PublicKey, SocketAddr>,
}

/// The agent's memory of its direct attempts, across reconciles.
#[derive(Debug, Clone, Default)]
pub struct PathTracker {
    /// Per probed peer: the endpoint being tried, and since when.
    trying: BTreeMap<PublicKey, (Option<SocketAddr>, SystemTime)>,
    /// Peer → relay, as of the last call.
    relayed: BTreeMap<PublicKey, PublicKey>,
    /// The probe addresses of the probed peers without a live session, as
    /// of the last call.
    probes: Vec<IpAddr>,
    /// Per peer with candidates: the index of the one being tried.
    step: BTreeMap<PublicKey, usize>,
    /// What the echoes say of each probed peer's direct path.
    health: PathHealth,
    /// The mesh addresses of the probed peers, as of the last call.
    echoes: Vec<IpAddr>,
    /// The peers whose direct path was silent at the last call.
    quiet: BTreeSet<PublicKey>,
    /// Scouts and trials of better candidates for working pairs.
    upgrades: Upgrades,
    /// Peers with candidates whose chosen one answered echoes while the
    /// device sent there: a roam away from it is undone.
    proven: BTreeSet<PublicKey>,
}

impl PathTracker {
    /// Moves the AllowedIPs of each probed node peer without a working
    /// direct path onto its relay's peer, and records them in
    /// `desired.relayed`. A path works when its session is live (per the
    /// handshakes read from the device) and it is not silent (per the
    /// echoes' answers, the bytes received and the peer's sightings: see
    /// [`crate::health`]). `local` is this node's key.
    pub fn route_via_relays(
        &mut self,
        desired: &mut Desired,
        local: &PublicKey,
        readings: &PathReadings,
        now: SystemTime,
    ) -> Vec<PathChange> {
        let handshakes = &readings.handshakes;
        self.trying.retain(|k, _| desired.peers.contains_key(k));
        self.step.retain(|k, _| desired.candidates.contains_key(k));
        self.health.retain(|k| desired.peers.contains_key(k));
        self.probes.clear();
        let mut changes = Vec::new();
        let verdicts = self.judge_paths(desired, local, readings, now);
        let works: BTreeSet<PublicKey> = desired
            .peers
            .keys()
            .filter(|k| {
                let live = is_live(handshakes.get(*k).copied(), now);
                match verdicts.get(*k) {
                    // Answers prove the path, whatever the device says of
                    // handshakes (a userspace device re-creates a peer it
                    // is told to change: its handshake is gone for a while).
                    Some(Verdict::Answering) => true,
                    Some(Verdict::Silent { .. }) => false,
                    // Back from a relay only once it answers.
                    Some(Verdict::Waiting) => live && !self.relayed.contains_key(*k),
                    Some(Verdict::Unjudged) | None => live,
                }
            })
            .copied()
            .collect();
        for (key, verdict) in &verdicts {
            if let Verdict::Silent { for_ } = verdict {
                desired.silent.insert(*key, *for_);
                if !self.quiet.contains(key) {
                    let peer = &desired.peers[key];
                    changes.push(PathChange::Silent {
                        peer: peer.name.clone(),
                        endpoint: peer.endpoint,
                        for_: *for_,
                    });
                }
            }
        }
        self.quiet = desired.silent.keys().copied().collect();
        let live = |k: &PublicKey| works.contains(k);
        let mut chosen: BTreeMap<PublicKey, PublicKey> = BTreeMap::new();
        changes.extend(self.choose_candidates(desired, &live, &verdicts, readings, now));
        for (key, peer) in &desired.peers {
            if !is_probed(peer) {
                continue;
            }
            let was = self.relayed.get(key).copied();
            let since = match self.trying.get(key) {
                Some((endpoint, t)) if *endpoint == peer.endpoint => *t,
                _ => now,
            };
            if live(key) {
                // A peer re-created to leave its relay starts with no
                // handshake: it gets a new deadline.
                let since = if was.is_some() { now } else { since };
                self.trying.insert(*key, (peer.endpoint, since));
                if was.is_some() {
                    changes.push(PathChange::Direct {
                        peer: peer.name.clone(),
                    });
                }
                continue;
            }
            self.trying.insert(*key, (peer.endpoint, since));
            self.probes.extend(probe_address(&peer.allowed_ips));
            let waited = now.duration_since(since).unwrap_or_default();
            if was.is_none() && waited < DIRECT_DEADLINE && !desired.silent.contains_key(key) {
                continue;
            }
            let relay = desired
                .peers
                .iter()
                .filter(|(r, rp)| {
                    *r != key
                        && rp.name.is_node()
                        && live(r)
                        && desired.sightings.sees(r, key)
                        && desired.sightings.sees(r, local)
                })
                .min_by_key(|(r, _)| (!desired.relays.contains(*r), **r))
                .map(|(r, rp)| (*r, rp.name.clone()));
            match (relay, was) {
                (Some((via, via_name)), was) => {
                    if was != Some(via) {
                        changes.push(PathChange::Relayed {
                            peer: peer.name.clone(),
                            via: via_name,
                        });
                    }
                    chosen.insert(*key, via);
                }
                (None, Some(_)) => changes.push(PathChange::RelayLost {
                    peer: peer.name.clone(),
                }),
                (None, None) => {}
            }
        }
        for (key, via) in &chosen {
            let direct = desired.peers.get_mut(key).expect("chosen from the peers");
            let kept = probe_address(&direct.allowed_ips)
                .into_iter()
                .chain(echo_address(&direct.allowed_ips))
                .map(IpNet::from)
                .collect();
            let moved = std::mem::replace(&mut direct.allowed_ips, kept);
            let relay = desired.peers.get_mut(via).expect("chosen from the peers");
            relay.allowed_ips.extend(moved.iter().copied());
            relay.allowed_ips.sort();
            desired.relayed.insert(
                *key,
                Relayed {
                    via: *via,
                    via_name: relay.name.clone(),
                    allowed_ips: moved,
                },
            );
        }
        self.relayed = chosen;
        changes
    }

    /// The echoes' verdict on each probed peer's direct path at the endpoint
    /// tried now (for a peer with candidates, the one its device sends to
    /// when that is one of them, else the one chosen last time); records
    /// the probed peers' echo addresses.
    fn judge_paths(
        &mut self,
        desired: &Desired,
        local: &PublicKey,
        readings: &PathReadings,
        now: SystemTime,
    ) -> BTreeMap<PublicKey, Verdict> {
        self.echoes.clear();
        let mut verdicts = BTreeMap::new();
        for (key, peer) in desired.peers.iter().filter(|(_, p)| is_probed(p)) {
            let Some(address) = echo_address(&peer.allowed_ips) else {
                continue;
            };
            self.echoes.push(address);
            // A peer with candidates is judged where its device sends now:
            // a session that roamed to another candidate answers from there.
            let endpoint = match desired.candidates.get(key) {
                Some(c) => {
                    let step = self.step.get(key).copied().unwrap_or(0) % c.list.len();
                    let device = readings.endpoints.get(key).copied();
                    let roamed = device.filter(|d| c.list.iter().any(|one| one.endpoint == *d));
                    Some(roamed.unwrap_or(c.list[step].endpoint))
                }
                None => peer.endpoint,
            };
            let signs = PathSigns {
                last_answer: readings.answers.get(&address).copied(),
                rx_bytes: readings.rx_bytes.get(key).copied(),
                sees_us: desired.sightings.sees(key, local),
            };
            let verdict = self.health.judge(*key, endpoint, signs, now);
            verdicts.insert(*key, verdict);
        }
        verdicts
    }

    /// Sets each peer with candidates to the one to try now: the one it was
    /// at, or the next when that had [`DIRECT_DEADLINE`] without a live
    /// session (after the last: relayed, and from the first again while
    /// relayed). A working session that roamed to another candidate (the
    /// other end dialled us from there) makes that one current: it works —
    /// unless the current one is on trial, or is better and *proven* (it
    /// answered echoes while the device sent there): then the current
    /// endpoint is set again ([`Desired::pinned`]), so that packets of the
    /// other end still in flight on the old path do not pull the pair
    /// down. A working pair on a worse candidate than its best is moved up
    /// by [`crate::upgrade`].
    fn choose_candidates(
        &mut self,
        desired: &mut Desired,
        live: &dyn Fn(&PublicKey) -> bool,
        verdicts: &BTreeMap<PublicKey, Verdict>,
        readings: &PathReadings,
        now: SystemTime,
    ) -> Vec<PathChange> {
        let mut changes = Vec::new();
        self.upgrades.begin(|k| desired.candidates.contains_key(k));
        self.proven.retain(|k| desired.candidates.contains_key(k));
        for (key, candidates) in desired.candidates.iter_mut() {
            let Some(peer) = desired.peers.get_mut(key) else {
                continue;
            };
            let step = self.step.get(key).copied().unwrap_or(0) % candidates.list.len();
            let at = candidates.list[step].endpoint;
            let waited = match self.trying.get(key) {
                Some((endpoint, since)) if *endpoint == Some(at) => {
                    now.duration_since(*since).unwrap_or_default()
                }
                _ => Duration::ZERO,
            };
            let more = step + 1 < candidates.list.len() || self.relayed.contains_key(key);
            let on_trial = self.upgrades.on_trial(key);
            let roamed_to = readings
                .endpoints
                .get(key)
                .and_then(|e| candidates.list.iter().position(|c| c.endpoint == *e));
            // The verdict speaks of the chosen candidate only while the
            // device sends there.
            let verdict = verdicts
                .get(key)
                .copied()
                .filter(|_| roamed_to.is_none_or(|i| i == step));
            match verdict {
                Some(Verdict::Answering) => {
                    self.proven.insert(*key);
                }
                Some(Verdict::Silent { .. }) => {
                    self.proven.remove(key);
                }
                _ => {}
            }
            let proven = self.proven.contains(key);
            let mut next = match roamed_to {
                Some(i) if live(key) && i < step && !on_trial => i,
                Some(i) if live(key) && i > step && !proven && !on_trial => i,
                _ if !live(key) && waited >= DIRECT_DEADLINE && more => {
                    (step + 1) % candidates.list.len()
                }
                _ => step,
            };
            if next != step && roamed_to != Some(next) {
                let c = candidates.list[next];
                changes.push(PathChange::Candidate {
                    peer: peer.name.clone(),
                    kind: c.kind,
                    endpoint: c.endpoint,
                });
            }
            if next == step {
                let pair = PairNow {
                    key: *key,
                    candidates,
                    step,
                    verdict,
                    direct_works: live(key) && !self.relayed.contains_key(key),
                };
                let (moved, upgrade) = self.upgrades.step(pair, &readings.answers, now);
                next = moved;
                if let Some((tried, step)) = upgrade {
                    let c = candidates.list[tried];
                    changes.push(PathChange::Upgrade {
                        peer: peer.name.clone(),
                        kind: c.kind,
                        endpoint: c.endpoint,
                        step,
                    });
                }
            }
            if next != step {
                self.proven.remove(key);
            }
            let roamed_away = roamed_to.is_some_and(|i| i != next);
            if self.upgrades.on_trial(key) || (roamed_away && self.proven.contains(key)) {
                desired.pinned.insert(*key);
            }
            self.step.insert(*key, next);
            candidates.current = next;
            peer.endpoint = Some(candidates.list[next].endpoint);
        }
        changes
    }

    /// Where to send a datagram now so that the device tries a handshake
    /// with each probed peer that has no live session (relayed or still
    /// within its deadline), as of the last [`PathTracker::route_via_relays`].
    pub fn probes(&self) -> &[IpAddr] {
        &self.probes
    }

    /// Where to keep sending echo requests: the echo address of every
    /// probed peer (through the tunnel), and the underlay address of every
    /// better candidate scouted for a working pair (outside it: see
    /// [`crate::upgrade`]), as of the last [`PathTracker::route_via_relays`].
    pub fn echo_targets(&self) -> Vec<IpAddr> {
        let mut targets = self.echoes.clone();
        for scout in self.upgrades.scouts() {
            if !targets.contains(scout) {
                targets.push(*scout);
            }
        }
        targets
    }
}

#[cfg(test)]
mod tests;
