//! Base backups (`walship-sender basebackup`), the decisions on both sides, on bytes and names.
//!
//! The sender reads the primary's data directory itself between `pg_backup_start` and
//! `pg_backup_stop` (PostgreSQL's non-exclusive low-level API), skipping what PostgreSQL's
//! documentation ("Making a Base Backup Using the Low Level API") and its own `basebackup.c`
//! skip: the contents of `pg_wal` (the standby restores WAL from the archive), of
//! `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_stat_tmp` and
//! `pg_subtrans` (recreated at start), `postmaster.pid`/`postmaster.opts`, temp files
//! (`pgsql_tmp*`, temp relations `t<n>_<n>`), relcache init files (`pg_internal.init`) and the
//! files of a previous recovery (`backup_label`, `tablespace_map`, `standby.signal`,
//! `recovery.signal`). A top-level `walship/` directory (sender state) is skipped too.
//!
//! Names arrive at the receiver from the network: [`BackupPath::parse`] admits only plain
//! relative paths (no `..`, no absolute path, no empty or `.` component, no NUL, bounded
//! lengths) and none of the names the receiver writes itself, so a hostile sender can never
//! write outside the target nor pre-empt the files that make the target a standby. The receiver
//! creates no symbolic link, so once the target was empty no component can be one.
//!
//! Until the very end the target is not a standby: `global/pg_control` is held under
//! [`HELD_CONTROL`] (PostgreSQL refuses to start without `global/pg_control`), and the marker
//! [`MARKER`] names the unfinished backup. [`TargetState`] and [`decide`] say what a new backup
//! may do with what the target holds.

use std::fmt::Write as _;

/// The marker naming an unfinished backup, at the top of the target.
pub const MARKER: &str = "walship-basebackup.unfinished";
/// Where `global/pg_control` waits until the backup is complete.
pub const HELD_CONTROL: &str = "global/pg_control.walship-pending";
/// The control file, sent last by the sender and held by the receiver.
pub const CONTROL: &str = "global/pg_control";
/// Longest path accepted (PostgreSQL's MAXPGPATH is 1024).
pub const MAX_PATH_BYTES: usize = 1024;
/// Deepest path accepted: `base/<db>/<file>` is three; 16 leaves room for anything real.
pub const MAX_DEPTH: usize = 16;
/// Largest single file accepted: PostgreSQL's relation segments are 1 GiB unless built with
/// another RELSEG_SIZE; 64 GiB bounds a hostile announcement without refusing such builds.
pub const MAX_FILE_BYTES: u64 = 64 << 30;
/// Largest `backup_label` accepted (PostgreSQL's is a few hundred bytes).
pub const MAX_LABEL_BYTES: usize = 2048;

/// Directories whose contents are skipped (the directory itself is kept, empty).
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
/// Top-level files never copied.
const SKIP_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "standby.signal",
    "recovery.signal",
    "recovery.conf",
    "postgresql.auto.conf.tmp",
    "current_logfiles",
    MARKER,
];
/// Names the receiver writes itself and a sender may never send.
const RESERVED: &[&str] = &[
    "backup_label",
    "tablespace_map",
    "standby.signal",
    "recovery.signal",
    "postmaster.pid",
    MARKER,
    HELD_CONTROL,
];

/// What the sender does with one entry of the data directory (its path relative to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Copy it (a file), or copy it and its contents (a directory).
    Copy,
    /// A directory kept empty on the standby (`pg_wal`, `pg_replslot`, ...).
    EmptyDir,
    /// Not copied at all.
    Skip,
}

/// Whether and how to copy `rel` (relative to pgdata, `/`-separated; `is_dir` from lstat or,
/// for a followed link, stat).
pub fn walk(rel: &str, is_dir: bool) -> Walk {
    let parts: Vec<&str> = rel.split('/').collect();
    let name = parts.last().copied().unwrap_or("");
    if parts.len() == 1 {
        // walship's own state on the primary (the pg_wal valve's record of dropped segments,
        // `state_dir`'s default): it belongs to this primary, not to its standby.
        if is_dir && (name == "walship" || name == crate::DEFAULT_SENDER_STATE_SUBDIR) {
            return Walk::Skip;
        }
        if is_dir && EMPTY_DIRS.contains(&name) {
            return Walk::EmptyDir;
        }
        if !is_dir && SKIP_TOP_FILES.contains(&name) {
            return Walk::Skip;
        }
    }
    // pg_wal/archive_status is recreated empty (PostgreSQL needs it for archiving).
    if parts.len() == 2 && parts[0] == "pg_wal" {
        return if is_dir && name == "archive_status" {
            Walk::EmptyDir
        } else {
            Walk::Skip
        };
    }
    if parts.len() >= 2 && EMPTY_DIRS.contains(&parts[0]) {
        return Walk::Skip;
    }
    if name.starts_with("pgsql_tmp") || name == "pg_internal.init" {
        return Walk::Skip;
    }
    if !is_dir && parts.len() == 3 && parts[0] == "base" && is_temp_relation(name) {
        return Walk::Skip;
    }
    Walk::Copy
}

