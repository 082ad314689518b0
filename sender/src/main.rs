//! walship-sender: the primary side of walship; `push` is PostgreSQL's archive_command.
//!
//! Exit codes: `push` 0 when the receiver stored the file or already had identical content,
//! 1 for anything else (PostgreSQL retries). Never above 125.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use walship_common::config::{self, SenderSettings};

mod error;
mod push;

use error::SenderError;

/// Ship PostgreSQL WAL to a walship-receiver over QUIC with mutual TLS.
#[derive(Parser)]
#[command(name = "walship-sender", version)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Push { path, name } => match run_push(cli.config, &path, &name) {
            Ok(outcome) => {
                tracing::debug!(?outcome, %name, "pushed");
                ExitCode::SUCCESS
            }
            Err(e) => {
                // One line: it lands in PostgreSQL's log.
                eprintln!("walship-sender: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn run_push(
    config: Option<PathBuf>,
    path: &std::path::Path,
    name: &str,
) -> Result<push::Pushed, SenderError> {
    let settings = SenderSettings::load(config::require(config.as_deref())?)?;
    // One segment at a time: a current-thread runtime starts fastest.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SenderError::Internal(e.to_string()))?;
    runtime.block_on(push::push(&settings, path, name))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
