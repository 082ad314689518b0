//! The cluster's identity from `global/pg_control` (`catalog/pg_control.h`).
//!
//! `pg_control` is an 8 KiB file holding the `ControlFileData` struct followed by zeros. Its
//! first field, `system_identifier`, is chosen by initdb and shared by every base backup and
//! standby made from the cluster, and it is copied into the long header of every WAL segment
//! (`xlp_sysid`): comparing the two tells whether a segment belongs to a cluster. Right after the
//! struct sits a CRC-32C of everything before it (`crc` is the struct's last field), so where
//! the CRC lives depends on the struct's layout, identified by `pg_control_version` at byte 8.
//! We read only the system identifier, but only after the CRC has vouched for the file, exactly
//! as PostgreSQL refuses to start on a pg_control whose CRC does not match.

use std::path::Path;

use crate::wal::name::TimelineId;

/// `system_identifier`: unique per cluster (initdb), shared by its base backups and standbys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SystemId(pub u64);

impl std::fmt::Display for SystemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where `pg_control` lives inside a data directory (`XLOG_CONTROL_FILE`).
pub const CONTROL_FILE_PATH: &str = "global/pg_control";

/// `offsetof(ControlFileData, crc)` for each `pg_control_version` we support, with its source:
///
/// - 1300 (PostgreSQL 13 to 16): 288, found on a real PostgreSQL 15.18 file (tests/fixtures: the
///   CRC-32C of the first 288 bytes equals the u32 stored there) and matching the struct summed
///   by hand (`mock_authentication_nonce[32]` at 256..288, then `crc`).
/// - 1700 (PostgreSQL 17): 288. PostgreSQL 17 added `int wal_level` to `CheckPoint` right after
///   `bool fullPageWrites`, where 16 had three bytes of padding before the 8-aligned `nextXid`,
///   so nothing after it moved. Derived from the REL_17 header, not checked on a real file.
/// - 1800 (PostgreSQL 18): 292. PostgreSQL 18 added `bool default_char_signedness` after
///   `data_checksum_version` (256), which pushes the 32-byte nonce to 257..289 and the 4-aligned
///   `crc` to 292. Derived from the 18.4 header, not checked on a real file.
///
/// For the two derived entries, a file whose CRC does not match at the documented offset is
/// given a second chance: see [`SCAN_CRC_RANGE`].
pub const CRC_OFFSETS: [(u32, usize); 3] = [(1300, 288), (1700, 288), (1800, 292)];

/// Versions whose offset in [`CRC_OFFSETS`] was derived from headers rather than observed.
const DERIVED_VERSIONS: [u32; 2] = [1700, 1800];

/// Fallback for [`DERIVED_VERSIONS`]: if the CRC does not match at the documented offset, try
/// every 4-aligned offset from 256 (the nonce alone ends past there) up to 508 (`crc` must end
/// within `PG_CONTROL_MAX_SAFE_SIZE`, 512 bytes) and accept the first whose stored u32 equals the
/// CRC-32C of the bytes before it. A damaged file matches by chance with odds of about 64 in
/// 2^32, so this keeps the check while not locking out a cluster if our arithmetic were off.
pub const SCAN_CRC_RANGE: std::ops::RangeInclusive<usize> = 256..=508;

/// Size PostgreSQL gives the file (`PG_CONTROL_FILE_SIZE`), for messages; we need only the
/// bytes up to and including the CRC.
pub const PG_CONTROL_FILE_SIZE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("pg_control at {path} is {len} bytes, too short for a pg_control file (at least {needed} bytes needed; PostgreSQL writes {PG_CONTROL_FILE_SIZE}): the file is truncated")]
    TooShort {
        path: String,
        len: usize,
        needed: usize,
    },
    #[error("pg_control at {path} has format version {version}, which walship does not know (it reads 1300 from PostgreSQL 13 to 16, 1700 from 17 and 1800 from 18): the cluster's PostgreSQL is too old or too new for this walship, or the file is not a pg_control file")]
    UnsupportedVersion { path: String, version: u32 },
    #[error("pg_control at {path} has format version {version} in the wrong byte order: it was written on a machine of another endianness, which this machine cannot use")]
    ForeignByteOrder { path: String, version: u32 },
    #[error("pg_control at {path} fails its CRC check (stored {stored:#010X}, computed {computed:#010X}): the file is damaged or not a pg_control file")]
    CrcMismatch {
        path: String,
        stored: u32,
        computed: u32,
    },
}

