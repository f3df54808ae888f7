//! Pod addresses leaked by runtimes that lose a pod without calling CNI
//! DEL, and never call GC (containerd 1.x does not): the agent releases an
//! allocation of trellis-cni's IPAM store once it is older than a grace
//! period and its pod's host interface (named from the container ID and
//! interface name, as trellis-cni names it) no longer exists — a pod's
//! network namespace going away takes its veth pair with it. An ADD in
//! flight allocates before it wires, and a retried ADD refreshes its
//! allocation, so the grace period keeps both. The store's lock is the
//! plugin's own: a collection never races a CNI call.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use trellis_cni::ipam::{Owner, Store};
use trellis_cni::podnet::host_ifname;

/// How long a collection waits for the store's lock before trying later.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Releases leaked addresses of one network's store, at most every
/// `every`.
#[derive(Debug)]
pub struct LeakCollector {
    data_dir: PathBuf,
    network: String,
    grace: Duration,
    every: Duration,
    last: Option<Instant>,
}

/// What one collection did.
#[derive(Debug, Default)]
pub struct Collected {
    pub released: Vec<(IpAddr, Owner)>,
    pub errors: Vec<String>,
}

impl LeakCollector {
    /// A collector of `network`'s store under `data_dir` that releases
    /// allocations older than `grace` (looking every half of it, between 5
    /// and 60 s).
    pub fn new(data_dir: &Path, network: &str, grace: Duration) -> Self {
        LeakCollector {
            data_dir: data_dir.to_path_buf(),
            network: network.to_string(),
            grace,
            every: (grace / 2).clamp(Duration::from_secs(5), Duration::from_secs(60)),
            last: None,
        }
    }

    /// Whether a collection is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.duration_since(last) >= self.every)
    }

    /// Collects once (blocking: run it off the async threads), with
    /// `attached` telling whether a host interface exists. A store that
    /// was never created (no pod yet) is nothing to collect.
    pub fn collect(&mut self, attached: impl Fn(&str) -> bool) -> Collected {
        self.last = Some(Instant::now());
        if !self.data_dir.join(&self.network).is_dir() {
            return Collected::default();
        }
        let store = match Store::open_waiting(&self.data_dir, &self.network, LOCK_WAIT) {
            Ok(store) => store,
            Err(e) => {
                return Collected {
                    released: Vec::new(),
                    errors: vec![e.to_string()],
                }
            }
        };
        let (released, errors) = store.release_unattached(self.grace, SystemTime::now(), |owner| {
            attached(&host_ifname(&owner.container_id, &owner.ifname))
        });
        Collected {
            released,
            errors: errors.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Whether an interface of that name exists in this network namespace.
pub fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_are_spaced_by_half_the_grace_within_bounds() {
        let dir = Path::new("/nonexistent");
        let c = LeakCollector::new(dir, "trellis", Duration::from_secs(300));
        assert_eq!(c.every, Duration::from_secs(60));
        assert!(c.due(Instant::now()));
        let c = LeakCollector::new(dir, "trellis", Duration::from_secs(2));
        assert_eq!(c.every, Duration::from_secs(5));
        let mut c = LeakCollector::new(dir, "trellis", Duration::from_secs(20));
        assert_eq!(c.every, Duration::from_secs(10));
        let got = c.collect(|_| false);
        assert!(
            got.released.is_empty() && got.errors.is_empty(),
            "no store, nothing to do"
        );
        assert!(!c.due(Instant::now()));
    }

    #[test]
    fn an_old_allocation_without_its_interface_is_released() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ipam");
        let store = Store::open(&dir, "trellis").unwrap();
        let cidrs = ["10.244.1.0/24".parse().unwrap()];
        let gone = store
            .allocate(&Owner::new("gone", "eth0"), &cidrs, &[])
            .unwrap();
        let live = store
            .allocate(&Owner::new("live", "eth0"), &cidrs, &[])
            .unwrap();
        drop(store);
        let mut c = LeakCollector::new(&dir, "trellis", Duration::ZERO);
        let live_link = host_ifname("live", "eth0");
        let got = c.collect(|name| name == live_link);
        assert!(got.errors.is_empty(), "{:?}", got.errors);
        assert_eq!(got.released, vec![(gone[0], Owner::new("gone", "eth0"))]);
        let store = Store::open(&dir, "trellis").unwrap();
        assert_eq!(
            store.addresses_of(&Owner::new("live", "eth0")).unwrap(),
            live
        );
    }
}
