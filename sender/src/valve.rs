//! The pg_wal valve on the primary (sender.toml `max_backlog`, see `walship_common::valve`):
//! what waits in `pg_wal/archive_status`, the decision after a failed push, and the drop
//! record in `state_dir` (`walship.dropped`), written durably before `push` acknowledges a
//! dropped segment and marked "reported" once a receiver acknowledged the report.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

use walship_common::lookahead;
use walship_common::state::STATE_FILE_LIMIT;
use walship_common::sys::config::SenderSettings;
use walship_common::sys::durable::{self, Sync};
use walship_common::valve::{self, DropLog, Facts, Verdict, DROPS_FILE, DROPS_LOCK_FILE};
use walship_common::{SegmentName, WalFileName};

use crate::error::SenderError;

/// What waits in `pg_wal/archive_status`.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Files marked `.ready`.
    pub files: usize,
    /// Their bytes in pg_wal.
    pub bytes: u64,
    /// The oldest `.ready` segment.
    pub oldest: Option<SegmentName>,
}

/// List `pgdata/pg_wal/archive_status/*.ready` and add up the files' sizes.
pub fn backlog(pgdata: &Path) -> std::io::Result<Backlog> {
    let wal = pgdata.join("pg_wal");
    let mut names: Vec<WalFileName> = Vec::new();
    for entry in std::fs::read_dir(wal.join("archive_status"))? {
        if let Some(name) = entry?.file_name().to_str().and_then(lookahead::ready_name) {
            names.push(name);
        }
    }
    let bytes = names
        .iter()
        .map(|n| {
            std::fs::symlink_metadata(wal.join(n.to_string()))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    Ok(Backlog {
        files: names.len(),
        bytes,
        oldest: valve::oldest_segment(&names),
    })
}

/// After a failed push of `name` (`path`): with the valve on and open for it, record the drop
/// durably and return the one ERROR line to print (the push then succeeds, so PostgreSQL can
/// recycle the segment); otherwise the push's error, unchanged. A drop that cannot be recorded
/// does not happen: the push fails as it would have.
pub fn consider(
    settings: &SenderSettings,
    path: &Path,
    name: &str,
    failure: SenderError,
) -> Result<String, SenderError> {
    let (Some(limit), Some(pgdata), Some(state_dir)) = (
        settings.max_backlog,
        settings.pgdata.as_deref(),
        settings.state_dir.as_deref(),
    ) else {
        return Err(failure);
    };
    let Ok(parsed) = name.parse::<WalFileName>() else {
        return Err(failure);
    };
    let waiting = match backlog(pgdata) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(
                "max_backlog: cannot list {}/pg_wal/archive_status: {e}; not dropping {name}",
                pgdata.display()
            );
            return Err(failure);
        }
    };
    let verdict = valve::decide(&Facts {
        limit: Some(limit),
        backlog: waiting.bytes,
        name: &parsed,
        oldest_ready: waiting.oldest.as_ref(),
        shipped: false,
    });
    let WalFileName::Segment(seg) = parsed else {
        return Err(failure);
    };
    if verdict != Verdict::Drop {
        return Err(failure);
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(16 << 20);
    let recorded = update(state_dir, |log| {
        log.add(seg, bytes, SystemTime::now());
        true
    });
    if let Err(e) = recorded {
        return Err(SenderError::Setup(format!(
            "{failure}; max_backlog would drop {name} ({} waiting) but cannot record the drop: {e}; fix `state_dir` (PostgreSQL will retry)",
            walship_common::human::size(waiting.bytes)
        )));
    }
    Ok(valve::drop_message(
        &seg,
        waiting.bytes,
        limit,
        &failure.to_string(),
    ))
}

/// The sender's drop record (empty when there is none, or no `state_dir`).
pub fn drops(settings: &SenderSettings) -> Result<DropLog, String> {
    match settings.state_dir.as_deref() {
        Some(dir) => read(dir),
        None => Ok(DropLog::default()),
    }
}

/// The drops to report to the receiver with the next request (none when unreadable: the
/// report waits for a readable record, and `check` says what is wrong).
pub fn to_report(settings: &SenderSettings) -> Vec<String> {
    match drops(settings) {
        Ok(log) => log.unreported(),
        Err(e) => {
            tracing::warn!("cannot read the record of dropped segments: {e}");
            Vec::new()
        }
    }
}

/// The receiver acknowledged the report of `names`.
pub fn mark_reported(settings: &SenderSettings, names: &[String]) {
    let Some(dir) = settings.state_dir.as_deref() else {
        return;
    };
    match update(dir, |log| log.mark_reported(names)) {
        Ok(()) => tracing::info!(
            "the receiver recorded the gap of {} dropped segment(s)",
            names.len()
        ),
        // Reported again with the next request: the receiver merges.
        Err(e) => tracing::warn!("cannot mark dropped segments as reported: {e}"),
    }
}

fn read(dir: &Path) -> Result<DropLog, String> {
    let path = dir.join(DROPS_FILE);
    match durable::read_regular(&path, STATE_FILE_LIMIT) {
        Ok(None) => Ok(DropLog::default()),
        Ok(Some(text)) => DropLog::decode(&text).map_err(|e| {
            format!(
                "{}: {e}; this is not a record walship-sender wrote: move it away",
                path.display()
            )
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// Read, change and (when `change` says so) durably rewrite the record, under its lock.
fn update(dir: &Path, change: impl FnOnce(&mut DropLog) -> bool) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create state_dir {}: {e}", dir.display()))?;
    let lock_path = dir.join(DROPS_LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    // Held until `lock` drops: `push` and the daemon's transfers both rewrite the record.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    let mut log = read(dir)?;
    if change(&mut log) {
        durable::replace(
            dir,
            DROPS_FILE,
            log.encode().as_bytes(),
            0o600,
            Sync::Durable,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
