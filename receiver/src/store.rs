//! The archive directory's WAL: where verified files become visible (for `serve`), which
//! files are stored and which is the newest (for `promote` and `status`), and the startup
//! clean-up of interrupted transfers. The state files beside the WAL are [`crate::state`]'s.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::{error, info, warn};
use walship_common::proto::{ArchiveFacts, Refusal, Reply, Seal, Verified};
use walship_common::state::newest_segment;
use walship_common::sys::config::ReceiverSettings;
use walship_common::sys::durable::{self, DurableError, Published, TempFile};
use walship_common::wal::header::LONG_PAGE_HEADER_LEN;
use walship_common::wal::history::{History, MAX_HISTORY_BYTES};
use walship_common::wal::partial::check_append;
use walship_common::{sys, LongPageHeader, SegmentName, SystemId, TimelineId, WalFileName};

use crate::error::ReceiverError;
use crate::state::{self, ArchiveLock, FenceLock};

/// Archived files are readable by the owner's group too, so that `restore` run by the
/// PostgreSQL user works when the receiver runs as another user of the same group.
pub const FILE_MODE: u32 = 0o640;

#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    /// The cluster's system identifier once known; the lock also serialises pinning.
    cluster: Mutex<Option<SystemId>>,
    /// Serialises appends to `NAME.partial` files and their retirement when `NAME` is stored.
    partials: Mutex<()>,
    /// Tests only: stop `commit` right after its fence check, to interleave a fence writer.
    #[cfg(test)]
    pause: Option<tests::Pause>,
    /// `walship.lock`, locked: released when `serve` exits (or dies).
    _lock: ArchiveLock,
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
        let lock = ArchiveLock::take(&dir)?;
        for path in durable::remove_leftovers(&dir)? {
            warn!(path = %path.display(), "removed leftover of an interrupted transfer");
        }
        let pinned = state::read_pin(&dir)?;
        // A data directory without global/pg_control is not a standby yet: absent (to be
        // made by `basebackup`) or an unfinished backup. The pin decides until then.
        let standby_pgdata = settings.pgdata.as_ref().filter(|p| {
            p.join(walship_common::pg_control::CONTROL_FILE_PATH)
                .exists()
        });
        if let (Some(pgdata), None) = (&settings.pgdata, standby_pgdata) {
            info!(pgdata = %pgdata.display(), "no standby in pgdata yet (no global/pg_control): waiting for walship-sender basebackup");
        }
        let cluster = match standby_pgdata {
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
                    None => state::write_pin(&dir, standby)?,
                }
                Some(standby)
            }
            None => pinned,
        };
        match cluster {
            Some(id) => info!(system_identifier = %id, "archive belongs to cluster {id}"),
            None => info!("archive not pinned yet: it will hold WAL of the cluster of the first accepted segment, and refuse segments of any other"),
        }
        Ok(Archive {
            dir,
            cluster: Mutex::new(cluster),
            partials: Mutex::new(()),
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

    /// Pin the archive to the cluster a base backup comes from (blocking): refused when the
    /// archive already holds another cluster's WAL.
    pub fn pin_to(&self, id: SystemId) -> Result<(), Refusal> {
        let mut cluster = self.cluster.lock().expect("cluster lock poisoned");
        match *cluster {
            Some(c) if c != id => {
                error!("base backup of cluster {id} refused: this archive holds cluster {c}; move archive_dir away or use another");
                Err(Refusal::ForeignCluster {
                    name: "the base backup".into(),
                    segment: id.0,
                })
            }
            Some(_) => Ok(()),
            None => {
                state::write_pin(&self.dir, id)
                    .map_err(|e| storage_refusal(walship_common::state::PIN_FILE, &e))?;
                info!(system_identifier = %id, "archive pinned to cluster {id} by a base backup");
                *cluster = Some(id);
                Ok(())
            }
        }
    }

    /// Facts for a new upload of `name`. Reads the fence file each time: `promote` writes it
    /// from another process, and a segment must be refused from the moment it exists. For a
    /// history file also the stored histories, for a backup history file the stored size of
    /// the segment it starts in (rare uploads: a few small reads).
    pub fn facts(&self, name: &str) -> ArchiveFacts {
        let mut facts = ArchiveFacts {
            cluster: self.cluster(),
            fence: state::read_fence(&self.dir).unwrap_or_else(|e| {
                tracing::error!("{e}");
                None
            }),
            ..ArchiveFacts::default()
        };
        match name.parse::<WalFileName>() {
            Ok(WalFileName::History(_)) => facts.histories = read_histories(&self.dir),
            Ok(WalFileName::Backup { segment, .. }) => {
                facts.backup_segment_bytes = self.segment_at_or_after(&segment);
            }
            _ => {}
        }
        facts
    }

    /// The size of the stored segment `start`, or else of one stored after it: a backup
    /// history file is tied to this archive by its start segment, but `cleanup` may already
    /// have removed that segment when a long base backup ends (the standby passed it at a
    /// restartpoint). Refusing the file then would stall the primary's archiver for good; a
    /// later segment of this cluster shows the archive did hold the WAL the backup starts in.
    /// Only regular files count (list() reads lstat).
    fn segment_at_or_after(&self, start: &SegmentName) -> Option<u64> {
        let files = list(&self.dir).ok()?;
        let seg = |f: &StoredFile| match f.name {
            WalFileName::Segment(s) => Some((s, f.bytes)),
            _ => None,
        };
        files
            .iter()
            .filter_map(seg)
            .filter(|(s, _)| (s.log, s.seg) >= (start.log, start.seg))
            .min_by_key(|(s, _)| (s.log, s.seg) != (start.log, start.seg))
            .map(|(_, bytes)| bytes)
    }

    /// A temp file for an incoming `name`.
    pub fn temp(&self, name: &str) -> Result<TempFile, DurableError> {
        TempFile::create(&self.dir, name, FILE_MODE)
    }

    /// Make a verified upload durable and visible (blocking). Pins the archive to the upload's
    /// The fence lock, held shared until the caller's file is linked (`promote` takes it
    /// exclusively to write the fence, so once the fence is in place no file that passed this
    /// check can still appear), and the fence's verdict on `verified`. An unreadable fence
    /// refuses: better a retry than stale WAL.
    fn fence_admits(&self, verified: &Verified) -> Result<FenceLock, Refusal> {
        let failed = |detail: String| Refusal::StorageFailed {
            name: verified.name.to_string(),
            detail,
        };
        let lock = FenceLock::shared(&self.dir).map_err(|e| failed(e.to_string()))?;
        match state::read_fence(&self.dir) {
            Ok(Some(fence)) => verified.admitted_by(&fence)?,
            Ok(None) => {}
            Err(e) => return Err(failed(e.to_string())),
        }
        Ok(lock)
    }

    /// cluster if it is the first segment and nothing pinned it before.
    pub fn commit(&self, tmp: TempFile, verified: &Verified) -> Reply {
        let name = verified.name.to_string();
        // Held from the fence check until the file is linked (released on return): `promote`
        // takes it exclusively to write the fence, so once the fence is in place no segment
        // that passed the check can still appear, and promote's last replay check sees all.
        // Checked again at the last moment: the standby may have been promoted while the
        // bytes were arriving.
        let _fence_lock = match self.fence_admits(verified) {
            Ok(l) => l,
            Err(r) => return Reply::Refused(r),
        };
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
                    if let Err(e) = state::write_pin(&self.dir, id) {
                        return Reply::Refused(storage_refusal(&name, &e));
                    }
                    info!(system_identifier = %id, "archive pinned to cluster {id} by {name}");
                    *cluster = Some(id);
                }
            }
        }
        let _partials = self.partials.lock().unwrap_or_else(|p| p.into_inner());
        if let WalFileName::Partial(_) = verified.name {
            // A whole `.partial` (archived by a promoted standby) over the open segment this
            // archive held as it grew: the stream partial is a prefix of it, superseded.
            match self.superseded_partial(&name, tmp.path()) {
                Ok(true) => {
                    return match tmp.publish_replacing(&name) {
                        Ok(()) => {
                            info!("{name}: the partial shipped as it grew is replaced by the whole one it is a prefix of");
                            Reply::Stored
                        }
                        Err(e) => Reply::Refused(storage_refusal(&name, &e)),
                    }
                }
                Ok(false) => {}
                Err(e) => return Reply::Refused(storage_refusal(&name, &e)),
            }
        }
        let reply = match tmp.publish(&name) {
            Ok(Published::Stored) => Reply::Stored,
            Ok(Published::AlreadyIdentical) => Reply::AlreadyHad,
            Err(DurableError::Conflict { .. }) => {
                Reply::Refused(Refusal::ConflictingContent { name })
            }
            Err(e) => Reply::Refused(storage_refusal(&name, &e)),
        };
        if let (WalFileName::Segment(seg), Reply::Stored | Reply::AlreadyHad) =
            (&verified.name, &reply)
        {
            self.retire_partial(seg);
        }
        reply
    }

    /// Whether `dir/name` holds a shorter file that is a prefix of the temp file `tmp`.
    fn superseded_partial(&self, name: &str, tmp: &Path) -> Result<bool, DurableError> {
        let path = self.dir.join(name);
        let Some(old) = durable::open_regular(&path)? else {
            return Ok(false);
        };
        let old_len = old
            .metadata()
            .map_err(|e| io_error("stat", &path, e))?
            .len();
        let new_len = fs::metadata(tmp)
            .map_err(|e| io_error("stat", tmp, e))?
            .len();
        if old_len >= new_len {
            return Ok(false);
        }
        is_prefix(&path, tmp, old_len)
    }

    /// The finished `seg` is stored: its partial, if it is a prefix of it, goes (durably).
    /// One that is not is kept and reported: two primaries may write this timeline.
    fn retire_partial(&self, seg: &SegmentName) {
        let pname = format!("{seg}.partial");
        let ppath = self.dir.join(&pname);
        let plen = match durable::open_regular(&ppath) {
            Ok(Some(f)) => match f.metadata() {
                Ok(m) => m.len(),
                Err(_) => return,
            },
            _ => return,
        };
        match is_prefix(&ppath, &self.dir.join(seg.to_string()), plen) {
            Ok(true) => match durable::remove_durably(&self.dir, &pname) {
                Ok(_) => info!(segment = %seg, "partial retired: the finished segment is stored"),
                Err(e) => warn!("{pname}: could not remove the retired partial: {e}"),
            },
            Ok(false) => tracing::error!(
                "{pname} is not a prefix of the finished {seg} stored now: kept for inspection; two primaries may be archiving here"
            ),
            Err(e) => warn!("{pname}: could not compare with {seg}: {e}"),
        }
    }

    /// Append verified `bytes` at `offset` to the open segment's `NAME.partial` (blocking).
    /// See [`Appended`]: taken (the reply says the new end), not taken because `offset` is not
    /// what is held (the reply says where to append from), the finished segment is stored
    /// (nothing to append to), or refused (fence, cluster, page headers).
    pub fn append_partial(&self, verified: &Verified, offset: u64, bytes: &[u8]) -> Appended {
        let name = verified.name.to_string();
        let WalFileName::Partial(seg) = verified.name else {
            return Appended::Refused(Refusal::Malformed {
                reason: format!("{name}: only a NAME.partial can be appended to"),
            });
        };
        let _partials = self.partials.lock().unwrap_or_else(|p| p.into_inner());
        let _fence_lock = match self.fence_admits(verified) {
            Ok(l) => l,
            Err(r) => return Appended::Refused(r),
        };
        let storage = |e: &dyn std::fmt::Display| {
            Appended::Refused(Refusal::StorageFailed {
                name: name.clone(),
                detail: e.to_string(),
            })
        };
        match durable::open_regular(&self.dir.join(seg.to_string())) {
            Ok(Some(stored)) => return self.append_to_finished(&seg, &stored, offset, bytes),
            Ok(None) => {}
            Err(e) => return storage(&e),
        }
        let (head, have) = match durable::read_head(&self.dir.join(&name), LONG_PAGE_HEADER_LEN) {
            Ok(Some(h)) => h,
            Ok(None) => (Vec::new(), 0),
            Err(e) => return storage(&e),
        };
        if have != offset {
            return Appended::Held { bytes: have };
        }
        let head = if offset > 0 {
            match LongPageHeader::decode(&head) {
                Ok(h) => Some(h),
                Err(e) => {
                    return storage(&format!("the stored {name} has no valid page header: {e}"))
                }
            }
        } else {
            None
        };
        let header = match check_append(&seg, head.as_ref(), offset, bytes, None) {
            Ok(h) => h,
            Err(reason) => return Appended::Refused(Refusal::BadSegment { name, reason }),
        };
        {
            // As for a whole segment: the archive holds one cluster, and the first file of
            // any kind that carries a page header pins it (a partial of an unpinned archive
            // would otherwise be of any cluster, and promote would pad it for the standby).
            let mut cluster = self.cluster.lock().expect("cluster lock poisoned");
            match *cluster {
                Some(ours) if header.system_id != ours => {
                    return Appended::Refused(Refusal::ForeignCluster {
                        name,
                        segment: header.system_id.0,
                    });
                }
                Some(_) => {}
                None => {
                    if let Err(e) = state::write_pin(&self.dir, header.system_id) {
                        return Appended::Refused(storage_refusal(&name, &e));
                    }
                    info!(system_identifier = %header.system_id, "archive pinned to cluster {} by {name}", header.system_id);
                    *cluster = Some(header.system_id);
                }
            }
        }
        let result = if offset == 0 {
            durable::publish_new(&self.dir, &name, bytes, FILE_MODE).map(|_| bytes.len() as u64)
        } else {
            durable::append_at(&self.dir, &name, offset, bytes)
        };
        match result {
            Ok(end) => Appended::Taken {
                bytes: end,
                added: bytes.len() as u64,
            },
            Err(e) => Appended::Refused(storage_refusal(&name, &e)),
        }
    }
}

