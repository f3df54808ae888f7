//! The device's UDP socket: one dual-stack socket (IPv4 only where the
//! node has no IPv6), sending batches with UDP GSO (`UDP_SEGMENT`) and
//! receiving with UDP GRO and `recvmmsg`, through quinn-udp, which also
//! falls back when the kernel lacks either.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

/// The socket and quinn-udp's state for it.
#[derive(Debug)]
pub(crate) struct Udp {
    socket: Socket,
    state: UdpSocketState,
    dual_stack: bool,
    pub(crate) port: u16,
}

/// Socket buffers: a burst of 64 KiB GSO batches must not be dropped.
const SOCKET_BUFFER: usize = 7 << 20;

impl Udp {
    /// Binds `port` (0: any) on both families, or on IPv4 alone when the
    /// node has no IPv6.
    pub(crate) fn bind(port: u16, fwmark: u32) -> io::Result<Self> {
        let (socket, dual_stack) = match Self::socket_v6(port) {
            Ok(s) => (s, true),
            Err(_) => {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
                (s, false)
            }
        };
        if fwmark != 0 {
            socket.set_mark(fwmark)?;
        }
        // Best effort: without CAP_NET_ADMIN the kernel caps them.
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let state = UdpSocketState::new((&socket).into())?;
        let port = socket
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .unwrap_or(port);
        Ok(Udp {
            socket,
            state,
            dual_stack,
            port,
        })
    }

    fn socket_v6(port: u16) -> io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(s)
    }

    pub(crate) fn set_mark(&self, fwmark: u32) -> io::Result<()> {
        self.socket.set_mark(fwmark)
    }

    /// How many datagrams one GSO send may carry.
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn destination(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        }
    }

    /// Sends `contents`: one datagram, or, with `segment`, datagrams of
    /// that size (the last may be shorter) in one call. Waits while the
    /// socket buffer is full; other errors are the caller's to log.
    pub(crate) fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: self.destination(to),
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        loop {
            match self.state.try_send((&self.socket).into(), &transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(nix::poll::PollFlags::POLLOUT, 100)?;
                }
                other => return other,
            }
        }
    }

    /// Waits up to `timeout_ms` for the socket to be ready.
    pub(crate) fn wait(&self, events: nix::poll::PollFlags, timeout_ms: u16) -> io::Result<bool> {
        use std::os::fd::BorrowedFd;
        // SAFETY: the socket outlives the call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) };
        let mut fds = [nix::poll::PollFd::new(fd, events)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(timeout_ms)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Receives what is there (GRO: one buffer may hold several datagrams
    /// of `meta.stride` bytes); 0 when nothing is.
    pub(crate) fn recv(
        &self,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        match self.state.recv((&self.socket).into(), bufs, meta) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }
}
