//! The one durable-write helper. Every file walship stores (WAL, the cluster pin, certificates)
//! goes through here, in this order:
//!
//! 1. create a temp file in the *same directory* with `create_new` (a rename/link across
//!    directories or file systems would not be atomic), named `.walship-tmp.<name>.<pid>.<n>` so
//!    that startup can remove leftovers and `restore` (which only serves WAL names) never sees one;
//! 2. write the bytes;
//! 3. `fsync` the file: its data must be on disk before any name points at it;
//! 4. `link` it to the final name: a hard link never replaces an existing name (it fails with
//!    `EEXIST`), so a stored file can never be overwritten, even by a racing upload;
//! 5. remove the temp name and `fsync` the directory: the new directory entry is durable only
//!    once the directory itself is synced;
//! 6. only then may the caller report "stored".
//!
//! When the final name exists already the contents are compared: identical means already
//! stored (we still sync it, in case a racing writer has not finished step 5), different means
//! a conflict and the stored file is left untouched.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temp file: hidden, and never a WAL file name.
pub const TEMP_PREFIX: &str = ".walship-tmp.";

/// Outcome of a successful publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The file is new and durable under its name.
    Stored,
    /// A file with identical content was already stored under that name.
    AlreadyIdentical,
}

#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("{} already exists with different content; the stored file was left untouched", path.display())]
    Conflict { path: PathBuf },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DurableError {
    /// True when the failure is the disk (or quota) being full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            DurableError::Io { source, .. } => is_disk_full(source),
            DurableError::Conflict { .. } => false,
        }
    }
}

/// True for ENOSPC and EDQUOT.
pub fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DurableError + 'a {
    move |source| DurableError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A temp file being written; removed on drop unless published.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    published: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    /// Create `dir/.walship-tmp.<name>.<pid>.<n>` with `create_new` and the given mode.
    pub fn create(dir: &Path, name: &str, mode: u32) -> Result<Self, DurableError> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TEMP_PREFIX}{name}.{}.{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io_err("create temp file", &path))?;
        Ok(TempFile {
            file,
            path,
            dir: dir.to_path_buf(),
            published: false,
        })
    }

    /// The open file, for writing.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ask the kernel to start writing `len` bytes at `offset` to disk now, without waiting
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, as PostgreSQL does for its own WAL). Data
    /// reaches the disk while the rest of the file is still arriving, so the final fsync in
    /// [`publish`](Self::publish) has little left to do. This is a hint, not durability: the
    /// fsync still decides, and an error here is ignored.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: sync_file_range only reads its integer arguments; `fd` is an open descriptor
        // owned by `self.file` for the duration of the call.
        #[allow(unsafe_code)]
        let _ = unsafe {
            libc::sync_file_range(fd, offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE)
        };
    }

    /// fsync, link to `dir/name` without replacing, remove the temp name, fsync the directory.
    pub fn publish(mut self, name: &str) -> Result<Published, DurableError> {
        // The data must be on disk before any name points at it.
        self.file.sync_all().map_err(io_err("fsync", &self.path))?;
        let target = self.dir.join(name);
        let outcome = match fs::hard_link(&self.path, &target) {
            Ok(()) => Published::Stored,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if same_content(&self.path, &target).map_err(io_err("compare with", &target))? {
                    // A racing writer may have linked it without syncing the directory yet:
                    // sync the file and, below, the directory, before saying it is stored.
                    File::open(&target)
                        .and_then(|f| f.sync_all())
                        .map_err(io_err("fsync", &target))?;
                    Published::AlreadyIdentical
                } else {
                    return Err(DurableError::Conflict { path: target });
                }
            }
            Err(e) => return Err(io_err("link temp file to", &target)(e)),
        };
        // Drop the temp name first so one directory fsync makes both changes durable.
        fs::remove_file(&self.path).map_err(io_err("remove temp file", &self.path))?;
        self.published = true;
        sync_dir(&self.dir)?;
        Ok(outcome)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.published {
            // Best effort: a leftover is removed at the next startup anyway.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Write `body` durably as `dir/name` (see the module doc), never replacing an existing file.
pub fn publish_new(
    dir: &Path,
    name: &str,
    body: &[u8],
    mode: u32,
) -> Result<Published, DurableError> {
    let tmp = TempFile::create(dir, name, mode)?;
    (&tmp.file)
        .write_all(body)
        .map_err(io_err("write", &tmp.path))?;
    tmp.publish(name)
}

/// How much a [`replace`] must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync file and directory: the new content survives a power loss.
    Durable,
    /// Atomic (readers see old or new, never a mix) but not fsynced: for advisory records on a
    /// hot path, whose loss in a power failure only costs a re-check.
    AdvisoryOnly,
}

