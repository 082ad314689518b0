//! The archive directory: where verified files become visible, which cluster it belongs to,
//! and the startup clean-up of interrupted transfers.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{info, warn};
use walship_common::config::ReceiverSettings;
use walship_common::durable::{self, DurableError, Published, TempFile};
use walship_common::proto::digest::{Digest, Hasher};
use walship_common::proto::upload::check_fence;
use walship_common::proto::{ArchiveFacts, Refusal, Reply, Verified};
use walship_common::state::{Fence, RestoreLog, FENCE_FILE, RESTORE_LOG_FILE};
use walship_common::{pg_control, SystemId, WalFileName};

use crate::error::ReceiverError;

/// File in archive_dir naming the cluster the archive belongs to. Not a WAL name, so `restore`
/// never serves it.
pub const PIN_FILE: &str = "walship.cluster";
/// Archived files are readable by the owner's group too, so that `restore` run by the
/// PostgreSQL user works when the receiver runs as another user of the same group.
pub const FILE_MODE: u32 = 0o640;
/// File in archive_dir that `serve` holds an exclusive lock on (flock) for its whole life, with
/// its pid inside: a second `serve` on the same archive_dir stops before touching anything (it
/// would remove the first one's in-flight temp files as leftovers). Not a WAL name.
pub const LOCK_FILE: &str = "walship.lock";

#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    /// The cluster's system identifier once known; the lock also serialises pinning.
    cluster: Mutex<Option<SystemId>>,
    /// [`LOCK_FILE`], locked: released when `serve` exits (or dies).
    _lock: fs::File,
}