/// `t<digits>_<digits>` with an optional `_<fork>` or `.<segment>`: a temporary relation,
/// which no session on the standby can use (basebackup.c skips them too).
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, rel)) = rest.split_once('_') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let rel = rel.split(['_', '.']).next().unwrap_or("");
    digits(backend) && digits(rel)
}

/// A path inside the target, as sent by a sender: checked, `/`-separated, relative.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupPath(String);

/// Why a path from the wire is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("{0:?} component")]
    BadComponent(String),
    #[error("contains NUL")]
    Nul,
    #[error("longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("deeper than {MAX_DEPTH} directories")]
    TooDeep,
    #[error("{0} is written by the receiver itself, never sent")]
    Reserved(String),
}

impl BackupPath {
    pub fn parse(s: &str) -> Result<BackupPath, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if s.contains('\0') {
            return Err(PathError::Nul);
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute);
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        for p in &parts {
            if p.is_empty() || *p == "." || *p == ".." || p.starts_with(".walship-tmp.") {
                return Err(PathError::BadComponent(p.to_string()));
            }
        }
        if RESERVED.contains(&s) {
            return Err(PathError::Reserved(s.to_string()));
        }
        Ok(BackupPath(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Where the receiver writes this file: the control file is held until the end.
    pub fn stored_as(&self) -> &str {
        if self.0 == CONTROL {
            HELD_CONTROL
        } else {
            &self.0
        }
    }
}

impl std::fmt::Display for BackupPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the target data directory holds when a backup begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Absent,
    Empty,
    /// A backup that did not finish ([`MARKER`] present).
    Unfinished,
    /// A PostgreSQL data directory (`PG_VERSION`) with no marker: a finished standby.
    Cluster,
    /// `postmaster.pid`: PostgreSQL may be running there.
    Running,
    /// Something else.
    Other,
}

impl TargetState {
    /// From the top-level names in the target (`None`: it does not exist).
    pub fn classify(names: Option<&[String]>) -> TargetState {
        let Some(names) = names else {
            return TargetState::Absent;
        };
        let has = |n: &str| names.iter().any(|x| x == n);
        if names.is_empty() {
            TargetState::Empty
        } else if has("postmaster.pid") {
            TargetState::Running
        } else if has(MARKER) {
            TargetState::Unfinished
        } else if has("PG_VERSION") {
            TargetState::Cluster
        } else {
            TargetState::Other
        }
    }
}

/// What a new backup does with the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Create the directory.
    Create,
    /// Use it as it is (empty).
    Use,
    /// Remove its contents first (an unfinished backup, or a cluster with `--force`).
    Replace,
}

/// Why the target cannot take a backup; the receiver words it with the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRefusal {
    /// A finished standby (or another cluster) and no `--force`.
    Cluster,
    Running,
    /// Not empty and not a data directory walship would replace.
    NotEmpty,
}

pub fn decide(state: TargetState, force: bool) -> Result<Decision, TargetRefusal> {
    match state {
        TargetState::Absent => Ok(Decision::Create),
        TargetState::Empty => Ok(Decision::Use),
        TargetState::Unfinished => Ok(Decision::Replace),
        TargetState::Cluster if force => Ok(Decision::Replace),
        TargetState::Cluster => Err(TargetRefusal::Cluster),
        TargetState::Running => Err(TargetRefusal::Running),
        TargetState::Other => Err(TargetRefusal::NotEmpty),
    }
}

/// The marker's content: which backup, of which cluster, since when (for `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub label: String,
    pub system_id: u64,
    /// RFC 3339, to the second.
    pub started: String,
}

impl Marker {
    pub fn encode(&self) -> String {
        format!(
            "# An unfinished walship base backup: PostgreSQL must not start here.\n\
             # Run walship-sender basebackup again to replace it.\n\
             label={}\nsystem_identifier={}\nstarted={}\n",
            one_line(&self.label),
            self.system_id,
            one_line(&self.started)
        )
    }

