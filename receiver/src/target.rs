//! The standby's data directory (`pgdata` in receiver.toml) as the target of a base backup
//! (`walship-sender basebackup`). The sender never chooses a path on this host: it names files
//! relative to the target, checked by [`BackupPath`].
//!
//! Until the very end the target is not a standby PostgreSQL would start: `global/pg_control`
//! is held under [`HELD_CONTROL`] (PostgreSQL refuses to start without it) and [`MARKER`]
//! names the unfinished backup. At the end, in this order: `backup_label`, `standby.signal`
//! and the restore settings in `postgresql.auto.conf` are written durably, then
//! `global/pg_control` is renamed into place (the commit point), then the marker is removed.
//! A backup interrupted anywhere before the rename leaves a target PostgreSQL refuses; after
//! it, a complete standby still marked unfinished, which `status` reports and a new
//! `basebackup` replaces.
//!
//! Every file is written through the durable helper (temp file, fsync, link, fsync directory);
//! every directory created is synced into its parent. The receiver never creates a symbolic
//! link, and a target is only used once empty, so no path component can be one.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{info, warn};
use walship_common::basebackup::{
    decide, standby_settings, BackupPath, Decision, Marker, TargetRefusal, TargetState,
    HELD_CONTROL, MARKER, MAX_LABEL_BYTES,
};
use walship_common::proto::Refusal;
use walship_common::sys::durable::{self, DurableError, Published, TempFile};
use walship_common::{SystemId, WalFileName};

use crate::store::{storage_refusal, Archive};

/// Mode of the target and the directories made in it: PostgreSQL requires 0700 (or 0750).
const DIR_MODE: u32 = 0o700;
/// Mode of the files the receiver writes itself.
const FILE_MODE: u32 = 0o600;

/// The base backup target of one `serve`.
pub struct Target {
    dir: Option<PathBuf>,
    /// This walship-receiver and its config, for restore_command and archive_cleanup_command.
    program: PathBuf,
    config: PathBuf,
    session: Mutex<Option<Session>>,
}

/// The backup in progress.
struct Session {
    id: u64,
    system_id: SystemId,
    files: u64,
    bytes: u64,
    conn: quinn::Connection,
}

impl Target {
    pub fn new(dir: Option<PathBuf>, program: PathBuf, config: PathBuf) -> Target {
        Target {
            dir,
            program,
            config,
            session: Mutex::new(None),
        }
    }

    /// The target's path as the operator wrote it (for messages).
    pub fn path(&self) -> String {
        self.dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    }

    fn dir(&self) -> Result<&Path, Refusal> {
        self.dir.as_deref().ok_or(Refusal::NoTarget)
    }

    /// Start backup `id` (blocking): check and prepare the target, pin the archive, write the
    /// marker. A backup still in progress from another connection is cut off: the newest
    /// `basebackup` wins (the old one's sender may have been killed, its connection not yet
    /// timed out).
    pub fn begin(
        &self,
        id: u64,
        label: &str,
        system_id: SystemId,
        force: bool,
        conn: quinn::Connection,
        archive: &Archive,
    ) -> Result<(), Refusal> {
        let dir = self.dir()?.to_path_buf();
        let shown = dir.display().to_string();
        let mut session = self.session.lock().expect("session lock poisoned");
        if let Some(old) = session.take() {
            if old.conn.stable_id() != conn.stable_id() {
                warn!("a new basebackup replaces the one in progress; closing its connection");
                old.conn.close(
                    quinn::VarInt::from_u32(walship_common::proto::frame::CLOSE_SHUTDOWN),
                    b"replaced by a new basebackup",
                );
            }
        }
        let names = match fs::read_dir(&dir) {
            Ok(entries) => Some(
                entries
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<io::Result<Vec<String>>>()
                    .map_err(|e| failed(&shown, "list", e))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(failed(&shown, "list", e)),
        };
        let state = TargetState::classify(names.as_deref());
        let decision = decide(state, force).map_err(|r| match r {
            TargetRefusal::Cluster => Refusal::StandbyExists {
                path: shown.clone(),
            },
            TargetRefusal::Running => Refusal::TargetRunning {
                path: shown.clone(),
            },
            TargetRefusal::NotEmpty => Refusal::TargetNotEmpty {
                path: shown.clone(),
            },
        })?;
        archive.pin_to(system_id)?;
        match decision {
            Decision::Create => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(&dir)
                    .map_err(|e| failed(&shown, "create", e))?;
                if let Some(parent) = dir.parent() {
                    durable::sync_dir(parent).map_err(|e| storage_refusal(&shown, &e))?;
                }
            }
            Decision::Use => {}
            Decision::Replace => {
                info!(pgdata = %shown, ?state, "removing the previous contents of pgdata for a new base backup");
                empty(&dir).map_err(|e| failed(&shown, "empty", e))?;
            }
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| failed(&shown, "chmod 0700", e))?;
        let marker = Marker {
            label: label.chars().take(MAX_LABEL_BYTES).collect(),
            system_id: system_id.0,
            started: walship_common::human::timestamp(std::time::SystemTime::now()),
        };
        durable::replace(
            &dir,
            MARKER,
            marker.encode().as_bytes(),
            FILE_MODE,
            durable::Sync::Durable,
        )
        .map_err(|e| storage_refusal(MARKER, &e))?;
        info!(pgdata = %shown, label, system_identifier = %system_id, "base backup started");
        *session = Some(Session {
            id,
            system_id,
            files: 0,
            bytes: 0,
            conn,
        });
        Ok(())
    }