/// Decode the system identifier from the bytes of a `pg_control` file, verifying its CRC.
/// Errors name the file as `global/pg_control`; [`decode_system_id_at`] names it precisely.
pub fn decode_system_id(bytes: &[u8]) -> Result<SystemId, ControlError> {
    decode_system_id_at(bytes, Path::new(CONTROL_FILE_PATH))
}

/// [`decode_system_id`] for bytes read from `path`, which only appears in error messages.
pub fn decode_system_id_at(bytes: &[u8], path: &Path) -> Result<SystemId, ControlError> {
    verify(bytes, path)?;
    let sysid = le_u64(bytes, 0).expect("verify checked the length");
    Ok(SystemId(sysid))
}

/// The timelines a control file knows, from a CRC-checked file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlTimelines {
    /// `checkPointCopy.ThisTimeLineID`: the timeline of the latest checkpoint (on a standby:
    /// restartpoint). `pg_controldata`: "Latest checkpoint's TimeLineID".
    pub checkpoint: TimelineId,
    /// `minRecoveryPointTLI`, `None` when 0 (no minimum recovery point, as on a primary).
    /// `pg_controldata`: "Min recovery ending loc's timeline".
    pub min_recovery: Option<TimelineId>,
}

impl ControlTimelines {
    /// The newer of the two. On a standby both lag behind replay (they move at restartpoints
    /// and buffer writes: a standby seen replaying timeline 2 still said 1 for both), so this
    /// is a lower bound of the timeline it replays.
    pub fn newest(&self) -> TimelineId {
        self.min_recovery
            .map_or(self.checkpoint, |m| m.max(self.checkpoint))
    }
}

/// `offsetof(ControlFileData, checkPointCopy) + offsetof(CheckPoint, ThisTimeLineID)`: 40 + 8.
/// The same in 1300, 1700 and 1800: 17 and 18 changed the struct only after these fields
/// (17's `wal_level` in `CheckPoint` fills padding after `fullPageWrites`, at 60).
const CHECKPOINT_TLI_OFFSET: usize = 48;
/// `offsetof(ControlFileData, minRecoveryPointTLI)`: after the 88-byte `CheckPoint` (40..128),
/// `unloggedLSN` (128) and `minRecoveryPoint` (136). Checked on a real PostgreSQL 15 standby's
/// file (tests/fixtures, with pg_controldata's values).
const MIN_RECOVERY_TLI_OFFSET: usize = 144;

/// Decode the checkpoint and minimum-recovery timelines, verifying the CRC first.
pub fn decode_timelines_at(bytes: &[u8], path: &Path) -> Result<ControlTimelines, ControlError> {
    verify(bytes, path)?;
    let field = |at| le_u32(bytes, at).expect("verify checked the length");
    let min = field(MIN_RECOVERY_TLI_OFFSET);
    Ok(ControlTimelines {
        checkpoint: TimelineId(field(CHECKPOINT_TLI_OFFSET)),
        min_recovery: (min != 0).then_some(TimelineId(min)),
    })
}

/// Check the version and the CRC, as PostgreSQL does before trusting any field. On success
/// the bytes reach at least past the CRC, so every field before it can be read.
fn verify(bytes: &[u8], path: &Path) -> Result<(), ControlError> {
    let path = || path.display().to_string();
    // system_identifier (u64) and pg_control_version (u32) come first in every version.
    const HEAD: usize = 12;
    let Some(version) = le_u32(bytes, 8) else {
        return Err(ControlError::TooShort {
            path: path(),
            len: bytes.len(),
            needed: HEAD,
        });
    };
    let Some(crc_at) = crc_offset(version) else {
        // PostgreSQL's own hint (ReadControlFile): a version that is a multiple of 65536 is a
        // known version seen through the other byte order.
        if version % 65536 == 0 && crc_offset(version.swap_bytes()).is_some() {
            return Err(ControlError::ForeignByteOrder {
                path: path(),
                version: version.swap_bytes(),
            });
        }
        return Err(ControlError::UnsupportedVersion {
            path: path(),
            version,
        });
    };
    let Some(stored) = le_u32(bytes, crc_at) else {
        return Err(ControlError::TooShort {
            path: path(),
            len: bytes.len(),
            needed: crc_at + 4,
        });
    };
    let computed = crc32c::crc32c(&bytes[..crc_at]);
    if computed == stored || (DERIVED_VERSIONS.contains(&version) && crc_found_by_scan(bytes)) {
        return Ok(());
    }
    Err(ControlError::CrcMismatch {
        path: path(),
        stored,
        computed,
    })
}

