//! Harness for walship's end-to-end tests: real PostgreSQL, real walship binaries.
//!
//! - [`scenario`]: a per-scenario temp directory owned by the postgres user, the binaries it runs,
//!   and the failure report (commands, exit statuses, stderr, log tails, archive listings).
//! - [`process`]: commands run as postgres with a cleared environment and a deadline.
//! - [`pg`]: `PgCluster` (initdb, start, stop, sql, switch_wal, basebackup_standby).
//! - [`walship`]: config files, `Receiver` (serve in the background), `push`, `restore`, and the
//!   check for unexpected ERROR/WARN lines in the receiver log.
//! - [`certs`]: certificate sets made by `walship-receiver certs`.
//! - [`segments`]: real WAL segments from two independent clusters.
//! - [`net`]: free loopback ports.
//! - [`s3`]: a real S3-compatible server (s3s-fs) on loopback for the object-store tests.
//!
//! The walship binaries are not built by `cargo test` (a test package cannot depend on another
//! package's binaries): run `cargo build --workspace --bins` first, or set `WALSHIP_BIN_DIR`.
//! PostgreSQL is found through `WALSHIP_PG_BINDIR`, `pg_config --bindir`, or
//! /usr/lib/postgresql/*/bin. Set `WALSHIP_KEEP_TEST_DIR=1` to keep scenario directories.

pub mod certs;
pub mod failover;
pub mod net;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod s3;
pub mod scenario;
pub mod segments;
pub mod walship;

pub use certs::CertSet;
pub use pg::PgCluster;
pub use process::{Cmd, Output};
pub use scenario::Scenario;
pub use segments::{donors, Segment};
pub use walship::{Receiver, ReceiverSetup};
