//! The pg_wal valve (sender.toml `max_backlog`): when the WAL waiting to be archived on the
//! primary (`pg_wal/archive_status/*.ready`) grows past a limit because the receiver cannot take
//! it, `push` acknowledges the OLDEST waiting segment without shipping it, so that PostgreSQL can
//! recycle it and keep running ("better to lose the backup than have PostgreSQL go down", as
//! pgBackRest's `archive-push-queue-max` puts it). Never silently: every drop is one ERROR line,
//! a durable record on the primary ([`DropLog`], `<state_dir>/walship.dropped`), and, reported
//! on the next connection, a durable record in the receiver's archive_dir ([`GapLog`],
//! `walship.gaps`), which `status` and `promote` read.
//!
//! This module decides and formats; reading and writing the files is the sender's and the
//! receiver's job.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::state::StateFormatError;
use crate::wal::name::{SegNo, SegmentName, WalFileName};

/// The sender's record of the segments it dropped, in its `state_dir`.
pub const DROPS_FILE: &str = "walship.dropped";
/// Held (`flock`) while the sender reads and rewrites [`DROPS_FILE`]: `push` and the daemon's
/// transfers both change it.
pub const DROPS_LOCK_FILE: &str = "walship.dropped.lock";
/// The receiver's record of the gaps the primary reported, in archive_dir (a state file: never
/// a WAL name, so `cleanup` and `restore` leave it alone).
pub const GAPS_FILE: &str = "walship.gaps";
/// Most dropped names reported in one request. 24-byte names: 64 of them keep a request far
/// below [`crate::proto::frame::MAX_HEADER_BYTES`]; more go with the next requests.
pub const MAX_REPORTED: usize = 64;

/// What to do about one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver has it: nothing to decide.
    Shipped,
    /// Not shipped and not dropped: exit 1, PostgreSQL keeps the file and retries.
    Failed,
    /// Not shipped, and the valve opens: acknowledge it unshipped, record and report the drop.
    Drop,
}

/// What the valve is decided on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// `max_backlog`; `None`: the valve is off.
    pub limit: Option<u64>,
    /// Bytes of the files PostgreSQL marked `.ready` (this one included).
    pub backlog: u64,
    /// The file PostgreSQL asks to archive (`%f`).
    pub name: &'a WalFileName,
    /// The oldest segment marked `.ready`, if any.
    pub oldest_ready: Option<&'a SegmentName>,
    /// Whether the push succeeded.
    pub shipped: bool,
}

/// Decide a push: a failed push of the oldest `.ready` segment while the backlog exceeds the
/// limit is dropped; anything else keeps PostgreSQL's own behaviour. Only plain segments are
/// ever dropped: a `.history` file is what a standby needs to follow a promotion, a `.backup`
/// file and a `.partial` are small and rare. Never a segment while an older one still waits:
/// a drop leaves one contiguous hole at the start of what remains, which the receiver can
/// name as "segments X..Y".
pub fn decide(f: &Facts<'_>) -> Verdict {
    if f.shipped {
        return Verdict::Shipped;
    }
    let (Some(limit), WalFileName::Segment(seg)) = (f.limit, f.name) else {
        return Verdict::Failed;
    };
    if f.backlog > limit && f.oldest_ready == Some(seg) {
        Verdict::Drop
    } else {
        Verdict::Failed
    }
}

/// The oldest segment among `.ready` names, in PostgreSQL's archive order (by name: timeline,
/// then position).
pub fn oldest_segment<'a>(ready: impl IntoIterator<Item = &'a WalFileName>) -> Option<SegmentName> {
    ready
        .into_iter()
        .filter_map(|n| match n {
            WalFileName::Segment(s) => Some(*s),
            _ => None,
        })
        .min()
}

/// The one ERROR line of a drop, for PostgreSQL's log.
pub fn drop_message(name: &SegmentName, backlog: u64, limit: u64, why: &str) -> String {
    format!(
        "ERROR: dropped WAL segment {name} without archiving it: {} waiting in pg_wal is more than max_backlog {} and the receiver could not take it ({why}); the standby cannot be promoted past {name}: take a new base backup for it",
        crate::human::size(backlog),
        crate::human::size(limit)
    )
}

