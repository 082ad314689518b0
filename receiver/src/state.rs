//! The archive's state files, read and written here and nowhere else: the cluster pin
//! (`walship.cluster`), the fence (`walship.fence`) and its lock (`walship.fence.lock`), the
//! per-standby restore records (`walship.restore.<key>` and their spares) and `serve`'s lock
//! (`walship.lock`). Their names and formats are `walship_common::state`'s; each kind of update
//! uses one mechanism of `walship_common::sys::durable`:
//!
//! | file | written by | mechanism |
//! |---|---|---|
//! | pin | `serve`, once | `publish_new` (never replaced) |
//! | fence | `promote` | `replace` with fsyncs, under the exclusive fence lock |
//! | fence removed | a failed `promote` | `remove_durably`, under the exclusive fence lock |
//! | restore record | `restore`, every call | `replace_in_place`, not fsynced (advisory) |
//!
//! Every read goes through `durable::open_regular`: a link, a FIFO or anything but a regular
//! file under one of these names is an error naming it, never followed, never waited on.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use walship_common::state::{
    is_restore_record_name, restore_record_name, Fence, Pin, RestoreLog, FENCE_FILE,
    FENCE_LOCK_FILE, LOCK_FILE, PIN_FILE, RESTORE_LOG_FILE, STATE_FILE_LIMIT,
};
use walship_common::sys::durable::{self, DurableError, OpenError};
use walship_common::valve::{GapLog, GapRange, GAPS_FILE};
use walship_common::{SystemId, WalFileName};

use crate::error::ReceiverError;

/// Mode of the pin, the fence and the restore records: readable by all (they hold no secret,
/// and `restore`, `promote` and `status` may run as other users than `serve`).
const STATE_FILE_MODE: u32 = 0o644;
/// Mode of `walship.lock` (it holds a pid).
const LOCK_FILE_MODE: u32 = 0o640;

/// How long a fence writer waits for uploads between their fence check and their link (each
/// holds the lock for one fsync of a segment and of the directory: milliseconds, seconds on a
/// struggling disk).
pub const FENCE_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The cluster the archive is pinned to, if any.
pub fn read_pin(dir: &Path) -> Result<Option<SystemId>, ReceiverError> {
    let path = dir.join(PIN_FILE);
    let Some(text) = durable::read_regular(&path, STATE_FILE_LIMIT)? else {
        return Ok(None);
    };
    Pin::decode(&text)
        .map(|p| Some(p.0))
        .map_err(|e| ReceiverError::BadPin {
            path,
            reason: e.to_string(),
        })
}

/// Pin the archive to `id`, durably like a segment: after a crash the archive must still know
/// its cluster. Never replaces a pin (a different one is a conflict).
pub fn write_pin(dir: &Path, id: SystemId) -> Result<(), DurableError> {
    let body = Pin(id).encode();
    durable::publish_new(dir, PIN_FILE, body.as_bytes(), STATE_FILE_MODE).map(|_| ())
}

/// The fence, when the standby was promoted.
pub fn read_fence(dir: &Path) -> Result<Option<Fence>, ReceiverError> {
    let path = dir.join(FENCE_FILE);
    match durable::read_regular(&path, STATE_FILE_LIMIT)? {
        Some(text) => Fence::decode(&text)
            .map(Some)
            .map_err(|e| ReceiverError::BadState {
                path,
                reason: e.to_string(),
            }),
        None => Ok(None),
    }
}

/// The gaps the primary's pg_wal valve reported (`walship.gaps`); empty when none.
pub fn read_gaps(dir: &Path) -> Result<GapLog, ReceiverError> {
    let path = dir.join(GAPS_FILE);
    match durable::read_regular(&path, STATE_FILE_LIMIT)? {
        Some(text) => GapLog::decode(&text).map_err(|e| ReceiverError::BadGapRecord {
            path,
            reason: e.to_string(),
        }),
        None => Ok(GapLog::default()),
    }
}

/// The recorded gaps as ranges: all of them, and those still open for a standby that last
/// restored `served` (not yet replayed past: it was not rebuilt from a later base backup).
pub fn gap_ranges(
    dir: &Path,
    seg_size: u64,
    served: Option<&WalFileName>,
) -> Result<(Vec<GapRange>, Vec<GapRange>), ReceiverError> {
    let all = read_gaps(dir)?.ranges(seg_size);
    let served = match served {
        Some(WalFileName::Segment(s)) => Some(*s),
        _ => None,
    };
    let open = all
        .iter()
        .filter(|g| !g.behind(served.as_ref(), seg_size))
        .copied()
        .collect();
    Ok((all, open))
}

