//! Running commands as the PostgreSQL OS user, with a deadline and a record of what happened.
//!
//! `initdb` and `postgres` refuse to run as root, and `archive_command` / `restore_command` run as
//! the server's user, so every process a scenario starts (PostgreSQL tools and walship alike) runs
//! as `postgres` with a cleared environment. Output goes to anonymous temp files rather than pipes,
//! so a grandchild that keeps a descriptor open (a postmaster started by `pg_ctl`) cannot hang us.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Default deadline for one command: generous, a hung command must still end the test.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The OS account that processes run as.
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// False when the tests themselves do not run as root: then we run everything as ourselves.
    pub switch: bool,
}

impl OsUser {
    /// `postgres` from /etc/passwd when running as root; the current user otherwise.
    pub fn postgres() -> OsUser {
        // The owner of /proc/self is our effective uid: no `unsafe` getuid() needed.
        let me = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
        if me != 0 {
            let gid = fs::metadata("/proc/self").map(|m| m.gid()).unwrap_or(0);
            return OsUser {
                name: format!("uid {me}"),
                uid: me,
                gid,
                switch: false,
            };
        }
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4 && fields[0] == "postgres" {
                if let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) {
                    return OsUser {
                        name: "postgres".into(),
                        uid,
                        gid,
                        switch: true,
                    };
                }
            }
        }
        panic!(
            "the tests run as root, and initdb/postgres refuse root, but there is no `postgres` \
             user in /etc/passwd; install PostgreSQL (`apt-get install postgresql-15`) or run \
             `useradd --system --home /var/lib/postgresql postgres`"
        );
    }

    /// Give `path` to this user (no-op when not switching users).
    pub fn chown(&self, path: &Path) {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.name));
        }
    }
}

