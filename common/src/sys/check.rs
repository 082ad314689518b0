//! The file side of `check`, shared by both programs: certificate files and the private key
//! judged as of now, and the paths of a PostgreSQL command resolved as PostgreSQL would run it
//! (relative to the data directory, links followed). The judgements are [`crate::check`]'s.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::check::{judge_validity, Resolver, Verdict};
use crate::sys::config::{self, ConfigError};
use crate::sys::tls;

/// The config file loaded with `load`: a line either way, the settings when they loaded.
pub fn settings<S>(
    path: Option<&Path>,
    load: impl FnOnce(&Path) -> Result<S, ConfigError>,
    note: &mut dyn FnMut(String, Verdict),
) -> Option<S> {
    let loaded = config::require(path).and_then(|p| Ok((p, load(p)?)));
    match loaded {
        Ok((path, settings)) => {
            note(
                format!("config {}", path.display()),
                Verdict::Ok(String::new()),
            );
            Some(settings)
        }
        Err(e) => {
            note("config".into(), Verdict::fail(e.to_string(), ""));
            None
        }
    }
}

/// The private key's line, then one per certificate of `certs`.
pub fn tls_files(
    key_path: &Path,
    certs: &[(&'static str, &Path)],
    note: &mut dyn FnMut(String, Verdict),
) {
    let (what, verdict) = key(key_path);
    note(what, verdict);
    for (what, verdict) in certificates(certs) {
        note(what, verdict);
    }
}

/// One line per certificate in each of `files` (`(what, path)`): valid now, not expiring within
/// [`crate::check::EXPIRY_WARNING`].
pub fn certificates(files: &[(&'static str, &Path)]) -> Vec<(String, Verdict)> {
    let now = SystemTime::now();
    let mut lines = Vec::new();
    for (what, path) in files {
        let label = format!("{what} {}", path.display());
        match tls::validity(what, path) {
            Ok(certs) => lines.extend(
                certs
                    .iter()
                    .map(|v| (label.clone(), judge_validity(v, now))),
            ),
            Err(e) => lines.push((label, Verdict::fail(e.to_string(), ""))),
        }
    }
    lines
}

/// The private key: readable by this user, not by group or others, a PEM key.
pub fn key(path: &Path) -> (String, Verdict) {
    let label = format!("private key {}", path.display());
    match tls::load_key(path) {
        Ok(_) => (label, Verdict::Ok("readable by its owner only".into())),
        Err(e) => (label, Verdict::fail(e.to_string(), "")),
    }
}

/// Resolves a command's program and config as PostgreSQL runs it: from its data directory
/// (`None` when unknown: relative paths then cannot be compared), following links.
pub struct PathResolver {
    pub data_dir: Option<PathBuf>,
    /// This program (`current_exe`) and this config, resolved.
    pub exe: PathBuf,
    pub config: PathBuf,
}

impl PathResolver {
    pub fn new(data_dir: Option<PathBuf>, config: &Path) -> PathResolver {
        let exe = std::env::current_exe().unwrap_or_default();
        PathResolver {
            data_dir,
            exe: resolve(&exe),
            config: resolve(&absolute(config)),
        }
    }

    fn in_data_dir(&self, path: &str) -> PathBuf {
        match &self.data_dir {
            Some(dir) => resolve(&dir.join(path)),
            None => PathBuf::from(path),
        }
    }
}

impl Resolver for PathResolver {
    fn program(&self, program: &str) -> (String, bool) {
        if !program.contains('/') {
            // Found through PostgreSQL's PATH, which check cannot see: the name must match.
            let same = self.exe.file_name().is_some_and(|n| n == program);
            return (format!("{program} (from PostgreSQL's PATH)"), same);
        }
        let path = self.in_data_dir(program);
        let same = path == self.exe;
        (path.display().to_string(), same)
    }

    fn config(&self, config: &str) -> (String, bool) {
        let path = self.in_data_dir(config);
        let same = path == self.config;
        (path.display().to_string(), same)
    }
}

/// An error with its causes on one line ("error connecting to server: Connection refused").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `path` with links resolved when it exists, as given otherwise.
fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
