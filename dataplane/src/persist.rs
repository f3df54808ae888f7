//! A TUN interface that outlives the device process (`TUNSETPERSIST`), so a
//! restarted trellis-wg — a new pod of the DaemonSet after `helm upgrade`,
//! a container the kubelet restarted — attaches to the interface that is
//! there, with its addresses and the routes through it, instead of creating
//! a new one. While no process is attached the kernel keeps the interface
//! without carrier (NO-CARRIER) and drops what is routed to it; traffic
//! resumes as soon as a device attaches and the agent configures it.
//!
//! The flags are the device's (a TUN, no packet information, multi-queue;
//! the device adds IFF_VNET_HDR on its own queues, which the kernel allows
//! per queue): the kernel attaches a queue only to an interface of the same
//! multi-queue flag.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use nix::libc;

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);

#[derive(Debug, thiserror::Error)]
pub(crate) enum PersistError {
    #[error("interface name {0:?} is not 1 to 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot attach to TUN interface {name} ({errno}): is another interface of that name there, not a multi-queue TUN?")]
    Attach { name: String, errno: nix::Error },
    #[error("cannot make TUN interface {name} persistent ({errno}): needs CAP_NET_ADMIN")]
    Persist { name: String, errno: nix::Error },
}

/// Creates the TUN interface `name`, or attaches to it when it is there,
/// and marks it persistent; the queue opened for it is closed again (the
/// device opens its own).
pub(crate) fn make_persistent(name: &str) -> Result<(), PersistError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(PersistError::Name(name.to_string()));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(PersistError::Open)?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in ifr.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as _;
    // SAFETY: the fd is open on /dev/net/tun and ifr lives across the call.
    unsafe { tun_set_iff(tun.as_raw_fd(), &ifr) }.map_err(|errno| PersistError::Attach {
        name: name.to_string(),
        errno,
    })?;
    // SAFETY: the fd is attached to the interface.
    unsafe { tun_set_persist(tun.as_raw_fd(), 1) }.map_err(|errno| PersistError::Persist {
        name: name.to_string(),
        errno,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_cannot_take_are_refused_before_any_syscall() {
        for bad in ["", "a-name-of-16-byt"] {
            let err = make_persistent(bad).unwrap_err();
            assert!(matches!(err, PersistError::Name(_)), "{bad:?}: {err}");
        }
    }
}
