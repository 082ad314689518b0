//! Small state records kept in archive_dir beside the WAL, and the pure decisions made from
//! them. None of these file names is a WAL name, so `restore` never serves them.
//!
//! - [`Fence`] (`walship.fence`): written by `promote`. From then on segments of the old
//!   timeline are refused, so the old primary cannot push stale WAL into the new world.
//! - `walship.fence.lock` ([`FENCE_LOCK_FILE`]): empty; `serve` holds a shared `flock` on it
//!   from the fence check of an upload until its file is linked, `promote` an exclusive one
//!   while it writes the fence, so no segment that passed the check is stored after the fence.
//! - [`RestoreLog`] (`walship.restore.<key>`): what `restore` last served and last missed, one
//!   record per standby. The standby has consumed the newest stored segment once it asked for
//!   the one after it: `promote` knows this from the record instead of guessing from LSNs.
//!   Several standbys may restore from one archive, so each keeps its own record, keyed by its
//!   data directory ([`restore_record_name`]): PostgreSQL runs `restore_command` in the data
//!   directory, so `restore` knows it from its working directory, and `promote`/`status` from
//!   `pgdata` or the standby's `SHOW data_directory`.
//!   When the record cannot be written, a hot standby's replay LSN at the end of the newest
//!   segment also counts ([`replay_state`]).

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;
use crate::wal::name::{SegNo, SegmentName, TimelineId, WalFileName};

pub const FENCE_FILE: &str = "walship.fence";
/// See the module doc. Not a WAL name, not a temp name.
pub const FENCE_LOCK_FILE: &str = "walship.fence.lock";
/// The single restore record of walship before records were kept per standby; still read when
/// a standby has no record of its own yet (an upgrade).
pub const RESTORE_LOG_FILE: &str = "walship.restore";
/// Hex digits of the key in a per-standby record's name.
const RECORD_KEY_HEX: usize = 16;

/// Name of the restore record of the standby whose canonical data directory is `data_dir`
/// (the path's bytes): `walship.restore.<16 hex digits of its BLAKE3>`. Never a WAL name nor
/// a temp name; fixed length whatever the path, and the path itself is kept in the record.
pub fn restore_record_name(data_dir: &[u8]) -> String {
    let hash = blake3::hash(data_dir);
    format!(
        "{RESTORE_LOG_FILE}.{}",
        &hash.to_hex().as_str()[..RECORD_KEY_HEX]
    )
}

/// Whether `name` is a per-standby restore record (not its spare, not the old single record).
pub fn is_restore_record_name(name: &str) -> bool {
    name.strip_prefix(RESTORE_LOG_FILE)
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|k| {
            k.len() == RECORD_KEY_HEX
                && k.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The archive's old timeline is closed: the standby was promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// Segments on this timeline or older are refused.
    pub timeline: u32,
    /// Where the standby stopped replaying and the new timeline begins ("0/5000028").
    pub promoted_at_lsn: String,
    /// The promoted standby's new timeline, once known.
    pub new_timeline: Option<u32>,
    /// Unix time (ms) of the fence.
    pub fenced_at_unix_ms: u64,
}

impl Fence {
    /// Whether a file may still be stored: only segments of fenced timelines are refused;
    /// history, partial and backup files still go through (they describe, not extend, history).
    pub fn admits(&self, name: &WalFileName) -> bool {
        match name {
            WalFileName::Segment(s) => s.timeline.0 > self.timeline,
            _ => true,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a flat struct serialises")
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().replace('\n', " "))
    }
}

/// One `restore` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreEvent {
    pub name: String,
    pub at_unix_ms: u64,
}

/// What `restore` last served and last failed to find (segments only: PostgreSQL probes for
/// history files that do not exist all the time, which says nothing about replay).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreLog {
    /// The standby's data directory (canonical) the record belongs to; absent in the old single
    /// record. Kept first: TOML wants plain values before tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_directory: Option<String>,
    pub last_served: Option<RestoreEvent>,
    pub last_missed: Option<RestoreEvent>,
}

impl RestoreLog {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a flat struct serialises")
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().replace('\n', " "))
    }
}

/// How far the standby is from having replayed everything stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayState {
    /// Nothing is stored for the standby's timeline: nothing to wait for.
    NothingArchived,
    /// The standby consumed everything: it asked `restore` for the segment after the newest
    /// stored one, or its replay position reached the end of that segment.
    Caught { newest: SegmentName },
    /// Still replaying; `left` segments after the one holding the replay position.
    Behind {
        newest: SegmentName,
        left: u64,
        /// The segment the standby asked for and the archive lacks, when that is below the
        /// newest stored one: a gap that waiting will not close.
        gap: Option<String>,
    },
}

