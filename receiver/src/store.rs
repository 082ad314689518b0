//! The archive directory: where verified files become visible, which cluster it belongs to,
//! and the startup clean-up of interrupted transfers.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use walship_common::proto::digest::{Digest, Hasher};
use walship_common::proto::{ArchiveFacts, Refusal, Reply, Verified};
use walship_common::state::{
    is_restore_record_name, restore_record_name, Fence, RestoreLog, FENCE_FILE, FENCE_LOCK_FILE,
    RESTORE_LOG_FILE,
};
use walship_common::sys::config::ReceiverSettings;
use walship_common::sys::durable::{self, DurableError, OpenError, Published, TempFile};
use walship_common::wal::history::{History, MAX_HISTORY_BYTES};
use walship_common::{sys, SystemId, TimelineId, WalFileName};

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
    /// Tests only: stop `commit` right after its fence check, to interleave a fence writer.
    #[cfg(test)]
    pause: Option<tests::Pause>,
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
                let standby = sys::pg_control::read_system_id(pgdata)?;
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
            #[cfg(test)]
            pause: None,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster this archive holds, when known. Never sent to a sender: only logged.
    pub fn cluster(&self) -> Option<SystemId> {
        *self.cluster.lock().expect("cluster lock poisoned")
    }

    /// Facts for a new upload of `name`. Reads the fence file each time: `promote` writes it
    /// from another process, and a segment must be refused from the moment it exists. For a
    /// history file also the stored histories, for a backup history file the stored size of
    /// the segment it starts in (rare uploads: a few small reads).
    pub fn facts(&self, name: &str) -> ArchiveFacts {
        let mut facts = ArchiveFacts {
            cluster: self.cluster(),
            fence: read_fence(&self.dir).unwrap_or_else(|e| {
                tracing::error!("{e}");
                None
            }),
            ..ArchiveFacts::default()
        };
        match name.parse::<WalFileName>() {
            Ok(WalFileName::History(_)) => facts.histories = read_histories(&self.dir),
            Ok(WalFileName::Backup { segment, .. }) => {
                // lstat: a symlink or anything but a regular file is not a stored segment.
                facts.backup_segment_bytes =
                    fs::symlink_metadata(self.dir.join(segment.to_string()))
                        .ok()
                        .filter(|m| m.file_type().is_file())
                        .map(|m| m.len());
            }
            _ => {}
        }
        facts
    }

    /// A temp file for an incoming `name`.
    pub fn temp(&self, name: &str) -> Result<TempFile, DurableError> {
        TempFile::create(&self.dir, name, FILE_MODE)
    }

    /// When `name` is stored already: whether its content has this size and digest; an
    /// identical file is fsynced (with the directory) before the answer, since a racing upload
    /// may have linked it without finishing its own fsyncs. Blocking (reads the file). A link,
    /// a FIFO or anything but a regular file under the name is an error: never followed, never
    /// waited on.
    pub fn compare_existing(
        &self,
        name: &str,
        size: u64,
        digest: &Digest,
    ) -> io::Result<Option<bool>> {
        let Some(mut file) =
            durable::open_regular(&self.dir.join(name)).map_err(io::Error::other)?
        else {
            return Ok(None);
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
        // Held from the fence check until the file is linked (released on return): `promote`
        // takes it exclusively to write the fence, so once the fence is in place no segment
        // that passed the check can still appear, and promote's last replay check sees all.
        let _fence_lock = match FenceLock::shared(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                return Reply::Refused(Refusal::StorageFailed {
                    name,
                    detail: e.to_string(),
                })
            }
        };
        // Checked again at the last moment: the standby may have been promoted while the
        // bytes were arriving. (An unreadable fence refuses: better a retry than stale WAL.)
        match read_fence(&self.dir) {
            Ok(Some(fence)) => {
                if let Err(r) = verified.admitted_by(&fence) {
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
        #[cfg(test)]
        if let Some(p) = &self.pause {
            p.wait();
        }
        if let Some(id) = verified.system_id {
            let mut cluster = self.cluster.lock().expect("cluster lock poisoned");
            match *cluster {
                Some(c) if c != id => {
                    return Reply::Refused(Refusal::ForeignCluster {
                        name,
                        segment: id.0,
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

/// Most bytes read from a state file (pin, fence, restore record): they are a few lines, and
/// a huge file under such a name is not one walship wrote.
const STATE_FILE_LIMIT: u64 = 64 * 1024;

/// The timeline histories stored in `dir`, for checking a new one against them. Each is opened
/// without following links and without blocking (a FIFO under a history name must not hang the
/// receiver), and read only if it is a regular file of at most [`MAX_HISTORY_BYTES`]. One that
/// cannot be read or parsed (stored before walship checked history content) is left out with a
/// warning: the new history is checked against the others.
pub fn read_histories(dir: &Path) -> BTreeMap<TimelineId, History> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            warn!(dir = %dir.display(), "could not list the stored history files: {e}");
            return out;
        }
    };
    for entry in entries.flatten() {
        let Some(Ok(WalFileName::History(tli))) =
            entry.file_name().to_str().map(str::parse::<WalFileName>)
        else {
            continue;
        };
        let path = entry.path();
        match read_small_regular_file(&path, MAX_HISTORY_BYTES)
            .and_then(|bytes| History::parse(tli, &bytes).map_err(|e| e.to_string()))
        {
            Ok(h) => {
                out.insert(tli, h);
            }
            Err(e) => warn!(
                path = %path.display(),
                "stored history file left out when checking new ones: {e}"
            ),
        }
    }
    out
}

/// A regular file's content, refusing links, FIFOs and devices and anything over `max` bytes.
fn read_small_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = durable::open_regular(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "removed while reading".to_string())?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("more than {max} bytes"));
    }
    Ok(bytes)
}

/// The fence, when the standby was promoted.
pub fn read_fence(dir: &Path) -> Result<Option<Fence>, ReceiverError> {
    let path = dir.join(FENCE_FILE);
    match durable::read_regular(&path, STATE_FILE_LIMIT)? {
        Some(text) => Fence::from_toml(&text)
            .map(Some)
            .map_err(|reason| ReceiverError::BadState { path, reason }),
        None => Ok(None),
    }
}

/// How long a fence writer waits for uploads between their fence check and their link (each
/// holds the lock for one fsync of a segment and of the directory: milliseconds, seconds on a
/// struggling disk).
pub const FENCE_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Write (or replace) the fence durably: it must survive a crash of the standby host. Taken
/// under the exclusive fence lock, so it waits for uploads that passed the fence check.
pub fn write_fence(dir: &Path, fence: &Fence) -> Result<(), ReceiverError> {
    let _lock = FenceLock::exclusive(dir, FENCE_LOCK_WAIT)?;
    durable::replace(
        dir,
        FENCE_FILE,
        fence.to_toml().as_bytes(),
        0o644,
        durable::Sync::Durable,
    )?;
    Ok(())
}

/// Put back the fence that was there before a promotion that did not happen: `previous`
/// (an earlier, valid promotion stays fenced), or no fence at all, durably either way.
pub fn restore_fence(dir: &Path, previous: Option<&Fence>) -> Result<(), ReceiverError> {
    if let Some(f) = previous {
        return write_fence(dir, f);
    }
    let _lock = FenceLock::exclusive(dir, FENCE_LOCK_WAIT)?;
    let path = dir.join(FENCE_FILE);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ReceiverError::ArchiveDir { path, source }),
    }
    // The removal must survive a crash too, or a healthy primary stays fenced.
    durable::sync_dir(dir)?;
    Ok(())
}

/// A `flock` on [`FENCE_LOCK_FILE`], released when dropped. Each holder opens the file itself:
/// a lock belongs to an open file description, so threads sharing one would release each
/// other's.
#[derive(Debug)]
pub struct FenceLock {
    _file: fs::File,
}

impl FenceLock {
    /// Shared, for an upload's fence check and link (blocking; the exclusive holder writes
    /// one small file).
    pub fn shared(dir: &Path) -> Result<FenceLock, ReceiverError> {
        let file = open_fence_lock(dir)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| lock_error(dir, e.into()))?;
        Ok(FenceLock { _file: file })
    }

    /// Exclusive, for writing the fence: waits up to `wait` for uploads holding it shared.
    pub fn exclusive(dir: &Path, wait: Duration) -> Result<FenceLock, ReceiverError> {
        let file = open_fence_lock(dir)?;
        let deadline = Instant::now() + wait;
        loop {
            // Polled rather than blocking, so that the wait has a deadline.
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(FenceLock { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(ReceiverError::FenceLockBusy {
                        path: dir.join(FENCE_LOCK_FILE),
                        waited: wait,
                    })
                }
                Err(e) => return Err(lock_error(dir, e.into())),
            }
        }
    }
}