impl Archive {
    /// Open (creating if needed) the archive, remove leftovers of interrupted transfers and
    /// establish which cluster it belongs to.
    pub fn open(settings: &ReceiverSettings) -> Result<Self, ReceiverError> {
        let dir = settings.archive_dir.clone();
        fs::create_dir_all(&dir).map_err(|source| ReceiverError::ArchiveDir {
            path: dir.clone(),
            source,
        })?;
        // Writable by us, or every upload would fail later, one refusal at a time.
        rustix::fs::access(
            &dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .map_err(|e| ReceiverError::ArchiveNotWritable {
            path: dir.clone(),
            source: e.into(),
        })?;
        // Ours alone before anything is removed: another `serve` may be mid-upload here.
        let lock = lock_archive(&dir)?;
        for path in durable::remove_leftovers(&dir)? {
            warn!(path = %path.display(), "removed leftover of an interrupted transfer");
        }
        let pinned = read_pin(&dir)?;
        let cluster = match &settings.pgdata {
            Some(pgdata) => {
                let standby = pg_control::read_system_id(pgdata)?;
                match pinned {
                    Some(p) if p != standby => {
                        return Err(ReceiverError::ClusterMismatch {
                            archive: dir,
                            pgdata: pgdata.clone(),
                            archived: p.0,
                            standby: standby.0,
                        })
                    }
                    Some(_) => {}
                    None => write_pin(&dir, standby)?,
                }
                Some(standby)
            }
            None => pinned,
        };
        match cluster {
            Some(id) => info!(system_identifier = %id, "archive belongs to cluster {id}"),
            None => info!("archive not pinned yet: the first accepted segment's cluster will be"),
        }
        Ok(Archive {
            dir,
            cluster: Mutex::new(cluster),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Facts for a new upload. Reads the fence file each time: `promote` writes it from
    /// another process, and a segment must be refused from the moment it exists.
    pub fn facts(&self) -> ArchiveFacts {
        ArchiveFacts {
            cluster: *self.cluster.lock().expect("cluster lock poisoned"),
            fence: read_fence(&self.dir).unwrap_or_else(|e| {
                tracing::error!("{e}");
                None
            }),
        }
    }

    /// A temp file for an incoming `name`.
    pub fn temp(&self, name: &str) -> Result<TempFile, DurableError> {
        TempFile::create(&self.dir, name, FILE_MODE)
    }

    /// When `name` is stored already: whether its content has this size and digest; an
    /// identical file is fsynced (with the directory) before the answer, since a racing upload
    /// may have linked it without finishing its own fsyncs. Blocking (reads the file).
    pub fn compare_existing(
        &self,
        name: &str,
        size: u64,
        digest: &Digest,
    ) -> io::Result<Option<bool>> {
        let mut file = match fs::File::open(self.dir.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() != size {
            return Ok(Some(false));
        }
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match file.read(&mut buf)? {
                0 => break,
                n => hasher.update(&buf[..n]),
            }
        }
        let identical = hasher.finalize() == *digest;
        if identical {
            file.sync_all()?;
            durable::sync_dir(&self.dir).map_err(io::Error::other)?;
        }
        Ok(Some(identical))
    }

    /// Make a verified upload durable and visible (blocking). Pins the archive to the upload's
    /// cluster if it is the first segment and nothing pinned it before.
    pub fn commit(&self, tmp: TempFile, verified: &Verified) -> Reply {
        let name = verified.name.to_string();
        // Checked again at the last moment: the standby may have been promoted while the
        // bytes were arriving. (An unreadable fence refuses: better a retry than stale WAL.)
        match read_fence(&self.dir) {
            Ok(Some(fence)) => {
                if let Err(r) = check_fence(&fence, &verified.name) {
                    return Reply::Refused(r);
                }
            }
            Ok(None) => {}
            Err(e) => {
                return Reply::Refused(Refusal::StorageFailed {
                    name,
                    detail: e.to_string(),
                })
            }
        }
        if let Some(id) = verified.system_id {
            let mut cluster = self.cluster.lock().expect("cluster lock poisoned");
            match *cluster {
                Some(c) if c != id => {
                    return Reply::Refused(Refusal::ForeignCluster {
                        name,
                        segment: id.0,
                        archive: c.0,
                    })
                }
                Some(_) => {}
                None => {
                    if let Err(e) = write_pin(&self.dir, id) {
                        return Reply::Refused(storage_refusal(&name, &e));
                    }
                    info!(system_identifier = %id, "archive pinned to cluster {id} by {name}");
                    *cluster = Some(id);
                }
            }
        }
        match tmp.publish(&name) {
            Ok(Published::Stored) => Reply::Stored,
            Ok(Published::AlreadyIdentical) => Reply::AlreadyHad,
            Err(DurableError::Conflict { .. }) => {
                Reply::Refused(Refusal::ConflictingContent { name })
            }
            Err(e) => Reply::Refused(storage_refusal(&name, &e)),
        }
    }
}

/// Take [`LOCK_FILE`] in `dir` (created 0640 if missing, never through a symlink) with an
/// exclusive, non-blocking flock and write our pid in it. The lock lasts as long as the file is
/// open: the kernel drops it when the process exits, however it exits.
fn lock_archive(dir: &Path) -> Result<fs::File, ReceiverError> {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    use std::io::Write;
    let path = dir.join(LOCK_FILE);
    let err = |source: io::Error| ReceiverError::ArchiveDir {
        path: path.clone(),
        source,
    };
    let fd = open(
        &path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o640),
    )
    .map_err(|e| err(e.into()))?;
    if let Err(e) = flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        if e == rustix::io::Errno::WOULDBLOCK {
            let mut pid = String::new();
            let _ = fs::File::from(fd).read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(ReceiverError::ArchiveInUse {
                path: dir.to_path_buf(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_string()
                },
            });
        }
        return Err(err(e.into()));
    }
    let mut file = fs::File::from(fd);
    file.set_len(0).map_err(err)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(err)?;
    Ok(file)
}

/// The refusal for a storage failure: disk full is named as such.
pub fn storage_refusal(name: &str, err: &DurableError) -> Refusal {
    if err.is_disk_full() {
        Refusal::DiskFull {
            name: name.to_string(),
            detail: err.to_string(),
        }
    } else {
        Refusal::StorageFailed {
            name: name.to_string(),
            detail: err.to_string(),
        }
    }
}

/// The fence, when the standby was promoted.
pub fn read_fence(dir: &Path) -> Result<Option<Fence>, ReceiverError> {
    let path = dir.join(FENCE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Fence::from_toml(&text)
            .map(Some)
            .map_err(|reason| ReceiverError::BadState { path, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReceiverError::ArchiveDir { path, source }),
    }
}

/// Write (or replace) the fence durably: it must survive a crash of the standby host.
pub fn write_fence(dir: &Path, fence: &Fence) -> Result<(), DurableError> {
    durable::replace(
        dir,
        FENCE_FILE,
        fence.to_toml().as_bytes(),
        0o644,
        durable::Sync::Durable,
    )
}

/// The restore record; a missing or unreadable one reads as empty (it is advisory).
pub fn read_restore_log(dir: &Path) -> RestoreLog {
    fs::read_to_string(dir.join(RESTORE_LOG_FILE))
        .ok()
        .and_then(|t| RestoreLog::from_toml(&t).ok())
        .unwrap_or_default()
}

/// Replace the restore record. Not fsynced: it is on restore's hot path and a record lost in a
/// power failure only makes `promote` wait for the next restore call.
///
/// Cheap on the hot path: the record is written into a spare file, padded to a fixed size so
/// it is overwritten in place (no new inode, no block allocation, no truncation), and swapped
/// with the live one by `renameat2(RENAME_EXCHANGE)`; readers see the old or the new record,
/// never a mix. Replacing by rename instead costs ~0.2 ms on ext4, which flushes the new file's
/// data on a rename over an existing file (auto_da_alloc) and frees the old inode. A lock on
/// the directory serialises concurrent writers. Where the exchange is not possible (first
/// calls, a file system without it, a record longer than the fixed size) it falls back to a
/// plain atomic replace.
pub fn write_restore_log(dir: &Path, log: &RestoreLog) -> Result<(), DurableError> {
    let body = log.to_toml();
    if body.len() + PAD_COMMENT.len() < RESTORE_LOG_BYTES
        && exchange_restore_log(dir, &body).is_ok()
    {
        return Ok(());
    }
    durable::replace(
        dir,
        RESTORE_LOG_FILE,
        body.as_bytes(),
        0o644,
        durable::Sync::AdvisoryOnly,
    )
}

/// Size every exchanged restore record is padded to (with spaces, which TOML ignores).
const RESTORE_LOG_BYTES: usize = 512;
/// Starts the padding, for whoever reads the file.
const PAD_COMMENT: &str = "# (fixed-size record: padded, rewritten in place)";
/// The other half of the exchange: holds the previous record. Not a WAL name nor a temp name.
pub const RESTORE_LOG_SPARE: &str = "walship.restore.spare";

fn exchange_restore_log(dir: &Path, body: &str) -> io::Result<()> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    let lock = fs::File::open(dir)?;
    // Released when `lock` is closed, at the end of this function.
    lock.lock()?;
    let spare = dir.join(RESTORE_LOG_SPARE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        // Overwritten in place: truncating would make ext4 flush it on close (auto_da_alloc).
        .truncate(false)
        .mode(0o644)
        .open(&spare)?;
    let mut padded = Vec::with_capacity(RESTORE_LOG_BYTES);
    padded.extend_from_slice(body.as_bytes());
    padded.extend_from_slice(PAD_COMMENT.as_bytes());
    padded.resize(RESTORE_LOG_BYTES - 1, b' ');
    padded.push(b'\n');
    file.write_all_at(&padded, 0)?;
    if file.metadata()?.len() != RESTORE_LOG_BYTES as u64 {
        // Left over from a failed write or an older layout: make it exactly the record.
        file.set_len(RESTORE_LOG_BYTES as u64)?;
    }
    drop(file);
    let exchanged = rustix::fs::renameat_with(
        rustix::fs::CWD,
        &spare,
        rustix::fs::CWD,
        dir.join(RESTORE_LOG_FILE),
        rustix::fs::RenameFlags::EXCHANGE,
    );
    let Err(errno) = exchanged else {
        return Ok(());
    };
    let err = io::Error::from(errno);
    if err.kind() == io::ErrorKind::NotFound {
        // No live record yet: the spare becomes it (and a new spare is made next time).
        return fs::rename(&spare, dir.join(RESTORE_LOG_FILE));
    }
    Err(err)
}

/// One stored WAL file.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub name: WalFileName,
    pub bytes: u64,
    pub modified: std::time::SystemTime,
}

/// Every WAL file in the archive (temp files and state files are not WAL names).
pub fn list(dir: &Path) -> Result<Vec<StoredFile>, ReceiverError> {
    let err = |source| ReceiverError::ArchiveDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<WalFileName>().ok())
        else {
            continue;
        };
        let meta = entry.metadata().map_err(err)?;
        out.push(StoredFile {
            name,
            bytes: meta.len(),
            modified: meta.modified().map_err(err)?,
        });
    }
    Ok(out)
}

