//! One definition of a live WireGuard session, from WireGuard's own timers
//! (the whitepaper's §6.1, the same in the kernel module, wireguard-go and
//! gotatun): a session lives for [`REJECT_AFTER_TIME`] after its
//! handshake. While packets flow (keepalives included) the initiator
//! re-keys after [`REKEY_AFTER_TIME`], so a pair that is used or kept alive
//! never gets there; a handshake older than that is a session nobody uses,
//! or a path that broke. NAT discovery, relay fallback, roaming and the
//! status report all ask [`is_live`].

use std::time::{Duration, SystemTime};

/// A session older than this is dropped by both ends.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// An initiator that sends re-keys once its session is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);

/// An unanswered handshake initiation is retried this often.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a session's handshake stays live: its whole lifetime.
pub const LIVE: Duration = REJECT_AFTER_TIME;

/// Whether a session whose latest handshake was at `handshake` is live at
/// `now` (a handshake in the future — a clock step — counts as not live).
pub fn is_live(handshake: Option<SystemTime>, now: SystemTime) -> bool {
    handshake
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age < LIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_for_reject_after_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(is_live(Some(now), now));
        assert!(is_live(Some(now - LIVE + Duration::from_secs(1)), now));
        assert!(!is_live(Some(now - LIVE), now));
        assert!(!is_live(None, now));
        assert!(
            !is_live(Some(now + Duration::from_secs(5)), now),
            "a handshake after now"
        );
    }
}