impl Archive {
    /// A [`Seal`]: make the `NAME.partial` this archive holds whole into the finished segment
    /// `NAME` (blocking). The partial is read back and checked as an upload of `NAME` would
    /// be (size, every page header, cluster, timeline, fence, the sender's digest of the whole
    /// segment); only then is it renamed, never replacing anything. `Stored` when sealed;
    /// `Partial` with what the partial holds when it is not exactly the whole segment, or its
    /// bytes are not the sender's (the sender then uploads the segment, which decides, as
    /// always); a refusal for what an upload would be refused for too (a fenced timeline).
    pub fn seal_partial(&self, seal: &Seal) -> Reply {
        use walship_common::proto::{Encoding, Incoming, Request};
        let name = seal.name.clone();
        let not_sealed = |bytes: u64, why: &str| {
            tracing::debug!(segment = %name, held = bytes, "not sealed: {why}");
            Reply::Partial { bytes }
        };
        let seg = match name.parse::<WalFileName>() {
            Ok(WalFileName::Segment(s)) => s,
            _ => {
                return Reply::Refused(Refusal::BadName {
                    name: name.clone(),
                    reason: "only a WAL segment can be sealed from its partial".into(),
                })
            }
        };
        let request = Request {
            name: name.clone(),
            size: seal.size,
            encoding: Encoding::Plain,
            dropped: Vec::new(),
            append_at: None,
        };
        let mut incoming = match Incoming::begin(&request, &self.facts(&name)) {
            Ok(i) => i,
            Err(r) => return Reply::Refused(r),
        };
        let _partials = self.partials.lock().unwrap_or_else(|p| p.into_inner());
        let pname = format!("{seg}.partial");
        let storage = |e: &dyn std::fmt::Display| {
            Reply::Refused(Refusal::StorageFailed {
                name: name.clone(),
                detail: e.to_string(),
            })
        };
        if let Ok(Some(_)) = durable::open_regular(&self.dir.join(&name)) {
            return not_sealed(0, "the finished segment is stored already");
        }
        let mut file = match durable::open_regular(&self.dir.join(&pname)) {
            Ok(Some(f)) => f,
            Ok(None) => return not_sealed(0, "no partial"),
            Err(e) => return storage(&e),
        };
        let held = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return storage(&e),
        };
        if held != seal.size {
            return not_sealed(held, "the partial is not the whole segment");
        }
        // Read back and checked as the upload would be: the plain bytes, then the digest.
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return storage(&e),
            };
            read += n as u64;
            if let Err(r) = incoming.absorb(&buf[..n], &mut |_| Ok(())) {
                warn!("{pname} cannot be sealed as {name}: {r}; the sender uploads it instead");
                return not_sealed(held, "content refused");
            }
        }
        if read != held {
            return not_sealed(read, "the partial changed size while read");
        }
        if let Err(r) = incoming.absorb(&seal.digest, &mut |_| Ok(())) {
            return not_sealed(held, &r.to_string());
        }
        let verified = match incoming.finish() {
            Ok(v) => v,
            Err(r) => {
                warn!("{pname} cannot be sealed as {name}: {r}; the sender uploads it instead");
                return not_sealed(held, "content refused");
            }
        };
        // As `commit`: the fence is checked again, held until the name is durable.
        let _fence_lock = match self.fence_admits(&verified) {
            Ok(l) => l,
            Err(r) => return Reply::Refused(r),
        };
        match (verified.system_id, self.cluster()) {
            (Some(id), Some(ours)) if id != ours => {
                return Reply::Refused(Refusal::ForeignCluster {
                    name,
                    segment: id.0,
                })
            }
            (_, None) => return not_sealed(held, "the archive is not pinned to a cluster yet"),
            _ => {}
        }
        match durable::rename_new(&self.dir, &file, &pname, &name) {
            Ok(()) => {
                info!(segment = %seg, "sealed: the partial held whole is the finished segment");
                Reply::Stored
            }
            Err(DurableError::Conflict { .. }) => not_sealed(held, "the finished segment appeared"),
            Err(e) => Reply::Refused(storage_refusal(&name, &e)),
        }
    }
}

