//! Driving the walship binaries: config files, `serve` as a background process, `push` and
//! `restore` as commands, and the receiver-log check.
//!
//! Config files are written next to the scenario directory's root and name their files with
//! paths relative to the config file, as an operator would (the contract resolves them against
//! the config file's directory, not the working directory).

use std::fs::{self, OpenOptions};
use std::io::Seek;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::certs::{CertSet, SERVER_NAME};
use crate::net::free_udp_port;
use crate::process::{strip_ansi, terminate, wait_deadline, wait_for, Cmd, Output};
use crate::scenario::Scenario;

/// How long `serve` may take to log "listening".
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `serve` may take to exit after SIGTERM (it lets uploads finish first).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for one push or restore: a push of 16 MiB on loopback takes well under a second.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Exit codes above this abort PostgreSQL's recovery; the contract forbids them.
pub const MAX_EXIT_CODE: i32 = 125;
/// Bytes in a WAL segment (the default `--wal-segsize`).
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Where a receiver is configured to listen and store.
#[derive(Debug, Clone)]
pub struct ReceiverSetup {
    /// The receiver.toml.
    pub config: PathBuf,
    pub archive_dir: PathBuf,
    /// `127.0.0.1:PORT` (UDP).
    pub addr: String,
}

/// Write `<scenario>/<name>.toml` for a receiver storing into `<scenario>/archive-<name>`
/// (created, owned by postgres), optionally pinned to the cluster in `pgdata`.
pub fn receiver_config(
    sc: &Scenario,
    name: &str,
    certs: &CertSet,
    pgdata: Option<&Path>,
) -> ReceiverSetup {
    let config = sc.path(&format!("{name}.toml"));
    let archive_rel = format!("archive-{name}");
    let archive_dir = sc.mkdir(&archive_rel);
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let base = sc.dir();
    let mut text = format!(
        "# walship e2e receiver `{name}`\nlisten = {}\narchive_dir = {}\ncert = {}\nkey = {}\nclient_ca = {}\n",
        toml_str(&addr),
        toml_str(&archive_rel),
        toml_path(base, &certs.server_cert()),
        toml_path(base, &certs.server_key()),
        toml_path(base, &certs.ca()),
    );
    if let Some(pgdata) = pgdata {
        text.push_str(&format!("pgdata = {}\n", toml_path(base, pgdata)));
    }
    sc.write_at(&config, text, 0o644);
    ReceiverSetup {
        config,
        archive_dir,
        addr,
    }
}

/// Write `<scenario>/<name>.toml` for a sender trusting `ca` and presenting `cert`/`key`.
pub fn sender_config(
    sc: &Scenario,
    name: &str,
    receiver_addr: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    connect_timeout: Option<&str>,
) -> PathBuf {
    let config = sc.path(&format!("{name}.toml"));
    let base = sc.dir();
    let mut text = format!(
        "# walship e2e sender `{name}`\nreceiver = {}\nserver_name = {}\nca = {}\ncert = {}\nkey = {}\n",
        toml_str(receiver_addr),
        toml_str(SERVER_NAME),
        toml_path(base, ca),
        toml_path(base, cert),
        toml_path(base, key),
    );
    if let Some(t) = connect_timeout {
        text.push_str(&format!("connect_timeout = {}\n", toml_str(t)));
    }
    sc.write_at(&config, text, 0o644);
    config
}

/// Append `keys` (TOML lines) to a config file written by the harness.
pub fn add_keys(config: &Path, keys: &str) {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .append(true)
        .open(config)
        .expect("open config");
    f.write_all(keys.as_bytes()).expect("append to config");
}

/// The usual sender for a receiver: trusts the set's CA, presents its client certificate.
pub fn sender_for(sc: &Scenario, name: &str, rx: &ReceiverSetup, certs: &CertSet) -> PathBuf {
    sender_config(
        sc,
        name,
        &rx.addr,
        &certs.ca(),
        &certs.client_cert(),
        &certs.client_key(),
        Some("5s"),
    )
}

/// `walship-receiver serve`, the usual [`Service`].
pub type Receiver = Service;

/// A long-running walship command (`walship-receiver serve`, `walship-sender daemon`) in the
/// background, logging to `<scenario>/<log_name>.log`.
pub struct Service {
    sc: Scenario,
    program: &'static str,
    subcommand: &'static str,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Start `walship-receiver serve` and wait until it logs "listening" (or fail with its log).
    pub fn spawn(sc: &Scenario, config: &Path, log_name: &str) -> Service {
        Service::spawn_command(sc, "walship-receiver", "serve", config, log_name)
    }