    /// Whether `id` is the backup in progress.
    fn check(&self, id: u64) -> Result<PathBuf, Refusal> {
        let dir = self.dir()?.to_path_buf();
        match &*self.session.lock().expect("session lock poisoned") {
            Some(s) if s.id == id => Ok(dir),
            _ => Err(Refusal::BackupGone),
        }
    }

    /// Create directory `path` of backup `id` and its missing parents (blocking).
    pub fn dir_step(&self, id: u64, path: &str, mode: u32) -> Result<(), Refusal> {
        let dir = self.check(id)?;
        let path = BackupPath::parse(path).map_err(|e| Refusal::BadPath {
            path: path.chars().take(200).collect(),
            reason: e.to_string(),
        })?;
        make_dirs(&dir, path.components(), mode)
    }

    /// A temp file for `path` of backup `id`, in its (created if missing) parent directory.
    pub fn temp(
        &self,
        id: u64,
        path: &BackupPath,
        mode: u32,
    ) -> Result<(TempFile, String), Refusal> {
        let dir = self.check(id)?;
        let stored = path.stored_as();
        let (parents, name) = match stored.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, stored),
        };
        let parent = match parents {
            Some(p) => {
                make_dirs(&dir, p.split('/'), DIR_MODE)?;
                dir.join(p)
            }
            None => dir,
        };
        let tmp = TempFile::create(&parent, name, (mode & 0o777) | 0o600)
            .map_err(|e| storage_refusal(path.as_str(), &e))?;
        Ok((tmp, name.to_string()))
    }

    /// Publish a verified file of backup `id` (blocking): durable under its name, counted.
    pub fn commit(
        &self,
        id: u64,
        path: &BackupPath,
        tmp: TempFile,
        name: &str,
        bytes: u64,
    ) -> Result<(), Refusal> {
        // Held across the publish: a newer backup cannot begin (and empty the target) between
        // the check and the link.
        let mut session = self.session.lock().expect("session lock poisoned");
        let Some(s) = session.as_mut().filter(|s| s.id == id) else {
            return Err(Refusal::BackupGone);
        };
        match tmp.publish(name) {
            Ok(Published::Stored) => {}
            Ok(Published::AlreadyIdentical) | Err(DurableError::Conflict { .. }) => {
                return Err(Refusal::BadPath {
                    path: path.to_string(),
                    reason: "sent twice in one backup".into(),
                })
            }
            Err(e) => return Err(storage_refusal(path.as_str(), &e)),
        }
        s.files += 1;
        s.bytes += bytes;
        Ok(())
    }

    /// Finish backup `id` (blocking): see the module doc for the order.
    pub fn end(
        &self,
        id: u64,
        files: u64,
        bytes: u64,
        end_segment: &str,
        backup_label: &str,
        archive: &Archive,
    ) -> Result<(), Refusal> {
        let dir = self.check(id)?;
        let mut session = self.session.lock().expect("session lock poisoned");
        let Some(s) = session.as_ref().filter(|s| s.id == id) else {
            return Err(Refusal::BackupGone);
        };
        let incomplete = |reason: String| Refusal::BackupIncomplete { reason };
        if (s.files, s.bytes) != (files, bytes) {
            return Err(incomplete(format!(
                "the sender sent {files} files ({bytes} bytes), the receiver stored {} ({} bytes)",
                s.files, s.bytes
            )));
        }
        if backup_label.is_empty() || backup_label.len() > MAX_LABEL_BYTES {
            return Err(incomplete(format!(
                "backup_label of {} bytes",
                backup_label.len()
            )));
        }
        let control = fs::read(dir.join(HELD_CONTROL))
            .map_err(|e| incomplete(format!("global/pg_control was not stored: {e}")))?;
        match walship_common::pg_control::decode_system_id(&control) {
            Ok(id) if id == s.system_id => {}
            Ok(other) => {
                return Err(incomplete(format!(
                    "global/pg_control is of cluster {other}, the backup announced {}",
                    s.system_id
                )))
            }
            Err(e) => return Err(incomplete(format!("global/pg_control: {e}"))),
        }
        let stored = match end_segment.parse::<WalFileName>() {
            Ok(WalFileName::Segment(_)) => archive.dir().join(end_segment),
            _ => {
                return Err(Refusal::BadName {
                    name: end_segment.chars().take(64).collect(),
                    reason: "not a WAL segment name".into(),
                })
            }
        };
        match fs::symlink_metadata(&stored) {
            Ok(m) if m.is_file() => {}
            _ => {
                return Err(Refusal::EndNotArchived {
                    segment: end_segment.to_string(),
                })
            }
        }
        fn durable_err(name: &'static str) -> impl Fn(DurableError) -> Refusal {
            move |e| storage_refusal(name, &e)
        }
        // Written fresh: the sender never sends these names (BackupPath refuses them).
        durable::publish_new(&dir, "backup_label", backup_label.as_bytes(), FILE_MODE)
            .map_err(durable_err("backup_label"))?;
        durable::publish_new(&dir, "standby.signal", b"", FILE_MODE)
            .map_err(durable_err("standby.signal"))?;
        let auto = dir.join("postgresql.auto.conf");
        let mut conf = match fs::read_to_string(&auto) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(failed(&auto.display().to_string(), "read", e)),
        };
        if !conf.is_empty() && !conf.ends_with('\n') {
            conf.push('\n');
        }
        conf.push_str(&standby_settings(
            &self.program.display().to_string(),
            &self.config.display().to_string(),
        ));
        durable::replace(
            &dir,
            "postgresql.auto.conf",
            conf.as_bytes(),
            FILE_MODE,
            durable::Sync::Durable,
        )
        .map_err(durable_err("postgresql.auto.conf"))?;
        // The commit point: from here PostgreSQL can start in the target.
        let global = dir.join("global");
        fs::rename(dir.join(HELD_CONTROL), global.join("pg_control"))
            .map_err(|e| failed("global/pg_control", "rename", e))?;
        durable::sync_dir(&global).map_err(durable_err("global"))?;
        durable::remove_durably(&dir, MARKER).map_err(durable_err(MARKER))?;
        info!(
            pgdata = %dir.display(),
            files,
            bytes,
            end_segment,
            "base backup complete: the standby is ready to start"
        );
        *session = None;
        Ok(())
    }
}

