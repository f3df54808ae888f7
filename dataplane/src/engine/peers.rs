//! The device's configuration and its peers: who they are, where they are,
//! which addresses each may use (the allowed-IPs table, one longest-prefix
//! lookup per packet), and each peer's noise state (gotatun's `Tunn`).
//! [`Config::apply`] takes a parsed `set`, [`Config::view`] answers `get`.
//! Changes are made in place, as the kernel makes them: a peer whose
//! endpoint, keepalive or allowed IPs change keeps its session.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::Tunn;
use gotatun::x25519::{PublicKey, StaticSecret};
use ip_network_table::IpNetworkTable;
use ipnet::IpNet;

use super::protocol::{DeviceView, Key, PeerChange, PeerView, SetRequest};

/// Handshake initiations a second before the device asks for cookies
/// (wireguard-go uses the same figure).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Receiver indices gotatun still holds that a peer keeps registered at
/// most: its sessions and the handshake in flight (gotatun keeps 8
/// sessions).
const INDICES_PER_PEER: usize = 10;

/// One peer.
pub(crate) struct Peer {
    pub(crate) public_key: Key,
    /// `None` while the device has no private key.
    pub(crate) tunn: Mutex<Option<Tunn>>,
    pub(crate) endpoint: RwLock<Option<SocketAddr>>,
    settings: Mutex<PeerSettings>,
    /// The last handshake, kept after its session expires (as the kernel
    /// reports it) until the peer is removed.
    last_handshake: Mutex<Option<SystemTime>>,
    /// The receiver indices registered for this peer, oldest first.
    indices: Mutex<VecDeque<u32>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &super::protocol::hex(&self.public_key))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
struct PeerSettings {
    preshared_key: Option<Key>,
    keepalive: u16,
    allowed_ips: Vec<IpNet>,
}

impl Peer {
    /// The last handshake, made absolute: gotatun reports the time since
    /// it while a session lives.
    fn last_handshake(&self) -> Option<SystemTime> {
        let since = self
            .tunn
            .lock()
            .expect("tunn lock")
            .as_ref()
            .and_then(|t| t.time_since_last_handshake());
        let mut kept = self.last_handshake.lock().expect("handshake lock");
        if let Some(since) = since {
            *kept = SystemTime::now().checked_sub(since);
        }
        *kept
    }

    fn counters(&self) -> (u64, u64) {
        match self.tunn.lock().expect("tunn lock").as_ref() {
            Some(t) => {
                let (_, tx, rx, _, _) = t.stats();
                (tx as u64, rx as u64)
            }
            None => (0, 0),
        }
    }
}

/// The device's own key and the rate limiter that goes with it.
pub(crate) struct OwnKey {
    pub(crate) secret: StaticSecret,
    pub(crate) public: PublicKey,
    pub(crate) rate_limiter: Arc<RateLimiter>,
}

