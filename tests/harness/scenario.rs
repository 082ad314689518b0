//! One scenario's world: a temp directory owned by the postgres user, the binaries it runs, and
//! the record that is printed when it fails.
//!
//! Every scenario gets its own directory under /tmp (short, because PostgreSQL's Unix socket path
//! must stay under ~100 bytes), its own ports and its own processes, so scenarios run in parallel
//! test threads. When a scenario panics, dropping it prints the commands it ran, the tail of every
//! `*.log` in its directory and the listing of every `archive*` directory, and keeps the directory.
//! `WALSHIP_KEEP_TEST_DIR=1` does the same for passing scenarios (run with `--nocapture`).

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::process::{tail, Cmd, OsUser, Output};

/// The walship binaries a scenario can run.
pub const WALSHIP_BINARIES: [&str; 2] = ["walship-sender", "walship-receiver"];

/// Lines of each log printed on failure.
const TAIL_LINES: usize = 60;

/// Shared handle to a scenario; clones refer to the same directory.
#[derive(Clone)]
pub struct Scenario(Arc<Inner>);

struct Inner {
    name: String,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    user: OsUser,
    pg_bindir: PathBuf,
    journal: Mutex<Vec<String>>,
}

impl Scenario {
    /// Create the scenario directory, owned by the postgres user, with the walship binaries in
    /// `bin/` (PostgreSQL's archive_command runs as postgres, which cannot read /root).
    pub fn new(name: &str) -> Scenario {
        let pg_bindir = pg_bindir();
        let walship_dir = walship_bin_dir();
        let user = OsUser::postgres();
        let prefix: String = name.chars().take(20).collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ws-{prefix}-"))
            .tempdir_in("/tmp")
            .expect("create scenario directory in /tmp");
        let path = dir.path().to_path_buf();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod scenario dir");
        user.chown(&path);
        let sc = Scenario(Arc::new(Inner {
            name: name.to_string(),
            dir: Some(dir),
            path,
            user,
            pg_bindir,
            journal: Mutex::new(Vec::new()),
        }));
        let bin = sc.mkdir("bin");
        for b in WALSHIP_BINARIES {
            let from = walship_dir.join(b);
            let to = bin.join(b);
            // A hard link is free; /tmp may be another file system, then copy.
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to)
                    .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
            }
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod binary");
        }
        sc
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn dir(&self) -> &Path {
        &self.0.path
    }

    /// `rel` inside the scenario directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.path.join(rel)
    }

    pub fn user(&self) -> &OsUser {
        &self.0.user
    }

    /// A walship binary, as copied into this scenario.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.path("bin").join(name)
    }

    /// A PostgreSQL program (`initdb`, `psql`, ...).
    pub fn pg_tool(&self, name: &str) -> PathBuf {
        self.0.pg_bindir.join(name)
    }

    /// Create `rel` (and parents) owned by the postgres user.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        self.0.user.chown(&p);
        p
    }

    /// Write `rel` (mode 0644, owned by postgres).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        self.write_at(&p, contents, 0o644);
        p
    }

    /// Write an absolute path with `mode`, owned by postgres.
    pub fn write_at(&self, p: &Path, contents: impl AsRef<[u8]>, mode: u32) {
        fs::write(p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        self.0.user.chown(p);
    }

    /// A command that runs as postgres, in the scenario directory, with a clean environment.
    pub fn cmd(&self, program: impl AsRef<Path>) -> Cmd {
        Cmd::new(program)
            .user(&self.0.user, &self.0.path)
            .cwd(&self.0.path)
    }

    /// Run `cmd` and note it in the journal printed on failure.
    pub fn run(&self, cmd: &Cmd) -> Output {
        let out = cmd.run();
        let mut entry = format!(
            "{}\n    -> {} after {:.2?}",
            out.command, out.status, out.elapsed
        );
        for l in out.stderr_lines().iter().take(5) {
            entry.push_str("\n    stderr| ");
            entry.push_str(l);
        }
        self.0
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
        out
    }

    /// Everything a reader needs to understand a failure.
    pub fn report(&self) -> String {
        self.0.report()
    }
}