    /// Start `walship-sender daemon` and wait until it logs "listening".
    pub fn spawn_daemon(sc: &Scenario, config: &Path, log_name: &str) -> Service {
        Service::spawn_command(sc, "walship-sender", "daemon", config, log_name)
    }

    fn spawn_command(
        sc: &Scenario,
        program: &'static str,
        subcommand: &'static str,
        config: &Path,
        log_name: &str,
    ) -> Service {
        let log = sc.path(&format!("{log_name}.log"));
        let mut service = Service {
            sc: sc.clone(),
            program,
            subcommand,
            config: config.to_path_buf(),
            log,
            child: None,
        };
        service.start();
        service
    }

    fn what(&self) -> String {
        format!("{} {}", self.program, self.subcommand)
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start (again) after [`stop`](Self::stop); the log file is appended to.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.what());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let from = file.seek(std::io::SeekFrom::End(0)).unwrap_or(0) as usize;
        let cmd = self
            .sc
            .cmd(self.sc.bin(self.program))
            .arg("--config")
            .arg(&self.config)
            .arg(self.subcommand);
        let child = cmd.spawn_with(
            Stdio::null(),
            Stdio::from(file.try_clone().expect("dup the service log")),
        );
        self.child = Some(child);
        let started = Instant::now();
        let ready = wait_for(READY_TIMEOUT, || {
            let text = self.log_text();
            if text.get(from..).is_some_and(|t| t.contains("listening")) {
                return Some(Ok(()));
            }
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(Err(status)),
                _ => None,
            }
        });
        match ready {
            Some(Ok(())) => {}
            Some(Err(status)) => {
                self.child = None;
                panic!(
                    "`{}` exited with {status} before logging \"listening\"; its log:\n{}",
                    cmd.describe(),
                    crate::process::tail(&self.log, 40)
                )
            }
            None => panic!(
                "`{}` did not log \"listening\" within {:?} (after {:.1?}); its log:\n{}",
                cmd.describe(),
                READY_TIMEOUT,
                started.elapsed(),
                crate::process::tail(&self.log, 40)
            ),
        }
    }

    /// SIGKILL and reap: a crash. [`start`](Self::start) brings it back, appending to the log.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("service running");
        child.kill().expect("SIGKILL the service");
        child.wait().expect("reap the service");
    }

    /// SIGTERM, then wait: the service must exit 0 on a signal.
    pub fn stop(&mut self) {
        if let Some(status) = self.terminate() {
            assert!(
                status.code() == Some(0),
                "{} exited with {status} after SIGTERM (expected 0); log:\n{}",
                self.what(),
                crate::process::tail(&self.log, 40)
            );
        }
    }

    /// Stop, then fail on ERROR/WARN lines in the log that match none of `allowed`
    /// (case-insensitive substrings).
    pub fn stop_and_check(mut self, allowed: &[&str]) {
        self.stop();
        self.check_log(allowed);
    }

    /// Fail on ERROR/WARN (or panic) lines in the log that match none of `allowed`.
    pub fn check_log(&self, allowed: &[&str]) {
        let unexpected = unexpected_lines(&self.log_text(), allowed);
        assert!(
            unexpected.is_empty(),
            "unexpected ERROR/WARN lines in the {} log {} (allowed: {allowed:?}):\n{}",
            self.what(),
            self.log.display(),
            unexpected.join("\n")
        );
    }

    /// Require a line in the log containing `needle` (case-insensitive): the receiver's side of
    /// a refusal the sender reported.
    pub fn assert_logged(&self, needle: &str) {
        let log = self.log_text();
        let lower = needle.to_lowercase();
        assert!(
            log.lines().any(|l| l.to_lowercase().contains(&lower)),
            "the receiver log {} has no line containing {needle:?}:\n{}",
            self.log.display(),
            crate::process::tail(&self.log, 40)
        );
    }

    /// The log so far, without colour codes.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| strip_ansi(&String::from_utf8_lossy(&b)))
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        terminate(child.id());
        match wait_deadline(&mut child, STOP_TIMEOUT) {
            Some(status) => Some(status),
            None => panic!(
                "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed; log:\n{}",
                self.what(),
                crate::process::tail(&self.log, 40)
            ),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id());
            if wait_deadline(&mut child, STOP_TIMEOUT).is_none() {
                eprintln!("{} ignored SIGTERM; killed it", self.what());
            }
        }
    }
}

