//! Which archived WAL files a standby no longer needs (`walship-receiver cleanup %r`).
//!
//! A standby runs `archive_cleanup_command` after each restartpoint with `%r`, the WAL file that
//! holds the redo point of its last restartpoint: it will never ask `restore_command` for
//! anything before that file again. The rule is PostgreSQL's own `pg_archivecleanup`
//! (`contrib/pg_archivecleanup/pg_archivecleanup.c`, with `-b` for backup history files):
//!
//! - `%r` may be a segment name, or a `.partial` or `.backup` name, which stands for the segment
//!   it is named after (`SetWALFileNameForCleanup`). Anything else is refused.
//! - A segment or `.partial` file goes when its position, the 16 hex digits after the timeline,
//!   comes before `%r`'s, on any timeline: the standby may still need a parent timeline's
//!   segments up to its switch point, and those are never before the restart point's position.
//! - A backup history file goes when the segment it starts in comes before `%r`'s (a
//!   `.backup` named after `%r`'s segment or a later one is kept), and, with `retain_for`,
//!   before every segment kept for being recent.
//! - Timeline history files always stay: a standby reads them to follow a timeline switch, and
//!   the receiver checks every new history against them. Names that are not WAL file names
//!   (walship's own state files `walship.*`, temp files of uploads in flight, anything else)
//!   are never touched.
//!
//! walship adds two rules: a file stored less than `retain_for` ago stays whatever its name (a
//! window for point-in-time recovery), and only regular files are removed (a link or a FIFO
//! under a WAL name is left and reported). Removals come oldest first, so a cleanup that stops
//! half-way leaves the archive a contiguous range.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::wal::name::{NameError, SegmentName, WalFileName};

/// `%r` could not be used: exit 2, nothing removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("{0:?} is a timeline history file, not a segment")]
    History(String),
}

/// One entry of archive_dir as the driver found it (from `lstat`, never following links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub name: String,
    pub bytes: u64,
    /// When it was stored: its modification time (the receiver writes a file once, then links
    /// it under its name).
    pub stored_at: SystemTime,
    /// A regular file (not a link, a directory, a FIFO, ...).
    pub regular: bool,
}

/// What cleanup is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The segment `%r` names: everything before its position may go.
    pub restart: SegmentName,
    /// Keep files stored less than this long ago (`retain_for`; zero keeps nothing extra).
    pub retain_for: Duration,
    /// The time the ages are measured against.
    pub now: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Remove,
    Keep(Kept),
}

/// Why a file stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Not a WAL file name: walship's state files, temp files, anything else.
    NotWal,
    /// A timeline history file: always kept.
    History,
    /// At `%r`'s position or after it: the standby may still need it.
    NotBefore,
    /// A backup history file starting at or after a segment kept by `retain_for`.
    BackupOfKeptFile,
    /// Before `%r`, but stored less than `retain_for` ago.
    Recent,
    /// Before `%r`, but not a regular file: never followed, never removed.
    NotRegular,
    /// Before `%r`, but not yet in the object store (`[object_store]`): it stays until the
    /// uploader has it there.
    NotUploaded,
}

/// A verdict for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub file: &'a StoredFile,
    pub verdict: Verdict,
}

/// What a cleanup did (or, dry, would do), for its summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub restart: SegmentName,
    pub dry_run: bool,
    pub removed: u64,
    pub bytes: u64,
    /// Kept only because of `retain_for` (recent files and their backup history files).
    pub retained: u64,
    pub retain_for: Duration,
    /// Left because they are not regular files.
    pub not_regular: u64,
}

/// The segment `%r` stands for, as `pg_archivecleanup` reads it: a segment name as it is, a
/// `.partial` or `.backup` name as the segment it is named after.
pub fn restart_segment(arg: &str) -> Result<SegmentName, TargetError> {
    match arg.parse::<WalFileName>()? {
        WalFileName::Segment(s) | WalFileName::Partial(s) => Ok(s),
        WalFileName::Backup { segment, .. } => Ok(segment),
        WalFileName::History(_) => Err(TargetError::History(arg.to_owned())),
    }
}

/// A verdict for every file, removals oldest first (by position, then name).
pub fn plan<'a>(files: &'a [StoredFile], policy: &Policy) -> Vec<Decision<'a>> {
    let limit = position(&policy.restart);
    let mut decisions: Vec<Decision<'a>> = files
        .iter()
        .map(|file| Decision {
            file,
            verdict: first_verdict(file, limit, policy),
        })
        .collect();
    // A backup history file describes a base backup starting in its segment: it stays while
    // any segment from there on does, so the oldest segment kept for being recent moves the
    // limit for backup history files back.
    let backup_limit = decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Keep(Kept::Recent))
        .filter_map(|d| segment_position(&d.file.name))
        .fold(limit, Ord::min);
    for d in &mut decisions {
        if let Ok(WalFileName::Backup { segment, .. }) = d.file.name.parse() {
            d.verdict = backup_verdict(d.file, position(&segment), limit, backup_limit, policy);
        }
    }
    decisions.sort_by(|a, b| {
        let key = |d: &Decision| (wal_position(&d.file.name), d.file.name.clone());
        key(a).cmp(&key(b))
    });
    decisions
}

