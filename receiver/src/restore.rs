//! `walship-receiver restore NAME PATH`: PostgreSQL's restore_command. Copies an archived file
//! to where recovery wants it. A missing file is routine (PostgreSQL probes for history files
//! and the next segment all the time), so it is exit 1 with nothing on stderr.
//!
//! Only what walship could have stored is served: a regular file (never through a link, never
//! waiting on a FIFO), and for a segment one whose size is a WAL segment size and whose long
//! page header (`XLogLongPageHeaderData`, `xlog_internal.h`) names this segment, declares that
//! size and comes from the pinned cluster. Anything else is one error line and exit 2: exit 1
//! would tell PostgreSQL "not archived yet" and it would wait silently.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use walship_common::sys::config::ReceiverSettings;
use walship_common::sys::durable::{self, DurableError, OpenError, TEMP_PREFIX};
use walship_common::wal::header::LONG_PAGE_HEADER_LEN;
use walship_common::wal::name::is_valid_seg_size;
use walship_common::{sys, LongPageHeader, SegmentName, SystemId, WalFileName};

use crate::error::ReceiverError;
use crate::state;

/// Mode the restored file is created with; the caller's umask applies, as for `cp`. PostgreSQL
/// runs with umask 0077 (files 0600) or, in an `initdb -g` cluster, 0027 (files 0640): these are
/// the modes PostgreSQL gives its own WAL files (`pg_file_create_mode`), which pg_rewind checks.
const DEST_MODE: u32 = 0o640;

pub enum Restored {
    Copied(u64),
    NotArchived,
}