/// Log lines at ERROR or WARN (or a panic) that match none of `allowed`.
pub fn unexpected_lines(log: &str, allowed: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| is_error_or_warn(l))
        .filter(|l| {
            let lower = l.to_lowercase();
            !allowed.iter().any(|a| lower.contains(&a.to_lowercase()))
        })
        .map(str::to_string)
        .collect()
}

fn is_error_or_warn(line: &str) -> bool {
    let leveled = line.split_whitespace().take(4).any(|t| {
        let t = t.trim_matches(|c: char| !c.is_ascii_alphabetic());
        t == "ERROR" || t == "WARN" || t == "WARNING"
    });
    leveled
        || line.contains("\"level\":\"ERROR\"")
        || line.contains("\"level\":\"WARN\"")
        || line.contains("panicked at")
}

/// `walship-sender --config CONFIG push PATH NAME`.
pub fn push(sc: &Scenario, config: &Path, path: &Path, name: &str) -> Output {
    push_with_env(sc, config, path, name, &[])
}

/// [`push`] with extra environment variables (for example `RUST_LOG`).
pub fn push_with_env(
    sc: &Scenario,
    config: &Path,
    path: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> Output {
    checked(sc.run(&push_command(sc, config, path, name, env)))
}

/// [`push_with_env`], and the push process's peak resident memory in KiB.
pub fn push_with_peak_rss(
    sc: &Scenario,
    config: &Path,
    path: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> (Output, u64) {
    let (out, peak) = push_command(sc, config, path, name, env).run_with_peak_rss();
    (checked(out), peak)
}

fn push_command(
    sc: &Scenario,
    config: &Path,
    path: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> Cmd {
    let mut cmd = sc.cmd(sc.bin("walship-sender"));
    for (key, value) in env {
        cmd = cmd.env(key, value);
    }
    cmd.arg("--config")
        .arg(config)
        .arg("push")
        .arg(path)
        .arg(name)
        .timeout(COMMAND_TIMEOUT)
}

/// Push and require exit 0 with nothing on stderr (PostgreSQL's log gets nothing per success).
pub fn assert_pushed(sc: &Scenario, config: &Path, path: &Path, name: &str) -> Output {
    let out = push(sc, config, path, name);
    out.assert_code(0);
    assert!(
        out.stderr_lines().is_empty(),
        "a successful push printed to stderr\n{out}"
    );
    out
}

/// Require a push refusal: exit 1 and exactly one stderr line starting "walship-sender: " that
/// contains (case-insensitively) at least one of `any_of` (when non-empty).
pub fn assert_refused(out: &Output, any_of: &[&str]) {
    out.assert_code(1);
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "a failed push must print exactly one stderr line\n{out}"
    );
    assert!(
        lines[0].starts_with("walship-sender: "),
        "the stderr line must start with \"walship-sender: \"\n{out}"
    );
    let lower = lines[0].to_lowercase();
    assert!(
        any_of.is_empty() || any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
        "the stderr line should mention one of {any_of:?}\n{out}"
    );
}

/// `walship-receiver --config CONFIG restore NAME PATH`.
pub fn restore(sc: &Scenario, config: &Path, name: &str, dest: &Path) -> Output {
    let cmd = sc
        .cmd(sc.bin("walship-receiver"))
        .arg("--config")
        .arg(config)
        .arg("restore")
        .arg(name)
        .arg(dest)
        .timeout(COMMAND_TIMEOUT);
    checked(sc.run(&cmd))
}

/// The names in an archive directory, sorted.
pub fn archive_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Archive entries other than walship's own state files (`walship.cluster`, the cluster pin, and
/// other `walship.*` records): what was archived.
pub fn archived_files(dir: &Path) -> Vec<String> {
    archive_names(dir)
        .into_iter()
        .filter(|n| !n.starts_with("walship."))
        .collect()
}

/// The contract's exit-code ceiling holds for every walship command.
fn checked(out: Output) -> Output {
    let code = out.code();
    assert!(
        (0..=MAX_EXIT_CODE).contains(&code),
        "exit code {code} is outside 0..={MAX_EXIT_CODE} (codes above 125 abort PostgreSQL recovery)\n{out}"
    );
    out
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path as a TOML string, relative to `base` (the config file's directory) when inside it.
fn toml_path(base: &Path, p: &Path) -> String {
    match p.strip_prefix(base) {
        Ok(rel) if !rel.as_os_str().is_empty() => toml_str(&rel.to_string_lossy()),
        _ => toml_str(&p.to_string_lossy()),
    }
}