impl std::fmt::Debug for OwnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnKey")
            .field("public", &super::protocol::hex(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// What a `set` changed that the sockets must follow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketChange {
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
}

/// The device's configuration.
pub(crate) struct Config {
    pub(crate) key: Option<OwnKey>,
    pub(crate) listen_port: u16,
    pub(crate) fwmark: u32,
    peers: BTreeMap<Key, Arc<Peer>>,
    allowed: IpNetworkTable<Arc<Peer>>,
    index_table: IndexTable,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen_port", &self.listen_port)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

fn to_network(net: IpNet) -> ip_network::IpNetwork {
    // IpNet is truncated on parse: the network address has no host bits.
    ip_network::IpNetwork::new_truncate(net.network(), net.prefix_len())
        .expect("a prefix length IpNet accepted is valid")
}

impl Config {
    pub(crate) fn new() -> Self {
        Config {
            key: None,
            listen_port: 0,
            fwmark: 0,
            peers: BTreeMap::new(),
            allowed: IpNetworkTable::new(),
            index_table: IndexTable::from_os_rng(),
        }
    }

    /// The peer that owns `address` (longest prefix).
    pub(crate) fn peer_for(&self, address: IpAddr) -> Option<&Arc<Peer>> {
        self.allowed.longest_match(address).map(|(_, p)| p)
    }

    pub(crate) fn peer(&self, key: &Key) -> Option<&Arc<Peer>> {
        self.peers.get(key)
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.values()
    }

    /// The table the peers' noise states take their receiver indices from.
    pub(crate) fn index_table(&self) -> IndexTableHandle {
        IndexTableHandle(self.index_table.clone())
    }

    fn new_tunn(&self, key: &OwnKey, peer_key: &Key, settings: &PeerSettings) -> Tunn {
        Tunn::new(
            key.secret.clone(),
            PublicKey::from(*peer_key),
            settings.preshared_key,
            (settings.keepalive > 0).then_some(settings.keepalive),
            self.index_table.clone(),
            key.rate_limiter.clone(),
        )
    }

    /// Applies a parsed `set`. Returns what the sockets must follow, and
    /// the peers removed (their receiver indices are to be forgotten).
    pub(crate) fn apply(&mut self, set: SetRequest) -> (SocketChange, Vec<Arc<Peer>>) {
        let mut removed = Vec::new();
        if let Some(private) = set.private_key {
            self.set_private_key(private);
        }
        let mut sockets = SocketChange::default();
        if let Some(port) = set.listen_port.filter(|p| *p != self.listen_port) {
            sockets.listen_port = Some(port);
        }
        if let Some(mark) = set.fwmark.filter(|m| *m != self.fwmark) {
            self.fwmark = mark;
            sockets.fwmark = Some(mark);
        }
        if set.replace_peers {
            removed.extend(std::mem::take(&mut self.peers).into_values());
            self.allowed = IpNetworkTable::new();
        }
        for change in set.peers {
            if let Some(gone) = self.apply_peer(change) {
                removed.push(gone);
            }
        }
        (sockets, removed)
    }

    fn set_private_key(&mut self, private: Option<Key>) {
        let key = private.map(|bytes| {
            let secret = StaticSecret::from(bytes);
            let public = PublicKey::from(&secret);
            let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
            OwnKey {
                secret,
                public,
                rate_limiter,
            }
        });
        if key.as_ref().map(|k| k.public) == self.key.as_ref().map(|k| k.public) {
            return;
        }
        // A peer with our own public key cannot be one (the kernel drops it).
        if let Some(k) = &key {
            if let Some(me) = self.peers.remove(k.public.as_bytes()) {
                self.drop_allowed(&me);
            }
        }
        for peer in self.peers.values() {
            let settings = peer.settings.lock().expect("settings lock").clone();
            *peer.tunn.lock().expect("tunn lock") = key
                .as_ref()
                .map(|k| self.new_tunn(k, &peer.public_key, &settings));
        }
        self.key = key;
    }

    fn drop_allowed(&mut self, peer: &Arc<Peer>) {
        for net in &peer.settings.lock().expect("settings lock").allowed_ips {
            let network = to_network(*net);
            if self
                .allowed
                .exact_match(network)
                .is_some_and(|owner| Arc::ptr_eq(owner, peer))
            {
                self.allowed.remove(network);
            }
        }
    }

    /// Returns the peer when the change removed it.
    fn apply_peer(&mut self, change: PeerChange) -> Option<Arc<Peer>> {
        if change.remove {
            let gone = self.peers.remove(&change.public_key)?;
            self.drop_allowed(&gone);
            return Some(gone);
        }
        if self
            .key
            .as_ref()
            .is_some_and(|k| k.public.as_bytes() == &change.public_key)
        {
            return None;
        }
        let peer = match self.peers.get(&change.public_key) {
            Some(p) => p.clone(),
            None if change.update_only => return None,
            None => {
                let settings = PeerSettings::default();
                let peer = Arc::new(Peer {
                    public_key: change.public_key,
                    tunn: Mutex::new(
                        self.key
                            .as_ref()
                            .map(|k| self.new_tunn(k, &change.public_key, &settings)),
                    ),
                    endpoint: RwLock::new(None),
                    settings: Mutex::new(settings),
                    last_handshake: Mutex::new(None),
                    indices: Mutex::new(VecDeque::new()),
                });
                self.peers.insert(change.public_key, peer.clone());
                peer
            }
        };
        if let Some(endpoint) = change.endpoint {
            *peer.endpoint.write().expect("endpoint lock") = Some(endpoint);
        }
        let mut settings = peer.settings.lock().expect("settings lock").clone();
        {
            let mut tunn = peer.tunn.lock().expect("tunn lock");
            if let Some(psk) = change.preshared_key {
                settings.preshared_key = psk;
                if let Some(t) = tunn.as_mut() {
                    t.set_preshared_key(psk);
                }
            }
            if let Some(keepalive) = change.keepalive {
                settings.keepalive = keepalive;
                if let Some(t) = tunn.as_mut() {
                    t.set_persistent_keepalive((keepalive > 0).then_some(keepalive));
                }
            }
        }
        if change.replace_allowed_ips {
            self.drop_allowed(&peer);
            settings.allowed_ips.clear();
        }
        for net in change.allowed_ips {
            // An address belongs to one peer: the last to claim it.
            if let Some(previous) = self.allowed.insert(to_network(net), peer.clone()) {
                if !Arc::ptr_eq(&previous, &peer) {
                    previous
                        .settings
                        .lock()
                        .expect("settings lock")
                        .allowed_ips
                        .retain(|n| *n != net);
                }
            }
            if !settings.allowed_ips.contains(&net) {
                settings.allowed_ips.push(net);
            }
        }
        *peer.settings.lock().expect("settings lock") = settings;
        None
    }

    pub(crate) fn view(&self) -> DeviceView {
        DeviceView {
            private_key: self.key.as_ref().map(|k| k.secret.to_bytes()),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers: self
                .peers
                .values()
                .map(|peer| {
                    let settings = peer.settings.lock().expect("settings lock").clone();
                    let (tx_bytes, rx_bytes) = peer.counters();
                    PeerView {
                        public_key: peer.public_key,
                        preshared_key: settings.preshared_key,
                        endpoint: *peer.endpoint.read().expect("endpoint lock"),
                        last_handshake: peer.last_handshake(),
                        tx_bytes,
                        rx_bytes,
                        keepalive: settings.keepalive,
                        allowed_ips: settings.allowed_ips,
                    }
                })
                .collect(),
        }
    }
}

/// Receiver index → peer, for datagrams that name the session they
/// belong to (data, handshake responses, cookie replies).
///
/// An index stays registered while gotatun holds it (a session or a
/// handshake in flight keeps it reserved in the shared [`IndexTable`]):
/// indices it let go are pruned first, so a long run of failed handshakes
/// never pushes out the index of the session still carrying traffic.
#[derive(Debug)]
pub(crate) struct Indices {
    peers: Mutex<HashMap<u32, Arc<Peer>>>,
    table: IndexTableHandle,
}

/// The [`IndexTable`] the [`Config`]'s noise states draw their indices
/// from (it has no `Debug`).
#[derive(Clone)]
pub(crate) struct IndexTableHandle(IndexTable);

impl std::fmt::Debug for IndexTableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexTable")
    }
}

