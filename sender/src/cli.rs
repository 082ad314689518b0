//! The command line of `walship-sender`: clap definitions only, so that the binary parses it
//! and the packaging generator (`packaging/`) renders man pages and shell completions from it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Ship PostgreSQL WAL to a walship-receiver over QUIC with mutual TLS.
#[derive(Parser)]
#[command(name = "walship-sender", version = walship_common::proto::frame::VERSION_LINE)]
pub struct Cli {
    /// Config file (TOML); relative paths in it are resolved against its directory.
    #[arg(long, global = true, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// archive_command: push the file at PATH as NAME (`push %p %f`); exit 0 only once the
    /// receivers (`require` of them) have verified and durably stored it.
    Push {
        /// Path of the file (%p), relative to the data directory when run by PostgreSQL.
        path: PathBuf,
        /// WAL file name (%f).
        name: String,
    },
    /// Run beside the primary: keep a warm connection to each receiver, answer `push` on the
    /// Unix socket `socket`, and with `pgdata` ship `.ready` segments ahead (`lookahead`).
    /// Foreground; SIGTERM or SIGINT stops it (exit 0).
    Daemon,
    /// Each receiver's state (reachable, or down since when and the last error), the newest
    /// segment it acknowledged, what it still owes and what it missed, from the running daemon
    /// (or, without one, by probing every receiver now). Exit 0 when the `require` policy can
    /// be met, 1 otherwise.
    Status {
        /// One JSON object instead of lines, for machines.
        #[arg(long)]
        json: bool,
    },
    /// Check this primary's side of the pair now, one line per check (ok, WARN, FAIL with the
    /// fix): config, key, certificates (WARN within 30 days of expiry), the receiver over mutual
    /// TLS, and with `conninfo` wal_level, archive_mode, archive_command and a WAL switch
    /// archived end to end. Exit 0 when nothing failed, 1 otherwise.
    /// Take an online base backup of the primary (`pgdata`, through `conninfo`) and write it
    /// over the link into the receiver's `pgdata` as a standby ready to start. Needs
    /// archive_command already pushing to that receiver. Exit 0 once the standby and the
    /// backup's end WAL segment are durable there; 2 when the receiver refused its target
    /// (not empty, a finished standby without --force, PostgreSQL running there), nothing
    /// touched; 1 for any other failure (run it again: an unfinished backup is replaced).
    Basebackup {
        /// Replace a finished standby (or another PostgreSQL data directory) in the receiver's
        /// pgdata.
        #[arg(long)]
        force: bool,
        /// The backup label (shown in backup_label and the primary's log).
        #[arg(long)]
        label: Option<String>,
    },
    Check {
        /// Longest wait for the switched segment to be archived ("60s", "2m"; a number alone
        /// means seconds).
        #[arg(long, default_value = "60s", value_parser = walship_common::sys::config::parse_duration)]
        timeout: std::time::Duration,
    },
}
