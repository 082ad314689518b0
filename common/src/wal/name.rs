//! WAL file names as PostgreSQL writes them (`access/xlog_internal.h`).
//!
//! PostgreSQL hands `archive_command` four kinds of file, recognisable by name alone:
//! a segment `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, then the segment number split in a
//! "log" of 4 GiB and a segment inside it, `XLogFileName`), a timeline history file
//! `TTTTTTTT.history` (`TLHistoryFileName`), a backup history file
//! `<segment>.OOOOOOOO.backup` (`BackupHistoryFileName`, the offset of the backup start in the
//! segment) and a `.partial` segment written at the end of archive recovery or by
//! `pg_receivewal`. All hex is upper case (`%08X`); PostgreSQL's own `IsXLogFileName` accepts
//! only `0123456789ABCDEF`, so we do too. A name is also a path component on the receiver, so
//! anything that could escape the archive directory is refused before it is looked at.

use std::fmt;
use std::str::FromStr;

use crate::lsn::Lsn;

/// `MAXFNAMELEN` in `xlog_internal.h`: PostgreSQL never builds a WAL file name longer than this,
/// so a longer one is refused before any other check (and before it is echoed in a message).
pub const MAX_NAME_BYTES: usize = 64;

/// Smallest WAL segment size PostgreSQL accepts (`WalSegMinSize`, 1 MiB).
pub const MIN_SEG_SIZE: u64 = 1024 * 1024;
/// Largest WAL segment size PostgreSQL accepts (`WalSegMaxSize`, 1 GiB).
pub const MAX_SEG_SIZE: u64 = 1024 * 1024 * 1024;

/// `IsValidWalSegSize`: a power of two from 1 MiB to 1 GiB (`initdb --wal-segsize`).
pub fn is_valid_seg_size(seg_size: u64) -> bool {
    seg_size.is_power_of_two() && (MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&seg_size)
}

/// Timeline identifier (`TimeLineID`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TimelineId(pub u32);

/// Segment number (`XLogSegNo`): position of a segment in the WAL stream for a given segment size.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SegNo(pub u64);

/// The 24-hex-digit segment part of a name, `TTTTTTTTXXXXXXXXYYYYYYYY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub timeline: TimelineId,
    /// `XXXXXXXX`: high 32 bits of the segment's start LSN.
    pub log: u32,
    /// `YYYYYYYY`: segment within that 4 GiB "log", `< 0x1_0000_0000 / seg_size`.
    pub seg: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WalFileName {
    Segment(SegmentName),
    /// `TTTTTTTT.history`
    History(TimelineId),
    /// `<24 hex>.XXXXXXXX.backup` (offset of the backup start within the segment)
    Backup {
        segment: SegmentName,
        offset: u32,
    },
    /// `<24 hex>.partial`
    Partial(SegmentName),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty file name")]
    Empty,
    #[error("file name is {len} bytes long, longer than any WAL file name")]
    TooLong { len: usize },
    #[error("file name {0:?} contains a path separator")]
    PathSeparator(String),
    #[error("file name {0:?} contains \"..\"")]
    DotDot(String),
    #[error("file name contains a NUL byte")]
    Nul,
    #[error("{0:?} is not a WAL file name (expected a 24-hex-digit segment, TTTTTTTT.history, <segment>.XXXXXXXX.backup or <segment>.partial)")]
    NotWalName(String),
    #[error("segment {name} does not exist with a {seg_size}-byte segment size (segment part must be below {max:#X})")]
    SegmentOutOfRange {
        name: String,
        seg_size: u64,
        max: u64,
    },
    #[error("{seg_size} bytes is not a WAL segment size (PostgreSQL uses a power of two from 1 MiB to 1 GiB)")]
    BadSegmentSize { seg_size: u64 },
}

impl SegmentName {
    /// Segments per 4 GiB "log" for this segment size (`XLogSegmentsPerXLogId`); 0 for a size of
    /// 0 or above 4 GiB, neither of which PostgreSQL can produce.
    pub fn segments_per_log(seg_size: u64) -> u64 {
        0x1_0000_0000_u64.checked_div(seg_size).unwrap_or(0)
    }

