//! The long page header (`XLogLongPageHeaderData`, `access/xlog_internal.h`) at the start of
//! every WAL segment.
//!
//! WAL is written in pages of `XLOG_BLCKSZ` bytes; the first page of each segment carries the
//! "long" header, flagged by `XLP_LONG_HEADER` in `xlp_info`, which adds the cluster's system
//! identifier, the segment size and the page size to the ordinary page header so that a segment
//! can be identified on its own. `xlp_magic` changes with every major version whose WAL format
//! changed, `xlp_pageaddr` is the LSN of the page's first byte and `xlp_tli` the timeline of the
//! first record on the page. Before storing a file under a segment name we check that its first
//! page says it *is* that segment, of a supported PostgreSQL, from the expected cluster.
//!
//! Layout (little-endian on every platform PostgreSQL runs on that we support, 40 bytes):
//! `xlp_magic u16 @0, xlp_info u16 @2, xlp_tli u32 @4, xlp_pageaddr u64 @8, xlp_rem_len u32 @16,
//! (4 bytes padding), xlp_sysid u64 @24, xlp_seg_size u32 @32, xlp_xlog_blcksz u32 @36`.

use crate::lsn::Lsn;
use crate::pg_control::SystemId;
use crate::wal::name::{is_valid_seg_size, NameError, SegmentName, TimelineId};

/// Bytes of the long header (`SizeOfXLogLongPHD`).
pub const LONG_PAGE_HEADER_LEN: usize = 40;

/// `XLP_LONG_HEADER`: this page starts a segment and carries the long header.
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// `XLP_ALL_FLAGS`: every `xlp_info` bit PostgreSQL defines (`XLP_FIRST_IS_CONTRECORD`,
/// `XLP_LONG_HEADER`, `XLP_BKP_REMOVABLE`, `XLP_FIRST_IS_OVERWRITE_CONTRECORD`); PostgreSQL
/// itself refuses a page with any other bit set (`XLogReaderValidatePageHeader`).
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLOG_PAGE_MAGIC` of each supported major version; it is bumped only between major versions.
/// Sources: 0xD110 (15) read from a segment written by PostgreSQL 15.18 (tests/fixtures);
/// 0xD118 (18) from `xlog_internal.h` of the PostgreSQL 18.4 sources; 13 to 17 from a
/// per-version table (`#if PG_VERSION_NUM >= 170000 / 0xD116 ... >= 130000 / 0xD106`) taken from
/// each release's `xlog_internal.h`, whose 14 and 16 values also match copies of those headers.
pub const KNOWN_MAGICS: [(u16, u32); 6] = [
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// Smallest WAL page size `configure --with-wal-blocksize` accepts (1 KiB).
pub const MIN_BLOCK_SIZE: u32 = 1024;
/// Largest WAL page size `configure --with-wal-blocksize` accepts (32 KiB).
pub const MAX_BLOCK_SIZE: u32 = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: TimelineId,
    pub page_addr: Lsn,
    pub rem_len: u32,
    pub system_id: SystemId,
    pub seg_size: u32,
    pub block_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "segment is {len} bytes, too short for a WAL page header ({LONG_PAGE_HEADER_LEN} bytes)"
    )]
    TooShort { len: usize },
    #[error("page magic {magic:#06X} is not that of a WAL segment from PostgreSQL 13 to 18 (PostgreSQL 15 writes 0xD110, for example): the file is not a WAL segment, or comes from an unsupported PostgreSQL version")]
    UnknownMagic { magic: u16 },
    #[error("page info {info:#06X} lacks the long-header flag {XLP_LONG_HEADER:#06X}: the file does not start at a segment boundary, so it is not a whole WAL segment")]
    NotLongHeader { info: u16 },
    #[error("page info {info:#06X} has flags PostgreSQL never sets (it knows only {XLP_ALL_FLAGS:#06X}): the page header is damaged")]
    UnknownInfoBits { info: u16 },
    #[error("segment size {seg_size} in the header is not a power of two from 1 MiB to 1 GiB: the page header is damaged or this is not a WAL segment")]
    BadSegmentSize { seg_size: u32 },
    #[error("WAL block size {block_size} in the header is not a power of two from 1 KiB to 32 KiB: the page header is damaged or this is not a WAL segment")]
    BadBlockSize { block_size: u32 },
    #[error("file is {file_size} bytes but its header says WAL segments are {seg_size} bytes: the file is truncated, padded or not a whole segment")]
    SizeMismatch { file_size: u64, seg_size: u32 },
    #[error("segment name {name} cannot exist with the {seg_size}-byte segments its header declares (segment part must be below {max:#X}): the file is not the segment its name says")]
    NameNotForSegmentSize {
        name: String,
        seg_size: u32,
        max: u64,
    },
    #[error("page address {found} in the header does not match segment {name} (expected {expected}): the file is not the segment its name says")]
    PageAddrMismatch {
        name: String,
        found: Lsn,
        expected: Lsn,
    },
    #[error("timeline {found} in the header is later than timeline {expected} in the segment name {name}: the file belongs to a later timeline than its name says")]
    TimelineAhead {
        name: String,
        found: TimelineId,
        expected: TimelineId,
    },
    #[error("system identifier {found} in the header is not this archive's cluster {expected}: the segment comes from another PostgreSQL cluster (a different initdb)")]
    ForeignCluster { found: SystemId, expected: SystemId },
}