/// `offsetof(ControlFileData, crc)` for this `pg_control_version`, from [`CRC_OFFSETS`].
pub fn crc_offset(version: u32) -> Option<usize> {
    CRC_OFFSETS
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, at)| *at)
}

/// See [`SCAN_CRC_RANGE`].
fn crc_found_by_scan(bytes: &[u8]) -> bool {
    SCAN_CRC_RANGE.step_by(4).any(|at| match le_u32(bytes, at) {
        Some(stored) => stored == crc32c::crc32c(&bytes[..at]),
        None => false,
    })
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let v = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let v = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(v);
    Some(u64::from_le_bytes(a))
}

#[cfg(test)]
// In tests a panic is the failure report, so unwrapping is the clearest assertion.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::pg_control::{read_system_id, read_timelines};

    /// `global/pg_control` of a PostgreSQL 15.18 initdb, 8192 bytes; see tests/fixtures/README.md.
    const REAL: &[u8] = include_bytes!("../tests/fixtures/pg_control-pg15");
    /// `pg_controldata`: "Database system identifier: 7711805009495595048".
    const REAL_SYSID: SystemId = SystemId(7711805009495595048);

    /// `global/pg_control` of a PostgreSQL 15.18 standby on timeline 2 (see tests/fixtures).
    const STANDBY_TL2: &[u8] = include_bytes!("../tests/fixtures/pg_control-pg15-standby-tl2");

    /// A minimal control file of `version` with the CRC at `crc_at`.
    fn synthetic(version: u32, crc_at: usize, sysid: u64) -> Vec<u8> {
        let mut b = vec![0u8; PG_CONTROL_FILE_SIZE];
        b[0..8].copy_from_slice(&sysid.to_le_bytes());
        b[8..12].copy_from_slice(&version.to_le_bytes());
        for (i, byte) in b[12..crc_at].iter_mut().enumerate() {
            *byte = i as u8;
        }
        let crc = crc32c::crc32c(&b[..crc_at]);
        b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn reads_a_real_pg15_control_file() {
        assert_eq!(REAL.len(), 8192);
        // pg_controldata: "pg_control version number: 1300".
        assert_eq!(le_u32(REAL, 8), Some(1300));
        assert_eq!(decode_system_id(REAL).unwrap(), REAL_SYSID);
        assert_eq!(REAL_SYSID.to_string(), "7711805009495595048");
    }

    #[test]
    fn the_real_crc_sits_at_288() {
        assert_eq!(le_u32(REAL, 288), Some(crc32c::crc32c(&REAL[..288])));
        // ... and only the struct is covered: the zeros after it may be anything.
        let mut tail_changed = REAL.to_vec();
        tail_changed[1000] = 0xFF;
        assert_eq!(decode_system_id(&tail_changed).unwrap(), REAL_SYSID);
        // The first 292 bytes are all PostgreSQL needs.
        assert_eq!(decode_system_id(&REAL[..292]).unwrap(), REAL_SYSID);
    }

    #[test]
    fn reads_from_a_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("global")).unwrap();
        std::fs::write(dir.path().join("global/pg_control"), REAL).unwrap();
        assert_eq!(read_system_id(dir.path()).unwrap(), REAL_SYSID);
    }

    #[test]
    fn missing_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_system_id(dir.path()).unwrap_err();
        assert!(matches!(err, ControlError::Read { .. }), "{err}");
        assert!(err.to_string().contains("global/pg_control"), "{err}");
    }

    #[test]
    fn rejects_a_corrupted_copy() {
        for at in [0, 7, 8 + 4, 100, 287, 288, 291] {
            let mut b = REAL.to_vec();
            b[at] ^= 0x01;
            let err = decode_system_id(&b).unwrap_err();
            assert!(
                matches!(err, ControlError::CrcMismatch { .. }),
                "byte {at}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("global")).unwrap();
        let mut b = REAL.to_vec();
        b[40] ^= 0x80;
        std::fs::write(dir.path().join("global/pg_control"), &b).unwrap();
        let err = read_system_id(dir.path()).unwrap_err();
        let path = dir.path().join("global/pg_control");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "pg_control at {} fails its CRC check",
                path.display()
            )),
            "{msg}"
        );
        assert!(
            msg.ends_with("the file is damaged or not a pg_control file"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_short_input() {
        for len in [0, 8, 11] {
            assert!(matches!(
                decode_system_id(&REAL[..len]),
                Err(ControlError::TooShort { needed: 12, .. })
            ));
        }
        for len in [12, 100, 288, 291] {
            assert!(matches!(
                decode_system_id(&REAL[..len]),
                Err(ControlError::TooShort { needed: 292, .. })
            ));
        }
    }

    #[test]
    fn rejects_unknown_versions() {
        for version in [0u32, 942, 1100, 1201, 1900, u32::MAX] {
            let b = synthetic(version, 288, 1);
            assert!(
                matches!(
                    decode_system_id(&b),
                    Err(ControlError::UnsupportedVersion { version: v, .. }) if v == version
                ),
                "{version}"
            );
        }
    }

    #[test]
    fn recognises_the_other_byte_order() {
        let mut b = REAL.to_vec();
        b[8..12].copy_from_slice(&1300u32.to_be_bytes());
        assert!(matches!(
            decode_system_id(&b),
            Err(ControlError::ForeignByteOrder { version: 1300, .. })
        ));
    }

    #[test]
    fn reads_pg17_and_pg18_layouts() {
        let b = synthetic(1700, 288, 17);
        assert_eq!(decode_system_id(&b).unwrap(), SystemId(17));
        let b = synthetic(1800, 292, 18);
        assert_eq!(decode_system_id(&b).unwrap(), SystemId(18));
    }

    #[test]
    fn derived_layouts_fall_back_to_a_scan() {
        // Should PostgreSQL 18 put its CRC elsewhere than we derived, the file still reads...
        let b = synthetic(1800, 296, 18);
        assert_eq!(decode_system_id(&b).unwrap(), SystemId(18));
        // ... but a damaged one still fails.
        let mut b = synthetic(1800, 292, 18);
        b[50] ^= 1;
        assert!(matches!(
            decode_system_id(&b),
            Err(ControlError::CrcMismatch { .. })
        ));
        // The observed 1300 layout gets no second chance.
        let b = synthetic(1300, 296, 13);
        assert!(matches!(
            decode_system_id(&b),
            Err(ControlError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn item10b_reads_the_timelines_of_a_real_standby() {
        let path = Path::new("pg_control");
        // pg_controldata: "Latest checkpoint's TimeLineID: 2", "Min recovery ending loc's
        // timeline: 2", "Minimum recovery ending location: 0/5000000".
        let t = decode_timelines_at(STANDBY_TL2, path).unwrap();
        assert_eq!(
            t,
            ControlTimelines {
                checkpoint: TimelineId(2),
                min_recovery: Some(TimelineId(2)),
            }
        );
        assert_eq!(le_u64(STANDBY_TL2, 136), Some(0x500_0000));
        assert_eq!(t.newest(), TimelineId(2));
        // The initdb'd primary: checkpoint on 1, no minimum recovery point.
        let t = decode_timelines_at(REAL, path).unwrap();
        assert_eq!(t.checkpoint, TimelineId(1));
        assert_eq!(t.min_recovery, None);
        assert_eq!(t.newest(), TimelineId(1));
        // Only after the CRC vouched for the file.
        let mut b = STANDBY_TL2.to_vec();
        b[CHECKPOINT_TLI_OFFSET] = 9;
        assert!(matches!(
            decode_timelines_at(&b, path),
            Err(ControlError::CrcMismatch { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("global")).unwrap();
        std::fs::write(dir.path().join("global/pg_control"), STANDBY_TL2).unwrap();
        assert_eq!(read_timelines(dir.path()).unwrap().newest(), TimelineId(2));
        // The newer of the two wins.
        let lagging = ControlTimelines {
            checkpoint: TimelineId(1),
            min_recovery: Some(TimelineId(3)),
        };
        assert_eq!(lagging.newest(), TimelineId(3));
    }
}