/// What `status` says about the target, when something is to be said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetStatus {
    /// No data directory yet.
    Absent,
    /// An unfinished base backup, with its marker.
    Unfinished(Marker),
}

/// The target's state for `status` (None: a data directory with no marker, or not configured).
pub fn status(pgdata: Option<&Path>) -> Option<TargetStatus> {
    let dir = pgdata?;
    if !dir.exists() {
        return Some(TargetStatus::Absent);
    }
    let path = dir.join(MARKER);
    if fs::symlink_metadata(&path).is_err() {
        return None;
    }
    let text = durable::read_regular(&path, 4096)
        .ok()
        .flatten()
        .unwrap_or_default();
    Some(TargetStatus::Unfinished(Marker::parse(&text)))
}

/// Create `components` under `root`, one level at a time, each synced into its parent. An
/// existing component must be a directory, not a link.
fn make_dirs<'a>(
    root: &Path,
    components: impl Iterator<Item = &'a str>,
    mode: u32,
) -> Result<(), Refusal> {
    let mut at = root.to_path_buf();
    for c in components {
        let parent = at.clone();
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(Refusal::BadPath {
                    path: c.to_string(),
                    reason: "exists and is not a directory".into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(&at.display().to_string(), "stat", e)),
        }
        match fs::DirBuilder::new()
            .mode((mode & 0o777) | 0o700)
            .create(&at)
        {
            Ok(()) => {}
            // Another stream made it meanwhile.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(failed(&at.display().to_string(), "create", e)),
        }
        durable::sync_dir(&parent).map_err(|e| storage_refusal(c, &e))?;
    }
    Ok(())
}

/// Remove everything in `dir` (not `dir` itself: it may be a mount point), never following a
/// link, then sync it.
fn empty(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    fs::File::open(dir)?.sync_all()
}

fn failed(what: &str, action: &str, e: io::Error) -> Refusal {
    let detail = format!("{action} {what}: {e}");
    if durable::is_disk_full(&e) {
        Refusal::DiskFull {
            name: what.to_string(),
            detail,
        }
    } else {
        Refusal::StorageFailed {
            name: what.to_string(),
            detail,
        }
    }
}
