//! The UAPI socket `wg` and the agent talk to: served by trellis-wg itself,
//! which forwards every request to boringtun's own socket (kept out of
//! sight in a private directory) through [`crate::translate`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::translate::{self, Pair};

/// The front socket's state: where boringtun listens, the private key
/// last set through us (boringtun never reports it) and the last handshake
/// of each peer (boringtun forgets it when the session expires).
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    pub(crate) inner: PathBuf,
    /// The WireGuard interface (datagrams that restart sessions go out
    /// through it).
    interface: String,
    private_key: Arc<Mutex<Option<String>>>,
    handshakes: Arc<Mutex<translate::Handshakes>>,
    /// One request at a time reaches the device (a set reads the peers
    /// first, then writes: nothing may come in between).
    serial: Arc<Mutex<()>>,
}

fn exchange(socket: &Path, request: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    for line in BufReader::new(&stream).lines() {
        let line = line?;
        let end = line.starts_with("errno=");
        answer.push_str(&line);
        answer.push('\n');
        if end {
            break;
        }
    }
    Ok(answer)
}

fn split_errno(answer: &str) -> (Vec<Pair>, String) {
    let pairs = translate::parse_pairs(answer);
    let errno = pairs
        .iter()
        .find(|(k, _)| k == "errno")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "5".into());
    (
        pairs.into_iter().filter(|(k, _)| k != "errno").collect(),
        errno,
    )
}

/// Sends one empty datagram to the discard port of `address` through
/// `interface`: boringtun, which has no session with the peer behind it,
/// queues it and starts a handshake. Best effort: a failure only means the
/// session comes back on the next traffic or rekey.
fn restart_session(interface: &str, address: std::net::IpAddr) {
    use nix::sys::socket::{setsockopt, sockopt::BindToDevice};
    let local: std::net::SocketAddr = match address {
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sent = std::net::UdpSocket::bind(local).and_then(|socket| {
        setsockopt(&socket, BindToDevice, &std::ffi::OsString::from(interface))?;
        socket.send_to(&[], (address, 9))
    });
    if let Err(e) = sent {
        eprintln!("trellis-wg: restarting the session behind {address}: {e}");
    }
}

impl Proxy {
    pub(crate) fn new(inner: PathBuf, interface: &str) -> Self {
        Proxy {
            inner,
            interface: interface.to_string(),
            private_key: Arc::default(),
            handshakes: Arc::default(),
            serial: Arc::default(),
        }
    }

    /// Takes in boringtun's answer to `get` (when it succeeded) and returns
    /// the handshakes kept.
    fn observe(&self, answer: &[Pair], errno: &str) -> translate::Handshakes {
        let mut handshakes = self.handshakes.lock().expect("handshakes lock");
        if errno == "0" {
            handshakes.observe(answer, SystemTime::now());
        }
        handshakes.clone()
    }
}

/// Something that answers UAPI requests: the boringtun proxy or the
/// device itself.
pub(crate) trait Answer: Clone + Send + 'static {
    /// Answers one request (its lines up to the blank one), with the
    /// answer's `errno=` line and blank line.
    fn answer(&self, request: &str) -> String;
}

impl Answer for Proxy {
    fn answer(&self, request: &str) -> String {
        let _one = self.serial.lock().expect("serial lock");
        let first = request.lines().next().unwrap_or_default();
        let result = match first {
            "get=1" => exchange(&self.inner, "get=1\n\n").map(|answer| {
                let (pairs, errno) = split_errno(&answer);
                let handshakes = self.observe(&pairs, &errno);
                let key = self.private_key.lock().expect("key lock").clone();
                let out = translate::translate_get(&pairs, key.as_deref(), &handshakes);
                format!("{}errno={errno}\n\n", translate::render(&out))
            }),
            "set=1" => exchange(&self.inner, "get=1\n\n").and_then(|current| {
                let (pairs, errno) = split_errno(&current);
                // Before peers are re-created and boringtun forgets their
                // handshakes.
                self.observe(&pairs, &errno);
                let body: Vec<Pair> = translate::parse_pairs(request)
                    .into_iter()
                    .skip(1)
                    .collect();
                let existing = translate::peers_of(&pairs);
                let (requests, key) = translate::rewrite_set(&body, &existing);
                let restart = translate::sessions_to_restart(&requests, &existing);
                for part in requests {
                    let answer = exchange(
                        &self.inner,
                        &format!("set=1\n{}\n", translate::render(&part)),
                    )?;
                    let (_, errno) = split_errno(&answer);
                    if errno != "0" {
                        return Ok(format!("errno={errno}\n\n"));
                    }
                    // Each part boringtun took has dropped the sessions of
                    // the peers it removed (re-added or not).
                    self.handshakes
                        .lock()
                        .expect("handshakes lock")
                        .forget_removed(&part);
                }
                if let Some(k) = key {
                    *self.private_key.lock().expect("key lock") = Some(k);
                }
                for address in restart {
                    restart_session(&self.interface, address);
                }
                Ok("errno=0\n\n".to_string())
            }),
            _ => Ok("errno=22\n\n".to_string()),
        };
        result.unwrap_or_else(|e| {
            eprintln!("trellis-wg: UAPI request failed: {e}");
            "errno=5\n\n".to_string()
        })
    }
}

/// Serves `front` until the process ends, one thread per client.
/// Returns the identity (device, inode) of the socket file it created,
/// so that only that file is removed at exit.
pub(crate) fn serve<A: Answer>(answer: A, front: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let _ = std::fs::remove_file(front);
    let listener = UnixListener::bind(front)?;
    std::fs::set_permissions(front, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let meta = std::fs::metadata(front)?;
    let identity = (meta.dev(), meta.ino());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || client(&answer, conn));
        }
    });
    Ok(identity)
}

fn client<A: Answer>(answer: &A, mut conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone a unix stream"));
    loop {
        let mut request = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            request.push_str(&line);
            if line == "\n" {
                break;
            }
        }
        if conn.write_all(answer.answer(&request).as_bytes()).is_err() {
            return;
        }
    }
}
