//! The archive directory: where verified files become visible, which cluster it belongs to,
//! and the startup clean-up of interrupted transfers.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tracing::{info, warn};
use walship_common::config::ReceiverSettings;
use walship_common::durable::{self, DurableError, Published, TempFile};
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

#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    /// The cluster's system identifier once known; the lock also serialises pinning.
    cluster: Mutex<Option<SystemId>>,
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
        sha256: &[u8; 32],
    ) -> io::Result<Option<bool>> {
        let mut file = match fs::File::open(self.dir.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() != size {
            return Ok(Some(false));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match file.read(&mut buf)? {
                0 => break,
                n => hasher.update(&buf[..n]),
            }
        }
        let identical = <[u8; 32]>::from(hasher.finalize()) == *sha256;
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
pub fn write_restore_log(dir: &Path, log: &RestoreLog) -> Result<(), DurableError> {
    durable::replace(
        dir,
        RESTORE_LOG_FILE,
        log.to_toml().as_bytes(),
        0o644,
        durable::Sync::AdvisoryOnly,
    )
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