impl Inner {
    fn report(&self) -> String {
        let mut s = format!(
            "\n===== scenario `{}` {}; its directory {} is kept =====\n",
            self.name,
            if thread::panicking() {
                "failed"
            } else {
                "report"
            },
            self.path.display()
        );
        s.push_str("--- commands run (latest last) ---\n");
        let journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        for e in journal.iter().rev().take(40).rev() {
            s.push_str("  $ ");
            s.push_str(e);
            s.push('\n');
        }
        drop(journal);
        let mut entries: Vec<PathBuf> = fs::read_dir(&self.path)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for p in &entries {
            if p.extension().is_some_and(|e| e == "log") && p.is_file() {
                s.push_str(&format!("--- tail of {} ---\n", p.display()));
                s.push_str(&tail(p, TAIL_LINES));
            }
        }
        for p in &entries {
            let is_archive = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("archive"));
            if is_archive && p.is_dir() {
                s.push_str(&format!("--- listing of {} ---\n", p.display()));
                s.push_str(&listing(p));
            }
        }
        s
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let keep = env::var_os("WALSHIP_KEEP_TEST_DIR").is_some();
        if thread::panicking() || keep {
            eprintln!("{}", self.report());
        }
        if thread::panicking() || keep {
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}

/// `name  size` for each entry of `dir`, sorted.
pub fn listing(dir: &Path) -> String {
    let mut names: Vec<(String, String)> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| {
                let size = e
                    .metadata()
                    .map(|m| {
                        format!(
                            "{} bytes, mode {:o}",
                            m.len(),
                            m.permissions().mode() & 0o7777
                        )
                    })
                    .unwrap_or_else(|e| e.to_string());
                (e.file_name().to_string_lossy().into_owned(), size)
            })
            .collect(),
        Err(e) => return format!("  (cannot list: {e})\n"),
    };
    names.sort();
    if names.is_empty() {
        return "  (empty)\n".into();
    }
    names.iter().map(|(n, s)| format!("  {n}  {s}\n")).collect()
}

/// Where PostgreSQL's server programs are: `WALSHIP_PG_BINDIR`, `pg_config --bindir`, or the
/// newest /usr/lib/postgresql/*/bin. Missing PostgreSQL fails the test: never a silent skip.
pub fn pg_bindir() -> PathBuf {
    if let Some(d) = env::var_os("WALSHIP_PG_BINDIR") {
        let d = PathBuf::from(d);
        assert!(
            d.join("initdb").is_file(),
            "WALSHIP_PG_BINDIR={} has no initdb; point it at PostgreSQL's bin directory",
            d.display()
        );
        return d;
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && d.join("initdb").is_file() {
            return d;
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = fs::read_dir("/usr/lib/postgresql") {
        for e in rd.filter_map(|e| e.ok()) {
            let bin = e.path().join("bin");
            let version = e.file_name().to_string_lossy().parse::<u32>().ok();
            if let (Some(v), true) = (version, bin.join("initdb").is_file()) {
                let newer = match &best {
                    Some((b, _)) => v > *b,
                    None => true,
                };
                if newer {
                    best = Some((v, bin));
                }
            }
        }
    }
    match best {
        Some((_, d)) => d,
        None => panic!(
            "PostgreSQL server binaries not found: the end-to-end tests need initdb, pg_ctl, \
             postgres, psql, pg_basebackup and pgbench. Install them with \
             `apt-get install postgresql-15` (Debian) or set WALSHIP_PG_BINDIR to their directory"
        ),
    }
}

/// Where the built walship binaries are: `WALSHIP_BIN_DIR`, else the target directory this test
/// binary was built into (so CARGO_TARGET_DIR and profiles are honoured).
pub fn walship_bin_dir() -> PathBuf {
    let has_all = |d: &Path| WALSHIP_BINARIES.iter().all(|b| d.join(b).is_file());
    if let Some(d) = env::var_os("WALSHIP_BIN_DIR") {
        let d = PathBuf::from(d);
        assert!(
            has_all(&d),
            "WALSHIP_BIN_DIR={} does not hold {WALSHIP_BINARIES:?}; run `cargo build --workspace --bins`",
            d.display()
        );
        return d;
    }
    let mut candidates = Vec::new();
    // target/debug/deps/e2e-<hash> -> target/debug
    if let Ok(exe) = env::current_exe() {
        if let Some(d) = exe.parent().and_then(Path::parent) {
            candidates.push(d.to_path_buf());
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let target = match env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    };
    candidates.push(target.join("debug"));
    for d in &candidates {
        if has_all(d) {
            return d.clone();
        }
    }
    panic!(
        "walship binaries {WALSHIP_BINARIES:?} not found in {candidates:?}: \
         run `cargo build --workspace --bins` first (or set WALSHIP_BIN_DIR)"
    );
}
