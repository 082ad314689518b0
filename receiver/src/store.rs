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
use walship_common::proto::{ArchiveFacts, Refusal, Reply, Verified};
use walship_common::{pg_control, SystemId};

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

    pub fn facts(&self) -> ArchiveFacts {
        ArchiveFacts {
            cluster: *self.cluster.lock().expect("cluster lock poisoned"),
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

fn read_pin(dir: &Path) -> Result<Option<SystemId>, ReceiverError> {
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