impl LongPageHeader {
    /// Decode the first [`LONG_PAGE_HEADER_LEN`] bytes; checks magic (PostgreSQL 13+), the
    /// XLP_LONG_HEADER bit, segment size (power of two, 1 MiB..=1 GiB) and block size.
    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        let Some(bytes) = buf.first_chunk::<LONG_PAGE_HEADER_LEN>() else {
            return Err(HeaderError::TooShort { len: buf.len() });
        };
        let header = LongPageHeader {
            magic: u16::from_le_bytes([bytes[0], bytes[1]]),
            info: u16::from_le_bytes([bytes[2], bytes[3]]),
            timeline: TimelineId(le_u32(bytes, 4)),
            page_addr: Lsn(le_u64(bytes, 8)),
            rem_len: le_u32(bytes, 16),
            // Bytes 20..24 are alignment padding before the 8-byte xlp_sysid; their content is
            // whatever the writer's memory held, so they are not checked.
            system_id: SystemId(le_u64(bytes, 24)),
            seg_size: le_u32(bytes, 32),
            block_size: le_u32(bytes, 36),
        };
        if header.pg_major().is_none() {
            return Err(HeaderError::UnknownMagic {
                magic: header.magic,
            });
        }
        if header.info & XLP_LONG_HEADER == 0 {
            return Err(HeaderError::NotLongHeader { info: header.info });
        }
        if header.info & !XLP_ALL_FLAGS != 0 {
            return Err(HeaderError::UnknownInfoBits { info: header.info });
        }
        if !is_valid_seg_size(u64::from(header.seg_size)) {
            return Err(HeaderError::BadSegmentSize {
                seg_size: header.seg_size,
            });
        }
        if !header.block_size.is_power_of_two()
            || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&header.block_size)
        {
            return Err(HeaderError::BadBlockSize {
                block_size: header.block_size,
            });
        }
        Ok(header)
    }

    /// PostgreSQL major version this magic belongs to.
    pub fn pg_major(&self) -> Option<u32> {
        pg_major_of_magic(self.magic)
    }

    /// Check this header against the file's name and size: size == seg_size, page address ==
    /// start of the named segment, header timeline <= name's timeline.
    ///
    /// The timeline may be *lower* than the name's: when a standby is promoted, the first
    /// segment of the new timeline is a copy of the old timeline's segment up to the switch
    /// point, and its first page still carries the old timeline.
    pub fn check_against(&self, name: &SegmentName, file_size: u64) -> Result<(), HeaderError> {
        let seg_size = u64::from(self.seg_size);
        if file_size != seg_size {
            return Err(HeaderError::SizeMismatch {
                file_size,
                seg_size: self.seg_size,
            });
        }
        let expected = name.start_lsn(seg_size).map_err(|e| match e {
            NameError::SegmentOutOfRange { name, max, .. } => HeaderError::NameNotForSegmentSize {
                name,
                seg_size: self.seg_size,
                max,
            },
            // Only reachable for a header built by hand: decode refuses such sizes.
            _ => HeaderError::BadSegmentSize {
                seg_size: self.seg_size,
            },
        })?;
        if self.page_addr != expected {
            return Err(HeaderError::PageAddrMismatch {
                name: name.to_string(),
                found: self.page_addr,
                expected,
            });
        }
        if self.timeline > name.timeline {
            return Err(HeaderError::TimelineAhead {
                name: name.to_string(),
                found: self.timeline,
                expected: name.timeline,
            });
        }
        Ok(())
    }

    /// Check that the segment was written by the cluster whose `pg_control` says `expected`
    /// (`xlp_sysid` is copied from `system_identifier` when the segment is initialised).
    ///
    /// `restore` uses it on every segment it serves, against the archive's pin (or the
    /// standby's pg_control): a file put into archive_dir by hand, or stored before the pin,
    /// must not reach recovery, and [`HeaderError::ForeignCluster`] names both identifiers for
    /// the operator. The upload path compares the identifiers itself, because its refusal to
    /// a sender must not reveal the archive's identifier.
    pub fn check_system_id(&self, expected: SystemId) -> Result<(), HeaderError> {
        if self.system_id != expected {
            return Err(HeaderError::ForeignCluster {
                found: self.system_id,
                expected,
            });
        }
        Ok(())
    }
}

