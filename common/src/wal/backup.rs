//! Backup history files (`<segment>.<offset>.backup`, written by `pg_backup_stop`,
//! `access/transam/xlog.c`).
//!
//! When a base backup ends, the primary writes a small text file named after the WAL position
//! where the backup started (`XLogFileName` of the start segment on the stop timeline, then
//! the start LSN's offset in that segment in 8 hex digits) and archives it after that segment.
//! It holds the backup label's lines: `START WAL LOCATION: %X/%X (file %s)`, `STOP WAL
//! LOCATION: %X/%X (file %s)`, `CHECKPOINT LOCATION`, `BACKUP METHOD`, `BACKUP FROM`,
//! `START TIME`, `LABEL`, `START TIMELINE`, `STOP TIME`, `STOP TIMELINE`. Recovery never reads
//! it; operators and `pg_archivecleanup` do, to know which WAL a backup needs.

use crate::lsn::Lsn;
use crate::wal::name::{is_valid_seg_size, SegmentName, TimelineId, WalFileName};

/// Largest backup history file accepted: a dozen short lines and a label of at most 1 KiB make
/// well under 4 KiB; 64 KiB leaves room for any future line while the receiver buffers it whole.
pub const MAX_BACKUP_BYTES: u64 = 64 << 10;

/// The lines of a backup history file that say which WAL the backup needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    pub start: Lsn,
    pub start_file: SegmentName,
    pub stop: Lsn,
    pub stop_file: SegmentName,
    /// `START TIMELINE` (PostgreSQL 11 and later), when present.
    pub start_timeline: Option<TimelineId>,
    /// `STOP TIMELINE`, when present.
    pub stop_timeline: Option<TimelineId>,
}

impl BackupFile {
    /// Parse the content: UTF-8 text with exactly one START and one STOP WAL LOCATION line.
    pub fn parse(bytes: &[u8]) -> Result<BackupFile, String> {
        if bytes.len() as u64 > MAX_BACKUP_BYTES {
            return Err(format!(
                "{} bytes, more than the {MAX_BACKUP_BYTES} a backup history file may have",
                bytes.len()
            ));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| "not text (invalid UTF-8)".to_string())?;
        if text.contains('\0') {
            return Err("contains a NUL byte".into());
        }
        let mut start = None;
        let mut stop = None;
        let mut start_timeline = None;
        let mut stop_timeline = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
                set_once(&mut start, location(rest)?, "START WAL LOCATION")?;
            } else if let Some(rest) = line.strip_prefix("STOP WAL LOCATION: ") {
                set_once(&mut stop, location(rest)?, "STOP WAL LOCATION")?;
            } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
                set_once(&mut start_timeline, timeline(rest)?, "START TIMELINE")?;
            } else if let Some(rest) = line.strip_prefix("STOP TIMELINE: ") {
                set_once(&mut stop_timeline, timeline(rest)?, "STOP TIMELINE")?;
            }
        }
        let (start, start_file) = start.ok_or("no START WAL LOCATION line")?;
        let (stop, stop_file) = stop.ok_or("no STOP WAL LOCATION line")?;
        Ok(BackupFile {
            start,
            start_file,
            stop,
            stop_file,
            start_timeline,
            stop_timeline,
        })
    }

    /// Check the content against the file's name (`segment`, `offset`) and the segment size of
    /// the archive's stored start segment: the name is the START location (timeline, segment
    /// and offset), the STOP location is not before it and names the segment holding its last
    /// byte, and the timeline lines agree with the file names.
    pub fn check(&self, segment: &SegmentName, offset: u32, seg_size: u64) -> Result<(), String> {
        if !is_valid_seg_size(seg_size) {
            return Err(format!("{seg_size} bytes is not a WAL segment size"));
        }
        if self.start_file != *segment {
            return Err(format!(
                "its START WAL LOCATION is in {}, its name says {segment}",
                self.start_file
            ));
        }
        let start_segno = self.start.segno(seg_size);
        let named = segment.segno(seg_size).map_err(|e| e.to_string())?;
        if start_segno != named.0 || self.start.segment_offset(seg_size) != u64::from(offset) {
            return Err(format!(
                "START WAL LOCATION {} is not offset {offset:08X} of {segment} ({seg_size}-byte segments)",
                self.start
            ));
        }
        if self.stop < self.start {
            return Err(format!(
                "STOP WAL LOCATION {} is before START WAL LOCATION {}",
                self.stop, self.start
            ));
        }
        // `XLByteToPrevSeg`: the segment holding the byte before the stop location.
        let stop_segno = self.stop.0.saturating_sub(1) / seg_size;
        let stop_named = self.stop_file.segno(seg_size).map_err(|e| e.to_string())?;
        if stop_named.0 != stop_segno || self.stop_file.timeline < self.start_file.timeline {
            return Err(format!(
                "STOP WAL LOCATION {} is not in {}",
                self.stop, self.stop_file
            ));
        }
        for (line, tli, file) in [
            ("START TIMELINE", self.start_timeline, &self.start_file),
            ("STOP TIMELINE", self.stop_timeline, &self.stop_file),
        ] {
            if let Some(tli) = tli {
                if tli != file.timeline {
                    return Err(format!("{line} {tli} does not match {file}"));
                }
            }
        }
        Ok(())
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, what: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("two {what} lines"));
    }
    *slot = Some(value);
    Ok(())
}