/// Where a (hot) standby's replay is, as it says itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// `pg_last_wal_replay_lsn()`: the end of the last record replayed. After an XLOG_SWITCH
    /// record (how every archived segment but a full one ends) it is the start of the next
    /// segment, i.e. the end of the switched one.
    pub lsn: Lsn,
    /// The standby's timeline as its control data tells (`pg_control_checkpoint()`,
    /// `pg_control_recovery()`), `None` if unknown. During recovery this lags: it moves at
    /// restartpoints, so a standby that just followed a switch to a newer timeline may still
    /// report the older one. It is a lower bound.
    pub timeline: Option<TimelineId>,
}

/// Decide whether the standby replayed every stored segment of its timeline.
///
/// `newest`: the newest stored segment (highest timeline, then highest segment number);
/// `replay`: where the standby says it is (hot standbys only); `missed`: the restore record's
/// last miss. Either proof of having consumed the newest segment is enough: the record (the
/// standby asked for the one after it) or the replay position (at or past the end of it, on
/// its timeline or a newer one), so a record that could not be written (archive_dir read-only
/// for the standby's user) does not block failover of a hot standby.
pub fn replay_state(
    newest: Option<SegmentName>,
    seg_size: u64,
    replay: Option<Replay>,
    missed: Option<&str>,
) -> ReplayState {
    let Some(newest) = newest else {
        return ReplayState::NothingArchived;
    };
    let Ok(newest_no) = newest.segno(seg_size) else {
        return ReplayState::NothingArchived;
    };
    let missed_seg = missed
        .and_then(|m| m.parse::<WalFileName>().ok())
        .and_then(|w| match w {
            WalFileName::Segment(s) => Some(s),
            _ => None,
        })
        .and_then(|s| s.segno(seg_size).ok().map(|n| (s, n)));
    if let Some((seg, no)) = missed_seg {
        // Asked for the one after the newest (on this timeline or a later one): all consumed.
        if no.0 == newest_no.0 + 1 && seg.timeline >= newest.timeline {
            return ReplayState::Caught { newest };
        }
    }
    if let Some(r) = replay {
        // Past the end of the newest segment. Only on the newest segment's timeline (or a
        // later one): a standby still on an older timeline at a higher LSN went another way.
        // The timeline is a lower bound, so a doubt means waiting (for the record), not
        // promoting.
        let on_its_timeline = r.timeline.is_some_and(|t| t >= newest.timeline);
        if on_its_timeline && r.lsn.segno(seg_size) > newest_no.0 {
            return ReplayState::Caught { newest };
        }
    }
    let replay_no = replay.map(|r| r.lsn.segno(seg_size)).unwrap_or(0);
    let gap = missed_seg
        .and_then(|(seg, no)| (no.0 <= newest_no.0 && no.0 >= replay_no).then(|| seg.to_string()));
    ReplayState::Behind {
        newest,
        left: newest_no.0.saturating_sub(replay_no),
        gap,
    }
}

/// What `promote` is waiting for while the standby is [`ReplayState::Behind`], for its
/// progress and timeout messages ("replay LSN 0/5000028 is inside the newest stored ...").
pub fn waiting_for(newest: &SegmentName, seg_size: u64, replay: Option<Replay>) -> String {
    let next = next_segment(newest, seg_size)
        .map(|n| n.to_string())
        .unwrap_or_else(|| "the next segment".into());
    let Ok(start) = newest.start_lsn(seg_size) else {
        return format!("waiting for the standby to ask restore for {next}");
    };
    let end = Lsn(start.0 + seg_size);
    let Some(r) = replay else {
        return format!(
            "replay position unknown (warm standby): waiting for the standby to ask restore for {next}, the segment after the newest stored {newest}"
        );
    };
    if r.lsn < start {
        // From the segment holding the replay position to the newest, both included.
        let left = newest
            .segno(seg_size)
            .map(|n| n.0.saturating_sub(r.lsn.segno(seg_size)) + 1)
            .unwrap_or(1);
        return format!(
            "replay LSN {}, newest stored {newest}: {left} segment(s) still to replay, up to {end}",
            r.lsn
        );
    }
    if r.lsn < end {
        return format!(
            "replay LSN {} is inside the newest stored segment {newest}: waiting for replay to reach its end {end}, or for the standby to ask restore for {next}",
            r.lsn
        );
    }
    let timeline = r
        .timeline
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "replay LSN {} is past the newest stored {newest}, but the standby's control data is on timeline {timeline}, older than that segment's: waiting for the standby to ask restore for {next}",
        r.lsn
    )
}

