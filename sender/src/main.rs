//! walship-sender: the primary side of walship; `push` is PostgreSQL's archive_command.
//!
//! Exit codes: `push` 0 when the receiver stored the file or already had identical content,
//! 1 for anything else (PostgreSQL retries). Never above 125.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use walship_common::proto::handoff::HandoffReply;
use walship_common::sys::config::{self, SenderSettings};

use walship_sender::error::SenderError;
use walship_sender::{daemon, handoff, push};

/// Ship PostgreSQL WAL to a walship-receiver over QUIC with mutual TLS.
#[derive(Parser)]
#[command(name = "walship-sender", version = walship_common::proto::frame::VERSION_LINE)]
struct Cli {
    /// Config file (TOML); relative paths in it are resolved against its directory.
    #[arg(long, global = true, env = "WALSHIP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// archive_command: push the file at PATH as NAME (`push %p %f`); exit 0 only once the
    /// receiver has verified and durably stored it.
    Push {
        /// Path of the file (%p), relative to the data directory when run by PostgreSQL.
        path: PathBuf,
        /// WAL file name (%f).
        name: String,
    },
    /// Run beside the primary: keep a warm connection to the receiver, answer `push` on the
    /// Unix socket `socket`, and with `pgdata` ship `.ready` segments ahead (`lookahead`).
    /// Foreground; SIGTERM or SIGINT stops it (exit 0).
    Daemon,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Daemon => {
            init_tracing("info");
            let result = config::require(cli.config.as_deref())
                .map_err(SenderError::from)
                .and_then(|path| Ok(SenderSettings::load(path)?))
                .and_then(daemon::run);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("walship-sender daemon: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Push { path, name } => {
            init_tracing("warn");
            push_exit(run_push(cli.config, &path, &name), &name)
        }
    }
}

fn push_exit(result: Result<push::Pushed, SenderError>, name: &str) -> ExitCode {
    match result {
        Ok(outcome) => {
            tracing::debug!(?outcome, %name, "pushed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line: it lands in PostgreSQL's log.
            eprintln!("walship-sender: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_push(
    config: Option<PathBuf>,
    path: &std::path::Path,
    name: &str,
) -> Result<push::Pushed, SenderError> {
    let settings = SenderSettings::load(config::require(config.as_deref())?)?;
    if let Some(socket) = &settings.socket {
        // The daemon's verdict is final either way; only a daemon that cannot be asked sends
        // us to the receiver directly. The wait covers the daemon's own connect and push.
        let wait = settings.connect_timeout + settings.timeout + Duration::from_secs(5);
        match handoff::ask(socket, path, name, wait) {
            Ok(HandoffReply::Stored) => return Ok(push::Pushed::Stored),
            Ok(HandoffReply::AlreadyHad) => return Ok(push::Pushed::AlreadyHad),
            Ok(HandoffReply::ShippedAhead) => return Ok(push::Pushed::ShippedAhead),
            Ok(HandoffReply::Failed { message }) => return Err(SenderError::Daemon(message)),
            Err(e @ handoff::Unavailable::NotStarted(_)) => {
                tracing::debug!("{e}; pushing directly")
            }
            Err(e) => tracing::warn!("{e}; pushing directly"),
        }
    }
    // One segment at a time: a current-thread runtime starts fastest.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| SenderError::Runtime { source })?;
    runtime.block_on(push::push(&settings, path, name))
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