/// What became of one append to a `NAME.partial` ([`Archive::append_partial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Appended durably: the partial now holds `bytes` bytes, `added` of them new.
    Taken {
        bytes: u64,
        added: u64,
    },
    /// Not appended: the offset was not the partial's length, `bytes` (a gap, an overlap, or
    /// a restarted sender asking where to resume).
    Held {
        bytes: u64,
    },
    /// Not appended: the finished segment is stored, nothing more to append to.
    Finished,
    Refused(Refusal),
}

impl Appended {
    /// The reply to the sender.
    pub fn reply(&self) -> Reply {
        match self {
            Appended::Taken { bytes, .. } | Appended::Held { bytes } => {
                Reply::Partial { bytes: *bytes }
            }
            Appended::Finished => Reply::AlreadyHad,
            Appended::Refused(r) => Reply::Refused(r.clone()),
        }
    }
}

impl Archive {
    /// An append to the partial of `seg`, which is stored finished (`stored`): nothing to
    /// append to. Answered [`Appended::Finished`] ("already had") only when the bytes are the
    /// stored segment's at `offset` (or there are none: a sender asking where to resume);
    /// bytes of another cluster, or other bytes, are refused as for a whole upload.
    fn append_to_finished(
        &self,
        seg: &SegmentName,
        stored: &fs::File,
        offset: u64,
        bytes: &[u8],
    ) -> Appended {
        use std::os::unix::fs::FileExt as _;
        if bytes.is_empty() {
            return Appended::Finished;
        }
        let name = seg.to_string();
        if offset == 0 {
            if let (Ok(h), Some(ours)) = (LongPageHeader::decode(bytes), self.cluster()) {
                if h.system_id != ours {
                    return Appended::Refused(Refusal::ForeignCluster {
                        name: format!("{name}.partial"),
                        segment: h.system_id.0,
                    });
                }
            }
        }
        let len = stored.metadata().map(|m| m.len()).unwrap_or(0);
        let mut ours = vec![0u8; bytes.len()];
        let same = offset
            .checked_add(bytes.len() as u64)
            .is_some_and(|end| end <= len)
            && stored.read_exact_at(&mut ours, offset).is_ok()
            && ours == bytes;
        if same {
            Appended::Finished
        } else {
            Appended::Refused(Refusal::ConflictingContent { name })
        }
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> DurableError {
    DurableError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether the first `len` bytes of `a` and `b` are equal (both opened as regular files).
fn is_prefix(a: &Path, b: &Path, len: u64) -> Result<bool, DurableError> {
    let open = |p: &Path| -> Result<fs::File, DurableError> {
        durable::open_regular(p)?
            .ok_or_else(|| io_error("open", p, std::io::ErrorKind::NotFound.into()))
    };
    let (mut fa, mut fb) = (open(a)?.take(len), open(b)?.take(len));
    let (mut ba, mut bb) = (vec![0u8; 256 << 10], vec![0u8; 256 << 10]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| io_error("read", a, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| io_error("read", b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
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

/// The newest segment among `files` (see [`newest_segment`]) and when it arrived.
pub fn newest_arrival(files: &[StoredFile]) -> Option<(SegmentName, SystemTime)> {
    let newest = newest_segment(files.iter().map(|f| &f.name))?;
    files
        .iter()
        .find(|f| f.name == WalFileName::Segment(newest))
        .map(|f| (newest, f.modified))
}

/// The archive's segment size: the size of a stored segment (16 MiB when none is stored).
pub fn segment_size(files: &[StoredFile]) -> u64 {
    files
        .iter()
        .find(|f| matches!(f.name, WalFileName::Segment(_)))
        .map(|f| f.bytes)
        .filter(|b| walship_common::wal::name::is_valid_seg_size(*b))
        .unwrap_or(16 << 20)
}

/// The open segment's partial as the receiver holds it: the newest `NAME.partial` whose
/// finished `NAME` is not stored (a whole `.partial` archived by a promoted standby counts
/// too: it is the end of its timeline).
#[derive(Debug, Clone)]
pub struct OpenPartial {
    pub segment: SegmentName,
    pub bytes: u64,
    /// Its segment size, from its long page header.
    pub seg_size: u64,
    /// The LSN its bytes reach.
    pub lsn: walship_common::Lsn,
    /// When its last bytes were stored.
    pub modified: SystemTime,
}

/// See [`OpenPartial`]; `None` when there is none, or its page header cannot be read.
pub fn open_partial(dir: &Path, files: &[StoredFile]) -> Option<OpenPartial> {
    let finished = |s: &SegmentName| files.iter().any(|f| f.name == WalFileName::Segment(*s));
    let (segment, file) = files
        .iter()
        .filter_map(|f| match f.name {
            WalFileName::Partial(s) if !finished(&s) => Some((s, f)),
            _ => None,
        })
        .max_by_key(|(s, _)| (s.timeline, s.log, s.seg))?;
    let (head, bytes) = durable::read_head(&dir.join(file.name.to_string()), LONG_PAGE_HEADER_LEN)
        .ok()
        .flatten()?;
    let header = LongPageHeader::decode(&head).ok()?;
    let seg_size = u64::from(header.seg_size);
    let start = segment.start_lsn(seg_size).ok()?;
    Some(OpenPartial {
        segment,
        bytes,
        seg_size,
        lsn: walship_common::Lsn(start.0 + bytes),
        modified: file.modified,
    })
}

/// One stored WAL file.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub name: WalFileName,
    pub bytes: u64,
    pub modified: SystemTime,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;
    use walship_common::proto::digest::Hasher;
    use walship_common::state::{Fence, FENCE_LOCK_FILE};
    use walship_common::wal::name::SegNo;

    use crate::state::{read_fence, write_fence};

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
            partials: Mutex::new(()),
            _lock: ArchiveLock::take(dir).unwrap(),
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
            append: false,
        };
        (tmp, verified)
    }

    fn fence_on(timeline: u32) -> Fence {
        Fence {
            timeline: TimelineId(timeline),
            promoted_at_lsn: None,
            new_timeline: None,
            fenced_at: SystemTime::UNIX_EPOCH,
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

    #[test]
    fn item10a_a_commit_that_cannot_lock_the_fence_refuses() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO where the fence lock should be: the lock cannot be taken (see state's tests).
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join(FENCE_LOCK_FILE),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(FenceLock::shared(dir.path()).is_err());
        // A commit that cannot lock refuses rather than storing unchecked.
        let archive = Archive {
            dir: dir.path().to_path_buf(),
            cluster: Mutex::new(None),
            partials: Mutex::new(()),
            _lock: ArchiveLock::take(dir.path()).unwrap(),
            pause: None,
        };
        let (tmp, verified) = upload(&archive, 1, 3);
        assert!(matches!(
            archive.commit(tmp, &verified),
            Reply::Refused(Refusal::StorageFailed { .. })
        ));
        assert!(!dir.path().join(verified.name.to_string()).exists());
    }

    #[test]
    fn a_backup_history_file_is_tied_to_its_start_segment_or_one_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, _, _) = paused_archive(dir.path());
        let name = |no| SegmentName::from_segno(TimelineId(1), SegNo(no), SEG).to_string();
        let backup = format!("{}.00000028.backup", name(5));
        // Nothing stored at or after segment 5: not tied to this archive (yet).
        fs::write(dir.path().join(name(4)), vec![0u8; 100]).unwrap();
        assert_eq!(archive.facts(&backup).backup_segment_bytes, None);
        // A later segment: cleanup removed the start segment after the standby passed it.
        fs::write(dir.path().join(name(7)), vec![0u8; 300]).unwrap();
        assert_eq!(archive.facts(&backup).backup_segment_bytes, Some(300));
        // The start segment itself wins; a link under its name is not a stored segment.
        std::os::unix::fs::symlink(dir.path().join(name(4)), dir.path().join(name(5))).unwrap();
        assert_eq!(archive.facts(&backup).backup_segment_bytes, Some(300));
        fs::remove_file(dir.path().join(name(5))).unwrap();
        fs::write(dir.path().join(name(5)), vec![0u8; 200]).unwrap();
        assert_eq!(archive.facts(&backup).backup_segment_bytes, Some(200));
    }
}
