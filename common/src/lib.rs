//! walship-common: everything that *decides*, with no sockets and no runtime.
//!
//! Module map:
//! - [`lookahead`]: the sender daemon's book of `.ready` files shipped ahead, tied to file
//!   identity.
//! - [`lsn`]: `Lsn`, printed like PostgreSQL (`0/3000028`).
//! - [`wal::name`]: WAL file names (`WalFileName`: segment, history, backup, partial).
//! - [`wal::header`]: the long page header at the start of a segment, checked against a name,
//!   a size and a cluster.
//! - [`wal::history`], [`wal::backup`]: timeline history and backup history files, parsed and
//!   checked against each other, the fence and the archive's segments.
//! - [`pg_control`]: the cluster's system identifier from `global/pg_control`, CRC checked.
//! - [`proto`]: the wire protocol (versioned request header, reply, size limits, ALPN) and the
//!   receive state machine (`Upload`).
//! - [`durable`]: the one durable-write helper (temp, fsync, no-replace rename, fsync dir).
//! - [`config`]: TOML config files to resolved settings.
//! - [`tls`]: rustls configurations for mutual TLS and certificate generation.
//! - [`state`]: the fence and restore records kept in archive_dir, and the replay decision.

pub mod config;
pub mod durable;
pub mod lookahead;
pub mod lsn;
pub mod pg_control;
pub mod proto;
pub mod state;
pub mod tls;
pub mod wal;

pub use lsn::Lsn;
pub use pg_control::SystemId;
pub use wal::header::LongPageHeader;
pub use wal::name::{SegNo, SegmentName, TimelineId, WalFileName};
