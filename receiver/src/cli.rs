//! The command line of `walship-receiver`: clap definitions only, so that the binary parses it
//! and the packaging generator (`packaging/`) renders man pages and shell completions from it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Receive PostgreSQL WAL over QUIC (mutual TLS) and serve it to a standby's restore_command.
#[derive(Parser)]
#[command(name = "walship-receiver", version = walship_common::proto::frame::VERSION_LINE)]
pub struct Cli {
    /// Config file (TOML); relative paths in it are resolved against its directory.
    #[arg(long, global = true, env = "WALSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Accept WAL from walship-sender and store it durably in archive_dir (until SIGINT/SIGTERM).
    Serve,
    /// restore_command: copy archived file NAME to PATH (`restore %f %p`).
    Restore {
        /// Which [[clusters]] table of receiver.toml (required when it configures several).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// WAL file name PostgreSQL asks for (%f).
        name: String,
        /// Where to put it (%p).
        path: PathBuf,
    },
    /// Create a CA, a server and a client certificate for mutual TLS (--server-name); or, with
    /// --client-name, one more client certificate from the CA already in DIR.
    Certs {
        /// Directory to write ca.pem ca.key server.pem server.key client.pem client.key into
        /// (with --client-name: that holds ca.pem and ca.key, and gets client-NAME.pem and
        /// client-NAME.key).
        #[arg(long)]
        dir: PathBuf,
        /// Name (DNS name or IP address) the sender uses to reach this receiver (server_name).
        #[arg(
            long,
            required_unless_present = "client_name",
            conflicts_with = "client_name"
        )]
        server_name: Option<String>,
        /// Issue one more client certificate, with this name as its common name (what
        /// allowed_clients lists), from the CA in DIR: letters, digits, '-', '_', '.'.
        #[arg(long, value_name = "NAME")]
        client_name: Option<String>,
    },
    /// Manual failover: wait until the standby replayed everything archived, fence the old
    /// timeline, promote the standby and report the promotion LSN and new timeline.
    Promote {
        /// Which [[clusters]] table of receiver.toml (required when it configures several).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// How long to wait for replay before giving up without promoting: "5m", "90s", "1h 30m"
        /// (a number alone means seconds).
        #[arg(long, value_name = "DURATION", default_value = "5m",
              value_parser = walship_common::human::parse_duration)]
        timeout: Duration,
        /// Promote now, without waiting for the standby to replay what is archived.
        #[arg(long)]
        no_wait_replay: bool,
        /// Promote although the primary's pg_wal valve (max_backlog) dropped segments the
        /// standby has not replayed past: at the end of the segment before the gap, losing
        /// everything after it. Without it, such a gap refuses promotion.
        #[arg(long)]
        accept_gap: bool,
    },
    /// archive_cleanup_command: remove archived WAL files the standby no longer needs, those
    /// before %r on any timeline (as pg_archivecleanup does); keeps history and state files and
    /// files stored less than retain_for ago.
    Cleanup {
        /// Which [[clusters]] table of receiver.toml (required when it configures several).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// Print the names that would be removed, one per line, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// The WAL file of the standby's last restartpoint (%r).
        #[arg(value_name = "%r")]
        restart: String,
    },
    /// Check this host's side of the pair now, one line per check (ok, WARN, FAIL with the
    /// fix): config, key, certificates (WARN within 30 days of expiry), archive_dir writable,
    /// serve running, and with conninfo/pgdata the standby in recovery, its restore_command and
    /// its cluster against the archive's pin. Exit 0 when nothing failed, 1 otherwise.
    Check {
        /// Which [[clusters]] table of receiver.toml (required when it configures several).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
    },
    /// Show what the archive holds, whether it is fenced, and the standby's replay position;
    /// exit 0 only when healthy, 1 naming each problem (serve not running, the standby
    /// unreachable, the newest segment older than --max-age).
    Status {
        /// Which [[clusters]] table of receiver.toml (required when it configures several).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// Machine-readable output (stable fields, documented in the README).
        #[arg(long)]
        json: bool,
        /// A problem when the newest stored segment arrived longer ago than this: "10m", "1h"
        /// (a number alone means seconds).
        #[arg(long, value_name = "DURATION", value_parser = walship_common::human::parse_duration)]
        max_age: Option<Duration>,
    },
}
