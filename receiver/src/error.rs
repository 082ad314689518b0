//! The receiver's errors, named after the failure as the operator sees it.

use std::net::SocketAddr;
use std::path::PathBuf;

use walship_common::pg_control::ControlError;
use walship_common::sys::config::ConfigError;
use walship_common::sys::durable::{DurableError, OpenError};
use walship_common::sys::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on UDP {addr}: {source}; is another walship-receiver running, or is the address wrong?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for metrics on TCP {addr}: {source}; is the port taken, or is `metrics_listen` wrong?")]
    MetricsBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("archive_dir {}: {source}", path.display())]
    ArchiveDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("archive_dir {} is not writable by this user ({source}); give it to the user running walship-receiver serve (chown), or fix archive_dir in the config", path.display())]
    ArchiveNotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("archive_dir {} is in use by another walship-receiver serve (pid {pid}, see walship.lock there); stop that one first, or give this one its own archive_dir", path.display())]
    ArchiveInUse { path: PathBuf, pid: String },
    #[error("{0}")]
    Durable(#[from] DurableError),
    #[error("{0}")]
    StateFile(#[from] OpenError),
    #[error("archive_dir {} does not exist: a wrong path in the config, or the disk holding it is not mounted; nothing can be restored until it is back (PostgreSQL will retry)", path.display())]
    ArchiveMissing { path: PathBuf },
    #[error("archive_dir {} cannot be read by this user ({source}): restore runs as the PostgreSQL user, which needs read and search permission on it (the receiver stores files mode 0640: put the PostgreSQL user in the receiver's group)", path.display())]
    ArchiveUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} in archive_dir {} is not served: {reason}; move it away and have the primary push the segment again (PostgreSQL will retry)", dir.display())]
    NotServed {
        name: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("read the standby's cluster identity: {0}; check pgdata in the receiver config")]
    Control(#[from] ControlError),
    #[error("cluster pin file {}: {reason}", path.display())]
    BadPin { path: PathBuf, reason: String },
    #[error("archive_dir {} holds WAL of cluster {archived} (walship.cluster) but the standby at {} is cluster {standby}: move the old archive away before serving this standby", archive.display(), pgdata.display())]
    ClusterMismatch {
        archive: PathBuf,
        pgdata: PathBuf,
        archived: u64,
        standby: u64,
    },
    #[error("{}: {reason}; it is written by walship-receiver promote: move it away only if you know the standby was not promoted", path.display())]
    BadState { path: PathBuf, reason: String },
    #[error("{} stayed locked for {waited:?}: the receiver is storing a segment and its disk does not finish; check the receiver's log and disk, then run promote again", path.display())]
    FenceLockBusy {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error("no conninfo in {}: promote and status need it to reach the standby (e.g. conninfo = \"host=/var/run/postgresql port=5432 user=postgres dbname=postgres\")", config.display())]
    NoConninfo { config: PathBuf },
    #[error("cannot reach the standby with conninfo {conninfo:?}: {detail}")]
    Standby { conninfo: String, detail: String },
    #[error("the standby did not answer `{query}`: {detail}; check the standby's log and that the conninfo user may run this query")]
    StandbyQuery { query: String, detail: String },
    #[error("the standby is not in recovery (pg_is_in_recovery() is false): it is already a primary, nothing to promote")]
    NotInRecovery,
    #[error("{0}")]
    NotCaughtUp(String),
    #[error("{}: {reason}; it is written by walship-receiver serve when the primary reports segments its pg_wal valve dropped: move it away only once the standby was rebuilt from a new base backup", path.display())]
    BadGapRecord { path: PathBuf, reason: String },
    /// `promote` would pass a gap the primary's pg_wal valve left: the text says what to do.
    #[error("{0}")]
    Gap(String),
    #[error("promotion failed: {0}")]
    Promotion(String),
    #[error("restore {name} to {}: {source}", dest.display())]
    Restore {
        name: String,
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    BadName(#[from] walship_common::wal::name::NameError),
    #[error("cleanup: {action} {}: {source}{advice}; PostgreSQL logs a warning and runs archive_cleanup_command again at the next restartpoint", path.display())]
    Cleanup {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        advice: &'static str,
    },
    #[error("a serving task failed: {0}")]
    Task(String),
    /// A problem of one `[[clusters]]` table's archive (many-cluster form), named.
    #[error("cluster {name}: {source}")]
    Cluster {
        name: String,
        #[source]
        source: Box<ReceiverError>,
    },
    #[error("object store {url}: {detail}")]
    ObjectStore { url: String, detail: String },
}