/// Serialises the read-modify-write of `walship.gaps` between the streams of `serve` (only
/// `serve` writes it, and only one `serve` runs per archive_dir).
static GAPS_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Record segments the primary reported dropped, durably (before the reply that acknowledges
/// the report); the ones not known before.
pub fn record_gaps(
    dir: &Path,
    names: &[walship_common::SegmentName],
) -> Result<Vec<walship_common::SegmentName>, ReceiverError> {
    let _one = GAPS_WRITER.lock().unwrap_or_else(|p| p.into_inner());
    let mut gaps = read_gaps(dir)?;
    let added = gaps.merge(names, SystemTime::now());
    if !added.is_empty() {
        durable::replace(
            dir,
            GAPS_FILE,
            gaps.encode().as_bytes(),
            STATE_FILE_MODE,
            durable::Sync::Durable,
        )?;
    }
    Ok(added)
}

/// Write (or replace) the fence durably: it must survive a crash of the standby host. Taken
/// under the exclusive fence lock, so it waits for uploads that passed the fence check.
pub fn write_fence(dir: &Path, fence: &Fence) -> Result<(), ReceiverError> {
    let _lock = FenceLock::exclusive(dir, FENCE_LOCK_WAIT)?;
    let body = fence.encode();
    durable::replace(
        dir,
        FENCE_FILE,
        body.as_bytes(),
        STATE_FILE_MODE,
        durable::Sync::Durable,
    )?;
    Ok(())
}

/// Put back the fence that was there before a promotion that did not happen: `previous`
/// (an earlier, valid promotion stays fenced), or no fence at all, durably either way (or a
/// healthy primary stays fenced after a crash).
pub fn restore_fence(dir: &Path, previous: Option<&Fence>) -> Result<(), ReceiverError> {
    if let Some(f) = previous {
        return write_fence(dir, f);
    }
    let _lock = FenceLock::exclusive(dir, FENCE_LOCK_WAIT)?;
    durable::remove_durably(dir, FENCE_FILE)?;
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
    let mode = Mode::from_raw_mode(STATE_FILE_MODE);
    let fd = rustix::fs::open(&path, flags | OFlags::CREATE, mode)
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

/// [`LOCK_FILE`], locked by this `serve` for its whole life: a second `serve` on the same
/// archive_dir stops before touching anything (it would remove the first one's in-flight temp
/// files as leftovers). The kernel drops the lock when the process exits, however it exits.
#[derive(Debug)]
pub struct ArchiveLock {
    _file: fs::File,
}

/// How long `serve` retries the archive lock before it reports it held: `status` probes it
/// with a shared lock held for microseconds ([`serve_running`]), which must not make a
/// `serve` starting at that moment give up.
const ARCHIVE_LOCK_RETRY: Duration = Duration::from_millis(250);

impl ArchiveLock {
    /// Take the lock (the file created 0640 if missing, never through a symlink) with an
    /// exclusive, non-blocking flock, and write our pid in it. Held: the pid found there.
    pub fn take(dir: &Path) -> Result<Self, ReceiverError> {
        use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
        let path = dir.join(LOCK_FILE);
        let err = |source: io::Error| ReceiverError::ArchiveDir {
            path: path.clone(),
            source,
        };
        let fd = open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(LOCK_FILE_MODE),
        )
        .map_err(|e| err(e.into()))?;
        let deadline = Instant::now() + ARCHIVE_LOCK_RETRY;
        loop {
            match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(ReceiverError::ArchiveInUse {
                        path: dir.to_path_buf(),
                        pid: holder_pid(fs::File::from(fd)),
                    });
                }
                Err(e) => return Err(err(e.into())),
            }
        }
        let mut file = fs::File::from(fd);
        file.set_len(0).map_err(err)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(err)?;
        Ok(ArchiveLock { _file: file })
    }
}

/// Whether a `serve` runs on `dir`: the pid it wrote in [`LOCK_FILE`] ("unknown" if the file
/// is still empty) when the lock is held, `None` when nobody holds it or the file does not
/// exist. Probed with a non-blocking shared flock, released at once (a `serve` starting in
/// that instant retries, see [`ArchiveLock::take`]); the file is opened read-only and never
/// through a link, since `status` may run as another user than `serve`.
pub fn serve_running(dir: &Path) -> Result<Option<String>, ReceiverError> {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    let path = dir.join(LOCK_FILE);
    let err = |source: io::Error| ReceiverError::ArchiveDir {
        path: path.clone(),
        source,
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match open(&path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(err(e.into())),
    };
    let file = fs::File::from(fd);
    if !file.metadata().map_err(err)?.file_type().is_file() {
        return Err(err(io::Error::other(
            "not a regular file; remove it (serve recreates it)",
        )));
    }
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        // Nobody holds it; closing the file releases our probe.
        Ok(()) => Ok(None),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(Some(holder_pid(file))),
        Err(e) => Err(err(e.into())),
    }
}

