//! UDP → TUN: receives datagrams in batches (GRO: one buffer may hold many
//! of one size), finds each one's peer (by receiver index, or by the static
//! key a handshake initiation carries), lets the peer's noise state take
//! it, and writes the decrypted packets to the TUN interface coalesced
//! (GRO) into as few writes as the kernel accepts. A packet whose source
//! the sending peer does not own (its allowed IPs) is dropped: a peer is
//! trusted only with the addresses the device was told are its.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::TunnResult;
use gotatun::packet::{Packet, WgKind};
use quinn_udp::RecvMeta;
use zerocopy::IntoBytes;

use super::outbound::source;
use super::peers::Peer;
use super::udp::Udp;
use super::Device;

/// Receive buffers per `recvmmsg`, each large enough for one GRO batch.
const RECV_BATCH: usize = 16;
const RECV_BUFFER: usize = 65_536;

/// Decrypted packets waiting for one coalesced write to the TUN interface.
struct TunWrites {
    bufs: Vec<BytesMut>,
    gro: tun_rs::GROTable,
}

impl TunWrites {
    fn push(&mut self, packet: &[u8]) {
        let mut buf = BytesMut::with_capacity(tun_rs::VIRTIO_NET_HDR_LEN + packet.len());
        buf.resize(tun_rs::VIRTIO_NET_HDR_LEN, 0);
        buf.extend_from_slice(packet);
        self.bufs.push(buf);
    }

    fn flush(&mut self, device: &Device) {
        if self.bufs.is_empty() {
            return;
        }
        if let Err(e) =
            device
                .tun
                .send_multiple(&mut self.gro, &mut self.bufs, tun_rs::VIRTIO_NET_HDR_LEN)
        {
            eprintln!(
                "trellis-wg: writing {} packets to the TUN interface: {e}",
                self.bufs.len()
            );
        }
        self.bufs.clear();
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Takes one datagram from `from`.
fn datagram(device: &Device, udp: &Udp, from: SocketAddr, bytes: &[u8], writes: &mut TunWrites) {
    let config = device.config.read().expect("config lock");
    let Some(key) = config.key.as_ref() else {
        return;
    };
    let packet = Packet::from_bytes(BytesMut::from(bytes));
    let message = match key.rate_limiter.verify_packet(from, packet) {
        Ok(m) => m,
        Err(TunnResult::WriteToNetwork(cookie)) => {
            let packet: Packet = cookie.into();
            let _ = udp.send(from, packet.as_bytes(), None);
            return;
        }
        Err(_) => return,
    };
    let peer: Option<Arc<Peer>> = match &message {
        WgKind::HandshakeInit(p) => parse_handshake_anon(&key.secret, &key.public, p)
            .ok()
            .and_then(|half| config.peer(&half.peer_static_public).cloned()),
        WgKind::HandshakeResp(p) => device.indices.get(p.receiver_idx.get()),
        WgKind::CookieReply(p) => device.indices.get(p.receiver_idx.get()),
        WgKind::Data(p) => device.indices.get(p.header.receiver_idx.get()),
    };
    let Some(peer) = peer else {
        return;
    };
    let mut mtu = device.mtu();
    let mut replies = Vec::new();
    let mut authenticated = false;
    {
        let mut tunn = peer.tunn.lock().expect("tunn lock");
        let Some(tunn) = tunn.as_mut() else {
            return;
        };
        match tunn.handle_incoming_packet(message) {
            TunnResult::WriteToNetwork(reply) => {
                authenticated = true;
                replies.push(reply);
                replies.extend(tunn.get_queued_packets(&mut mtu));
            }
            TunnResult::WriteToTunnel(packet) => {
                authenticated = true;
                if !packet.is_empty() {
                    let owner = source(&packet).and_then(|s| config.peer_for(s));
                    if owner.is_some_and(|o| Arc::ptr_eq(o, &peer)) {
                        writes.push(&packet);
                    }
                }
            }
            TunnResult::Done | TunnResult::Err(_) => {}
        }
    }
    drop(config);
    if !authenticated {
        return;
    }
    // Roaming: the peer is where its last authenticated datagram came from.
    let from = canonical(from);
    if *peer.endpoint.read().expect("endpoint lock") != Some(from) {
        *peer.endpoint.write().expect("endpoint lock") = Some(from);
    }
    for reply in replies {
        device.send_message(udp, &peer, from, reply);
    }
}

/// Receives on `udp` until the device moves to another socket.
pub(super) fn run(device: &Arc<Device>, udp: &Arc<Udp>) {
    let mut storage = vec![vec![0u8; RECV_BUFFER]; RECV_BATCH];
    let mut meta = vec![RecvMeta::default(); RECV_BATCH];
    let mut writes = TunWrites {
        bufs: Vec::with_capacity(tun_rs::IDEAL_BATCH_SIZE),
        gro: tun_rs::GROTable::default(),
    };
    loop {
        if !Arc::ptr_eq(&device.udp(), udp) {
            return;
        }
        match udp.wait(nix::poll::PollFlags::POLLIN, 500) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                eprintln!("trellis-wg: waiting on the UDP socket: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        }
        loop {
            let n = {
                let mut slices: Vec<IoSliceMut<'_>> =
                    storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                match udp.recv(&mut slices, &mut meta) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("trellis-wg: receiving: {e}");
                        0
                    }
                }
            };
            if n == 0 {
                break;
            }
            for (buf, m) in storage.iter().zip(&meta).take(n) {
                let stride = m.stride.max(1);
                for bytes in buf[..m.len].chunks(stride) {
                    datagram(device, udp, m.addr, bytes, &mut writes);
                    if writes.bufs.len() >= tun_rs::IDEAL_BATCH_SIZE {
                        writes.flush(device);
                    }
                }
            }
            writes.flush(device);
        }
    }
}
