//! `walship-receiver restore NAME PATH`: PostgreSQL's restore_command. Copies an archived file
//! to where recovery wants it. A missing file is routine (PostgreSQL probes for history files
//! and the next segment all the time), so it is exit 1 with nothing on stderr.

use std::io;
use std::path::Path;

use std::time::{SystemTime, UNIX_EPOCH};
use walship_common::config::ReceiverSettings;

use walship_common::state::RestoreEvent;
use walship_common::WalFileName;

use crate::error::ReceiverError;
use crate::store;

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
    let src = settings.archive_dir.join(parsed.to_string());
    // std::fs::copy uses copy_file_range on Linux: in-kernel, as fast as cp.
    match std::fs::copy(&src, dest) {
        Ok(n) => {
            record(settings, &parsed, true);
            Ok(Restored::Copied(n))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && !src.exists() => {
            record(settings, &parsed, false);
            Ok(Restored::NotArchived)
        }
        Err(source) => {
            // Never leave a half-copied file where recovery might look.
            let _ = std::fs::remove_file(dest);
            Err(ReceiverError::Restore {
                name: name.to_string(),
                dest: dest.to_path_buf(),
                source,
            })
        }
    }
}

/// Note what was served or missed, so `promote` knows when the standby consumed everything.
/// Segments only: history probes say nothing about replay progress.
fn record(settings: &ReceiverSettings, name: &WalFileName, served: bool) {
    if !matches!(name, WalFileName::Segment(_)) {
        return;
    }
    let dir = &settings.archive_dir;
    let mut log = store::read_restore_log(dir);
    let event = Some(RestoreEvent {
        name: name.to_string(),
        at_unix_ms: unix_ms(SystemTime::now()),
    });
    if served {
        log.last_served = event;
    } else {
        log.last_missed = event;
    }
    if let Err(e) = store::write_restore_log(dir, &log) {
        // Restore itself worked; only promote's knowledge suffers. One line in PostgreSQL's log.
        eprintln!("walship-receiver: warning: could not record restore of {name} ({e}); promote needs archive_dir writable by this user");
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
