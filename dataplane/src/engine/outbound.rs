//! TUN → UDP: reads what the kernel routes into the interface (up to
//! 64 KiB of TCP or UDP segments at a time, split into packets by tun-rs),
//! finds each packet's peer by its destination, encrypts a peer's run of
//! packets under one lock and sends them with UDP GSO: equal-sized
//! datagrams in one system call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::BytesMut;
use gotatun::packet::{Packet, WgKind};
use zerocopy::IntoBytes;

use super::peers::Peer;
use super::udp::Udp;
use super::Device;

/// Largest GSO send (the kernel's limit is 64 KiB of payload).
const MAX_GSO_BYTES: usize = 65_000;

/// The address at byte `v4_at` (IPv4) or `v6_at` (IPv6) of an IP packet.
fn address(packet: &[u8], v4_at: usize, v6_at: usize) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[v4_at..v4_at + 4].try_into().ok()?;
            Some(Ipv4Addr::from(b).into())
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[v6_at..v6_at + 16].try_into().ok()?;
            Some(Ipv6Addr::from(b).into())
        }
        _ => None,
    }
}

/// The destination address of an IP packet.
pub(super) fn destination(packet: &[u8]) -> Option<IpAddr> {
    address(packet, 16, 24)
}

/// The source address of an IP packet.
pub(super) fn source(packet: &[u8]) -> Option<IpAddr> {
    address(packet, 12, 8)
}

/// Encrypted datagrams for one destination, gathered for one GSO send.
pub(super) struct GsoBatch {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    /// The last datagram was shorter than the segment size: nothing more
    /// may follow it in this send.
    closed: bool,
}

impl GsoBatch {
    pub(super) fn new() -> Self {
        GsoBatch {
            buf: Vec::with_capacity(MAX_GSO_BYTES + 2048),
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    /// Adds a datagram; false when it does not fit this send (flush, then
    /// push again).
    fn push(&mut self, datagram: &[u8], max_segments: usize) -> bool {
        if self.count == 0 {
            self.segment = datagram.len();
        } else if self.closed
            || datagram.len() > self.segment
            || self.count >= max_segments
            || self.buf.len() + datagram.len() > MAX_GSO_BYTES
        {
            return false;
        }
        if datagram.len() < self.segment {
            self.closed = true;
        }
        self.buf.extend_from_slice(datagram);
        self.count += 1;
        true
    }

    pub(super) fn flush(&mut self, udp: &Udp, to: SocketAddr) {
        if self.count > 0 {
            let segment = (self.count > 1).then_some(self.segment);
            if let Err(e) = udp.send(to, &self.buf, segment) {
                eprintln!("trellis-wg: sending {} datagrams to {to}: {e}", self.count);
            }
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }

    pub(super) fn add(&mut self, udp: &Udp, to: SocketAddr, datagram: &[u8]) {
        let max = udp.max_segments().max(1);
        if !self.push(datagram, max) {
            self.flush(udp, to);
            self.push(datagram, max);
        }
    }
}

/// Encrypts `packets` for `peer` and sends them.
fn send_run(device: &Device, udp: &Udp, peer: &Arc<Peer>, packets: &[&[u8]], batch: &mut GsoBatch) {
    let Some(to) = *peer.endpoint.read().expect("endpoint lock") else {
        return;
    };
    let mut mtu = device.mtu();
    let mut others = Vec::new();
    {
        let mut tunn = peer.tunn.lock().expect("tunn lock");
        let Some(tunn) = tunn.as_mut() else {
            return;
        };
        for packet in packets {
            let packet = Packet::from_bytes(BytesMut::from(*packet));
            match tunn.handle_outgoing_packet(packet, Some(&mut mtu)) {
                Some(WgKind::Data(data)) => batch.add(udp, to, data.as_bytes()),
                Some(other) => others.push(other),
                None => {}
            }
        }
    }
    batch.flush(udp, to);
    for message in others {
        device.send_message(udp, peer, to, message);
    }
}

/// Reads `queue` (one of the interface's TUN queues) for good.
pub(super) fn run(device: &Arc<Device>, queue: &tun_rs::SyncDevice) {
    let batch_size = tun_rs::IDEAL_BATCH_SIZE;
    let mut original = vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65_535];
    let mut bufs = vec![vec![0u8; 65_535]; batch_size];
    let mut sizes = vec![0usize; batch_size];
    let mut batch = GsoBatch::new();
    loop {
        let n = match queue.recv_multiple(&mut original, &mut bufs, &mut sizes, 0) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("trellis-wg: reading the TUN interface: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let udp = device.udp();
        let config = device.config.read().expect("config lock");
        let mut run: Vec<&[u8]> = Vec::with_capacity(n);
        let mut run_peer: Option<Arc<Peer>> = None;
        for i in 0..n {
            let packet = &bufs[i][..sizes[i]];
            let Some(peer) = destination(packet).and_then(|d| config.peer_for(d)) else {
                continue;
            };
            if run_peer.as_ref().is_some_and(|p| !Arc::ptr_eq(p, peer)) {
                if let Some(p) = run_peer.take() {
                    send_run(device, &udp, &p, &run, &mut batch);
                }
                run.clear();
            }
            if run_peer.is_none() {
                run_peer = Some(peer.clone());
            }
            run.push(packet);
        }
        drop(config);
        if let Some(p) = run_peer {
            send_run(device, &udp, &p, &run, &mut batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_both_families() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 1, 2]);
        assert_eq!(source(&v4), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(destination(&v4), Some("10.0.1.2".parse().unwrap()));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        v6[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(source(&v6), Some("fd00::1".parse().unwrap()));
        assert_eq!(destination(&v6), Some("fd00::2".parse().unwrap()));
        assert_eq!(destination(&v4[..19]), None, "a truncated header");
        assert_eq!(destination(&[0x15; 40]), None, "not IP");
    }

    #[test]
    fn a_gso_batch_takes_equal_datagrams_and_one_shorter_last() {
        let mut b = GsoBatch::new();
        assert!(b.push(&[0; 100], 64));
        assert!(b.push(&[0; 100], 64));
        assert!(!b.push(&[0; 120], 64), "longer than the segment");
        assert!(b.push(&[0; 40], 64), "a shorter one ends the batch");
        assert!(!b.push(&[0; 100], 64), "nothing after the shorter one");
        assert_eq!((b.count, b.segment, b.buf.len()), (3, 100, 240));
        let mut b = GsoBatch::new();
        assert!(b.push(&[0; 100], 2));
        assert!(b.push(&[0; 100], 2));
        assert!(!b.push(&[0; 100], 2), "at the kernel's segment limit");
    }
}
