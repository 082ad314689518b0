//! Logging set-up shared by both programs: `tracing` to stderr (PostgreSQL's log, for the
//! commands it runs), no colours, filtered by `RUST_LOG` or the command's default level.

/// Install the subscriber; `default` is the level used when `RUST_LOG` is unset or invalid
/// (`serve` and `daemon` use info, the commands PostgreSQL runs warn).
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
