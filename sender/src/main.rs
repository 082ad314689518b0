//! walship-sender: the primary side of walship; `push` is PostgreSQL's archive_command.
//!
//! Exit codes: `push` 0 when the receivers (`require` of them) stored the file or already had
//! identical content, 1 for anything else (PostgreSQL retries); `check` 0 when no check failed
//! (warnings allowed), 1 otherwise; `status` 0 when the policy can be met, 1 otherwise. Never
//! above 125.
//! `basebackup` 0 when the standby is ready, 2 when the receiver refused its target (nothing
//! touched), 1 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use walship_common::proto::handoff::HandoffReply;
use walship_common::sys::config::{self, SenderSettings};

use walship_sender::cli::{Cli, Command};
use walship_sender::error::SenderError;
use walship_sender::{basebackup, check, daemon, handoff, push, status, valve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Daemon => {
            walship_common::sys::logging::init("info");
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
        Command::Status { json } => {
            walship_common::sys::logging::init("warn");
            ExitCode::from(status::command(cli.config.as_deref(), json))
        }
        Command::Check { timeout } => {
            walship_common::sys::logging::init("warn");
            ExitCode::from(check::command(cli.config.as_deref(), timeout))
        }
        Command::Basebackup { force, label } => {
            walship_common::sys::logging::init("warn");
            let opts = basebackup::Options { force, label };
            match run_basebackup(cli.config, &opts) {
                Ok(summary) => {
                    eprint!("{}", summary.render());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("walship-sender basebackup: {e}");
                    ExitCode::from(basebackup_code(&e))
                }
            }
        }
        Command::Push { path, name } => {
            walship_common::sys::logging::init("warn");
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
            Ok(HandoffReply::Dropped { message }) => {
                // One line: it lands in PostgreSQL's log.
                eprintln!("walship-sender: {message}");
                return Ok(push::Pushed::Dropped);
            }
            // The daemon's config may lack the valve: this push's own still applies.
            Ok(HandoffReply::Failed { message }) => {
                return dropped_or(&settings, path, name, SenderError::Daemon(message))
            }
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
    match runtime.block_on(push::push(&settings, path, name)) {
        Err(e) => dropped_or(&settings, path, name, e),
        ok => ok,
    }
}

/// A failed push: dropped by the pg_wal valve (`max_backlog`; its one ERROR line printed, exit
/// 0), or the failure.
fn dropped_or(
    settings: &SenderSettings,
    path: &std::path::Path,
    name: &str,
    failure: SenderError,
) -> Result<push::Pushed, SenderError> {
    let message = valve::consider(settings, path, name, failure)?;
    // One line: it lands in PostgreSQL's log.
    eprintln!("walship-sender: {message}");
    Ok(push::Pushed::Dropped)
}

fn run_basebackup(
    config: Option<PathBuf>,
    opts: &basebackup::Options,
) -> Result<basebackup::Summary, SenderError> {
    let settings = SenderSettings::load(config::require(config.as_deref())?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| SenderError::Runtime { source })?;
    runtime.block_on(basebackup::run(&settings, opts))
}

/// `basebackup`'s exit code: 2 when the receiver refused its target before touching it, 1 for
/// anything else.
fn basebackup_code(e: &SenderError) -> u8 {
    use walship_common::proto::Refusal;
    match e {
        SenderError::BackupRefused {
            refusal:
                Refusal::TargetNotEmpty { .. }
                | Refusal::StandbyExists { .. }
                | Refusal::TargetRunning { .. }
                | Refusal::NoTarget,
            ..
        } => 2,
        _ => 1,
    }
}