/// Open the lock file read-only (`promote` may run as another user than `serve`: reading is
/// all `flock` needs), creating it if missing; never through a symlink, never blocking on a
/// FIFO, and only a regular file.
fn open_fence_lock(dir: &Path) -> Result<fs::File, ReceiverError> {
    use rustix::fs::{Mode, OFlags};
    let path = dir.join(FENCE_LOCK_FILE);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(&path, flags | OFlags::CREATE, Mode::from_raw_mode(0o644))
        // An existing file opens without write access to the directory; a missing one does not.
        .or_else(|_| rustix::fs::open(&path, flags, Mode::empty()))
        .map_err(|e| lock_error(dir, e.into()))?;
    let file = fs::File::from(fd);
    let meta = file.metadata().map_err(|e| lock_error(dir, e))?;
    if !meta.file_type().is_file() {
        return Err(lock_error(
            dir,
            io::Error::other("not a regular file; remove it (walship recreates it)"),
        ));
    }
    Ok(file)
}

fn lock_error(dir: &Path, source: io::Error) -> ReceiverError {
    ReceiverError::ArchiveDir {
        path: dir.join(FENCE_LOCK_FILE),
        source,
    }
}

/// The restore record `name`; a missing or unparsable one reads as empty (it is advisory). A
/// link or another non-regular file under the name is an error naming it.
pub fn read_restore_log(dir: &Path, name: &str) -> Result<RestoreLog, OpenError> {
    Ok(durable::read_regular(&dir.join(name), STATE_FILE_LIMIT)?
        .and_then(|t| RestoreLog::from_toml(&t).ok())
        .unwrap_or_default())
}