impl Indices {
    /// Indices of the peers of a [`Config`] (see [`Config::index_table`]).
    pub(crate) fn new(table: IndexTableHandle) -> Self {
        Indices {
            peers: Mutex::default(),
            table,
        }
    }

    pub(crate) fn get(&self, index: u32) -> Option<Arc<Peer>> {
        self.peers.lock().expect("index lock").get(&index).cloned()
    }

    /// Registers the index of a handshake `peer` sent. The peer's indices
    /// gotatun no longer holds are forgotten; beyond [`INDICES_PER_PEER`]
    /// still held, the oldest is.
    pub(crate) fn register(&self, index: u32, peer: &Arc<Peer>) {
        let mut map = self.peers.lock().expect("index lock");
        map.insert(index, peer.clone());
        let mut own = peer.indices.lock().expect("indices lock");
        own.retain(|&old| {
            let keep = old != index && self.table.0.in_use(old);
            if !keep && old != index {
                remove_own(&mut map, old, peer);
            }
            keep
        });
        own.push_back(index);
        while own.len() > INDICES_PER_PEER {
            if let Some(old) = own.pop_front() {
                remove_own(&mut map, old, peer);
            }
        }
    }

    pub(crate) fn forget(&self, peer: &Peer) {
        let mut map = self.peers.lock().expect("index lock");
        for index in peer.indices.lock().expect("indices lock").drain(..) {
            remove_own(&mut map, index, peer);
        }
    }
}