    /// Lenient: a marker is advisory text; missing fields stay empty.
    pub fn parse(text: &str) -> Marker {
        let mut m = Marker {
            label: String::new(),
            system_id: 0,
            started: String::new(),
        };
        for line in text.lines() {
            match line.split_once('=') {
                Some(("label", v)) => m.label = v.to_string(),
                Some(("system_identifier", v)) => m.system_id = v.parse().unwrap_or(0),
                Some(("started", v)) => m.started = v.to_string(),
                _ => {}
            }
        }
        m
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The lines appended to the standby's `postgresql.auto.conf`: `restore_command` and
/// `archive_cleanup_command` running `program` with `--config config`.
pub fn standby_settings(program: &str, config: &str) -> String {
    let run = format!("{} --config {}", shell_word(program), shell_word(config));
    let mut out = String::new();
    out.push_str(
        "# Added by walship basebackup: this standby restores WAL from walship's archive.\n",
    );
    let _ = writeln!(
        out,
        "restore_command = '{}'",
        conf_escape(&format!("{run} restore %f %p"))
    );
    let _ = writeln!(
        out,
        "archive_cleanup_command = '{}'",
        conf_escape(&format!("{run} cleanup %r"))
    );
    out
}

/// A word for `sh -c`: as it is when it holds only safe characters, else single-quoted.
fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:,@=".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A value inside single quotes in postgresql.conf: quotes doubled.
fn conf_escape(s: &str) -> String {
    s.replace('\'', "''")
}

/// A backup label safe to put in SQL and files: printable ASCII, at most 100 bytes
/// (pg_backup_start's limit is MAXPGPATH; short keeps logs readable).
pub fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 100
        && label
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'\'')
}

