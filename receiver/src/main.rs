//! walship-receiver: the standby side of walship.
//!
//! Exit codes (all below 126: higher ones make PostgreSQL abort recovery):
//! - `serve`: 0 clean shutdown after a signal, 1 could not start or a task failed.
//! - `restore`: 0 copied, 1 not in the archive (nothing on stderr), 2 any other error.
//! - other commands: 0 success, 1 failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use walship_common::config::{self, ReceiverSettings};

mod certs;
mod error;
mod restore;
mod serve;
mod store;

use error::ReceiverError;

/// Receive PostgreSQL WAL over QUIC (mutual TLS) and serve it to a standby's restore_command.
#[derive(Parser)]
#[command(name = "walship-receiver", version)]
struct Cli {
    /// Config file (TOML); relative paths in it are resolved against its directory.
    #[arg(long, global = true, env = "WALSHIP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept WAL from walship-sender and store it durably in archive_dir (until SIGINT/SIGTERM).
    Serve,
    /// restore_command: copy archived file NAME to PATH (`restore %f %p`).
    Restore {
        /// WAL file name PostgreSQL asks for (%f).
        name: String,
        /// Where to put it (%p).
        path: PathBuf,
    },
    /// Create a CA, a server and a client certificate for mutual TLS.
    Certs {
        /// Directory to write ca.pem ca.key server.pem server.key client.pem client.key into.
        #[arg(long)]
        dir: PathBuf,
        /// Name (DNS name or IP address) the sender uses to reach this receiver (server_name).
        #[arg(long)]
        server_name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            init_tracing("info");
            match serve_main(cli.config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Restore { name, path } => {
            init_tracing("warn");
            let result = config::require(cli.config.as_deref())
                .map_err(ReceiverError::from)
                .and_then(|p| Ok(ReceiverSettings::load(p)?))
                .and_then(|s| restore::restore(&s, &name, &path));
            match result {
                Ok(restore::Restored::Copied(bytes)) => {
                    tracing::debug!(%name, bytes, "restored");
                    ExitCode::SUCCESS
                }
                Ok(restore::Restored::NotArchived) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("walship-receiver: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Certs { dir, server_name } => {
            init_tracing("warn");
            match certs::certs(&dir, &server_name) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&ReceiverError::Tls(e)),
            }
        }
    }
}

fn fail(e: &ReceiverError) -> ExitCode {
    eprintln!("walship-receiver: {e}");
    ExitCode::from(1)
}

fn serve_main(config: Option<PathBuf>) -> Result<(), ReceiverError> {
    let settings = ReceiverSettings::load(config::require(config.as_deref())?)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| ReceiverError::Task(e.to_string()))?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            trigger.cancel();
        });
        serve::run(settings, shutdown).await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("received {which}");
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