/// PostgreSQL major version that writes this `XLOG_PAGE_MAGIC`, among [`KNOWN_MAGICS`].
pub fn pg_major_of_magic(magic: u16) -> Option<u32> {
    KNOWN_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, major)| *major)
}

fn le_u32(b: &[u8; LONG_PAGE_HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8; LONG_PAGE_HEADER_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
// In tests a panic is the failure report, so unwrapping is the clearest assertion.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wal::name::WalFileName;

    const MIB: u64 = 1024 * 1024;

    /// First 8 KiB of `000000010000000000000001` from a PostgreSQL 15.18 initdb; see
    /// tests/fixtures/README.md for the `pg_controldata` / `pg_waldump` output it is checked
    /// against.
    const REAL_HEAD: &[u8] =
        include_bytes!("../../tests/fixtures/segment-000000010000000000000001.head");
    /// `pg_controldata`: "Database system identifier: 7711805009495595048".
    const REAL_SYSID: u64 = 7711805009495595048;

    /// A valid PG15 long header (16 MiB segments, 8 KiB pages, system id 42).
    fn header_bytes(tli: u32, page_addr: u64) -> [u8; LONG_PAGE_HEADER_LEN] {
        let mut b = [0u8; LONG_PAGE_HEADER_LEN];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        b[4..8].copy_from_slice(&tli.to_le_bytes());
        b[8..16].copy_from_slice(&page_addr.to_le_bytes());
        b[16..20].copy_from_slice(&0u32.to_le_bytes());
        b[24..32].copy_from_slice(&42u64.to_le_bytes());
        b[32..36].copy_from_slice(&(16 * MIB as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    fn segment(s: &str) -> SegmentName {
        match s.parse::<WalFileName>().unwrap() {
            WalFileName::Segment(seg) => seg,
            other => panic!("not a segment: {other}"),
        }
    }

    #[test]
    fn decodes_a_real_pg15_segment() {
        let h = LongPageHeader::decode(REAL_HEAD).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.pg_major(), Some(15));
        assert_eq!(h.info, XLP_LONG_HEADER);
        assert_eq!(h.timeline, TimelineId(1));
        // pg_waldump: first record at 0/01000028, just past this 40-byte header at 0/1000000.
        assert_eq!(h.page_addr.to_string(), "0/1000000");
        assert_eq!(h.rem_len, 0);
        assert_eq!(h.system_id, SystemId(REAL_SYSID));
        // pg_controldata: "Bytes per WAL segment: 16777216", "WAL block size: 8192".
        assert_eq!(h.seg_size, 16_777_216);
        assert_eq!(h.block_size, 8192);

        let name = segment("000000010000000000000001");
        assert_eq!(h.check_against(&name, 16 * MIB), Ok(()));
        assert_eq!(h.check_system_id(SystemId(REAL_SYSID)), Ok(()));
        // The same bytes under the next segment's name, or on a later timeline's first
        // segment (allowed), or truncated.
        assert!(matches!(
            h.check_against(&segment("000000010000000000000002"), 16 * MIB),
            Err(HeaderError::PageAddrMismatch { .. })
        ));
        assert_eq!(
            h.check_against(&segment("000000020000000000000001"), 16 * MIB),
            Ok(())
        );
        assert!(matches!(
            h.check_against(&name, 8192),
            Err(HeaderError::SizeMismatch { .. })
        ));
        assert!(matches!(
            h.check_system_id(SystemId(REAL_SYSID + 1)),
            Err(HeaderError::ForeignCluster { .. })
        ));
    }

    #[test]
    fn decodes_hand_built_bytes() {
        let h = LongPageHeader::decode(&header_bytes(3, 0x16_B300_0000)).unwrap();
        assert_eq!(h.timeline, TimelineId(3));
        assert_eq!(h.page_addr, Lsn(0x16_B300_0000));
        assert_eq!(h.system_id, SystemId(42));
        assert_eq!(
            h.check_against(&segment("0000000300000016000000B3"), 16 * MIB),
            Ok(())
        );
    }

    #[test]
    fn every_known_magic_decodes_to_its_major() {
        for (magic, major) in KNOWN_MAGICS {
            let mut b = header_bytes(1, 16 * MIB);
            b[0..2].copy_from_slice(&magic.to_le_bytes());
            let h = LongPageHeader::decode(&b).unwrap();
            assert_eq!(h.pg_major(), Some(major));
        }
    }

    #[test]
    fn rejects_short_input() {
        for len in [0, 1, 39] {
            assert_eq!(
                LongPageHeader::decode(&REAL_HEAD[..len]),
                Err(HeaderError::TooShort { len })
            );
        }
        assert!(LongPageHeader::decode(&REAL_HEAD[..40]).is_ok());
    }

    #[test]
    fn rejects_unknown_magic() {
        // PG12 (0xD101), a byte-swapped PG15 magic, zeros.
        for magic in [0xD101u16, 0x10D1, 0, 0xFFFF] {
            let mut b = header_bytes(1, 16 * MIB);
            b[0..2].copy_from_slice(&magic.to_le_bytes());
            assert_eq!(
                LongPageHeader::decode(&b),
                Err(HeaderError::UnknownMagic { magic })
            );
        }
        let err = LongPageHeader::decode(&[0u8; 40]).unwrap_err();
        assert!(
            err.to_string().starts_with("page magic 0x0000 is not"),
            "{err}"
        );
    }

    #[test]
    fn rejects_a_short_page_header() {
        // The second page of a segment: XLP_FIRST_IS_CONTRECORD only.
        let mut b = header_bytes(1, 16 * MIB);
        b[2..4].copy_from_slice(&0x0001u16.to_le_bytes());
        assert_eq!(
            LongPageHeader::decode(&b),
            Err(HeaderError::NotLongHeader { info: 0x0001 })
        );
    }

    #[test]
    fn rejects_unknown_info_bits() {
        let mut b = header_bytes(1, 16 * MIB);
        b[2..4].copy_from_slice(&0x0012u16.to_le_bytes());
        assert_eq!(
            LongPageHeader::decode(&b),
            Err(HeaderError::UnknownInfoBits { info: 0x0012 })
        );
        // All defined bits together are fine.
        b[2..4].copy_from_slice(&XLP_ALL_FLAGS.to_le_bytes());
        assert!(LongPageHeader::decode(&b).is_ok());
    }

    #[test]
    fn rejects_bad_segment_sizes() {
        for seg_size in [
            0u32,
            512 * 1024,
            3 * 1024 * 1024,
            2 * 1024 * 1024 * 1024,
            u32::MAX,
        ] {
            let mut b = header_bytes(1, 16 * MIB);
            b[32..36].copy_from_slice(&seg_size.to_le_bytes());
            assert_eq!(
                LongPageHeader::decode(&b),
                Err(HeaderError::BadSegmentSize { seg_size })
            );
        }
        for seg_size in [1024 * 1024u32, 1024 * 1024 * 1024] {
            let mut b = header_bytes(1, 0);
            b[32..36].copy_from_slice(&seg_size.to_le_bytes());
            assert!(LongPageHeader::decode(&b).is_ok(), "{seg_size}");
        }
    }

    #[test]
    fn rejects_bad_block_sizes() {
        for block_size in [0u32, 512, 3000, 64 * 1024] {
            let mut b = header_bytes(1, 16 * MIB);
            b[36..40].copy_from_slice(&block_size.to_le_bytes());
            assert_eq!(
                LongPageHeader::decode(&b),
                Err(HeaderError::BadBlockSize { block_size })
            );
        }
        for block_size in [1024u32, 32 * 1024] {
            let mut b = header_bytes(1, 16 * MIB);
            b[36..40].copy_from_slice(&block_size.to_le_bytes());
            assert!(LongPageHeader::decode(&b).is_ok(), "{block_size}");
        }
    }

    #[test]
    fn rejects_a_file_of_the_wrong_size() {
        let h = LongPageHeader::decode(&header_bytes(1, 16 * MIB)).unwrap();
        let name = segment("000000010000000000000001");
        for size in [0, 8192, 16 * MIB - 1, 16 * MIB + 1, 32 * MIB] {
            assert_eq!(
                h.check_against(&name, size),
                Err(HeaderError::SizeMismatch {
                    file_size: size,
                    seg_size: 16 * MIB as u32
                })
            );
        }
    }

    #[test]
    fn rejects_a_name_that_cannot_exist_at_this_segment_size() {
        let h = LongPageHeader::decode(&header_bytes(1, 16 * MIB)).unwrap();
        let err = h
            .check_against(&segment("000000010000000000000100"), 16 * MIB)
            .unwrap_err();
        assert_eq!(
            err,
            HeaderError::NameNotForSegmentSize {
                name: "000000010000000000000100".to_owned(),
                seg_size: 16 * MIB as u32,
                max: 0x100
            }
        );
    }

    #[test]
    fn rejects_the_wrong_page_address() {
        let h = LongPageHeader::decode(&header_bytes(1, 0x300_0000)).unwrap();
        let err = h
            .check_against(&segment("000000010000000000000004"), 16 * MIB)
            .unwrap_err();
        assert_eq!(
            err,
            HeaderError::PageAddrMismatch {
                name: "000000010000000000000004".to_owned(),
                found: Lsn(0x300_0000),
                expected: Lsn(0x400_0000),
            }
        );
        assert_eq!(
            err.to_string(),
            "page address 0/3000000 in the header does not match segment \
             000000010000000000000004 (expected 0/4000000): the file is not the segment its name says"
        );
    }

    #[test]
    fn page_address_follows_the_segment_size() {
        // With 1 GiB segments, 000000010000000200000003 starts at 2/C0000000.
        let mut b = header_bytes(1, 0x2_C000_0000);
        b[32..36].copy_from_slice(&(1024 * 1024 * 1024u32).to_le_bytes());
        let h = LongPageHeader::decode(&b).unwrap();
        assert_eq!(
            h.check_against(&segment("000000010000000200000003"), 1024 * MIB),
            Ok(())
        );
        // With 1 MiB segments, 000000010000000100000001 starts at 1/100000.
        let mut b = header_bytes(1, 0x1_0010_0000);
        b[32..36].copy_from_slice(&(1024 * 1024u32).to_le_bytes());
        let h = LongPageHeader::decode(&b).unwrap();
        assert_eq!(
            h.check_against(&segment("000000010000000100000001"), MIB),
            Ok(())
        );
    }

    #[test]
    fn timeline_may_be_older_but_not_newer_than_the_name() {
        let h = LongPageHeader::decode(&header_bytes(2, 0x500_0000)).unwrap();
        // First segment of timeline 3 after a promotion starts with timeline 2's pages.
        assert_eq!(
            h.check_against(&segment("000000030000000000000005"), 16 * MIB),
            Ok(())
        );
        assert_eq!(
            h.check_against(&segment("000000020000000000000005"), 16 * MIB),
            Ok(())
        );
        let err = h
            .check_against(&segment("000000010000000000000005"), 16 * MIB)
            .unwrap_err();
        assert_eq!(
            err,
            HeaderError::TimelineAhead {
                name: "000000010000000000000005".to_owned(),
                found: TimelineId(2),
                expected: TimelineId(1),
            }
        );
        assert!(err
            .to_string()
            .starts_with("timeline 2 in the header is later than timeline 1"));
    }

    #[test]
    fn rejects_a_foreign_cluster() {
        let h = LongPageHeader::decode(&header_bytes(1, 16 * MIB)).unwrap();
        assert_eq!(h.check_system_id(SystemId(42)), Ok(()));
        assert_eq!(
            h.check_system_id(SystemId(7)),
            Err(HeaderError::ForeignCluster {
                found: SystemId(42),
                expected: SystemId(7)
            })
        );
    }
}