pub fn read_pin(dir: &Path) -> Result<Option<SystemId>, ReceiverError> {
    let path = dir.join(PIN_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ReceiverError::ArchiveDir { path, source }),
    };
    let bad = |reason: &str| ReceiverError::BadPin {
        path: path.clone(),
        reason: reason.to_string(),
    };
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("system_identifier"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .ok_or_else(|| bad("no `system_identifier = N` line"))?;
    let id = value
        .trim()
        .parse()
        .map_err(|_| bad("system_identifier is not a number"))?;
    Ok(Some(SystemId(id)))
}

fn write_pin(dir: &Path, id: SystemId) -> Result<(), DurableError> {
    let body = format!(
        "# Written by walship-receiver: this archive holds WAL of this cluster only.\nsystem_identifier = {id}\n"
    );
    // Durable like a segment: after a crash the archive must still know its cluster.
    durable::publish_new(dir, PIN_FILE, body.as_bytes(), 0o644).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use walship_common::state::RestoreEvent;

    fn event(name: &str, at: u64) -> Option<RestoreEvent> {
        Some(RestoreEvent {
            name: name.to_string(),
            at_unix_ms: at,
        })
    }

    #[test]
    fn restore_log_is_replaced_whole_every_time() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_restore_log(dir.path()), RestoreLog::default());
        let mut log = RestoreLog::default();
        // First calls create the record and the spare, later ones exchange them.
        for i in 0..5u64 {
            log.last_served = event("000000010000000000000003", i);
            if i == 3 {
                log.last_missed = event("000000010000000000000004", 4_102_444_800_000);
            }
            write_restore_log(dir.path(), &log).unwrap();
            assert_eq!(read_restore_log(dir.path()), log);
        }
        // A shorter record after a longer one leaves nothing of the longer behind.
        let short = RestoreLog {
            last_served: event("00000002.history", 1),
            last_missed: None,
        };
        write_restore_log(dir.path(), &short).unwrap();
        assert_eq!(read_restore_log(dir.path()), short);
        // Only the record and its spare: no temp files left.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [RESTORE_LOG_FILE, RESTORE_LOG_SPARE]);
    }

    #[test]
    fn restore_log_written_by_replace_is_taken_over() {
        // A record left by an older walship (plain replace, short file) and a too-long spare.
        let dir = tempfile::tempdir().unwrap();
        let old = RestoreLog {
            last_served: None,
            last_missed: event("000000010000000000000009", 7),
        };
        durable::replace(
            dir.path(),
            RESTORE_LOG_FILE,
            old.to_toml().as_bytes(),
            0o644,
            durable::Sync::AdvisoryOnly,
        )
        .unwrap();
        fs::write(dir.path().join(RESTORE_LOG_SPARE), vec![b'x'; 3000]).unwrap();
        assert_eq!(read_restore_log(dir.path()), old);
        let new = RestoreLog {
            last_served: event("00000001000000000000000A", 8),
            ..old
        };
        write_restore_log(dir.path(), &new).unwrap();
        assert_eq!(read_restore_log(dir.path()), new);
    }
}
