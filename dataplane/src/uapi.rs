//! The UAPI socket `wg` and the agent talk to: a Unix socket served one
//! thread per client, each request (its lines up to the blank one) handed
//! to an [`Answer`] (the device's: `crate::engine::uapi`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// Something that answers UAPI requests.
pub(crate) trait Answer: Clone + Send + 'static {
    /// Answers one request (its lines up to the blank one), with the
    /// answer's `errno=` line and blank line.
    fn answer(&self, request: &str) -> String;
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