/// The segment after `seg` on the same timeline.
pub fn next_segment(seg: &SegmentName, seg_size: u64) -> Option<SegmentName> {
    let no = seg.segno(seg_size).ok()?;
    Some(SegmentName::from_segno(
        seg.timeline,
        SegNo(no.0 + 1),
        seg_size,
    ))
}

/// Pick the newest segment among names: highest timeline first, then highest position.
pub fn newest_segment<'a>(names: impl IntoIterator<Item = &'a WalFileName>) -> Option<SegmentName> {
    names
        .into_iter()
        .filter_map(|n| match n {
            WalFileName::Segment(s) => Some(*s),
            _ => None,
        })
        .max_by_key(|s| (s.timeline, s.log, s.seg))
}

/// Timeline of a segment name's first 8 hex digits (as `pg_walfile_name()` prints them).
pub fn timeline_of_walfile(name: &str) -> Option<TimelineId> {
    name.get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .map(TimelineId)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn seg(tli: u32, no: u64) -> SegmentName {
        SegmentName::from_segno(TimelineId(tli), SegNo(no), SEG)
    }

    fn at(tli: u32, lsn: u64) -> Option<Replay> {
        Some(Replay {
            lsn: Lsn(lsn),
            timeline: Some(TimelineId(tli)),
        })
    }

    #[test]
    fn fence_refuses_old_timeline_segments_only() {
        let f = Fence {
            timeline: 1,
            promoted_at_lsn: "0/5000028".into(),
            new_timeline: Some(2),
            fenced_at_unix_ms: 1,
        };
        assert!(!f.admits(&WalFileName::Segment(seg(1, 9))));
        assert!(f.admits(&WalFileName::Segment(seg(2, 9))));
        assert!(f.admits(&"00000002.history".parse().unwrap()));
        assert!(f.admits(&WalFileName::Partial(seg(1, 5))));
        assert_eq!(Fence::from_toml(&f.to_toml()).unwrap(), f);
    }

    #[test]
    fn restore_log_round_trips() {
        let mut log = RestoreLog {
            data_directory: None,
            last_served: Some(RestoreEvent {
                name: seg(1, 3).to_string(),
                at_unix_ms: 5,
            }),
            last_missed: None,
        };
        assert_eq!(RestoreLog::from_toml(&log.to_toml()).unwrap(), log);
        assert_eq!(RestoreLog::from_toml("").unwrap(), RestoreLog::default());
        log.data_directory = Some("/var/lib/postgresql/15/main \"quoted\"".into());
        log.last_missed = log.last_served.clone();
        assert_eq!(RestoreLog::from_toml(&log.to_toml()).unwrap(), log);
    }

    #[test]
    fn restore_record_names_are_per_directory_and_never_wal_names() {
        let a = restore_record_name(b"/srv/standby1");
        let b = restore_record_name(b"/srv/standby2");
        assert_ne!(a, b);
        assert_eq!(a, restore_record_name(b"/srv/standby1"));
        assert!(a.starts_with("walship.restore.") && a.len() == "walship.restore.".len() + 16);
        assert!(is_restore_record_name(&a));
        assert!(a.parse::<WalFileName>().is_err());
        assert!(!is_restore_record_name(RESTORE_LOG_FILE));
        assert!(!is_restore_record_name(&format!("{a}.spare")));
        assert!(!is_restore_record_name("walship.restore.spare"));
    }

    #[test]
    fn caught_up_when_the_next_segment_was_asked_for() {
        let newest = seg(1, 7);
        let next = seg(1, 8).to_string();
        assert_eq!(
            replay_state(Some(newest), SEG, at(1, 7 * SEG + 40), Some(&next)),
            ReplayState::Caught { newest }
        );
        // Asking for the next one on a newer timeline (history switch) counts too.
        let next2 = seg(2, 8).to_string();
        assert_eq!(
            replay_state(Some(newest), SEG, None, Some(&next2)),
            ReplayState::Caught { newest }
        );
    }

    #[test]
    fn behind_counts_segments_and_spots_a_gap() {
        let newest = seg(1, 7);
        let s = replay_state(
            Some(newest),
            SEG,
            at(1, 4 * SEG + 10),
            Some(&seg(1, 4).to_string()),
        );
        assert_eq!(
            s,
            ReplayState::Behind {
                newest,
                left: 3,
                gap: Some(seg(1, 4).to_string())
            }
        );
        let s = replay_state(Some(newest), SEG, at(1, 6 * SEG), None);
        assert_eq!(
            s,
            ReplayState::Behind {
                newest,
                left: 1,
                gap: None
            }
        );
        assert_eq!(
            replay_state(None, SEG, None, None),
            ReplayState::NothingArchived
        );
    }

    #[test]
    fn item4_caught_up_when_replay_reached_the_end_of_the_newest_segment() {
        // After replaying the XLOG_SWITCH that ends segment 7, pg_last_wal_replay_lsn() is the
        // start of segment 8: caught up, whatever the restore record says (here: nothing, or a
        // stale miss of segment 5).
        let newest = seg(1, 7);
        for missed in [None, Some(seg(1, 5).to_string())] {
            assert_eq!(
                replay_state(Some(newest), SEG, at(1, 8 * SEG), missed.as_deref()),
                ReplayState::Caught { newest }
            );
        }
        // Further on (a standby that also streams), or on a newer timeline: caught up too.
        assert_eq!(
            replay_state(Some(newest), SEG, at(1, 9 * SEG + 40), None),
            ReplayState::Caught { newest }
        );
        assert_eq!(
            replay_state(Some(newest), SEG, at(2, 8 * SEG), None),
            ReplayState::Caught { newest }
        );
        // One byte short of the end: still behind, 0 whole segments left.
        assert_eq!(
            replay_state(Some(newest), SEG, at(1, 8 * SEG - 1), None),
            ReplayState::Behind {
                newest,
                left: 0,
                gap: None
            }
        );
    }

    #[test]
    fn item4_replay_lsn_counts_only_on_the_newest_segments_timeline() {
        // The newest stored segment is on timeline 2; a standby whose control data says 1 at a
        // higher LSN may have gone another way (or just not had a restartpoint yet): wait.
        let newest = seg(2, 7);
        for replay in [at(1, 8 * SEG), None] {
            assert!(matches!(
                replay_state(Some(newest), SEG, replay, None),
                ReplayState::Behind { .. }
            ));
        }
        let unknown = Some(Replay {
            lsn: Lsn(8 * SEG),
            timeline: None,
        });
        assert!(matches!(
            replay_state(Some(newest), SEG, unknown, None),
            ReplayState::Behind { .. }
        ));
        // The record still proves it.
        assert_eq!(
            replay_state(
                Some(newest),
                SEG,
                at(1, 8 * SEG),
                Some(&seg(2, 8).to_string())
            ),
            ReplayState::Caught { newest }
        );
    }

    #[test]
    fn item4_waiting_says_what_for() {
        let newest = seg(1, 7);
        let text = waiting_for(&newest, SEG, at(1, 7 * SEG + 40));
        assert_eq!(
            text,
            "replay LSN 0/7000028 is inside the newest stored segment 000000010000000000000007: \
             waiting for replay to reach its end 0/8000000, or for the standby to ask restore for \
             000000010000000000000008"
        );
        let text = waiting_for(&newest, SEG, at(1, 4 * SEG + 40));
        assert_eq!(
            text,
            "replay LSN 0/4000028, newest stored 000000010000000000000007: 4 segment(s) still to \
             replay, up to 0/8000000"
        );
        let text = waiting_for(&newest, SEG, None);
        assert!(text.starts_with("replay position unknown (warm standby): waiting for the standby to ask restore for 000000010000000000000008"), "{text}");
        let text = waiting_for(&seg(2, 7), SEG, at(1, 8 * SEG));
        assert!(text.contains("control data is on timeline 1"), "{text}");
        for replay in [at(1, 7 * SEG), at(1, 8 * SEG - 1), None] {
            assert!(
                !waiting_for(&newest, SEG, replay).contains(" 0 "),
                "{replay:?}"
            );
        }
    }

    #[test]
    fn newest_prefers_timeline_then_position() {
        let names = [
            WalFileName::Segment(seg(1, 9)),
            WalFileName::Segment(seg(2, 3)),
            "00000002.history".parse().unwrap(),
        ];
        assert_eq!(newest_segment(names.iter()), Some(seg(2, 3)));
        assert_eq!(
            timeline_of_walfile("000000020000000000000003"),
            Some(TimelineId(2))
        );
    }
}