/// Rounded MB/s (10^6 bytes) for `bytes` in `secs`, as the summary prints it.
pub fn mb_per_sec(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 / 1e6 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_what_postgresql_says_to_skip() {
        for (rel, dir, want) in [
            ("base", true, Walk::Copy),
            ("base/1/1259", false, Walk::Copy),
            ("base/1/t3_16384", false, Walk::Skip),
            ("base/1/t3_16384_fsm", false, Walk::Skip),
            ("base/1/t3_16384.1", false, Walk::Skip),
            ("base/1/t3x", false, Walk::Copy),
            ("global/pg_control", false, Walk::Copy),
            ("global/pg_internal.init", false, Walk::Skip),
            ("pg_wal", true, Walk::EmptyDir),
            ("pg_wal/archive_status", true, Walk::EmptyDir),
            ("pg_wal/000000010000000000000001", false, Walk::Skip),
            (
                "pg_wal/archive_status/000000010000000000000001.ready",
                false,
                Walk::Skip,
            ),
            ("pg_replslot", true, Walk::EmptyDir),
            ("pg_replslot/slot1", true, Walk::Skip),
            ("pg_stat_tmp/global.stat", false, Walk::Skip),
            ("pg_subtrans/0000", false, Walk::Skip),
            ("pg_notify", true, Walk::EmptyDir),
            ("pg_xact/0000", false, Walk::Copy),
            ("postmaster.pid", false, Walk::Skip),
            ("postmaster.opts", false, Walk::Skip),
            ("backup_label", false, Walk::Skip),
            ("standby.signal", false, Walk::Skip),
            ("recovery.signal", false, Walk::Skip),
            ("tablespace_map", false, Walk::Skip),
            ("postgresql.auto.conf", false, Walk::Copy),
            ("base/pgsql_tmp", true, Walk::Skip),
            ("base/pgsql_tmp/pgsql_tmp123.0", false, Walk::Skip),
            ("walship", true, Walk::Skip),
            ("walship_sender", true, Walk::Skip),
            ("base/1/walship", false, Walk::Copy),
            ("log/postgresql.log", false, Walk::Copy),
        ] {
            assert_eq!(walk(rel, dir), want, "{rel}");
        }
    }

    #[test]
    fn paths_from_the_wire_stay_inside_the_target() {
        for good in [
            "base/1/1259",
            "PG_VERSION",
            "global/pg_control",
            "pg_wal/archive_status",
        ] {
            assert_eq!(BackupPath::parse(good).unwrap().as_str(), good);
        }
        let deep = vec!["a"; MAX_DEPTH + 1].join("/");
        let long = "a".repeat(MAX_PATH_BYTES + 1);
        for (bad, want) in [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::BadComponent("..".into())),
            ("base/../../x", PathError::BadComponent("..".into())),
            ("base/./x", PathError::BadComponent(".".into())),
            ("base//x", PathError::BadComponent("".into())),
            ("base/", PathError::BadComponent("".into())),
            ("a\0b", PathError::Nul),
            (deep.as_str(), PathError::TooDeep),
            (long.as_str(), PathError::TooLong),
            ("backup_label", PathError::Reserved("backup_label".into())),
            (
                "standby.signal",
                PathError::Reserved("standby.signal".into()),
            ),
            (MARKER, PathError::Reserved(MARKER.into())),
            (HELD_CONTROL, PathError::Reserved(HELD_CONTROL.into())),
            (
                "base/.walship-tmp.x.1.2",
                PathError::BadComponent(".walship-tmp.x.1.2".into()),
            ),
        ] {
            assert_eq!(BackupPath::parse(bad), Err(want), "{bad:?}");
        }
        // Not reserved below the top: only the receiver's own top-level names are.
        assert!(BackupPath::parse("base/backup_label").is_ok());
        let control = BackupPath::parse(CONTROL).unwrap();
        assert_eq!(control.stored_as(), HELD_CONTROL);
        assert_eq!(
            BackupPath::parse("base/1/2")
                .unwrap()
                .components()
                .collect::<Vec<_>>(),
            ["base", "1", "2"]
        );
    }

    #[test]
    fn a_target_is_replaced_only_when_unfinished_or_forced() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let state = |v: &[&str]| TargetState::classify(Some(&names(v)));
        assert_eq!(TargetState::classify(None), TargetState::Absent);
        assert_eq!(state(&[]), TargetState::Empty);
        assert_eq!(
            state(&["PG_VERSION", "base", MARKER]),
            TargetState::Unfinished
        );
        assert_eq!(state(&["PG_VERSION", "base"]), TargetState::Cluster);
        assert_eq!(
            state(&["PG_VERSION", "postmaster.pid", MARKER]),
            TargetState::Running
        );
        assert_eq!(state(&["notes.txt"]), TargetState::Other);

        assert_eq!(decide(TargetState::Absent, false), Ok(Decision::Create));
        assert_eq!(decide(TargetState::Empty, false), Ok(Decision::Use));
        assert_eq!(
            decide(TargetState::Unfinished, false),
            Ok(Decision::Replace)
        );
        assert_eq!(
            decide(TargetState::Cluster, false),
            Err(TargetRefusal::Cluster)
        );
        assert_eq!(decide(TargetState::Cluster, true), Ok(Decision::Replace));
        assert_eq!(
            decide(TargetState::Running, true),
            Err(TargetRefusal::Running)
        );
        assert_eq!(
            decide(TargetState::Other, true),
            Err(TargetRefusal::NotEmpty)
        );
    }

    #[test]
    fn the_marker_round_trips_and_stays_line_based() {
        let m = Marker {
            label: "walship\nbasebackup".into(),
            system_id: 7301,
            started: "2026-12-02T10:00:00Z".into(),
        };
        let text = m.encode();
        let back = Marker::parse(&text);
        assert_eq!(back.label, "walship basebackup");
        assert_eq!(back.system_id, 7301);
        assert_eq!(back.started, m.started);
        assert_eq!(Marker::parse("garbage").system_id, 0);
    }

    #[test]
    fn standby_settings_quote_for_the_shell_and_the_config_file() {
        let s = standby_settings("/usr/bin/walship-receiver", "/etc/walship/receiver.toml");
        assert!(s.contains(
            "restore_command = '/usr/bin/walship-receiver --config /etc/walship/receiver.toml restore %f %p'"
        ), "{s}");
        assert!(s.contains(
            "archive_cleanup_command = '/usr/bin/walship-receiver --config /etc/walship/receiver.toml cleanup %r'"
        ), "{s}");
        let odd = standby_settings("/opt/my bin/walship-receiver", "/etc/it's.toml");
        assert!(odd.contains(
            "restore_command = '''/opt/my bin/walship-receiver'' --config ''/etc/it''\\''''s.toml'' restore %f %p'"
        ), "{odd}");
    }

    #[test]
    fn labels_and_rates() {
        assert!(label_ok("walship basebackup 2026-12-02T10:00:00Z"));
        assert!(!label_ok("it's"));
        assert!(!label_ok(""));
        assert!(!label_ok("a\nb"));
        assert_eq!(mb_per_sec(10_000_000, 2.0), 5.0);
        assert_eq!(mb_per_sec(1, 0.0), 0.0);
    }
}
