//! The sender's errors, named after the failure as the operator sees it. Each message ends with
//! what to do; it becomes one line in PostgreSQL's log.

use std::path::PathBuf;
use std::time::Duration;

use walship_common::proto::outgoing::EncodeError;
use walship_common::proto::{FrameError, Refusal};
use walship_common::sys::config::{ConfigError, Require};
use walship_common::sys::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("refusing to push {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not the WAL segment {name}: {reason}", path.display())]
    BadSegment {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{} is {size} bytes, larger than any WAL file", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{}: {source} (PostgreSQL will retry)", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: EncodeError,
    },
    #[error("cannot resolve receiver address {addr}: {reason}; check the receiver's address in {}", config.display())]
    Resolve {
        addr: String,
        reason: String,
        config: PathBuf,
    },
    #[error("receiver {addr} did not answer within {timeout:?}; check that walship-receiver serve is running there and UDP {port} is reachable (PostgreSQL will retry)")]
    ReceiverUnreachable {
        addr: String,
        port: String,
        timeout: Duration,
    },
    #[error("cannot open a UDP socket on {bind} to reach the receiver: {source}; check that this user may open UDP sockets here (firewall or seccomp rules, `ulimit -n`) (PostgreSQL will retry)")]
    UdpBind {
        bind: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("`server_name` {name:?} in {} is not a DNS name or an IP address; set it to a name the receiver's certificate was made for (walship-receiver certs --server-name)", config.display())]
    BadServerName { name: String, config: PathBuf },
    #[error("cannot start a connection to receiver {addr}: {detail} (PostgreSQL will retry)")]
    Connect { addr: String, detail: String },
    #[error("TLS with receiver {addr} failed: {detail}")]
    Handshake { addr: String, detail: String },
    #[error(
        "connection to receiver {addr} lost while pushing {name}: {detail} (PostgreSQL will retry)"
    )]
    ConnectionLost {
        addr: String,
        name: String,
        detail: String,
    },
    #[error("receiver {addr} gave no reply for {name} within {timeout:?} (PostgreSQL will retry; raise `timeout` in the sender config if the link is slow)")]
    ReplyTimeout {
        addr: String,
        name: String,
        timeout: Duration,
    },
    #[error("receiver {addr} had no free sending slot for {name} within {timeout:?}: all the connections it lets send at once (max_connections in its config) were busy; see its log for which clients hold them (PostgreSQL will retry)")]
    NoSendingSlot {
        addr: String,
        name: String,
        timeout: Duration,
    },
    #[error("receiver {addr} did not take all of {name} within {timeout:?} ({sent} wire bytes sent): it had no free upload slot for it (all max_uploads busy: see its log), or the link is slow (PostgreSQL will retry; raise `timeout` in the sender config only if the link is slow)")]
    NotTaken {
        addr: String,
        name: String,
        timeout: Duration,
        sent: u64,
    },
    #[error("receiver {addr} gave no reply for {name} within {timeout:?} after all of it was sent: it had no free upload slot for it (all max_uploads busy: see its log), or its disk is slow (PostgreSQL will retry)")]
    NoReply {
        addr: String,
        name: String,
        timeout: Duration,
    },
    #[error("receiver {addr} sent an unreadable reply: {0}", addr = .1)]
    BadReply(FrameError, String),
    #[error("receiver refused {name}: {refusal}")]
    Refused { name: String, refusal: Refusal },
    #[error("cannot use the primary through conninfo {conninfo:?}: {detail}")]
    Primary { conninfo: String, detail: String },
    /// The receiver refused a step of a base backup.
    #[error("receiver refused {what}: {refusal}")]
    BackupRefused { what: String, refusal: Refusal },
    /// Fan-out: the daemon knows this receiver is down and did not wait for it.
    #[error("receiver {addr} is down ({error}); the daemon ships to it when it answers again (PostgreSQL will retry)")]
    ReceiverDown { addr: String, error: String },
    /// Fan-out: fewer receivers than `require` stored the file; `failures` says which and why.
    #[error("{name} stored on {stored} of {total} receivers, require = {require}: {failures} (PostgreSQL will retry)")]
    NotEnoughReceivers {
        name: String,
        stored: usize,
        total: usize,
        require: Require,
        failures: String,
    },
    /// A setup problem, already worded with what to do.
    #[error("{0}")]
    Setup(String),
    /// The daemon's own verdict, already one line.
    #[error("{0}")]
    Daemon(String),
    #[error("cannot start the async runtime: {source}; the host may be short of threads or memory (`ulimit -u`, free memory) (PostgreSQL will retry)")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A task of ours panicked or was cancelled: a bug, not the operator's doing.
    #[error("the {what} task failed ({detail}); this is a bug in walship-sender, please report it (PostgreSQL will retry)")]
    TaskFailed { what: &'static str, detail: String },
}