/// `%X/%X (file %s)`.
fn location(rest: &str) -> Result<(Lsn, SegmentName), String> {
    let bad = || format!("expected `X/X (file SEGMENT)`, found {:?}", truncate(rest));
    let (lsn, file) = rest.split_once(" (file ").ok_or_else(bad)?;
    let file = file.strip_suffix(')').ok_or_else(bad)?;
    let lsn: Lsn = lsn.parse().map_err(|_| bad())?;
    match file.parse::<WalFileName>() {
        Ok(WalFileName::Segment(s)) => Ok((lsn, s)),
        _ => Err(bad()),
    }
}

fn timeline(rest: &str) -> Result<TimelineId, String> {
    rest.trim()
        .parse::<u32>()
        .ok()
        .filter(|t| *t > 0)
        .map(TimelineId)
        .ok_or_else(|| format!("expected a timeline ID, found {:?}", truncate(rest)))
}

/// At most 40 characters of untrusted text in a message.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wal::name::SegNo;

    const SEG: u64 = 16 << 20;

    /// As PostgreSQL 15 writes it after `pg_basebackup`.
    const REAL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n\
CHECKPOINT LOCATION: 0/2000060\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: primary\n\
START TIME: 2026-11-25 10:00:00 UTC\n\
LABEL: pg_basebackup base backup\n\
START TIMELINE: 1\n\
STOP TIME: 2026-11-25 10:00:01 UTC\n\
STOP TIMELINE: 1\n";

    fn seg(tli: u32, no: u64) -> SegmentName {
        SegmentName::from_segno(TimelineId(tli), SegNo(no), SEG)
    }

    #[test]
    fn parses_and_matches_its_name() {
        let b = BackupFile::parse(REAL.as_bytes()).unwrap();
        assert_eq!(b.start, Lsn(0x2000028));
        assert_eq!(b.start_file, seg(1, 2));
        assert_eq!(b.stop_timeline, Some(TimelineId(1)));
        assert_eq!(b.check(&seg(1, 2), 0x28, SEG), Ok(()));
        // Spanning segments, and a stop exactly at a segment boundary (the byte before it is
        // in the previous segment).
        let span = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    STOP WAL LOCATION: 0/4000000 (file 000000010000000000000003)\n";
        assert_eq!(
            BackupFile::parse(span.as_bytes())
                .unwrap()
                .check(&seg(1, 2), 0x28, SEG),
            Ok(())
        );
    }

    #[test]
    fn refuses_a_name_that_is_not_its_start() {
        let b = BackupFile::parse(REAL.as_bytes()).unwrap();
        assert!(b.check(&seg(1, 2), 0x30, SEG).is_err(), "offset");
        assert!(b.check(&seg(1, 3), 0x28, SEG).is_err(), "segment");
        assert!(b.check(&seg(2, 2), 0x28, SEG).is_err(), "timeline");
        assert!(b.check(&seg(1, 2), 0x28, 1 << 20).is_err(), "segment size");
        let back = REAL.replace(
            "STOP WAL LOCATION: 0/2000100",
            "STOP WAL LOCATION: 0/2000000",
        );
        let b = BackupFile::parse(back.as_bytes()).unwrap();
        assert!(b.check(&seg(1, 2), 0x28, SEG).is_err(), "stop before start");
        let tl = REAL.replace("START TIMELINE: 1", "START TIMELINE: 2");
        let b = BackupFile::parse(tl.as_bytes()).unwrap();
        assert!(b.check(&seg(1, 2), 0x28, SEG).is_err(), "timeline line");
    }

    #[test]
    fn refuses_what_is_not_a_backup_file() {
        for bad in [
            &b""[..],
            b"hello\n",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
            b"STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n",
            b"START WAL LOCATION: 0/2000028\nSTOP WAL LOCATION: 0/2000100\n",
            b"START WAL LOCATION: zz (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n",
            b"START WAL LOCATION: 0/2000028 (file ../x)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n",
            b"\xff\xfe\x00\x01",
        ] {
            assert!(BackupFile::parse(bad).is_err(), "{bad:?}");
        }
        let twice =
            format!("{REAL}START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n");
        assert!(BackupFile::parse(twice.as_bytes()).is_err());
        let huge = vec![b'x'; MAX_BACKUP_BYTES as usize + 1];
        assert!(BackupFile::parse(&huge).is_err());
    }
}