/// The pid a `serve` wrote in the lock file, "unknown" when it is empty or unreadable.
fn holder_pid(mut file: fs::File) -> String {
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    match pid.trim() {
        "" => "unknown".to_string(),
        pid => pid.chars().take(20).collect(),
    }
}

/// The restore record `name`; a missing or unparsable one reads as empty (it is advisory). A
/// link or another non-regular file under the name is an error naming it.
pub fn read_restore_log(dir: &Path, name: &str) -> Result<RestoreLog, OpenError> {
    Ok(durable::read_regular(&dir.join(name), STATE_FILE_LIMIT)?
        .and_then(|t| RestoreLog::decode(&t).ok())
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
        None => only_record(dir)?,
    };
    if let Some(name) = own {
        if durable::open_regular(&dir.join(&name))?.is_some() {
            return read_restore_log(dir, &name);
        }
    }
    read_restore_log(dir, RESTORE_LOG_FILE)
}

/// The name of the one per-standby record in `dir`, if there is exactly one.
fn only_record(dir: &Path) -> Result<Option<String>, OpenError> {
    let mut records = fs::read_dir(dir)
        .map_err(|source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_restore_record_name(n));
    Ok(match (records.next(), records.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    })
}

/// Note in the record of the standby in `data_dir` (canonical, from `restore`'s working
/// directory) that `name` was served (or missed) at `at`.
pub fn note_restore(
    dir: &Path,
    data_dir: &Path,
    name: &WalFileName,
    served: bool,
    at: SystemTime,
) -> Result<(), DurableError> {
    let record = restore_record_name(data_dir.as_os_str().as_encoded_bytes());
    let mut log = read_restore_log(dir, &record)?;
    log.note(data_dir.display().to_string(), name.clone(), served, at);
    write_restore_log(dir, &record, &log)
}