pub fn restore(
    settings: &ReceiverSettings,
    name: &str,
    dest: &Path,
) -> Result<Restored, ReceiverError> {
    // Only WAL names are served: temp files, the pin file and anything with a path are not.
    let parsed: WalFileName = name.parse()?;
    let dir = &settings.archive_dir;
    let src = dir.join(parsed.to_string());
    let file = match durable::open_regular(&src) {
        Ok(Some(f)) => f,
        Ok(None) => {
            // "Not archived" only when the archive is there to say so.
            check_archive_dir(dir)?;
            if let Some(o) = &settings.object_store {
                if let Some(copied) = from_bucket(settings, o, &parsed, dest)? {
                    report_record(record(settings, &parsed, true));
                    return Ok(Restored::Copied(copied));
                }
            }
            report_record(record(settings, &parsed, false));
            return Ok(Restored::NotArchived);
        }
        Err(e @ OpenError::Io { .. }) => {
            check_archive_dir(dir)?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let size = file
        .metadata()
        .map_err(|source| restore_error(name, dest, source))?
        .len();
    if let WalFileName::Segment(seg) = &parsed {
        check_segment(settings, &file, seg, size).map_err(|reason| ReceiverError::NotServed {
            name: name.to_string(),
            dir: dir.clone(),
            reason,
        })?;
    }
    let copied = copy_to(&file, size, dest).map_err(|source| restore_error(name, dest, source))?;
    report_record(record(settings, &parsed, true));
    Ok(Restored::Copied(copied))
}

fn restore_error(name: &str, dest: &Path, source: io::Error) -> ReceiverError {
    ReceiverError::Restore {
        name: name.to_string(),
        dest: dest.to_path_buf(),
        source,
    }
}

/// archive_dir exists and this user may read it; otherwise the error that says so. Called on
/// a miss and on an open error only, not on the copy path.
fn check_archive_dir(dir: &Path) -> Result<(), ReceiverError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ReceiverError::ArchiveMissing {
                path: dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReceiverError::ArchiveMissing {
                path: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(ReceiverError::ArchiveUnreadable {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    let access = rustix::fs::Access::READ_OK | rustix::fs::Access::EXEC_OK;
    rustix::fs::access(dir, access).map_err(|errno| ReceiverError::ArchiveUnreadable {
        path: dir.to_path_buf(),
        source: errno.into(),
    })
}

/// The checks `serve` made before storing a segment, made again on what is there now: size,
/// long page header against the name and the size, and the pinned cluster.
fn check_segment(
    settings: &ReceiverSettings,
    file: &File,
    seg: &SegmentName,
    size: u64,
) -> Result<(), String> {
    // A file of no segment size is refused by check_head before its header is read.
    let mut head = [0u8; LONG_PAGE_HEADER_LEN];
    if is_valid_seg_size(size) {
        file.read_exact_at(&mut head, 0)
            .map_err(|e| format!("read its page header: {e}"))?;
    }
    check_head(settings, &head, seg, size)
}

/// The header checks of [`check_segment`] on the segment's first bytes.
fn check_head(
    settings: &ReceiverSettings,
    head: &[u8],
    seg: &SegmentName,
    size: u64,
) -> Result<(), String> {
    if !is_valid_seg_size(size) {
        return Err(format!(
            "it is {size} bytes, not a WAL segment size (a power of two from 1 MiB to 1 GiB): a truncated or foreign file"
        ));
    }
    let header = LongPageHeader::decode(head).map_err(|e| e.to_string())?;
    header.check_against(seg, size).map_err(|e| e.to_string())?;
    if let Some(pin) = pinned_cluster(settings)? {
        header.check_system_id(pin).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The object-store fallback: `name` from the bucket (downloaded, decompressed, its BLAKE3
/// digest verified), then the checks of an archived file, then the same durable copy to
/// `dest`. `None` when the bucket does not have it either.
fn from_bucket(
    settings: &ReceiverSettings,
    o: &walship_common::sys::config::ObjectStoreSettings,
    parsed: &WalFileName,
    dest: &Path,
) -> Result<Option<u64>, ReceiverError> {
    let name = parsed.to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReceiverError::Task(e.to_string()))?;
    let bucket = crate::objstore::Bucket::open(o)?;
    let Some(bytes) = runtime.block_on(bucket.fetch(&name))? else {
        return Ok(None);
    };
    if let WalFileName::Segment(seg) = parsed {
        let head = bytes.get(..LONG_PAGE_HEADER_LEN).unwrap_or(&bytes);
        check_head(settings, head, seg, bytes.len() as u64).map_err(|reason| {
            ReceiverError::NotServed {
                name: name.clone(),
                dir: PathBuf::from(&o.url),
                reason,
            }
        })?;
    }
    let size = bytes.len() as u64;
    place(dest, size, |out| {
        io::Write::write_all(out, &bytes)?;
        Ok(size)
    })
    .map(Some)
    .map_err(|source| restore_error(&name, dest, source))
}

/// The archive's cluster: `walship.cluster`, or the standby's pg_control when `pgdata` is set
/// and nothing was pinned yet.
fn pinned_cluster(settings: &ReceiverSettings) -> Result<Option<SystemId>, String> {
    if let Some(id) = state::read_pin(&settings.archive_dir).map_err(|e| e.to_string())? {
        return Ok(Some(id));
    }
    match &settings.pgdata {
        Some(pgdata) => sys::pg_control::read_system_id(pgdata)
            .map(Some)
            .map_err(|e| format!("read the standby's cluster identity: {e}")),
        None => Ok(None),
    }
}

/// Copy `src` (`size` bytes) to `dest` under a temp name in the same directory, then rename:
/// `dest` is either absent or complete, never half-written. The temp file is created new
/// (`O_EXCL`, never through a link) with [`DEST_MODE`], so the umask decides the final mode.
/// `std::io::copy` between two files uses `copy_file_range`: in-kernel, as fast as `cp`.
fn copy_to(src: &File, size: u64, dest: &Path) -> io::Result<u64> {
    place(dest, size, |out| io::copy(&mut &*src, out))
}

/// Create `dest` whole or not at all: a temp file filled by `fill` (which returns the bytes
/// written, checked against `size`), then a rename.
fn place(
    dest: &Path,
    size: u64,
    fill: impl FnOnce(&mut File) -> io::Result<u64>,
) -> io::Result<u64> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = parent.join(format!(
        "{TEMP_PREFIX}{}.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(DEST_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
    };
    let mut out = match create() {
        // Left by a restore with the same pid that was killed: ours to replace.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            create()?
        }
        other => other?,
    };
    let result = fill(&mut out).and_then(|n| {
        if n != size {
            return Err(io::Error::other(format!(
                "copied {n} bytes of {size}: the archived file changed while it was copied"
            )));
        }
        drop(out);
        std::fs::rename(&tmp, dest)?;
        Ok(n)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Note what was served or missed, so `promote` knows when the standby consumed everything.
/// Segments only: history probes say nothing about replay progress. The record is the one of
/// the standby running this restore: PostgreSQL runs restore_command in its data directory.
fn record(
    settings: &ReceiverSettings,
    name: &WalFileName,
    served: bool,
) -> Result<(), DurableError> {
    if !matches!(name, WalFileName::Segment(_)) {
        return Ok(());
    }
    // getcwd: the canonical path (no links), as promote and status resolve theirs.
    let Ok(data_dir) = std::env::current_dir() else {
        return Ok(());
    };
    let now = SystemTime::now();
    state::note_restore(&settings.archive_dir, &data_dir, name, served, now)
}

/// Restore itself worked; only promote's knowledge may suffer. A read-only archive_dir is a
/// supported setup (the receiver runs as another user): no record, and nothing in PostgreSQL's
/// log each call; promote then judges by the standby's replay position. Anything else is one
/// line.
fn report_record(result: Result<(), DurableError>) {
    match result {
        Ok(()) => {}
        Err(e) if e.is_read_only() => {}
        Err(e) => eprintln!("walship-receiver: warning: restore record not written: {e}"),
    }
}
