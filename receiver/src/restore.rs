//! `walship-receiver restore NAME PATH`: PostgreSQL's restore_command. Copies an archived file
//! to where recovery wants it. A missing file is routine (PostgreSQL probes for history files
//! and the next segment all the time), so it is exit 1 with nothing on stderr.

use std::io;
use std::path::Path;

use walship_common::config::ReceiverSettings;
use walship_common::WalFileName;

use crate::error::ReceiverError;

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
        Ok(n) => Ok(Restored::Copied(n)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !src.exists() => Ok(Restored::NotArchived),
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
