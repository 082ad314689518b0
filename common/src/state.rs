//! Small state records kept in archive_dir beside the WAL, and the pure decisions made from
//! them. None of these file names is a WAL name, so `restore` never serves them.
//!
//! - [`Fence`] (`walship.fence`): written by `promote`. From then on segments of the old
//!   timeline are refused, so the old primary cannot push stale WAL into the new world.
//! - [`RestoreLog`] (`walship.restore.<key>`): what `restore` last served and last missed, one
//!   record per standby. The standby has consumed the newest stored segment once it asked for
//!   the one after it: `promote` knows this from the record instead of guessing from LSNs.
//!   Several standbys may restore from one archive, so each keeps its own record, keyed by its
//!   data directory ([`restore_record_name`]): PostgreSQL runs `restore_command` in the data
//!   directory, so `restore` knows it from its working directory, and `promote`/`status` from
//!   `pgdata` or the standby's `SHOW data_directory`.

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;
use crate::wal::name::{SegNo, SegmentName, TimelineId, WalFileName};

pub const FENCE_FILE: &str = "walship.fence";
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
    /// The standby asked `restore` for the segment after the newest stored one: it consumed
    /// everything.
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

/// Decide whether the standby replayed every stored segment of its timeline.
///
/// `newest`: the newest stored segment (highest timeline, then highest segment number);
/// `replay`: the standby's `pg_last_wal_replay_lsn()`; `missed`: the restore record's last miss.
pub fn replay_state(
    newest: Option<SegmentName>,
    seg_size: u64,
    replay: Option<Lsn>,
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
    let replay_no = replay.map(|l| l.segno(seg_size)).unwrap_or(0);
    let gap = missed_seg
        .and_then(|(seg, no)| (no.0 <= newest_no.0 && no.0 >= replay_no).then(|| seg.to_string()));
    ReplayState::Behind {
        newest,
        left: newest_no.0.saturating_sub(replay_no),
        gap,
    }
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
            replay_state(Some(newest), SEG, Some(Lsn(7 * SEG + 40)), Some(&next)),
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
            Some(Lsn(4 * SEG + 10)),
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
        let s = replay_state(Some(newest), SEG, Some(Lsn(6 * SEG)), None);
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