    /// The segment number (`XLogFromFileName`): `log * segments_per_log + seg`. Fails when
    /// `seg` cannot exist with this segment size (e.g. `seg >= 0x100` with 16 MiB segments):
    /// such a name was made for another segment size, or by something other than PostgreSQL.
    pub fn segno(&self, seg_size: u64) -> Result<SegNo, NameError> {
        if !is_valid_seg_size(seg_size) {
            return Err(NameError::BadSegmentSize { seg_size });
        }
        let per_log = Self::segments_per_log(seg_size);
        if u64::from(self.seg) >= per_log {
            return Err(NameError::SegmentOutOfRange {
                name: self.to_string(),
                seg_size,
                max: per_log,
            });
        }
        // Cannot overflow: log < 2^32 and per_log <= 2^12, so the product is below 2^44.
        Ok(SegNo(u64::from(self.log) * per_log + u64::from(self.seg)))
    }

    /// The name of segment `segno` on `timeline` (`XLogFileName`). Like PostgreSQL, the log part
    /// wraps at 2^32, which no real WAL stream reaches; `seg_size` should be valid (see
    /// [`is_valid_seg_size`]), an invalid one gives a meaningless name rather than a panic.
    pub fn from_segno(timeline: TimelineId, segno: SegNo, seg_size: u64) -> Self {
        let per_log = Self::segments_per_log(seg_size).max(1);
        SegmentName {
            timeline,
            log: (segno.0 / per_log) as u32,
            seg: (segno.0 % per_log) as u32,
        }
    }

    /// LSN of the first byte of this segment.
    pub fn start_lsn(&self, seg_size: u64) -> Result<Lsn, NameError> {
        let segno = self.segno(seg_size)?;
        // segno < 2^32 * per_log and per_log * seg_size == 2^32, so this stays below 2^64.
        Ok(Lsn(segno.0 * seg_size))
    }
}

impl WalFileName {
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => s.timeline,
            WalFileName::Backup { segment, .. } => segment.timeline,
            WalFileName::History(tli) => *tli,
        }
    }

    /// The segment for `Segment` and `Partial` (files holding segment bytes with a page header).
    pub fn segment_bytes(&self) -> Option<&SegmentName> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => Some(s),
            WalFileName::History(_) | WalFileName::Backup { .. } => None,
        }
    }
}

impl FromStr for WalFileName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        // Cheap, name-independent refusals first, in the order an attacker would try them; the
        // length check comes before anything that copies the name into an error.
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong { len: s.len() });
        }
        if s.contains('\0') {
            return Err(NameError::Nul);
        }
        if s.contains(['/', '\\']) {
            return Err(NameError::PathSeparator(s.to_owned()));
        }
        if s.contains("..") {
            return Err(NameError::DotDot(s.to_owned()));
        }
        parse_name(s.as_bytes()).ok_or_else(|| NameError::NotWalName(s.to_owned()))
    }
}

impl FromStr for SegmentName {
    type Err = NameError;

    /// Parse the bare 24-hex-digit segment name (no suffix).
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s.parse::<WalFileName>()? {
            WalFileName::Segment(seg) => Ok(seg),
            _ => Err(NameError::NotWalName(s.to_owned())),
        }
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline.0, self.log, self.seg)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::History(tli) => write!(f, "{:08X}.history", tli.0),
            WalFileName::Backup { segment, offset } => write!(f, "{segment}.{offset:08X}.backup"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
        }
    }
}

/// As the name itself (`"000000010000000000000003"`), in state files and JSON; reading one
/// back parses it, so a record holding anything but a WAL name does not load.
impl serde::Serialize for WalFileName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for WalFileName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Timelines print in decimal, as in PostgreSQL's messages ("timeline 2").
impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SegNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Length of a segment name (`XLOG_FNAME_LEN`).
const SEGMENT_LEN: usize = 24;

