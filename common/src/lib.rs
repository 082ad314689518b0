//! walship-common: everything that *decides*, with no sockets and no runtime.
//!
//! Module map:
//! - [`adapt`]: the compression that fits a link (`compression = "auto"`): store, a fast
//!   level or a stronger one, from the measured link and compression speeds.
//! - [`basebackup`]: base backups: what to skip in a data directory, paths from the wire
//!   kept inside the target, what a target may be replaced, the marker, the standby settings.
//! - [`fanout`]: what the sender knows about each of several receivers, and whether the
//!   `require` policy can be met (`walship-sender status`).
//! - [`lookahead`]: the sender daemon's book of `.ready` files shipped ahead, tied to file
//!   identity.
//! - [`lsn`]: `Lsn`, printed like PostgreSQL (`0/3000028`).
//! - [`wal::name`]: WAL file names (`WalFileName`: segment, history, backup, partial).
//! - [`wal::header`]: the long page header at the start of a segment, checked against a name,
//!   a size and a cluster.
//! - [`wal::history`], [`wal::backup`]: timeline history and backup history files, parsed and
//!   checked against each other, the fence and the archive's segments.
//! - [`pg_control`]: the cluster's system identifier and timelines from `global/pg_control`
//!   bytes, CRC checked.
//! - [`human`]: sizes, durations and times as operators read them (`16.0 MiB`, `5m 3s`,
//!   RFC 3339 to the second).
//! - [`clusters`]: many clusters on one receiver: safe cluster and client names, and which
//!   cluster a client certificate may write to.
//! - [`check`]: the judgements of `check` on both sides (certificate expiry, does a
//!   PostgreSQL command run this program with this config, has a segment been archived).
//! - [`handshake`]: why a TLS handshake failed (who closed, which alert) and the advice that
//!   names the side and setting at fault.
//! - [`proto`]: the wire protocol (versioned request header, reply, size limits, ALPN, version
//!   negotiation) and the pipeline between the wire and a verified file: `Incoming` on the
//!   receiver, `Outgoing` on the sender.
//! - [`state`]: the fence and restore records kept in archive_dir, and the replay decision.
//! - [`http`]: the metrics endpoint's requests and responses, on bytes (`GET /metrics` only).
//! - [`upload_queue`]: the object-store tier's upload order and record (`walship.uploaded`),
//!   decided on listings: what goes next, the backlog, what may be cleaned up.
//! - [`retention`]: which archived files a standby no longer needs (`cleanup %r`, the rule of
//!   `pg_archivecleanup`, plus `retain_for`).
//! - [`valve`]: the pg_wal valve (`max_backlog`): when a failed push of the oldest `.ready`
//!   segment is dropped, the sender's drop record and the receiver's gap record, gap ranges.
//!
//! Input and output live under [`sys`] only (enforced by `tests/pure_core.rs`):
//! - [`sys::durable`]: the one durable-write helper (temp, fsync, no-replace rename, fsync dir)
//!   and link-free, non-blocking opens of files in archive_dir.
//! - [`sys::check`]: the file side of `check` (certificates and key as of now, a PostgreSQL
//!   command's paths resolved).
//! - [`sys::config`]: TOML config files to resolved settings.
//! - [`sys::tls`]: rustls configurations for mutual TLS from certificate and key files.
//! - [`sys::pg_control`]: reading `global/pg_control` from a data directory.
//! - [`sys::metrics_http`]: the bounded plain-HTTP metrics endpoint; [`sys::notify`]: systemd
//!   readiness.
//! - [`sys::frame_io`]: the one frame reader (preamble, bounded body, deadline) over sockets.

pub mod adapt;
pub mod basebackup;
pub mod check;
pub mod clusters;
pub mod fanout;
pub mod handshake;
pub mod http;
pub mod human;
pub mod lookahead;
pub mod lsn;
pub mod pg_control;
pub mod proto;
pub mod retention;
pub mod state;
pub mod sys;
pub mod upload_queue;
pub mod valve;
pub mod wal;

pub use lsn::Lsn;
pub use pg_control::SystemId;
pub use wal::header::LongPageHeader;
pub use wal::name::{SegNo, SegmentName, TimelineId, WalFileName};

/// The default `state_dir` of the sender under `pgdata` (see `sys::config`): PostgreSQL ignores
/// it and walship's base backups skip it.
pub const DEFAULT_SENDER_STATE_SUBDIR: &str = "walship_sender";
