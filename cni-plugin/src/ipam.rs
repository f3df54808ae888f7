//! The IPAM store: one directory per network under the data dir, one file
//! per allocated address (named by the address, holding the container ID
//! and interface name), an exclusive lock around every change, and writes
//! that are atomic (temp file, fsync, rename), so a crash at any point
//! leaves either the old or the new state, never half of one.
//!
//! Allocation is keyed by (container ID, ifname): a retried ADD gets the
//! addresses it already has. The network address, the first address (the
//! node's mesh address) and the IPv4 broadcast address are never handed out.
//! Addresses are handed out round-robin, so a freed address is not reused
//! at once.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

use crate::error::CniError;

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: &str, ifname: &str) -> Self {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    fn encode(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    fn decode(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let container_id = lines.next()?.to_string();
        let ifname = lines.next()?.to_string();
        (!container_id.is_empty() && !ifname.is_empty()).then_some(Owner {
            container_id,
            ifname,
        })
    }
}

/// How long to wait for the store's lock before asking the runtime to retry.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
const TMP_PREFIX: &str = ".tmp-";
const LAST_PREFIX: &str = "last_reserved_ip.";

/// The store of one network, locked for the lifetime of this value.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating it) the store of `network` under `data_dir`, and takes
    /// its exclusive lock; leftovers of writes cut short by a crash are
    /// removed.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, CniError> {
        Self::open_waiting(data_dir, network, LOCK_TIMEOUT)
    }

    /// [`Store::open`], waiting at most `timeout` for the lock.
    pub fn open_waiting(
        data_dir: &Path,
        network: &str,
        timeout: Duration,
    ) -> Result<Self, CniError> {
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(CniError::io(format!(
                "creating IPAM directory {}",
                dir.display()
            )))?;
        let lock_path = dir.join("lock");
        let deadline = Instant::now() + timeout;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(CniError::io(format!("opening {}", lock_path.display())))?;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((returned, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = returned;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((_, errno)) => {
                    return Err(CniError::TryAgain(format!(
                        "the IPAM store {} is locked by another call ({errno})",
                        dir.display()
                    )))
                }
            }
        };
        let store = Store { dir, _lock: lock };
        store.remove_temp_files();
        Ok(store)
    }

    fn remove_temp_files(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Every allocation: (address, owner).
    pub fn allocations(&self) -> Result<Vec<(IpAddr, Owner)>, CniError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(CniError::io(format!("reading {}", self.dir.display())))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Ok(addr) = entry.file_name().to_string_lossy().parse::<IpAddr>() else {
                continue;
            };
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            // A file we cannot read back is kept as allocated (never hand
            // out an address twice) under an owner GC can release.
            let owner = Owner::decode(&text).unwrap_or_else(|| Owner::new("unknown", "unknown"));
            out.push((addr, owner));
        }
        out.sort();
        Ok(out)
    }

    /// The addresses held by `owner`.
    pub fn addresses_of(&self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(_, o)| o == owner)
            .map(|(a, _)| a)
            .collect())
    }

    /// One address per CIDR for `owner`: the ones it holds already, new ones
    /// otherwise, never one of `taken_elsewhere` (addresses the host routes
    /// to a live interface that is none of ours: a pod of another network,
    /// as while a node moves from another CNI). All or nothing: when one
    /// CIDR is full, nothing new stays allocated.
    pub fn allocate(
        &self,
        owner: &Owner,
        cidrs: &[IpNet],
        taken_elsewhere: &[IpAddr],
    ) -> Result<Vec<IpAddr>, CniError> {
        let all = self.allocations()?;
        let mut result = Vec::new();
        let mut fresh = Vec::new();
        for cidr in cidrs {
            if let Some((addr, _)) = all.iter().find(|(a, o)| o == owner && cidr.contains(a)) {
                // A retried ADD is about to wire its pod again: its
                // allocation counts as fresh for the leak collector.
                self.touch(*addr);
                result.push(*addr);
                continue;
            }
            let used: Vec<IpAddr> = all
                .iter()
                .map(|(a, _)| *a)
                .chain(taken_elsewhere.iter().copied())
                .filter(|a| cidr.contains(a))
                .collect();
            match self.next_free(cidr, &used) {
                Some(addr) => {
                    if let Err(e) =
                        self.write_atomic(&self.dir.join(addr.to_string()), &owner.encode(), true)
                    {
                        self.undo(&fresh);
                        return Err(e);
                    }
                    self.remember_last(cidr, addr);
                    fresh.push(addr);
                    result.push(addr);
                }
                None => {
                    self.undo(&fresh);
                    return Err(CniError::RangeExhausted {
                        cidr: cidr.to_string(),
                        in_use: used.len(),
                    });
                }
            }
        }
        if !fresh.is_empty() {
            // One directory sync makes every new entry durable.
            if let Err(e) = self.sync_dir() {
                self.undo(&fresh);
                return Err(e);
            }
        }
        Ok(result)
    }

    fn touch(&self, addr: IpAddr) {
        let path = self.dir.join(addr.to_string());
        if let Ok(file) = OpenOptions::new().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Releases the allocations older than `grace` (by when they were made
    /// or last handed out again) whose owner is not `attached` — for a
    /// runtime that lost a pod without calling DEL or GC. Younger ones are
    /// kept whatever `attached` says: an ADD allocates before it wires.
    /// Keeps going after an error; returns what was released and the
    /// errors.
    pub fn release_unattached(
        &self,
        grace: Duration,
        now: SystemTime,
        attached: impl Fn(&Owner) -> bool,
    ) -> (Vec<(IpAddr, Owner)>, Vec<CniError>) {
        let all = match self.allocations() {
            Ok(all) => all,
            Err(e) => return (Vec::new(), vec![e]),
        };
        let keep: Vec<Owner> = all
            .iter()
            .filter(|(addr, owner)| {
                let made = fs::metadata(self.dir.join(addr.to_string()))
                    .and_then(|m| m.modified())
                    .unwrap_or(now);
                now.duration_since(made).unwrap_or_default() < grace || attached(owner)
            })
            .map(|(_, owner)| owner.clone())
            .collect();
        self.release_all_but(&keep)
    }

    fn undo(&self, addrs: &[IpAddr]) {
        for a in addrs {
            let _ = fs::remove_file(self.dir.join(a.to_string()));
        }
    }

    /// Releases everything `owner` holds; returns what was released. Holding
    /// nothing is not an error (DEL is idempotent).
    pub fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        let mut released = Vec::new();
        for addr in self.addresses_of(owner)? {
            self.remove(addr)?;
            released.push(addr);
        }
        if !released.is_empty() {
            self.sync_dir()?;
        }
        Ok(released)
    }

    /// Releases every allocation whose owner is not in `valid`; keeps going
    /// after an error. Returns what was released and the errors.
    pub fn release_all_but(&self, valid: &[Owner]) -> (Vec<(IpAddr, Owner)>, Vec<CniError>) {
        let mut released = Vec::new();
        let mut errors = Vec::new();
        match self.allocations() {
            Ok(all) => {
                for (addr, owner) in all {
                    if valid.contains(&owner) {
                        continue;
                    }
                    match self.remove(addr) {
                        Ok(()) => released.push((addr, owner)),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if !released.is_empty() {
            if let Err(e) = self.sync_dir() {
                errors.push(e);
            }
        }
        (released, errors)
    }

    fn remove(&self, addr: IpAddr) -> Result<(), CniError> {
        let path = self.dir.join(addr.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::io(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// The first free address after the last one handed out in `cidr`.
    fn next_free(&self, cidr: &IpNet, used: &[IpAddr]) -> Option<IpAddr> {
        let size: u128 = 1u128
            .checked_shl(u32::from(cidr.max_prefix_len() - cidr.prefix_len()))
            .unwrap_or(u128::MAX);
        let base = ip_to_u128(cidr.network());
        let last = self
            .last(cidr)
            .filter(|a| cidr.contains(a))
            .map(|a| ip_to_u128(a) - base)
            .unwrap_or(0);
        // Among used + reserved + 1 distinct candidates one is free, so the
        // search is bounded by the allocations, not by the CIDR's size.
        let tries = size.min(used.len() as u128 + 4);
        let reserved = |offset: u128| {
            offset == 0 || offset == 1 || (cidr.addr().is_ipv4() && offset == size - 1)
        };
        let mut offset = last;
        for _ in 0..tries {
            offset = (offset + 1) % size;
            if reserved(offset) {
                continue;
            }
            let candidate = u128_to_ip(base + offset, cidr.addr().is_ipv4());
            if !used.contains(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    fn last_path(&self, cidr: &IpNet) -> PathBuf {
        let family = if cidr.addr().is_ipv4() { "4" } else { "6" };
        self.dir.join(format!("{LAST_PREFIX}{family}"))
    }

    fn last(&self, cidr: &IpNet) -> Option<IpAddr> {
        fs::read_to_string(self.last_path(cidr))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn remember_last(&self, cidr: &IpNet, addr: IpAddr) {
        // Only a hint for round-robin: losing it in a crash costs nothing,
        // so it is renamed into place but not synced.
        let _ = self.write_atomic(&self.last_path(cidr), &addr.to_string(), false);
    }

    /// Writes `path` through a temp file and a rename; with `durable`, the
    /// file's data is synced first (the caller syncs the directory).
    fn write_atomic(&self, path: &Path, contents: &str, durable: bool) -> Result<(), CniError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}"));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(contents.as_bytes())?;
            if durable {
                file.sync_all()?;
            }
            fs::rename(&tmp, path)
        };
        write().map_err(CniError::io(format!("writing {}", path.display())))
    }

    fn sync_dir(&self) -> Result<(), CniError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(CniError::io(format!("syncing {}", self.dir.display())))
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn u128_to_ip(value: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((value as u32).into())
    } else {
        IpAddr::V6(value.into())
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_old_unattached_allocations_are_released_as_leaked() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let cidrs = nets(&["10.244.1.0/24"]);
        let (live, lost, young) = (
            Owner::new("live", "eth0"),
            Owner::new("lost", "eth0"),
            Owner::new("young", "eth0"),
        );
        let live_addr = store.allocate(&live, &cidrs, &[]).unwrap();
        let lost_addr = store.allocate(&lost, &cidrs, &[]).unwrap();
        store.allocate(&young, &cidrs, &[]).unwrap();
        let grace = Duration::from_secs(120);
        let later = SystemTime::now() + Duration::from_secs(600);
        // Everything young: nothing goes, whatever is attached.
        let (released, errors) = store.release_unattached(grace, SystemTime::now(), |_| false);
        assert!(released.is_empty() && errors.is_empty());
        // Ten minutes on, "young" was handed out again (a retried ADD).
        let young_file = tmp
            .path()
            .join("net")
            .join(store.addresses_of(&young).unwrap()[0].to_string());
        fs::File::options()
            .write(true)
            .open(&young_file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let (released, errors) = store.release_unattached(grace, later, |o| o == &live);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(released, vec![(lost_addr[0], lost.clone())]);
        assert_eq!(store.addresses_of(&live).unwrap(), live_addr);
        assert!(store.addresses_of(&lost).unwrap().is_empty());
        assert_eq!(store.addresses_of(&young).unwrap().len(), 1);
    }

    #[test]
    fn a_retried_add_refreshes_its_allocation() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let cidrs = nets(&["10.244.1.0/24"]);
        let owner = Owner::new("c1", "eth0");
        let addr = store.allocate(&owner, &cidrs, &[]).unwrap()[0];
        let file = tmp.path().join("net").join(addr.to_string());
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        store.allocate(&owner, &cidrs, &[]).unwrap();
        let modified = fs::metadata(&file).unwrap().modified().unwrap();
        assert!(modified > old + Duration::from_secs(3000), "{modified:?}");
    }

    #[test]
    fn retries_get_the_same_addresses() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let cidrs = nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let owner = Owner::new("c1", "eth0");
        let first = store.allocate(&owner, &cidrs, &[]).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(store.allocate(&owner, &cidrs, &[]).unwrap(), first);
        let other = store
            .allocate(&Owner::new("c1", "net1"), &cidrs, &[])
            .unwrap();
        assert!(
            other.iter().all(|a| !first.contains(a)),
            "another ifname is another attachment"
        );
    }

    #[test]
    fn addresses_the_host_routes_elsewhere_are_skipped() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let cidrs = nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let elsewhere: Vec<IpAddr> = ["10.244.1.2", "10.244.1.3", "fd00:10:244:1::2", "10.9.9.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let got = store
            .allocate(&Owner::new("c1", "eth0"), &cidrs, &elsewhere)
            .unwrap();
        assert_eq!(
            got,
            vec![
                "10.244.1.4".parse::<IpAddr>().unwrap(),
                "fd00:10:244:1::3".parse().unwrap()
            ]
        );
        // A /30 has one usable address; taken elsewhere, the range is full.
        let small = nets(&["10.0.0.0/30"]);
        let taken = ["10.0.0.2".parse().unwrap()];
        let err = store
            .allocate(&Owner::new("c2", "eth0"), &small, &taken)
            .unwrap_err();
        assert!(matches!(err, CniError::RangeExhausted { .. }), "{err}");
    }

    #[test]
    fn reserved_addresses_are_never_handed_out() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let cidrs = nets(&["10.0.0.0/29"]);
        let mut got = Vec::new();
        for i in 0..5 {
            got.extend(
                store
                    .allocate(&Owner::new(&format!("c{i}"), "eth0"), &cidrs, &[])
                    .unwrap(),
            );
        }
        let expect: Vec<IpAddr> = (2..7)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            sorted, expect,
            "not .0 (network), .1 (mesh address), .7 (broadcast)"
        );
        let err = store
            .allocate(&Owner::new("c9", "eth0"), &cidrs, &[])
            .unwrap_err();
        assert_eq!(err.code(), crate::error::code::RANGE_EXHAUSTED);
        assert!(err.to_string().contains("10.0.0.0/29"), "{err}");
    }

    #[test]
    fn exhaustion_in_one_family_allocates_nothing() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let v4 = nets(&["10.0.0.0/30"]);
        store.allocate(&Owner::new("a", "eth0"), &v4, &[]).unwrap();
        let dual = nets(&["fd00::/64", "10.0.0.0/30"]);
        assert!(store
            .allocate(&Owner::new("b", "eth0"), &dual, &[])
            .is_err());
        assert!(store
            .addresses_of(&Owner::new("b", "eth0"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn release_is_idempotent_and_round_robin_avoids_reuse() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let cidrs = nets(&["10.0.0.0/24"]);
        let a = Owner::new("a", "eth0");
        let first = store.allocate(&a, &cidrs, &[]).unwrap();
        assert_eq!(store.release(&a).unwrap(), first);
        assert!(store.release(&a).unwrap().is_empty());
        let next = store
            .allocate(&Owner::new("b", "eth0"), &cidrs, &[])
            .unwrap();
        assert_ne!(next, first, "a freed address is not reused at once");
    }

    #[test]
    fn release_all_but_keeps_the_valid_ones() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let cidrs = nets(&["10.0.0.0/24"]);
        for c in ["a", "b", "c"] {
            store.allocate(&Owner::new(c, "eth0"), &cidrs, &[]).unwrap();
        }
        let (released, errors) = store.release_all_but(&[Owner::new("b", "eth0")]);
        assert!(errors.is_empty());
        assert_eq!(released.len(), 2);
        let left: Vec<Owner> = store
            .allocations()
            .unwrap()
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(left, vec![Owner::new("b", "eth0")]);
    }

    #[test]
    fn crash_leftovers_are_cleaned_and_unreadable_files_stay_allocated() {
        let tmp = TempDir::new().unwrap();
        let cidrs = nets(&["10.0.0.0/29"]);
        {
            let store = Store::open(tmp.path(), "net").unwrap();
            assert_eq!(
                store
                    .allocate(&Owner::new("a", "eth0"), &cidrs, &[])
                    .unwrap(),
                vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
            );
        }
        let dir = tmp.path().join("net");
        fs::write(dir.join(".tmp-10.0.0.9"), "half").unwrap();
        fs::write(dir.join("10.0.0.3"), "").unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        assert!(
            !dir.join(".tmp-10.0.0.9").exists(),
            "the half-written file is gone"
        );
        assert_eq!(
            store.allocations().unwrap().len(),
            2,
            "the unreadable file still holds its address"
        );
        let next = store
            .allocate(&Owner::new("b", "eth0"), &cidrs, &[])
            .unwrap();
        assert_eq!(next, vec!["10.0.0.4".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_held_lock_makes_the_caller_retry_later() {
        let tmp = TempDir::new().unwrap();
        let _held = Store::open(tmp.path(), "net").unwrap();
        let start = Instant::now();
        // A second open in the same process contends on a separate open file
        // description, as another process would.
        let wait = Duration::from_millis(100);
        let err = Store::open_waiting(tmp.path(), "net", wait).unwrap_err();
        assert_eq!(err.code(), crate::error::code::TRY_AGAIN_LATER);
        assert!(start.elapsed() >= wait);
    }

    #[test]
    fn large_ipv6_ranges_allocate_quickly() {
        let tmp = TempDir::new().unwrap();
        let store = Store::open(tmp.path(), "net").unwrap();
        let cidrs = nets(&["fd00::/64"]);
        for i in 0..50 {
            let a = store
                .allocate(&Owner::new(&format!("c{i}"), "eth0"), &cidrs, &[])
                .unwrap();
            assert!(cidrs[0].contains(&a[0]));
        }
        assert_eq!(store.allocations().unwrap().len(), 50);
    }
}