/// One dropped segment, as the sender records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    pub name: WalFileName,
    /// Its size: the segment size, to group drops into ranges.
    pub bytes: u64,
    #[serde(rename = "dropped_at_unix_ms", with = "crate::state::unix_ms")]
    pub at: SystemTime,
    /// The receiver acknowledged the report.
    pub reported: bool,
}

/// `walship.dropped`: every segment the valve dropped on this primary, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropLog {
    #[serde(default)]
    pub dropped: Vec<DropRecord>,
}

impl DropLog {
    /// Add a drop (once per name).
    pub fn add(&mut self, name: SegmentName, bytes: u64, at: SystemTime) {
        let name = WalFileName::Segment(name);
        if self.dropped.iter().all(|r| r.name != name) {
            self.dropped.push(DropRecord {
                name,
                bytes,
                at,
                reported: false,
            });
        }
    }

    /// The oldest names not yet acknowledged by the receiver, at most [`MAX_REPORTED`].
    pub fn unreported(&self) -> Vec<String> {
        self.dropped
            .iter()
            .filter(|r| !r.reported)
            .take(MAX_REPORTED)
            .map(|r| r.name.to_string())
            .collect()
    }

    /// Mark `names` acknowledged; whether anything changed.
    pub fn mark_reported(&mut self, names: &[String]) -> bool {
        let mut changed = false;
        for r in self.dropped.iter_mut().filter(|r| !r.reported) {
            if names.iter().any(|n| *n == r.name.to_string()) {
                r.reported = true;
                changed = true;
            }
        }
        changed
    }

    /// The drops as ranges of consecutive segments.
    pub fn ranges(&self) -> Vec<GapRange> {
        let seg_size = self.dropped.first().map(|r| r.bytes).unwrap_or(16 << 20);
        ranges(self.dropped.iter().map(|r| &r.name), seg_size)
    }

    pub fn encode(&self) -> String {
        format!(
            "# Written by walship-sender: WAL segments the pg_wal valve (max_backlog) dropped without\n# archiving them. Remove this file once the standby was rebuilt from a new base backup.\n{}",
            toml::to_string(self).expect("a list of flat records serialises")
        )
    }

    pub fn decode(text: &str) -> Result<Self, StateFormatError> {
        toml::from_str(text).map_err(crate::state::toml_error)
    }
}

/// One reported gap, as the receiver records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    pub name: WalFileName,
    #[serde(rename = "learned_at_unix_ms", with = "crate::state::unix_ms")]
    pub learned_at: SystemTime,
}

/// `walship.gaps`: the segments the primary reported dropped, in the order learned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapLog {
    #[serde(default)]
    pub dropped: Vec<GapRecord>,
}

impl GapLog {
    /// Add the names not known yet; the ones added. Names must be plain segments
    /// ([`parse_reported`]).
    pub fn merge(&mut self, names: &[SegmentName], at: SystemTime) -> Vec<SegmentName> {
        let mut added = Vec::new();
        for n in names {
            let name = WalFileName::Segment(*n);
            if self.dropped.iter().all(|r| r.name != name) {
                self.dropped.push(GapRecord {
                    name,
                    learned_at: at,
                });
                added.push(*n);
            }
        }
        added
    }

    /// The gaps as ranges of consecutive segments.
    pub fn ranges(&self, seg_size: u64) -> Vec<GapRange> {
        ranges(self.dropped.iter().map(|r| &r.name), seg_size)
    }

    pub fn encode(&self) -> String {
        format!(
            "# Written by walship-receiver: WAL segments the primary dropped without archiving them\n# (its pg_wal valve, max_backlog). Remove this file once the standby was rebuilt from a new base backup.\n{}",
            toml::to_string(self).expect("a list of flat records serialises")
        )
    }

    pub fn decode(text: &str) -> Result<Self, StateFormatError> {
        toml::from_str(text).map_err(crate::state::toml_error)
    }
}

