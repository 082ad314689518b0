//! Reading `global/pg_control` from a data directory: the file is read here, decoded and
//! CRC-checked by the pure [`crate::pg_control`].

use std::path::Path;

use crate::pg_control::{
    decode_system_id_at, decode_timelines_at, ControlError, ControlTimelines, SystemId,
    CONTROL_FILE_PATH,
};

/// The bytes of `<pgdata>/global/pg_control` (8 KiB: reading it whole is cheaper than being
/// clever) and the path they came from, for messages.
fn read(pgdata: &Path) -> Result<(Vec<u8>, std::path::PathBuf), ControlError> {
    let path = pgdata.join(CONTROL_FILE_PATH);
    let bytes = std::fs::read(&path).map_err(|source| ControlError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok((bytes, path))
}

/// Read `<pgdata>/global/pg_control` and return its system identifier.
pub fn read_system_id(pgdata: &Path) -> Result<SystemId, ControlError> {
    let (bytes, path) = read(pgdata)?;
    decode_system_id_at(&bytes, &path)
}

/// Read `<pgdata>/global/pg_control` and return its timelines.
pub fn read_timelines(pgdata: &Path) -> Result<ControlTimelines, ControlError> {
    let (bytes, path) = read(pgdata)?;
    decode_timelines_at(&bytes, &path)
}