/// Count the verdicts of a plan carried out (or not, with `dry_run`).
pub fn summarize(decisions: &[Decision], policy: &Policy, dry_run: bool) -> Summary {
    let mut s = Summary {
        restart: policy.restart,
        dry_run,
        removed: 0,
        bytes: 0,
        retained: 0,
        retain_for: policy.retain_for,
        not_regular: 0,
    };
    for d in decisions {
        match d.verdict {
            Verdict::Remove => {
                s.removed += 1;
                s.bytes += d.file.bytes;
            }
            Verdict::Keep(Kept::Recent | Kept::BackupOfKeptFile) => s.retained += 1,
            Verdict::Keep(Kept::NotRegular) => s.not_regular += 1,
            Verdict::Keep(_) => {}
        }
    }
    s
}

impl Summary {
    /// Whether the summary has anything to say: silent when nothing precedes `%r`, as on most
    /// restartpoints of an idle standby.
    pub fn is_noteworthy(&self) -> bool {
        self.removed + self.retained + self.not_regular > 0
    }
}

/// `removed 37 files before 000000010000000000000030, 592.0 MiB freed; kept 2 stored less
/// than retain_for (1h) ago`.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files = plural(self.removed, "file");
        let size = crate::human::size(self.bytes);
        if self.dry_run {
            write!(f, "would remove {files} before {}, {size}", self.restart)?;
        } else {
            write!(f, "removed {files} before {}, {size} freed", self.restart)?;
        }
        if self.retained > 0 {
            write!(
                f,
                "; kept {} stored less than retain_for ({}) ago",
                plural(self.retained, "file"),
                crate::human::setting(self.retain_for)
            )?;
        }
        if self.not_regular > 0 {
            write!(
                f,
                "; left {} that {} not a regular file",
                plural(self.not_regular, "entry"),
                if self.not_regular == 1 { "is" } else { "are" }
            )?;
        }
        Ok(())
    }
}

/// The position of a segment in the WAL stream whatever its timeline: `(log, seg)`, the 16
/// hex digits `pg_archivecleanup` compares with `strcmp(name + 8, ...)`.
fn position(s: &SegmentName) -> (u32, u32) {
    (s.log, s.seg)
}

/// The position of a segment or `.partial` name; `None` for anything else.
fn segment_position(name: &str) -> Option<(u32, u32)> {
    match name.parse::<WalFileName>() {
        Ok(WalFileName::Segment(s) | WalFileName::Partial(s)) => Some(position(&s)),
        _ => None,
    }
}

/// The position of any WAL name that has one (history files and other names: none).
fn wal_position(name: &str) -> Option<(u32, u32)> {
    match name.parse::<WalFileName>() {
        Ok(WalFileName::Backup { segment, .. }) => Some(position(&segment)),
        _ => segment_position(name),
    }
}

/// The verdict for everything but backup history files (those come in a second pass).
fn first_verdict(file: &StoredFile, limit: (u32, u32), policy: &Policy) -> Verdict {
    match file.name.parse::<WalFileName>() {
        Err(_) => Verdict::Keep(Kept::NotWal),
        Ok(WalFileName::History(_)) => Verdict::Keep(Kept::History),
        Ok(WalFileName::Backup { .. }) => Verdict::Keep(Kept::NotBefore),
        Ok(WalFileName::Segment(s) | WalFileName::Partial(s)) => {
            if position(&s) >= limit {
                Verdict::Keep(Kept::NotBefore)
            } else {
                removable(file, policy)
            }
        }
    }
}

fn backup_verdict(
    file: &StoredFile,
    at: (u32, u32),
    limit: (u32, u32),
    backup_limit: (u32, u32),
    policy: &Policy,
) -> Verdict {
    if at >= limit {
        Verdict::Keep(Kept::NotBefore)
    } else if at >= backup_limit {
        Verdict::Keep(Kept::BackupOfKeptFile)
    } else {
        removable(file, policy)
    }
}

/// A file before the limit: removed unless it is not a regular file or is recent.
fn removable(file: &StoredFile, policy: &Policy) -> Verdict {
    if !file.regular {
        Verdict::Keep(Kept::NotRegular)
    } else if is_recent(file.stored_at, policy) {
        Verdict::Keep(Kept::Recent)
    } else {
        Verdict::Remove
    }
}