/// Removes `index` from `map` if it still names `peer` (gotatun may have
/// given a freed index to another peer since).
fn remove_own(map: &mut HashMap<u32, Arc<Peer>>, index: u32, peer: &Peer) {
    if map
        .get(&index)
        .is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), peer))
    {
        map.remove(&index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::protocol::parse_set;

    fn hexkey(b: u8) -> String {
        crate::engine::protocol::hex(&[b; 32])
    }

    fn apply(config: &mut Config, body: &str) -> (SocketChange, Vec<Arc<Peer>>) {
        config.apply(parse_set(body).expect("a valid set"))
    }

    fn owner(config: &Config, ip: &str) -> Option<Key> {
        config.peer_for(ip.parse().unwrap()).map(|p| p.public_key)
    }

    #[test]
    fn a_peer_changed_in_place_keeps_its_noise_state() {
        let mut c = Config::new();
        apply(
            &mut c,
            &format!(
                "private_key={}\npublic_key={}\nendpoint=192.0.2.1:51820\nallowed_ip=10.0.1.0/24\n",
                hexkey(1),
                hexkey(2)
            ),
        );
        let before = c.peer(&[2; 32]).unwrap().clone();
        assert!(
            before.tunn.lock().unwrap().is_some(),
            "a key and a peer make a Tunn"
        );
        let tunn_at = |p: &Arc<Peer>| {
            p.tunn
                .lock()
                .unwrap()
                .as_ref()
                .map(|t| t as *const Tunn as usize)
        };
        let tunn = tunn_at(&before);
        apply(
            &mut c,
            &format!("public_key={}\nendpoint=192.0.2.9:51820\npersistent_keepalive_interval=25\nallowed_ip=10.0.2.0/24\n", hexkey(2)),
        );
        let after = c.peer(&[2; 32]).unwrap();
        assert!(Arc::ptr_eq(&before, after), "the same peer");
        assert_eq!(tunn_at(after), tunn, "the same noise state (session kept)");
        let view = c.view();
        assert_eq!(
            view.peers[0].endpoint,
            Some("192.0.2.9:51820".parse().unwrap())
        );
        assert_eq!(view.peers[0].keepalive, 25);
        assert_eq!(
            view.peers[0].allowed_ips.len(),
            2,
            "allowed IPs are added to"
        );
        assert_eq!(owner(&c, "10.0.1.5"), Some([2; 32]));
        assert_eq!(owner(&c, "10.0.2.5"), Some([2; 32]));
    }

    #[test]
    fn replacing_allowed_ips_and_an_address_claimed_by_another_peer() {
        let mut c = Config::new();
        apply(
            &mut c,
            &format!("public_key={}\nallowed_ip=10.0.1.0/24\nallowed_ip=10.0.9.0/24\npublic_key={}\nallowed_ip=10.0.2.0/24\n", hexkey(2), hexkey(3)),
        );
        apply(
            &mut c,
            &format!("public_key={}\nallowed_ip=10.0.9.0/24\npublic_key={}\nreplace_allowed_ips=true\nallowed_ip=10.0.3.0/24\n", hexkey(3), hexkey(2)),
        );
        assert_eq!(owner(&c, "10.0.9.1"), Some([3; 32]), "the last claim wins");
        assert_eq!(owner(&c, "10.0.1.1"), None, "replaced away");
        assert_eq!(owner(&c, "10.0.3.1"), Some([2; 32]));
        let view = c.view();
        let of = |k: u8| {
            view.peers
                .iter()
                .find(|p| p.public_key == [k; 32])
                .unwrap()
                .allowed_ips
                .clone()
        };
        assert_eq!(of(2), vec!["10.0.3.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(of(3).len(), 2, "10.0.2.0/24 and 10.0.9.0/24");
    }

    #[test]
    fn removal_update_only_and_replace_peers() {
        let mut c = Config::new();
        apply(
            &mut c,
            &format!("public_key={}\nallowed_ip=10.0.1.0/24\n", hexkey(2)),
        );
        let (_, removed) = apply(&mut c, &format!("public_key={}\nremove=true\n", hexkey(2)));
        assert_eq!(removed.len(), 1);
        assert_eq!(owner(&c, "10.0.1.1"), None, "its addresses go with it");
        apply(
            &mut c,
            &format!(
                "public_key={}\nupdate_only=true\nallowed_ip=10.0.1.0/24\n",
                hexkey(4)
            ),
        );
        assert!(c.view().peers.is_empty(), "update_only adds nothing");
        apply(
            &mut c,
            &format!("public_key={}\npublic_key={}\n", hexkey(5), hexkey(6)),
        );
        let (_, removed) = apply(
            &mut c,
            &format!("replace_peers=true\npublic_key={}\n", hexkey(7)),
        );
        assert_eq!(removed.len(), 2);
        assert_eq!(
            c.view()
                .peers
                .iter()
                .map(|p| p.public_key[0])
                .collect::<Vec<_>>(),
            vec![7]
        );
    }

    #[test]
    fn our_own_public_key_is_never_a_peer_and_a_port_change_is_reported() {
        let mut c = Config::new();
        let own = StaticSecret::from([1u8; 32]);
        let own_public = crate::engine::protocol::hex(PublicKey::from(&own).as_bytes());
        let (change, _) = apply(
            &mut c,
            &format!(
                "private_key={}\nlisten_port=51820\nfwmark=7\npublic_key={own_public}\n",
                hexkey(1)
            ),
        );
        assert!(c.view().peers.is_empty());
        assert_eq!(
            change,
            SocketChange {
                listen_port: Some(51820),
                fwmark: Some(7)
            }
        );
        let (change, _) = apply(&mut c, "fwmark=7\n");
        assert_eq!(
            change,
            SocketChange::default(),
            "no change, nothing to follow"
        );
    }

    #[test]
    fn failed_handshakes_never_push_out_the_index_of_a_live_session() {
        let mut c = Config::new();
        apply(
            &mut c,
            &format!("private_key={}\npublic_key={}\n", hexkey(1), hexkey(2)),
        );
        let peer = c.peer(&[2; 32]).unwrap().clone();
        let table = c.index_table().0;
        let indices = Indices::new(c.index_table());
        let live = table.new_index();
        indices.register(live.value(), &peer);
        let mut failed = Vec::new();
        for _ in 0..2 * INDICES_PER_PEER {
            // A handshake that gotatun gives up (its index is freed).
            let attempt = table.new_index();
            indices.register(attempt.value(), &peer);
            failed.push(attempt.value());
        }
        assert!(
            indices.get(live.value()).is_some(),
            "the live session's index stays"
        );
        assert!(indices.get(failed[0]).is_none(), "a freed index goes");
        assert!(
            indices.get(*failed.last().unwrap()).is_some(),
            "the newest stays until the next registration"
        );
        let held: Vec<_> = (0..INDICES_PER_PEER)
            .map(|_| {
                let i = table.new_index();
                indices.register(i.value(), &peer);
                i
            })
            .collect();
        assert!(
            indices.get(live.value()).is_none(),
            "beyond the cap of indices still held, the oldest goes"
        );
        assert!(held.iter().all(|i| indices.get(i.value()).is_some()));
        indices.forget(&peer);
        assert!(
            indices.get(held[0].value()).is_none(),
            "a removed peer's indices go"
        );
    }
}
