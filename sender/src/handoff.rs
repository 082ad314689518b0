//! `push`'s side of the hand-off: ask a running daemon over its Unix socket. Plain blocking I/O:
//! no runtime is built when the daemon answers, which keeps an already-shipped segment's push
//! to about a millisecond.
//!
//! A "stored" answer makes PostgreSQL recycle the segment, so it is trusted only from a daemon
//! of our own user (or root): the socket file must belong to one of them, and so must the
//! process on the other end (`SO_PEERCRED`). Anything else is reported and bypassed.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use walship_common::fanout::FanoutStatus;
use walship_common::proto::handoff::{
    decode_status, Handoff, HandoffReply, StatusRequest, HANDOFF, STATUS,
};
use walship_common::sys::frame_io::{read_frame_blocking, ReadError};

/// Why the daemon could not be used; `push` then connects to the receiver itself.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// No socket file: no daemon was started, or it stopped cleanly.
    #[error("no daemon socket at {}", .0.display())]
    NotStarted(PathBuf),
    /// A socket that does not answer, or a daemon that went away mid-request.
    #[error("daemon at {} did not answer ({detail})", socket.display())]
    NoAnswer { socket: PathBuf, detail: String },
    /// The socket, or whoever listens on it, is not ours: its answer could be a lie.
    #[error("not trusting the daemon socket {}: {found}, not this user (uid {me}) or root; put `socket` in a directory only this user can write, such as /run/walship", socket.display())]
    Untrusted {
        socket: PathBuf,
        found: String,
        me: u32,
    },
}

/// Ask the daemon to push `path` as `name`; `wait` bounds the whole exchange.
pub fn ask(
    socket: &Path,
    path: &Path,
    name: &str,
    wait: Duration,
) -> Result<HandoffReply, Unavailable> {
    let no_answer = |detail: String| Unavailable::NoAnswer {
        socket: socket.to_path_buf(),
        detail,
    };
    let mut stream = connect_trusted(socket)?;
    // %p is relative to the data directory (PostgreSQL's working directory); the daemon runs
    // elsewhere, so send an absolute path.
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| no_answer(format!("current directory: {e}")))?
            .join(path)
    };
    let request = Handoff {
        path,
        name: name.to_string(),
    };
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.set_write_timeout(Some(wait)))
        .and_then(|()| stream.write_all(&request.encode()))
        .map_err(|e| no_answer(e.to_string()))?;
    let body = read_frame_blocking(&mut stream, HANDOFF).map_err(|e| match e {
        ReadError::Ended => no_answer("it closed the connection without a verdict".into()),
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            no_answer("it closed the connection without a verdict".into())
        }
        e => no_answer(e.to_string()),
    })?;
    HandoffReply::decode_body(&body).map_err(|e| no_answer(e.to_string()))
}

/// Ask the daemon what it knows about each receiver (`walship-sender status`).
pub fn ask_status(socket: &Path, wait: Duration) -> Result<FanoutStatus, Unavailable> {
    let no_answer = |detail: String| Unavailable::NoAnswer {
        socket: socket.to_path_buf(),
        detail,
    };
    let mut stream = connect_trusted(socket)?;
    let request = StatusRequest {
        detail: String::new(),
    };
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.set_write_timeout(Some(wait)))
        .and_then(|()| stream.write_all(&request.encode()))
        .map_err(|e| no_answer(e.to_string()))?;
    let body = read_frame_blocking(&mut stream, STATUS).map_err(|e| match e {
        ReadError::Ended => no_answer(
            "it closed the connection without an answer (a daemon older than `status`?)".into(),
        ),
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => no_answer(
            "it closed the connection without an answer (a daemon older than `status`?)".into(),
        ),
        e => no_answer(e.to_string()),
    })?;
    decode_status(&body).map_err(|e| no_answer(e.to_string()))
}

/// Connect to the daemon socket, trusting only a socket file and a process of our own user
/// (or root).
fn connect_trusted(socket: &Path) -> Result<UnixStream, Unavailable> {
    let no_answer = |detail: String| Unavailable::NoAnswer {
        socket: socket.to_path_buf(),
        detail,
    };
    let me = rustix::process::geteuid().as_raw();
    let untrusted = |found: String| Unavailable::Untrusted {
        socket: socket.to_path_buf(),
        found,
        me,
    };
    // The file first (lstat: a symlink is not a socket), so that a stranger's socket is not
    // even sent the segment's path.
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(untrusted("it is not a socket".into()))
        }
        Ok(meta) if !trusted(meta.uid(), me) => {
            return Err(untrusted(format!("the file belongs to uid {}", meta.uid())))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Unavailable::NotStarted(socket.to_path_buf()))
        }
        Err(e) => return Err(no_answer(e.to_string())),
    }
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Unavailable::NotStarted(socket.to_path_buf()))
        }
        Err(e) => return Err(no_answer(e.to_string())),
    };
    // Then the process that accepted: the file may have been swapped since the lstat.
    let peer = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| no_answer(format!("read the peer's credentials: {e}")))?;
    if !trusted(peer.uid.as_raw(), me) {
        return Err(untrusted(format!(
            "the process listening there (pid {}) runs as uid {}",
            peer.pid.as_raw_nonzero(),
            peer.uid.as_raw()
        )));
    }
    Ok(stream)
}

/// Our own user, or root (who could impersonate anybody anyway).
fn trusted(uid: u32, me: u32) -> bool {
    uid == me || uid == 0
}
