//! walship-packaging: renders the man pages and shell completions of `walship-receiver` and
//! `walship-sender` from their clap definitions, for the Debian package (deploy/build-deb.sh).
//!
//! Usage: `walship-packaging OUT_DIR`. Writes
//! - `OUT_DIR/man/walship-receiver.1`, `walship-receiver-serve.1`, ... (one page per program
//!   and per subcommand),
//! - `OUT_DIR/completions/walship-receiver.bash`, `_walship-receiver` (zsh),
//!   `walship-receiver.fish`, and the same for walship-sender.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: walship-packaging OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out)) {
        Ok(()) => {
            println!(
                "wrote man pages and completions under {}",
                Path::new(&out).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walship-packaging: {e}");
            ExitCode::from(1)
        }
    }
}

/// Both programs' man pages and completions under `out`.
fn generate(out: &Path) -> Result<(), String> {
    for cmd in [
        walship_receiver::cli::Cli::command(),
        walship_sender::cli::Cli::command(),
    ] {
        man_pages(cmd.clone(), &out.join("man"))?;
        completions(cmd, &out.join("completions"))?;
    }
    Ok(())
}

/// One page per program and subcommand (clap_mangen), then FILES and SEE ALSO appended to the
/// program's own page.
fn man_pages(cmd: clap::Command, dir: &Path) -> Result<(), String> {
    create_dir(dir)?;
    let name = cmd.get_name().to_string();
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display()))?;
    let page = dir.join(format!("{name}.1"));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&page)
        .map_err(|e| format!("cannot open {}: {e}", page.display()))?;
    file.write_all(trailer(&name).as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", page.display()))
}

/// Roff for the sections clap does not know: where the package puts the config and unit.
fn trailer(name: &str) -> String {
    let config = name.trim_start_matches("walship-");
    let other = if config == "receiver" {
        "walship\\-sender"
    } else {
        "walship\\-receiver"
    };
    format!(
        ".SH FILES\n.TP\n/etc/walship/{config}.toml\nConfiguration (TOML), given with \\fB\\-\\-config\\fR; \
         relative paths in it are resolved against its directory.\n.TP\n\
         /lib/systemd/system/{unit}.service\nThe systemd unit (installed, not enabled).\n\
         .SH SEE ALSO\n{other}(1), systemd.exec(5), and README.md in /usr/share/doc/walship.\n",
        unit = name,
    )
}

fn completions(mut cmd: clap::Command, dir: &Path) -> Result<(), String> {
    create_dir(dir)?;
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, dir).map_err(|e| {
            format!(
                "cannot write {shell} completion into {}: {e}",
                dir.display()
            )
        })?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pages_and_completions_for_both_programs() {
        let out = tempfile::tempdir().expect("temp dir");
        generate(out.path()).expect("generate");
        for page in [
            "walship-receiver.1",
            "walship-receiver-serve.1",
            "walship-receiver-restore.1",
            "walship-receiver-promote.1",
            "walship-sender.1",
            "walship-sender-push.1",
            "walship-sender-daemon.1",
        ] {
            let text = std::fs::read_to_string(out.path().join("man").join(page))
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".TH"), "{page} is not a man page: {text}");
        }
        let receiver = std::fs::read_to_string(out.path().join("man/walship-receiver.1"))
            .expect("receiver page");
        assert!(receiver.contains("restore_command"), "{receiver}");
        assert!(receiver.contains("WALSHIP_CONFIG"), "{receiver}");
        for file in [
            "walship-receiver.bash",
            "_walship-receiver",
            "walship-receiver.fish",
            "walship-sender.bash",
            "_walship-sender",
            "walship-sender.fish",
        ] {
            let text = std::fs::read_to_string(out.path().join("completions").join(file))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(
                text.contains("config") && text.contains("restore") == file.contains("receiver"),
                "{file}: {text}"
            );
        }
    }
}