/// Atomically replace `dir/name` with `body` (temp file, write, [fsync], rename, [fsync dir]).
/// For state files that change (the fence, the restore record), never for WAL.
pub fn replace(
    dir: &Path,
    name: &str,
    body: &[u8],
    mode: u32,
    sync: Sync,
) -> Result<(), DurableError> {
    let mut tmp = TempFile::create(dir, name, mode)?;
    (&tmp.file)
        .write_all(body)
        .map_err(io_err("write", &tmp.path))?;
    if sync == Sync::Durable {
        tmp.file.sync_all().map_err(io_err("fsync", &tmp.path))?;
    }
    let target = dir.join(name);
    fs::rename(&tmp.path, &target).map_err(io_err("rename temp file to", &target))?;
    tmp.published = true;
    if sync == Sync::Durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsync a directory, making its entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Remove temp files left by interrupted writes; returns what was removed.
pub fn remove_leftovers(dir: &Path) -> Result<Vec<PathBuf>, DurableError> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove leftover", &path))?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Byte-for-byte comparison of two files.
pub fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn publishes_new_file_with_mode_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let out = publish_new(dir.path(), "a", b"hello", 0o600).unwrap();
        assert_eq!(out, Published::Stored);
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"hello");
        let mode = fs::metadata(dir.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn identical_is_already_stored_and_different_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        publish_new(dir.path(), "a", b"one", 0o644).unwrap();
        assert_eq!(
            publish_new(dir.path(), "a", b"one", 0o644).unwrap(),
            Published::AlreadyIdentical
        );
        let err = publish_new(dir.path(), "a", b"two", 0o644).unwrap_err();
        assert!(matches!(err, DurableError::Conflict { .. }), "{err}");
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"one");
        // Same length, different bytes: still a conflict.
        assert!(publish_new(dir.path(), "a", b"onf", 0o644).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_temp_file_is_removed_and_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = TempFile::create(dir.path(), "x", 0o600).unwrap();
        let path = tmp.path().to_path_buf();
        assert!(path.exists());
        drop(tmp);
        assert!(!path.exists());

        fs::write(
            dir.path().join(".walship-tmp.000000010000000000000001.1.2"),
            b"junk",
        )
        .unwrap();
        fs::write(dir.path().join("000000010000000000000001"), b"keep").unwrap();
        let removed = remove_leftovers(dir.path()).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(dir.path().join("000000010000000000000001").exists());
    }

    #[test]
    fn replace_overwrites_atomically() {
        let dir = tempfile::tempdir().unwrap();
        replace(dir.path(), "state", b"one", 0o644, Sync::Durable).unwrap();
        replace(dir.path(), "state", b"two", 0o644, Sync::AdvisoryOnly).unwrap();
        assert_eq!(fs::read(dir.path().join("state")).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn same_content_compares_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        fs::write(&a, &big).unwrap();
        fs::write(&b, &big).unwrap();
        assert!(same_content(&a, &b).unwrap());
        let mut other = big.clone();
        other[150_000] ^= 1;
        fs::write(&b, &other).unwrap();
        assert!(!same_content(&a, &b).unwrap());
    }
}