/// Replace the restore record `name`. Not fsynced: it is on restore's hot path and a record
/// lost in a power failure only makes `promote` wait for the next restore call. Padded to a
/// fixed size and exchanged with its spare (`durable::replace_in_place`): as cheap as `cp`.
pub fn write_restore_log(dir: &Path, name: &str, log: &RestoreLog) -> Result<(), DurableError> {
    durable::replace_in_place(
        dir,
        name,
        &log.encode_padded(),
        STATE_FILE_MODE,
        durable::Sync::AdvisoryOnly,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use walship_common::state::RestoreEvent;
    use walship_common::sys::durable::SPARE_SUFFIX;
    use walship_common::{Lsn, TimelineId};

    fn event(name: &str, at: u64) -> Option<RestoreEvent> {
        Some(RestoreEvent {
            name: name.parse().unwrap(),
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(at),
        })
    }

    fn record() -> String {
        restore_record_name(b"/srv/standby")
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn fence(timeline: u32, lsn: Option<u64>) -> Fence {
        Fence {
            timeline: TimelineId(timeline),
            promoted_at_lsn: lsn.map(Lsn),
            new_timeline: lsn.map(|_| TimelineId(timeline + 1)),
            fenced_at: SystemTime::UNIX_EPOCH + Duration::from_millis(7),
        }
    }

    #[test]
    fn pin_is_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_pin(dir.path()).unwrap(), None);
        write_pin(dir.path(), SystemId(u64::MAX - 1)).unwrap();
        write_pin(dir.path(), SystemId(u64::MAX - 1)).unwrap();
        assert_eq!(read_pin(dir.path()).unwrap(), Some(SystemId(u64::MAX - 1)));
        assert!(matches!(
            write_pin(dir.path(), SystemId(5)),
            Err(DurableError::Conflict { .. })
        ));
        // The format of earlier versions (the same text, written by hand).
        fs::write(
            dir.path().join(PIN_FILE),
            "# Written by walship-receiver: this archive holds WAL of this cluster only.\nsystem_identifier = 7372041215042384562\n",
        )
        .unwrap();
        assert_eq!(
            read_pin(dir.path()).unwrap(),
            Some(SystemId(7_372_041_215_042_384_562))
        );
        fs::write(dir.path().join(PIN_FILE), "cluster = 5\n").unwrap();
        let err = read_pin(dir.path()).unwrap_err();
        assert!(err.to_string().contains("system_identifier"), "{err}");
    }

    #[test]
    fn state_files_are_never_read_through_links_or_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("some.conf");
        fs::write(&victim, "system_identifier = 1\ntimeline = 1\n").unwrap();
        for name in [PIN_FILE, FENCE_FILE] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let err = read_pin(dir.path()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = read_fence(dir.path()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::remove_file(dir.path().join(FENCE_FILE)).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join(FENCE_FILE),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = read_fence(dir.path()).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    #[test]
    fn fence_round_trips_and_reads_the_sentinel_of_earlier_versions() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), None);
        for f in [fence(1, None), fence(1, Some(0x5000028))] {
            write_fence(dir.path(), &f).unwrap();
            assert_eq!(read_fence(dir.path()).unwrap(), Some(f));
        }
        // As earlier versions wrote it while promote ran.
        fs::write(
            dir.path().join(FENCE_FILE),
            "timeline = 1\npromoted_at_lsn = \"promotion in progress\"\nfenced_at_unix_ms = 7\n",
        )
        .unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), Some(fence(1, None)));
        fs::write(dir.path().join(FENCE_FILE), "timeline = 1\n").unwrap();
        let err = read_fence(dir.path()).unwrap_err();
        assert!(err.to_string().contains("fenced_at_unix_ms"), "{err}");
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
        assert_eq!(
            names(dir.path()),
            [name.clone(), format!("{name}{SPARE_SUFFIX}")]
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
            old.encode().as_bytes(),
            0o644,
            durable::Sync::AdvisoryOnly,
        )
        .unwrap();
        fs::write(
            dir.path().join(format!("{name}{SPARE_SUFFIX}")),
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
        let spare = dir.path().join(format!("{name}{SPARE_SUFFIX}"));
        std::os::unix::fs::symlink(&victim, &spare).unwrap();
        let log = RestoreLog {
            last_served: event("000000010000000000000003", 1),
            ..RestoreLog::default()
        };
        let err = write_restore_log(dir.path(), &name, &log).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!err.is_read_only());
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
        let one = fs::canonicalize(&one).unwrap();
        let served: WalFileName = "00000001000000000000000A".parse().unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(8);
        note_restore(&archive, &one, &served, true, at).unwrap();
        let mine = RestoreLog {
            data_directory: Some(one.display().to_string()),
            last_served: event("00000001000000000000000A", 8),
            last_missed: None,
        };
        assert_eq!(standby_restore_log(&archive, Some(&one)).unwrap(), mine);
        assert_eq!(standby_restore_log(&archive, Some(&two)).unwrap(), old);
        // One standby's record only: that is the one, even without knowing the data directory.
        assert_eq!(standby_restore_log(&archive, None).unwrap(), mine);
    }

    #[test]
    fn item10c_restore_fence_puts_the_earlier_fence_back() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = fence(1, Some(0x5000028));
        write_fence(dir.path(), &earlier).unwrap();
        // A re-promote fences timeline 2, then fails.
        write_fence(dir.path(), &fence(2, None)).unwrap();
        restore_fence(dir.path(), Some(&earlier)).unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), Some(earlier));
        // Without an earlier fence, the failed promotion's fence goes (twice is fine).
        restore_fence(dir.path(), None).unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), None);
        restore_fence(dir.path(), None).unwrap();
        assert_eq!(names(dir.path()), [FENCE_LOCK_FILE]);
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
    }

    #[test]
    fn archive_lock_is_taken_once_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = ArchiveLock::take(dir.path()).unwrap();
        let err = ArchiveLock::take(dir.path()).unwrap_err();
        let pid = std::process::id().to_string();
        assert!(
            matches!(&err, ReceiverError::ArchiveInUse { pid: p, .. } if *p == pid),
            "{err}"
        );
        drop(held);
        drop(ArchiveLock::take(dir.path()).unwrap());
    }

    #[test]
    fn serve_running_reads_the_lock_without_taking_it_from_serve() {
        let dir = tempfile::tempdir().unwrap();
        // No lock file yet: no serve ever ran.
        assert_eq!(serve_running(dir.path()).unwrap(), None);
        let held = ArchiveLock::take(dir.path()).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(serve_running(dir.path()).unwrap(), Some(pid));
        drop(held);
        // The file stays behind, unlocked: not running; and the probe left no lock behind.
        assert_eq!(serve_running(dir.path()).unwrap(), None);
        drop(ArchiveLock::take(dir.path()).unwrap());
        // A link under the name is refused, never followed.
        let other = tempfile::tempdir().unwrap();
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        let target = other.path().join("elsewhere");
        std::fs::write(&target, "1\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(LOCK_FILE)).unwrap();
        assert!(serve_running(dir.path()).is_err());
    }
}