/// The restore record of the standby whose data directory is `data_dir` (resolved to its
/// canonical path, as `restore` sees it through its working directory). Without a record of its
/// own, the single record of older walship versions, if any. Without `data_dir` (the standby
/// could not be asked): the only per-standby record when there is exactly one, else the old
/// single record, else empty.
pub fn standby_restore_log(dir: &Path, data_dir: Option<&Path>) -> Result<RestoreLog, OpenError> {
    let own = match data_dir {
        Some(d) => {
            let canonical = fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
            Some(restore_record_name(
                canonical.as_os_str().as_encoded_bytes(),
            ))
        }
        None => {
            let mut records = fs::read_dir(dir)
                .map_err(|source| OpenError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_restore_record_name(n));
            match (records.next(), records.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    };
    if let Some(name) = own {
        if durable::open_regular(&dir.join(&name))?.is_some() {
            return read_restore_log(dir, &name);
        }
    }
    read_restore_log(dir, RESTORE_LOG_FILE)
}

/// Why the restore record was not written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Foreign(OpenError),
    #[error("{0}")]
    Write(#[from] DurableError),
}

impl RecordError {
    /// True when archive_dir is not writable by this user (or is on a read-only file system):
    /// a supported setup, in which `restore` keeps no record.
    pub fn is_read_only(&self) -> bool {
        let source = match self {
            RecordError::Write(DurableError::Io { source, .. }) => source,
            _ => return false,
        };
        source.kind() == io::ErrorKind::PermissionDenied
            || matches!(source.raw_os_error(), Some(libc::EROFS) | Some(libc::EPERM))
    }
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
///
/// Never through a link: the spare is opened with `O_NOFOLLOW` and must be a regular file; a
/// link or other non-regular file there is an error naming it (no fallback that would hide it).
pub fn write_restore_log(dir: &Path, name: &str, log: &RestoreLog) -> Result<(), RecordError> {
    let body = log.to_toml();
    if body.len() + PAD_COMMENT.len() < RESTORE_LOG_BYTES {
        match exchange_restore_log(dir, name, &body) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_foreign() => return Err(RecordError::Foreign(e)),
            Err(_) => {}
        }
    }
    Ok(durable::replace(
        dir,
        name,
        body.as_bytes(),
        0o644,
        durable::Sync::AdvisoryOnly,
    )?)
}

/// Size every exchanged restore record is padded to (with spaces, which TOML ignores).
const RESTORE_LOG_BYTES: usize = 512;
/// Starts the padding, for whoever reads the file.
const PAD_COMMENT: &str = "# (fixed-size record: padded, rewritten in place)";
/// Suffix of the other half of the exchange, which holds the previous record
/// (`walship.restore.<key>.spare`). Not a WAL name nor a temp name.
pub const RESTORE_LOG_SPARE_SUFFIX: &str = ".spare";

fn exchange_restore_log(dir: &Path, name: &str, body: &str) -> Result<(), OpenError> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OpenError::Io { path, source }
    };
    let lock = fs::File::open(dir).map_err(io(dir))?;
    // Released when `lock` is closed, at the end of this function.
    lock.lock().map_err(io(dir))?;
    let spare = dir.join(format!("{name}{RESTORE_LOG_SPARE_SUFFIX}"));
    let record = dir.join(name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        // Overwritten in place: truncating would make ext4 flush it on close (auto_da_alloc).
        .truncate(false)
        .mode(0o644)
        // Never through a link (it would overwrite whatever the link names), never blocking
        // on a FIFO; then fstat: only a regular file is written.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&spare)
        .map_err(|e| durable::classify_open_error(&spare, e))?;
    durable::check_regular(&spare, &file.metadata().map_err(io(&spare))?)?;
    let mut padded = Vec::with_capacity(RESTORE_LOG_BYTES);
    padded.extend_from_slice(body.as_bytes());
    padded.extend_from_slice(PAD_COMMENT.as_bytes());
    padded.resize(RESTORE_LOG_BYTES - 1, b' ');
    padded.push(b'\n');
    file.write_all_at(&padded, 0).map_err(io(&spare))?;
    if file.metadata().map_err(io(&spare))?.len() != RESTORE_LOG_BYTES as u64 {
        // Left over from a failed write or an older layout: make it exactly the record.
        file.set_len(RESTORE_LOG_BYTES as u64).map_err(io(&spare))?;
    }
    drop(file);
    // The exchange swaps names, it follows no link: a link put where the record is ends up
    // under the spare's name, where the next call refuses it.
    let exchanged = rustix::fs::renameat_with(
        rustix::fs::CWD,
        &spare,
        rustix::fs::CWD,
        &record,
        rustix::fs::RenameFlags::EXCHANGE,
    );
    let Err(errno) = exchanged else {
        return Ok(());
    };
    let err = io::Error::from(errno);
    if err.kind() == io::ErrorKind::NotFound {
        // No live record yet: the spare becomes it (and a new spare is made next time).
        return fs::rename(&spare, &record).map_err(io(&record));
    }
    Err(io(&record)(err))
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
        // Only regular files are stored files: `restore` refuses a link or a FIFO under a WAL
        // name, so they are not counted as archived either.
        if !entry.file_type().map_err(err)?.is_file() {
            continue;
        }
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
    let Some(text) = durable::read_regular(&path, STATE_FILE_LIMIT)? else {
        return Ok(None);
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
    use std::sync::mpsc;
    use std::sync::Arc;
    use walship_common::proto::digest::Hasher;
    use walship_common::state::RestoreEvent;
    use walship_common::wal::name::{SegNo, SegmentName, TimelineId};

    /// Where a paused `commit` waits: it says it arrived, then waits to be let go.
    #[derive(Debug)]
    pub(super) struct Pause {
        reached: mpsc::SyncSender<()>,
        resume: Mutex<mpsc::Receiver<()>>,
    }

    impl Pause {
        pub(super) fn wait(&self) {
            let _ = self.reached.send(());
            let _ = self.resume.lock().expect("pause lock").recv();
        }
    }

    const SEG: u64 = 16 << 20;

    /// An archive in `dir` whose commits stop after the fence check until `resume` sends.
    fn paused_archive(dir: &Path) -> (Archive, mpsc::Receiver<()>, mpsc::SyncSender<()>) {
        let (reached_tx, reached_rx) = mpsc::sync_channel(1);
        let (resume_tx, resume_rx) = mpsc::sync_channel(1);
        let archive = Archive {
            dir: dir.to_path_buf(),
            cluster: Mutex::new(None),
            _lock: lock_archive(dir).unwrap(),
            pause: Some(Pause {
                reached: reached_tx,
                resume: Mutex::new(resume_rx),
            }),
        };
        (archive, reached_rx, resume_tx)
    }

    /// A verified upload of segment `no` of timeline `tli` (its bytes: a few zeros).
    fn upload(archive: &Archive, tli: u32, no: u64) -> (TempFile, Verified) {
        let name = SegmentName::from_segno(TimelineId(tli), SegNo(no), SEG);
        let body = [0u8; 64];
        let tmp = archive.temp(&name.to_string()).unwrap();
        std::io::Write::write_all(&mut tmp.file(), &body).unwrap();
        let mut h = Hasher::new();
        h.update(&body);
        let verified = Verified {
            name: WalFileName::Segment(name),
            size: body.len() as u64,
            digest: h.finalize(),
            system_id: None,
            history: None,
        };
        (tmp, verified)
    }

    fn fence_on(timeline: u32) -> Fence {
        Fence {
            timeline,
            promoted_at_lsn: "promotion in progress".into(),
            new_timeline: None,
            fenced_at_unix_ms: 1,
        }
    }

    #[test]
    fn item10a_a_commit_past_the_fence_check_holds_the_fence_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, reached, resume) = paused_archive(dir.path());
        let archive = Arc::new(archive);
        let (tmp, verified) = upload(&archive, 1, 5);
        let name = verified.name.to_string();
        let committer = {
            let archive = Arc::clone(&archive);
            std::thread::spawn(move || archive.commit(tmp, &verified))
        };
        // The commit saw no fence and is about to link.
        reached.recv_timeout(Duration::from_secs(10)).unwrap();

        // promote fences timeline 1 now: it must wait until that commit has linked, or the
        // segment would be stored after the fence (and after promote's last replay check).
        let fencer = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                write_fence(&dir, &fence_on(1)).unwrap();
                // What the fence writer saw once its fence was in place.
                dir.join(&name).exists()
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            read_fence(dir.path()).unwrap().is_none(),
            "the fence was written while a commit was between its fence check and its link"
        );
        assert!(!fencer.is_finished());
        resume.send(()).unwrap();
        assert!(matches!(committer.join().unwrap(), Reply::Stored));
        assert!(
            fencer.join().unwrap(),
            "the fence went in before the segment that passed the check was linked"
        );
        assert_eq!(read_fence(dir.path()).unwrap(), Some(fence_on(1)));

        // From now on timeline 1 is refused, and the paused path is not even reached.
        let (tmp, verified) = upload(&archive, 1, 6);
        assert!(matches!(
            archive.commit(tmp, &verified),
            Reply::Refused(Refusal::Fenced { .. })
        ));
        assert!(!dir.path().join(verified.name.to_string()).exists());
    }

    fn event(name: &str, at: u64) -> Option<RestoreEvent> {
        Some(RestoreEvent {
            name: name.to_string(),
            at_unix_ms: at,
        })
    }

    fn record() -> String {
        restore_record_name(b"/srv/standby")
    }

    #[test]
    fn restore_log_is_replaced_whole_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let name = record();
        assert_eq!(
            read_restore_log(dir.path(), &name).unwrap(),
            RestoreLog::default()
        );
        let mut log = RestoreLog {
            data_directory: Some("/srv/standby".into()),
            ..RestoreLog::default()
        };
        // First calls create the record and the spare, later ones exchange them.
        for i in 0..5u64 {
            log.last_served = event("000000010000000000000003", i);
            if i == 3 {
                log.last_missed = event("000000010000000000000004", 4_102_444_800_000);
            }
            write_restore_log(dir.path(), &name, &log).unwrap();
            assert_eq!(read_restore_log(dir.path(), &name).unwrap(), log);
        }
        // A shorter record after a longer one leaves nothing of the longer behind.
        let short = RestoreLog {
            data_directory: None,
            last_served: event("00000002.history", 1),
            last_missed: None,
        };
        write_restore_log(dir.path(), &name, &short).unwrap();
        assert_eq!(read_restore_log(dir.path(), &name).unwrap(), short);
        // Only the record and its spare: no temp files left.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [name.clone(), format!("{name}{RESTORE_LOG_SPARE_SUFFIX}")]
        );
    }

    #[test]
    fn restore_log_written_by_replace_is_taken_over() {
        // A record left by a plain replace (short file) and a too-long spare.
        let dir = tempfile::tempdir().unwrap();
        let name = record();
        let old = RestoreLog {
            data_directory: None,
            last_served: None,
            last_missed: event("000000010000000000000009", 7),
        };
        durable::replace(
            dir.path(),
            &name,
            old.to_toml().as_bytes(),
            0o644,
            durable::Sync::AdvisoryOnly,
        )
        .unwrap();
        fs::write(
            dir.path().join(format!("{name}{RESTORE_LOG_SPARE_SUFFIX}")),
            vec![b'x'; 3000],
        )
        .unwrap();
        assert_eq!(read_restore_log(dir.path(), &name).unwrap(), old);
        let new = RestoreLog {
            last_served: event("00000001000000000000000A", 8),
            ..old
        };
        write_restore_log(dir.path(), &name, &new).unwrap();
        assert_eq!(read_restore_log(dir.path(), &name).unwrap(), new);
    }

    #[test]
    fn restore_log_is_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("some.conf");
        fs::write(&victim, b"precious\n").unwrap();
        let name = record();
        let spare = dir.path().join(format!("{name}{RESTORE_LOG_SPARE_SUFFIX}"));
        std::os::unix::fs::symlink(&victim, &spare).unwrap();
        let log = RestoreLog {
            last_served: event("000000010000000000000003", 1),
            ..RestoreLog::default()
        };
        let err = write_restore_log(dir.path(), &name, &log).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
        // A link as the record itself: reading it is an error naming it.
        fs::remove_file(&spare).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(&name)).unwrap();
        let err = read_restore_log(dir.path(), &name).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn each_standby_reads_its_own_record_and_falls_back_to_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        fs::create_dir(&one).unwrap();
        fs::create_dir(&two).unwrap();
        let archive = dir.path().join("archive");
        fs::create_dir(&archive).unwrap();
        let old = RestoreLog {
            last_missed: event("000000010000000000000009", 7),
            ..RestoreLog::default()
        };
        write_restore_log(&archive, RESTORE_LOG_FILE, &old).unwrap();
        // Nobody has a record of its own yet: the old single record.
        assert_eq!(standby_restore_log(&archive, Some(&one)).unwrap(), old);
        assert_eq!(standby_restore_log(&archive, None).unwrap(), old);
        let mine = RestoreLog {
            data_directory: Some(one.display().to_string()),
            last_served: event("00000001000000000000000A", 8),
            last_missed: None,
        };
        let key = restore_record_name(
            fs::canonicalize(&one)
                .unwrap()
                .as_os_str()
                .as_encoded_bytes(),
        );
        write_restore_log(&archive, &key, &mine).unwrap();
        assert_eq!(standby_restore_log(&archive, Some(&one)).unwrap(), mine);
        assert_eq!(standby_restore_log(&archive, Some(&two)).unwrap(), old);
        // One standby's record only: that is the one, even without knowing the data directory.
        assert_eq!(standby_restore_log(&archive, None).unwrap(), mine);
    }

    #[test]
    fn item10c_restore_fence_puts_the_earlier_fence_back() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = Fence {
            timeline: 1,
            promoted_at_lsn: "0/5000028".into(),
            new_timeline: Some(2),
            fenced_at_unix_ms: 7,
        };
        write_fence(dir.path(), &earlier).unwrap();
        // A re-promote fences timeline 2, then fails.
        write_fence(dir.path(), &fence_on(2)).unwrap();
        restore_fence(dir.path(), Some(&earlier)).unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), Some(earlier));
        // Without an earlier fence, the failed promotion's fence goes (twice is fine).
        restore_fence(dir.path(), None).unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), None);
        restore_fence(dir.path(), None).unwrap();
    }

    #[test]
    fn item10a_fence_lock_is_a_regular_file_never_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(FENCE_LOCK_FILE);
        // Created on first use, read-only use is enough, shared holders coexist and keep an
        // exclusive one out.
        let a = FenceLock::shared(dir.path()).unwrap();
        let b = FenceLock::shared(dir.path()).unwrap();
        assert!(lock.is_file());
        assert!(matches!(
            FenceLock::exclusive(dir.path(), Duration::from_millis(50)),
            Err(ReceiverError::FenceLockBusy { .. })
        ));
        drop((a, b));
        drop(FenceLock::exclusive(dir.path(), Duration::from_millis(50)).unwrap());
        // A symlink (to a file it would create or one that exists) is refused, not followed.
        fs::remove_file(&lock).unwrap();
        let target = dir.path().join("some.conf");
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        assert!(FenceLock::shared(dir.path()).is_err());
        assert!(!target.exists(), "the lock was created through a symlink");
        fs::write(&target, b"keep").unwrap();
        assert!(FenceLock::exclusive(dir.path(), Duration::from_millis(50)).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        // A FIFO neither blocks the open nor passes for the lock.
        fs::remove_file(&lock).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &lock,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = FenceLock::shared(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // And a commit that cannot lock refuses rather than storing unchecked.
        let archive = Archive {
            dir: dir.path().to_path_buf(),
            cluster: Mutex::new(None),
            _lock: lock_archive(dir.path()).unwrap(),
            pause: None,
        };
        let (tmp, verified) = upload(&archive, 1, 3);
        assert!(matches!(
            archive.commit(tmp, &verified),
            Reply::Refused(Refusal::StorageFailed { .. })
        ));
        assert!(!dir.path().join(verified.name.to_string()).exists());
    }
}