/// Stored less than `retain_for` ago. A modification time in the future (a clock set back)
/// counts as recent: when in doubt, keep.
fn is_recent(stored_at: SystemTime, policy: &Policy) -> bool {
    if policy.retain_for.is_zero() {
        return false;
    }
    match policy.now.duration_since(stored_at) {
        Ok(age) => age < policy.retain_for,
        Err(_) => true,
    }
}

fn plural(n: u64, word: &str) -> String {
    match (n, word) {
        (1, w) => format!("1 {w}"),
        (n, "entry") => format!("{n} entries"),
        (n, w) => format!("{n} {w}s"),
    }
}

#[cfg(test)]
// In tests a panic is the failure report, so unwrapping is the clearest assertion.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// A regular file stored `age_secs` before [`now`].
    fn file(name: &str, age_secs: u64) -> StoredFile {
        StoredFile {
            name: name.to_string(),
            bytes: SEG,
            stored_at: now() - Duration::from_secs(age_secs),
            regular: true,
        }
    }

    fn policy(restart: &str, retain_for: Duration) -> Policy {
        Policy {
            restart: restart_segment(restart).unwrap(),
            retain_for,
            now: now(),
        }
    }

    /// The names removed, in removal order.
    fn removed(files: &[StoredFile], p: &Policy) -> Vec<String> {
        plan(files, p)
            .iter()
            .filter(|d| d.verdict == Verdict::Remove)
            .map(|d| d.file.name.clone())
            .collect()
    }

    fn verdict_of(files: &[StoredFile], p: &Policy, name: &str) -> Verdict {
        plan(files, p)
            .iter()
            .find(|d| d.file.name == name)
            .unwrap()
            .verdict
    }

    #[test]
    fn restart_segment_follows_pg_archivecleanup() {
        let seg = |s: &str| s.parse::<SegmentName>().unwrap();
        let r = "000000010000000000000010";
        assert_eq!(restart_segment(r), Ok(seg(r)));
        assert_eq!(restart_segment(&format!("{r}.partial")), Ok(seg(r)));
        assert_eq!(restart_segment(&format!("{r}.00000028.backup")), Ok(seg(r)));
        assert_eq!(
            restart_segment("00000002.history"),
            Err(TargetError::History("00000002.history".into()))
        );
        for bad in [
            "",
            "%r",
            "bogus",
            "0000000100000000000000aa",
            "00000001000000000000001",
            "../000000010000000000000010",
            "walship.cluster",
            "000000000000000000000010",
        ] {
            assert!(
                matches!(restart_segment(bad), Err(TargetError::Name(_))),
                "{bad}"
            );
        }
        let msg = restart_segment("bogus").unwrap_err().to_string();
        assert!(msg.contains("not a WAL file name"), "{msg}");
    }

    #[test]
    fn removes_what_precedes_the_restart_segment_on_every_timeline() {
        let files = [
            file("000000010000000000000001", 100),
            file("00000001000000000000000F", 100),
            file("000000010000000000000010", 100),
            file("000000010000000000000011", 100),
            file("00000001000000000000000E.partial", 100),
            file("000000010000000000000010.partial", 100),
            // A later timeline before the restart position goes too; the parent timeline's
            // segments at or after it stay.
            file("00000002000000000000000C", 100),
            file("000000020000000000000012", 100),
            file("0000000300000000000000FF", 100),
            file("000000030000000100000000", 100),
        ];
        let p = policy("000000020000000000000010", Duration::ZERO);
        assert_eq!(
            removed(&files, &p),
            [
                "000000010000000000000001",
                "00000002000000000000000C",
                "00000001000000000000000E.partial",
                "00000001000000000000000F",
            ]
        );
        for kept in [
            "000000010000000000000010",
            "000000010000000000000010.partial",
            "000000010000000000000011",
        ] {
            assert_eq!(verdict_of(&files, &p, kept), Verdict::Keep(Kept::NotBefore));
        }
        // Positions across a 4 GiB log boundary compare as numbers.
        let p = policy("000000010000000100000000", Duration::ZERO);
        assert!(removed(&files, &p).contains(&"0000000300000000000000FF".to_string()));
        assert!(!removed(&files, &p).contains(&"000000030000000100000000".to_string()));
    }

    #[test]
    fn never_removes_history_state_or_other_files() {
        let files = [
            file("00000002.history", 100),
            file("00000001.history", 100),
            file("walship.cluster", 100),
            file("walship.fence", 100),
            file("walship.fence.lock", 100),
            file("walship.lock", 100),
            file("walship.restore", 100),
            file("walship.restore.0123abcd", 100),
            file("walship.restore.0123abcd.spare", 100),
            file(".walship-tmp.000000010000000000000001.77.0", 100),
            file("000000010000000000000001.gz", 100),
            file("notes.txt", 100),
        ];
        let p = policy("0000000900000009000000FF", Duration::ZERO);
        assert!(removed(&files, &p).is_empty());
        assert_eq!(
            verdict_of(&files, &p, "00000002.history"),
            Verdict::Keep(Kept::History)
        );
        assert_eq!(
            verdict_of(&files, &p, "walship.lock"),
            Verdict::Keep(Kept::NotWal)
        );
        assert!(!summarize(&plan(&files, &p), &p, false).is_noteworthy());
    }

    #[test]
    fn backup_history_files_go_with_their_start_segment() {
        let files = [
            file("000000010000000000000003.00000028.backup", 100),
            file("000000010000000000000010.00000028.backup", 100),
            file("000000010000000000000011.00000060.backup", 100),
        ];
        let p = policy("000000010000000000000010", Duration::ZERO);
        assert_eq!(
            removed(&files, &p),
            ["000000010000000000000003.00000028.backup"]
        );
        // %r given as a backup history name stands for its segment: the same verdicts.
        let p = policy("000000010000000000000010.00000028.backup", Duration::ZERO);
        assert_eq!(
            removed(&files, &p),
            ["000000010000000000000003.00000028.backup"]
        );
    }

    #[test]
    fn retain_for_keeps_recent_files_and_the_backups_they_need() {
        let hour = Duration::from_secs(3600);
        let files = [
            file("000000010000000000000001", 7200),
            file("000000010000000000000002.00000028.backup", 7200),
            file("000000010000000000000002", 7200),
            file("000000010000000000000004.00000028.backup", 7200),
            file("000000010000000000000005", 1800),
            file("000000010000000000000006", 1800),
            file("000000010000000000000006.00000100.backup", 7200),
            file("000000010000000000000007", 10),
        ];
        let p = policy("000000010000000000000007", hour);
        assert_eq!(
            removed(&files, &p),
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000004.00000028.backup",
            ]
        );
        assert_eq!(
            verdict_of(&files, &p, "000000010000000000000005"),
            Verdict::Keep(Kept::Recent)
        );
        assert_eq!(
            verdict_of(&files, &p, "000000010000000000000006.00000100.backup"),
            Verdict::Keep(Kept::BackupOfKeptFile)
        );
        let s = summarize(&plan(&files, &p), &p, false);
        assert_eq!((s.removed, s.bytes, s.retained), (4, 4 * SEG, 3));
        assert_eq!(
            s.to_string(),
            "removed 4 files before 000000010000000000000007, 64.0 MiB freed; kept 3 files \
             stored less than retain_for (1h) ago"
        );
        // Exactly retain_for old is no longer recent; a future time (clock set back) is.
        let edge = [file("000000010000000000000001", 3600)];
        assert_eq!(removed(&edge, &p).len(), 1);
        let mut future = file("000000010000000000000001", 0);
        future.stored_at = now() + Duration::from_secs(60);
        assert!(removed(&[future.clone()], &p).is_empty());
        // With retain_for off, age does not matter.
        let off = policy("000000010000000000000007", Duration::ZERO);
        assert_eq!(removed(&[future], &off).len(), 1);
    }

    #[test]
    fn leaves_what_is_not_a_regular_file() {
        let mut link = file("000000010000000000000001", 7200);
        link.regular = false;
        let files = [link, file("000000010000000000000002", 7200)];
        let p = policy("000000010000000000000003", Duration::ZERO);
        assert_eq!(removed(&files, &p), ["000000010000000000000002"]);
        assert_eq!(
            verdict_of(&files, &p, "000000010000000000000001"),
            Verdict::Keep(Kept::NotRegular)
        );
        let s = summarize(&plan(&files, &p), &p, true);
        assert_eq!(
            s.to_string(),
            "would remove 1 file before 000000010000000000000003, 16.0 MiB; left 1 entry that \
             is not a regular file"
        );
    }

    #[test]
    fn sizes_and_durations_read_like_an_operator_writes_them() {
        assert_eq!(crate::human::size(0), "0 B");
        assert_eq!(crate::human::size(1023), "1023 B");
        assert_eq!(crate::human::size(1024), "1.0 KiB");
        assert_eq!(crate::human::size(48 << 20), "48.0 MiB");
        assert_eq!(crate::human::size(3 << 29), "1.5 GiB");
        assert_eq!(crate::human::size(u64::MAX), "16.0 EiB");
        assert_eq!(crate::human::setting(Duration::from_secs(7200)), "2h");
        assert_eq!(crate::human::setting(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(crate::human::setting(Duration::from_secs(45)), "45s");
        assert_eq!(crate::human::setting(Duration::from_millis(1500)), "1500ms");
        assert_eq!(crate::human::setting(Duration::ZERO), "0s");
    }
}