/// Recognise one of the four shapes; `None` for anything else.
fn parse_name(b: &[u8]) -> Option<WalFileName> {
    match b.len() {
        24 => parse_segment(b).map(WalFileName::Segment),
        16 if b.ends_with(b".history") => {
            let tli = parse_timeline(&b[..8])?;
            Some(WalFileName::History(tli))
        }
        32 if b.ends_with(b".partial") => {
            parse_segment(&b[..SEGMENT_LEN]).map(WalFileName::Partial)
        }
        // <24 hex> '.' <8 hex> ".backup"
        40 if b[SEGMENT_LEN] == b'.' && b.ends_with(b".backup") => {
            let segment = parse_segment(&b[..SEGMENT_LEN])?;
            let offset = parse_hex8(&b[SEGMENT_LEN + 1..SEGMENT_LEN + 9])?;
            Some(WalFileName::Backup { segment, offset })
        }
        _ => None,
    }
}

fn parse_segment(b: &[u8]) -> Option<SegmentName> {
    if b.len() != SEGMENT_LEN {
        return None;
    }
    Some(SegmentName {
        timeline: parse_timeline(&b[..8])?,
        log: parse_hex8(&b[8..16])?,
        seg: parse_hex8(&b[16..24])?,
    })
}

/// Timelines start at 1 (`BootstrapTimeLineID`); 0 never names a real timeline.
fn parse_timeline(b: &[u8]) -> Option<TimelineId> {
    match parse_hex8(b)? {
        0 => None,
        tli => Some(TimelineId(tli)),
    }
}

/// Exactly 8 upper-case hex digits, as `%08X` writes them.
fn parse_hex8(b: &[u8]) -> Option<u32> {
    if b.len() != 8 {
        return None;
    }
    b.iter().try_fold(0u32, |acc, &c| {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        Some((acc << 4) | u32::from(digit))
    })
}

