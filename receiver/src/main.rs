//! walship-receiver: the standby side of walship.
//!
//! Exit codes (all below 126: higher ones make PostgreSQL abort recovery):
//! - `serve`: 0 clean shutdown after a signal, 1 could not start or a task failed.
//! - `restore`: 0 copied, 1 not in the archive (nothing on stderr), 2 any other error.
//! - `cleanup`: 0 done (also with nothing to remove), 2 `%r` is not a WAL file name (nothing
//!   removed), 1 any other failure.
//! - `status`: 0 healthy, 1 a problem (each named) or the status could not be gathered.
//! - `check`: 0 no check failed (warnings allowed), 1 otherwise.
//! - other commands: 0 success, 1 failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use walship_common::sys::config::{self, ReceiverSettings};

use walship_receiver::cli::{Cli, Command};
use walship_receiver::error::ReceiverError;
use walship_receiver::{certs, check, cleanup, promote, restore, serve, status};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            walship_common::sys::logging::init("info");
            match serve_main(cli.config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Restore {
            cluster,
            name,
            path,
        } => {
            // restore_command runs once per WAL file: no logging set-up unless asked for
            // (RUST_LOG); its errors go to stderr directly.
            if std::env::var_os("RUST_LOG").is_some() {
                walship_common::sys::logging::init("warn");
            }
            let result = settings(cli.config, cluster.as_deref())
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
        Command::Promote {
            cluster,
            timeout,
            no_wait_replay,
            accept_gap,
        } => {
            walship_common::sys::logging::init("warn");
            let opts = promote::Options {
                timeout,
                no_wait_replay,
                accept_gap,
            };
            let result = settings(cli.config, cluster.as_deref())
                .and_then(|s| runtime().and_then(|rt| rt.block_on(promote::promote(&s, &opts))));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Status {
            cluster,
            json,
            max_age,
        } => {
            walship_common::sys::logging::init("warn");
            let result = settings(cli.config, cluster.as_deref())
                .and_then(|s| runtime().and_then(|rt| rt.block_on(status::gather(&s, max_age))));
            match result {
                Ok(st) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&st).expect("plain data serialises")
                        );
                    } else {
                        status::print_human(&st);
                    }
                    ExitCode::from(if st.healthy { 0 } else { 1 })
                }
                Err(e) => fail(&e),
            }
        }
        Command::Cleanup {
            cluster,
            dry_run,
            restart,
        } => {
            // Run by PostgreSQL after each restartpoint: its own lines only, unless RUST_LOG asks.
            if std::env::var_os("RUST_LOG").is_some() {
                walship_common::sys::logging::init("warn");
            }
            ExitCode::from(cleanup::command(
                cli.config.as_deref(),
                cluster.as_deref(),
                &restart,
                dry_run,
            ))
        }
        Command::Check { cluster } => {
            walship_common::sys::logging::init("warn");
            ExitCode::from(check::command(cli.config.as_deref(), cluster.as_deref()))
        }
        Command::Certs {
            dir,
            server_name,
            client_name,
        } => {
            walship_common::sys::logging::init("warn");
            let result = match (server_name, client_name) {
                (_, Some(client)) => certs::client_certificate(&dir, &client),
                (Some(server), None) => certs::certs(&dir, &server),
                (None, None) => unreachable!("clap requires --server-name or --client-name"),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&ReceiverError::Tls(e)),
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ReceiverError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReceiverError::Task(e.to_string()))
}

/// The settings of the cluster `--cluster` names (required when several are configured).
fn settings(
    config: Option<PathBuf>,
    cluster: Option<&str>,
) -> Result<ReceiverSettings, ReceiverError> {
    Ok(ReceiverSettings::load_cluster(
        config::require(config.as_deref())?,
        cluster,
    )?)
}

fn fail(e: &ReceiverError) -> ExitCode {
    eprintln!("walship-receiver: {e}");
    ExitCode::from(1)
}

fn serve_main(config: Option<PathBuf>) -> Result<(), ReceiverError> {
    // Every cluster configured: serve stores for each (see serve::run).
    let settings = ReceiverSettings::load_all(config::require(config.as_deref())?)?;
    fixed_mmap_threshold();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| ReceiverError::Task(e.to_string()))?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        // Installed before serve starts (and tells systemd it is ready), so a SIGTERM right
        // after READY=1 shuts down cleanly instead of killing the process.
        let signals = signals()?;
        tokio::spawn(async move {
            wait_for_signal(signals).await;
            trigger.cancel();
        });
        serve::run(settings, shutdown).await
    })
}

/// Have glibc serve allocations of 1 MiB and more (the zstd decoder's 2 MiB window) straight
/// from mmap and give them back on free. By default the threshold rises to the size of the
/// largest block freed, after which every upload's window comes from one of up to 16 malloc
/// arenas (one per blocking thread) that keep it: measured, 64 uploads in a burst then peaked
/// at 73 MiB instead of 34.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before the runtime (and
    // any other thread) starts.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

fn signals() -> Result<Signals, ReceiverError> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate())
        .map_err(|e| ReceiverError::Task(format!("install the SIGTERM handler: {e}")))?;
    let int = signal(SignalKind::interrupt())
        .map_err(|e| ReceiverError::Task(format!("install the SIGINT handler: {e}")))?;
    Ok((term, int))
}

async fn wait_for_signal((mut term, mut int): Signals) {
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("received {which}");
}