/// A command to run, built like `std::process::Command` but printable and bounded in time.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    timeout: Duration,
    user: Option<OsUser>,
    home: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<Path>) -> Cmd {
        Cmd {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout: DEFAULT_TIMEOUT,
            user: None,
            home: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    /// Run as `user`, with a cleared environment and HOME set to `home`.
    pub fn user(mut self, user: &OsUser, home: &Path) -> Cmd {
        self.user = Some(user.clone());
        self.home = Some(home.to_path_buf());
        self
    }

    /// The command line, shell-like, for messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            if k != "PATH" && k != "LANG" && k != "HOME" && k != "NO_COLOR" {
                s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
            }
        }
        s.push_str(&quote(self.program.as_os_str()));
        for a in &self.args {
            s.push(' ');
            s.push_str(&quote(a));
        }
        if let Some(u) = &self.user {
            s.push_str(&format!("   (as {})", u.name));
        }
        s
    }

    /// Spawn with output going to `stdout` and `stderr`.
    pub fn spawn_with(&self, stdout: Stdio, stderr: Stdio) -> Child {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(home) = &self.home {
            c.env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("LANG", "C.UTF-8")
                .env("NO_COLOR", "1")
                .env("HOME", home);
            // Debugging a scenario: `WALSHIP_TEST_RUST_LOG=debug cargo test ...` sets the
            // programs' RUST_LOG (their logs are in the scenario's directory).
            if let Ok(v) = std::env::var("WALSHIP_TEST_RUST_LOG") {
                c.env("RUST_LOG", v);
            }
        }
        if let Some(u) = &self.user {
            if u.switch {
                // Setting the uid as root also drops supplementary groups (std calls setgroups).
                c.uid(u.uid).gid(u.gid);
            }
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(cwd) = &self.cwd {
            c.current_dir(cwd);
        }
        c.spawn()
            .unwrap_or_else(|e| panic!("could not start `{}`: {e}", self.describe()))
    }

    /// Run to completion (or the deadline: then the child is killed and the test fails).
    pub fn run(&self) -> Output {
        self.run_watching(|_| {})
    }

    /// [`run`](Self::run), and the child's peak resident memory in KiB, sampled from
    /// `/proc/PID/status` (VmHWM) while it runs: the high-water mark only grows, so the last
    /// sample before it exits is its peak up to then.
    pub fn run_with_peak_rss(&self) -> (Output, u64) {
        let mut peak = 0;
        let out = self.run_watching(|pid| {
            if let Some(kib) = peak_rss_kib(pid) {
                peak = peak.max(kib);
            }
        });
        (out, peak)
    }

    /// [`run`](Self::run), calling `watch` with the child's pid every few milliseconds.
    fn run_watching(&self, watch: impl FnMut(u32)) -> Output {
        let mut out_file = tempfile::tempfile().expect("create temp file for stdout");
        let mut err_file = tempfile::tempfile().expect("create temp file for stderr");
        let started = Instant::now();
        let mut child = self.spawn_with(
            Stdio::from(out_file.try_clone().expect("dup stdout file")),
            Stdio::from(err_file.try_clone().expect("dup stderr file")),
        );
        let status = wait_deadline_watching(&mut child, self.timeout, watch);
        let elapsed = started.elapsed();
        let stdout = read_back(&mut out_file);
        let stderr = read_back(&mut err_file);
        match status {
            Some(status) => Output { command: self.describe(), status, stdout, stderr, elapsed },
            None => panic!(
                "command did not finish within {:?} and was killed:\n  {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.timeout,
                self.describe(),
                stdout,
                stderr
            ),
        }
    }
}

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// The exit code; a death by signal fails the test (the contract says exit codes only).
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(c) => c,
            None => panic!(
                "process died from signal {:?}\n{self}",
                self.status.signal()
            ),
        }
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panic with the whole story unless the command exited 0.
    pub fn assert_success(&self) -> &Output {
        assert!(self.status.success(), "command failed\n{self}");
        self
    }

    /// Panic with the whole story unless the command exited with `code`.
    pub fn assert_code(&self, code: i32) -> &Output {
        assert_eq!(self.code(), code, "unexpected exit code\n{self}");
        self
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  command: {}", self.command)?;
        writeln!(f, "  status:  {} (after {:.2?})", self.status, self.elapsed)?;
        writeln!(f, "  --- stdout ---")?;
        for l in self.stdout.lines().take(200) {
            writeln!(f, "  | {l}")?;
        }
        writeln!(f, "  --- stderr ---")?;
        for l in self.stderr.lines().take(200) {
            writeln!(f, "  | {l}")?;
        }
        Ok(())
    }
}

/// Wait for `child` until `timeout`; on expiry kill it and return None.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    wait_deadline_watching(child, timeout, |_| {})
}

/// [`wait_deadline`], calling `watch` with the child's pid before each poll.
fn wait_deadline_watching(
    child: &mut Child,
    timeout: Duration,
    mut watch: impl FnMut(u32),
) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let pid = child.id();
    loop {
        watch(pid);
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait for child {}: {e}", child.id()),
        }
    }
}

/// Peak resident memory (VmHWM) of a live process in KiB; `None` once it has exited.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Send SIGTERM to a process we started. Through `sh`'s builtin `kill`, so the crate needs no
/// `unsafe` and no procps.
pub fn terminate(pid: u32) {
    let _ = Command::new("/bin/sh")
        .args([
            "-c",
            "kill -TERM \"$1\" 2>/dev/null",
            "sh",
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Poll `probe` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of a text file (lossy), or a note why there are none.
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            let mut s = String::new();
            if start > 0 {
                s.push_str(&format!("  ... ({start} earlier lines)\n"));
            }
            for l in &lines[start..] {
                s.push_str("  | ");
                s.push_str(&strip_ansi(l));
                s.push('\n');
            }
            s
        }
        Err(e) => format!("  (cannot read: {e})\n"),
    }
}

/// Remove ANSI colour sequences (tracing colours its output unless told otherwise).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn read_back(file: &mut File) -> String {
    let mut buf = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:%,@+".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Every process in /proc: its pid and its /proc directory.
pub fn processes() -> impl Iterator<Item = (u32, PathBuf)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
}