/// Names reported by a sender, checked: plain segment names only, at most [`MAX_REPORTED`].
pub fn parse_reported(names: &[String]) -> Result<Vec<SegmentName>, String> {
    if names.len() > MAX_REPORTED {
        return Err(format!(
            "{} dropped segments reported at once, more than {MAX_REPORTED}",
            names.len()
        ));
    }
    names
        .iter()
        .map(|n| match n.parse::<WalFileName>() {
            Ok(WalFileName::Segment(s)) => Ok(s),
            Ok(_) => Err(format!("{n:?} reported dropped is not a WAL segment")),
            Err(e) => Err(format!("reported dropped segment: {e}")),
        })
        .collect()
}

/// Consecutive dropped segments `first..=last` on one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GapRange {
    #[serde(serialize_with = "text")]
    pub first: SegmentName,
    #[serde(serialize_with = "text")]
    pub last: SegmentName,
    pub segments: u64,
}

fn text<S: serde::Serializer>(v: &SegmentName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl GapRange {
    /// The sentence `status`, `check` and `promote` print.
    pub fn problem(&self) -> String {
        format!(
            "segments {}..{} were dropped on the primary to keep it running; this standby cannot be promoted past {}; take a new base backup",
            self.first, self.last, self.first
        )
    }

    /// Whether a standby that last restored `served` has replayed past this gap (it was
    /// rebuilt from a base backup taken after it): then the gap no longer matters to it.
    pub fn behind(&self, served: Option<&SegmentName>, seg_size: u64) -> bool {
        match (
            served.and_then(|s| s.segno(seg_size).ok()),
            self.last.segno(seg_size),
        ) {
            (Some(s), Ok(last)) => s > last,
            _ => false,
        }
    }
}

/// Group segment names (others are skipped) into ranges of consecutive segments on one
/// timeline, in order.
pub fn ranges<'a>(
    names: impl IntoIterator<Item = &'a WalFileName>,
    seg_size: u64,
) -> Vec<GapRange> {
    let mut segs: Vec<(SegmentName, SegNo)> = names
        .into_iter()
        .filter_map(|n| match n {
            WalFileName::Segment(s) => Some((*s, s.segno(seg_size).ok()?)),
            _ => None,
        })
        .collect();
    segs.sort_by_key(|(s, no)| (s.timeline, *no));
    segs.dedup();
    let mut out: Vec<GapRange> = Vec::new();
    let mut last_no = SegNo(0);
    for (s, no) in segs {
        match out.last_mut() {
            Some(r) if r.last.timeline == s.timeline && no.0 == last_no.0 + 1 => {
                r.last = s;
                r.segments += 1;
            }
            _ => out.push(GapRange {
                first: s,
                last: s,
                segments: 1,
            }),
        }
        last_no = no;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::wal::name::TimelineId;

    const SEG: u64 = 16 << 20;
    const LIMIT: u64 = 4 * SEG;

    fn seg(no: u64) -> SegmentName {
        SegmentName::from_segno(TimelineId(1), SegNo(no), SEG)
    }

    fn facts<'a>(
        name: &'a WalFileName,
        oldest: Option<&'a SegmentName>,
        backlog: u64,
        shipped: bool,
    ) -> Facts<'a> {
        Facts {
            limit: Some(LIMIT),
            backlog,
            name,
            oldest_ready: oldest,
            shipped,
        }
    }

    #[test]
    fn drops_only_the_oldest_failed_segment_over_the_limit() {
        let (s3, s4) = (seg(3), seg(4));
        let n3 = WalFileName::Segment(s3);
        let n4 = WalFileName::Segment(s4);
        let over = LIMIT + 1;
        assert_eq!(decide(&facts(&n3, Some(&s3), over, false)), Verdict::Drop);
        // Shipped after all: nothing to drop.
        assert_eq!(decide(&facts(&n3, Some(&s3), over, true)), Verdict::Shipped);
        // At the limit, not over it.
        assert_eq!(
            decide(&facts(&n3, Some(&s3), LIMIT, false)),
            Verdict::Failed
        );
        // Never one in the middle while an older one waits.
        assert_eq!(decide(&facts(&n4, Some(&s3), over, false)), Verdict::Failed);
        // Not marked .ready at all (run by hand): not the oldest.
        assert_eq!(decide(&facts(&n4, None, over, false)), Verdict::Failed);
        // The valve off (the default).
        let mut off = facts(&n3, Some(&s3), u64::MAX, false);
        off.limit = None;
        assert_eq!(decide(&off), Verdict::Failed);
    }

    #[test]
    fn never_drops_history_backup_or_partial_files() {
        let s3 = seg(3);
        for name in [
            "00000002.history",
            "000000010000000000000003.00000028.backup",
            "000000010000000000000003.partial",
        ] {
            let n: WalFileName = name.parse().unwrap();
            assert_eq!(
                decide(&facts(&n, Some(&s3), u64::MAX, false)),
                Verdict::Failed,
                "{name}"
            );
        }
    }

    #[test]
    fn the_oldest_ready_is_a_segment_by_name_order() {
        let names: Vec<WalFileName> = [
            "000000010000000000000005",
            "00000002.history",
            "000000010000000000000003",
            "000000010000000000000002.00000028.backup",
            "000000010000000100000000",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        assert_eq!(oldest_segment(&names), Some(seg(3)));
        assert_eq!(oldest_segment(&[]), None);
    }

    #[test]
    fn drop_log_reports_and_marks() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut log = DropLog::default();
        log.add(seg(3), SEG, t);
        log.add(seg(4), SEG, t);
        log.add(seg(3), SEG, t);
        assert_eq!(log.dropped.len(), 2);
        let names = log.unreported();
        assert_eq!(
            names,
            ["000000010000000000000003", "000000010000000000000004"]
        );
        assert!(log.mark_reported(&names[..1]));
        assert!(!log.mark_reported(&names[..1]));
        assert_eq!(log.unreported(), ["000000010000000000000004"]);
        let back = DropLog::decode(&log.encode()).unwrap();
        assert_eq!(back, log);
        assert_eq!(back.ranges()[0].problem(), "segments 000000010000000000000003..000000010000000000000004 were dropped on the primary to keep it running; this standby cannot be promoted past 000000010000000000000003; take a new base backup");
        assert!(DropLog::decode("dropped = 3").is_err());
        assert_eq!(DropLog::decode("").unwrap(), DropLog::default());
    }

    #[test]
    fn reports_are_capped_and_checked() {
        let mut log = DropLog::default();
        for n in 0..(MAX_REPORTED as u64 + 10) {
            log.add(seg(n), SEG, UNIX_EPOCH);
        }
        assert_eq!(log.unreported().len(), MAX_REPORTED);
        assert!(parse_reported(&log.unreported()).is_ok());
        let mut too_many = log.unreported();
        too_many.push("000000010000000000000099".into());
        assert!(parse_reported(&too_many).is_err());
        assert!(parse_reported(&["00000002.history".into()]).is_err());
        assert!(parse_reported(&["../etc/passwd".into()]).is_err());
    }

    #[test]
    fn gaps_merge_and_group_into_ranges() {
        let mut gaps = GapLog::default();
        assert_eq!(gaps.merge(&[seg(5), seg(3), seg(4)], UNIX_EPOCH).len(), 3);
        assert_eq!(gaps.merge(&[seg(4), seg(9)], UNIX_EPOCH), vec![seg(9)]);
        let other = SegmentName::from_segno(TimelineId(2), SegNo(10), SEG);
        gaps.merge(&[other], UNIX_EPOCH);
        let r = gaps.ranges(SEG);
        assert_eq!(
            r,
            vec![
                GapRange {
                    first: seg(3),
                    last: seg(5),
                    segments: 3
                },
                GapRange {
                    first: seg(9),
                    last: seg(9),
                    segments: 1
                },
                GapRange {
                    first: other,
                    last: other,
                    segments: 1
                },
            ]
        );
        // Across a log boundary (256 segments of 16 MiB per log).
        let r = ranges(
            &[
                WalFileName::Segment(seg(255)),
                WalFileName::Segment(seg(256)),
            ],
            SEG,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(GapLog::decode(&gaps.encode()).unwrap(), gaps);
    }

    #[test]
    fn a_standby_restoring_past_a_gap_left_it_behind() {
        let g = GapRange {
            first: seg(3),
            last: seg(5),
            segments: 3,
        };
        assert!(!g.behind(None, SEG));
        assert!(!g.behind(Some(&seg(2)), SEG));
        assert!(!g.behind(Some(&seg(5)), SEG));
        assert!(g.behind(Some(&seg(6)), SEG));
    }
}
