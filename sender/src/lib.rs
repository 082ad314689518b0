//! walship-sender as a library: the binary (`main.rs`) parses the command line and calls the
//! entry points here (`push`, `daemon`, `check`, `basebackup`, `status`); tests drive them in process. `cli` holds the clap
//! definitions of the command line (also read by the man page and completion generator);
//! `metrics` the daemon's metrics (`metrics_listen`); `valve` the pg_wal valve (`max_backlog`).

pub mod basebackup;
pub mod check;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod handoff;
pub mod metrics;
pub mod partial;
pub mod push;
pub mod status;
pub mod valve;