#[cfg(test)]
// In tests a panic is the failure report, so unwrapping is the clearest assertion.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn seg(tli: u32, log: u32, seg: u32) -> SegmentName {
        SegmentName {
            timeline: TimelineId(tli),
            log,
            seg,
        }
    }

    fn parse(s: &str) -> Result<WalFileName, NameError> {
        s.parse()
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            parse("000000010000000000000001"),
            Ok(WalFileName::Segment(seg(1, 0, 1)))
        );
        assert_eq!(
            parse("0000000A00000016000000B3"),
            Ok(WalFileName::Segment(seg(10, 0x16, 0xB3)))
        );
        assert_eq!(
            parse("00000002.history"),
            Ok(WalFileName::History(TimelineId(2)))
        );
        assert_eq!(
            parse("000000010000000000000003.00000028.backup"),
            Ok(WalFileName::Backup {
                segment: seg(1, 0, 3),
                offset: 0x28
            })
        );
        assert_eq!(
            parse("0000000200000001000000FF.partial"),
            Ok(WalFileName::Partial(seg(2, 1, 0xFF)))
        );
        assert_eq!(
            parse("FFFFFFFFFFFFFFFFFFFFFFFF"),
            Ok(WalFileName::Segment(seg(u32::MAX, u32::MAX, u32::MAX)))
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "000000010000000000000001",
            "0000000A00000016000000B3",
            "00000002.history",
            "FFFFFFFF.history",
            "000000010000000000000003.00000028.backup",
            "00000001FFFFFFFF000000FF",
            "000000020000000100000FFF.partial",
        ] {
            let name = parse(s).unwrap();
            assert_eq!(name.to_string(), s);
            assert_eq!(parse(&name.to_string()), Ok(name));
        }
    }

    #[test]
    fn timeline_and_segment_bytes_of_every_kind() {
        let s = seg(3, 0, 7);
        let kinds = [
            (WalFileName::Segment(s), Some(&s)),
            (WalFileName::Partial(s), Some(&s)),
            (
                WalFileName::Backup {
                    segment: s,
                    offset: 0,
                },
                None,
            ),
            (WalFileName::History(TimelineId(3)), None),
        ];
        for (name, bytes) in &kinds {
            assert_eq!(name.timeline(), TimelineId(3), "{name}");
            assert_eq!(name.segment_bytes(), *bytes, "{name}");
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(parse(""), Err(NameError::Empty));
    }

    #[test]
    fn rejects_too_long() {
        let long = "0".repeat(65);
        assert_eq!(parse(&long), Err(NameError::TooLong { len: 65 }));
        // Too long wins over every other complaint, so a huge hostile name is never copied.
        let hostile = format!("../{}", "A".repeat(100));
        assert_eq!(parse(&hostile), Err(NameError::TooLong { len: 103 }));
        // 64 bytes is allowed in length but still not a WAL name.
        assert!(matches!(
            parse(&"0".repeat(64)),
            Err(NameError::NotWalName(_))
        ));
    }

    #[test]
    fn rejects_path_separators() {
        for s in [
            "pg_wal/000000010000000000000001",
            "/000000010000000000000001",
            "000000010000000000000001/",
            "sub\\000000010000000000000001",
        ] {
            assert_eq!(parse(s), Err(NameError::PathSeparator(s.to_owned())), "{s}");
        }
        // "../x" has both: the separator is reported.
        assert_eq!(
            parse("../x"),
            Err(NameError::PathSeparator("../x".to_owned()))
        );
    }

    #[test]
    fn rejects_dot_dot() {
        for s in ["..", "...", "000000010000000000000001..partial"] {
            assert_eq!(parse(s), Err(NameError::DotDot(s.to_owned())), "{s}");
        }
    }

    #[test]
    fn rejects_nul() {
        assert_eq!(parse("00000001000000000000000\0"), Err(NameError::Nul));
        assert_eq!(parse("\0"), Err(NameError::Nul));
    }

    #[test]
    fn rejects_everything_else_as_not_a_wal_name() {
        for s in [
            // lower-case hex, in each part and each kind
            "0000000a0000000000000001",
            "00000001000000000000000a",
            "0000000a.history",
            "000000010000000000000003.0000002a.backup",
            "00000001000000000000000a.partial",
            // wrong lengths
            "00000001000000000000001",
            "0000000100000000000000011",
            "0000001.history",
            "000000001.history",
            "00000001000000000000000.partial",
            "000000010000000000000003.0000028.backup",
            "000000010000000000000003.000000028.backup",
            // wrong suffixes and separators
            "000000010000000000000001.PARTIAL",
            "00000001.History",
            "000000010000000000000001.ready",
            "000000010000000000000001.done",
            "000000010000000000000003_00000028.backup",
            "000000010000000000000003.00000028_backup",
            "00000001_history",
            // timeline 0 never exists
            "000000000000000000000001",
            "00000000.history",
            "000000000000000000000001.partial",
            "000000000000000000000003.00000028.backup",
            // other characters
            "00000001000000000000000G",
            "+0000001000000000000000F",
            " 00000010000000000000001",
            "0000000100000000000000é",
            ".",
            "archive_status",
            "pg_control",
        ] {
            assert_eq!(parse(s), Err(NameError::NotWalName(s.to_owned())), "{s:?}");
        }
    }

    #[test]
    fn segno_16_mib() {
        let size = 16 * MIB;
        assert_eq!(SegmentName::segments_per_log(size), 0x100);
        assert_eq!(seg(1, 0, 1).segno(size), Ok(SegNo(1)));
        assert_eq!(seg(1, 0, 0xFF).segno(size), Ok(SegNo(0xFF)));
        assert_eq!(seg(1, 1, 0).segno(size), Ok(SegNo(0x100)));
        assert_eq!(seg(1, 0x16, 0xB3).segno(size), Ok(SegNo(0x16B3)));
        assert_eq!(
            seg(1, 0, 0x100).segno(size),
            Err(NameError::SegmentOutOfRange {
                name: "000000010000000000000100".to_owned(),
                seg_size: size,
                max: 0x100
            })
        );
        assert_eq!(
            seg(1, 0x16, 0xB3).start_lsn(size).unwrap().to_string(),
            "16/B3000000"
        );
    }

    #[test]
    fn segno_1_gib() {
        let size = 1024 * MIB;
        assert_eq!(SegmentName::segments_per_log(size), 4);
        assert_eq!(seg(1, 2, 3).segno(size), Ok(SegNo(11)));
        assert!(matches!(
            seg(1, 0, 4).segno(size),
            Err(NameError::SegmentOutOfRange { max: 4, .. })
        ));
        assert_eq!(
            seg(1, 2, 3).start_lsn(size).unwrap().to_string(),
            "2/C0000000"
        );
    }

    #[test]
    fn segno_1_mib() {
        let size = MIB;
        assert_eq!(SegmentName::segments_per_log(size), 0x1000);
        assert_eq!(seg(1, 0, 0xFFF).segno(size), Ok(SegNo(0xFFF)));
        assert_eq!(seg(1, 1, 0x001).segno(size), Ok(SegNo(0x1001)));
        assert!(seg(1, 0, 0x1000).segno(size).is_err());
        assert_eq!(
            seg(1, 1, 0x001).start_lsn(size).unwrap().to_string(),
            "1/100000"
        );
    }

    #[test]
    fn rejects_invalid_segment_sizes() {
        for size in [0, 1, 512 * 1024, 3 * MIB, 2048 * MIB, 1 << 33] {
            assert_eq!(
                seg(1, 0, 0).segno(size),
                Err(NameError::BadSegmentSize { seg_size: size })
            );
            assert!(seg(1, 0, 0).start_lsn(size).is_err());
        }
    }

    #[test]
    fn from_segno_inverts_segno() {
        for size in [MIB, 16 * MIB, 64 * MIB, 1024 * MIB] {
            for segno in [0, 1, 0xFF, 0x100, 0x16B3, 0xFFFF_FFFF, 0x3_FFFF_FFFF] {
                let name = SegmentName::from_segno(TimelineId(7), SegNo(segno), size);
                assert_eq!(name.timeline, TimelineId(7));
                assert_eq!(name.segno(size), Ok(SegNo(segno)), "{name} at {size}");
                assert_eq!(name.start_lsn(size), Ok(Lsn(segno * size)));
            }
        }
        // XLogFileName for segment 1 with 16 MiB segments, as initdb writes it.
        assert_eq!(
            SegmentName::from_segno(TimelineId(1), SegNo(1), 16 * MIB).to_string(),
            "000000010000000000000001"
        );
        // The last possible segment: its start LSN does not overflow.
        let last = seg(1, u32::MAX, 0xFF);
        assert_eq!(last.start_lsn(16 * MIB), Ok(Lsn(u64::MAX - (16 * MIB - 1))));
    }

    #[test]
    fn from_segno_with_a_nonsense_size_does_not_panic() {
        let _ = SegmentName::from_segno(TimelineId(1), SegNo(5), 0);
        let _ = SegmentName::from_segno(TimelineId(1), SegNo(5), u64::MAX);
    }

    #[test]
    fn segment_name_from_str() {
        assert_eq!(
            "000000010000000000000001".parse::<SegmentName>(),
            Ok(seg(1, 0, 1))
        );
        assert!(matches!(
            "00000001.history".parse::<SegmentName>(),
            Err(NameError::NotWalName(_))
        ));
    }

    #[test]
    fn valid_segment_sizes() {
        assert!(is_valid_seg_size(MIB));
        assert!(is_valid_seg_size(16 * MIB));
        assert!(is_valid_seg_size(1024 * MIB));
        assert!(!is_valid_seg_size(0));
        assert!(!is_valid_seg_size(MIB / 2));
        assert!(!is_valid_seg_size(2048 * MIB));
        assert!(!is_valid_seg_size(MIB + 1));
    }

    #[test]
    fn error_messages_name_the_file() {
        let err = parse("00000001.histor").unwrap_err();
        assert!(err.to_string().contains("\"00000001.histor\""), "{err}");
        let err = seg(1, 0, 0x100).segno(16 * MIB).unwrap_err();
        assert_eq!(
            err.to_string(),
            "segment 000000010000000000000100 does not exist with a 16777216-byte segment size (segment part must be below 0x100)"
        );
    }
}
