//! The state files kept in archive_dir beside the WAL: their names, their formats and the pure
//! decisions made from them. Reading and writing them is `walship_receiver::state`'s job; this
//! module turns their bytes into typed records and back. None of these names is a WAL name nor a
//! temp name, so `restore` never serves them and start-up never removes them.
//!
//! - [`PIN_FILE`] (`walship.cluster`, [`Pin`]): the cluster the archive belongs to, written once
//!   (by `serve`, from `pgdata` or the first accepted segment) and never replaced.
//! - [`FENCE_FILE`] (`walship.fence`, [`Fence`]): written by `promote`. From then on segments of
//!   the old timeline are refused, so the old primary cannot push stale WAL into the new world.
//! - [`FENCE_LOCK_FILE`] (`walship.fence.lock`): empty; `serve` holds a shared `flock` on it from
//!   the fence check of an upload until its file is linked, `promote` an exclusive one while it
//!   writes the fence, so no segment that passed the check is stored after the fence.
//! - [`LOCK_FILE`] (`walship.lock`): the pid of the running `serve`, which holds an exclusive
//!   `flock` on it for its whole life.
//! - [`RestoreLog`] (`walship.restore.<key>`, and its spare `walship.restore.<key>.spare`): what
//!   `restore` last served and last missed, one record per standby. The standby has consumed
//!   the newest stored segment once it asked for the one after it: `promote` knows this from
//!   the record instead of guessing from LSNs. Several standbys may restore from one archive, so
//!   each keeps its own record, keyed by its data directory ([`restore_record_name`]):
//!   PostgreSQL runs `restore_command` in the data directory, so `restore` knows it from its
//!   working directory, and `promote`/`status` from `pgdata` or the standby's
//!   `SHOW data_directory`. When the record cannot be written, a hot standby's replay LSN at
//!   the end of the newest segment also counts ([`replay_state`]).
//!
//! Formats: the pin is one `system_identifier = N` line (read by hand: a system identifier is
//! a u64 and TOML integers stop at 2^63); the fence and the restore records are TOML with LSNs
//! and WAL names as text and times as Unix milliseconds. Files written by earlier versions
//! still read: a fence whose `promoted_at_lsn` is the text [`PROMOTION_IN_PROGRESS`] (written
//! while `promote` ran) and the single record `walship.restore` ([`RESTORE_LOG_FILE`]).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;
use crate::pg_control::SystemId;
use crate::wal::name::{SegNo, SegmentName, TimelineId, WalFileName};

/// See the module doc.
pub const PIN_FILE: &str = "walship.cluster";
/// See the module doc.
pub const LOCK_FILE: &str = "walship.lock";
/// See the module doc.
pub const FENCE_FILE: &str = "walship.fence";
/// See the module doc.
pub const FENCE_LOCK_FILE: &str = "walship.fence.lock";
/// The single restore record of walship before records were kept per standby; still read when
/// a standby has no record of its own yet (an upgrade).
pub const RESTORE_LOG_FILE: &str = "walship.restore";
/// Most bytes read from a state file: they are a few lines, and a huge file under such a name
/// is not one walship wrote.
pub const STATE_FILE_LIMIT: u64 = 64 * 1024;
/// Hex digits of the key in a per-standby record's name.
const RECORD_KEY_HEX: usize = 16;
/// How outputs (`status`, refusals) show a fence whose promotion LSN is not known yet, and how
/// earlier versions wrote that state into the fence file.
pub const PROMOTION_IN_PROGRESS: &str = "promotion in progress";
/// Size every restore record is padded to (see [`RestoreLog::encode_padded`]).
pub const RESTORE_RECORD_BYTES: usize = 512;
/// Starts the padding, for whoever reads the file.
const PAD_COMMENT: &str = "# (fixed-size record: padded, rewritten in place)";

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

/// Why a state file's content is not a record walship wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StateFormatError(String);

/// `walship.cluster`: the cluster whose WAL this archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub SystemId);

impl Pin {
    pub fn encode(&self) -> String {
        format!(
            "# Written by walship-receiver: this archive holds WAL of this cluster only.\nsystem_identifier = {}\n",
            self.0
        )
    }

    /// The first `system_identifier = N` line; comments and other lines are ignored.
    pub fn decode(text: &str) -> Result<Self, StateFormatError> {
        let bad = |reason: &str| StateFormatError(reason.to_string());
        let value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("system_identifier"))
            .and_then(|rest| rest.trim().strip_prefix('='))
            .ok_or_else(|| bad("no `system_identifier = N` line"))?;
        let id = value
            .trim()
            .parse()
            .map_err(|_| bad("system_identifier is not a number"))?;
        Ok(Pin(SystemId(id)))
    }
}

/// The archive's old timeline is closed: the standby was promoted (or is being promoted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// Segments on this timeline or older are refused.
    pub timeline: TimelineId,
    /// Where the standby stopped replaying and the new timeline begins; `None` while `promote`
    /// runs and does not know it yet (absent from the file then).
    #[serde(
        default,
        deserialize_with = "promotion_point",
        skip_serializing_if = "Option::is_none"
    )]
    pub promoted_at_lsn: Option<Lsn>,
    /// The promoted standby's new timeline, once known.
    pub new_timeline: Option<TimelineId>,
    /// When the fence was written.
    #[serde(rename = "fenced_at_unix_ms", with = "unix_ms")]
    pub fenced_at: SystemTime,
}

impl Fence {
    /// Whether a file may still be stored: only segments of fenced timelines are refused;
    /// history, partial and backup files still go through (they describe, not extend, history).
    pub fn admits(&self, name: &WalFileName) -> bool {
        match name {
            WalFileName::Segment(s) => s.timeline > self.timeline,
            _ => true,
        }
    }

    /// The promotion LSN as outputs show it: `0/5000028`, or [`PROMOTION_IN_PROGRESS`].
    pub fn promoted_at_text(&self) -> String {
        self.promoted_at_lsn
            .map(|l| l.to_string())
            .unwrap_or_else(|| PROMOTION_IN_PROGRESS.to_string())
    }

    pub fn encode(&self) -> String {
        toml::to_string(self).expect("a flat struct serialises")
    }

    pub fn decode(text: &str) -> Result<Self, StateFormatError> {
        toml::from_str(text).map_err(toml_error)
    }
}

/// `promoted_at_lsn` as found in a fence file: an LSN, or the text earlier versions wrote
/// while `promote` ran.
fn promotion_point<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Lsn>, D::Error> {
    let text = String::deserialize(d)?;
    if text == PROMOTION_IN_PROGRESS {
        return Ok(None);
    }
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// A time as whole milliseconds since the Unix epoch, as state files hold it.
pub(crate) mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        // Before 1970 (a clock set wrong) is written as the epoch itself.
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        s.serialize_u64(ms)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| serde::de::Error::custom(format!("{ms} ms is past any clock")))
    }
}

/// One `restore` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreEvent {
    pub name: WalFileName,
    #[serde(rename = "at_unix_ms", with = "unix_ms")]
    pub at: SystemTime,
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
    /// Note that `restore` served (or missed) `name` at `at`, for the standby in `data_dir`.
    pub fn note(&mut self, data_dir: String, name: WalFileName, served: bool, at: SystemTime) {
        self.data_directory = Some(data_dir);
        let event = Some(RestoreEvent { name, at });
        if served {
            self.last_served = event;
        } else {
            self.last_missed = event;
        }
    }

    pub fn encode(&self) -> String {
        toml::to_string(self).expect("a flat struct serialises")
    }

    /// The record padded to exactly [`RESTORE_RECORD_BYTES`] with a comment and spaces (which
    /// TOML ignores), so that every write of it has the same length and is rewritten in place;
    /// unpadded when it is longer than that (a very long data directory path).
    pub fn encode_padded(&self) -> Vec<u8> {
        let mut body = self.encode().into_bytes();
        if body.len() + PAD_COMMENT.len() < RESTORE_RECORD_BYTES {
            body.extend_from_slice(PAD_COMMENT.as_bytes());
            body.resize(RESTORE_RECORD_BYTES - 1, b' ');
            body.push(b'\n');
        }
        body
    }

    pub fn decode(text: &str) -> Result<Self, StateFormatError> {
        toml::from_str(text).map_err(toml_error)
    }
}

/// A TOML error on one line (these files are a few lines; the message names the key).
pub(crate) fn toml_error(e: toml::de::Error) -> StateFormatError {
    StateFormatError(e.to_string().replace('\n', " "))
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
        gap: Option<SegmentName>,
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
    missed: Option<&WalFileName>,
) -> ReplayState {
    let Some(newest) = newest else {
        return ReplayState::NothingArchived;
    };
    let Ok(newest_no) = newest.segno(seg_size) else {
        return ReplayState::NothingArchived;
    };
    let missed_seg = missed
        .and_then(|w| match w {
            WalFileName::Segment(s) => Some(*s),
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
    let gap =
        missed_seg.and_then(|(seg, no)| (no.0 <= newest_no.0 && no.0 >= replay_no).then_some(seg));
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
fn next_segment(seg: &SegmentName, seg_size: u64) -> Option<SegmentName> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn seg(tli: u32, no: u64) -> SegmentName {
        SegmentName::from_segno(TimelineId(tli), SegNo(no), SEG)
    }

    fn name(tli: u32, no: u64) -> WalFileName {
        WalFileName::Segment(seg(tli, no))
    }

    fn at(tli: u32, lsn: u64) -> Option<Replay> {
        Some(Replay {
            lsn: Lsn(lsn),
            timeline: Some(TimelineId(tli)),
        })
    }

    fn ms(n: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(n)
    }

    fn fence(lsn: Option<u64>) -> Fence {
        Fence {
            timeline: TimelineId(1),
            promoted_at_lsn: lsn.map(Lsn),
            new_timeline: lsn.map(|_| TimelineId(2)),
            fenced_at: ms(1_700_000_000_123),
        }
    }

    #[test]
    fn fence_refuses_old_timeline_segments_only() {
        let f = fence(Some(0x5000028));
        assert!(!f.admits(&name(1, 9)));
        assert!(f.admits(&name(2, 9)));
        assert!(f.admits(&"00000002.history".parse().unwrap()));
        assert!(f.admits(&WalFileName::Partial(seg(1, 5))));
    }

    #[test]
    fn fence_round_trips_in_the_format_earlier_versions_wrote() {
        let done = fence(Some(0x5000028));
        let text = done.encode();
        assert_eq!(
            text,
            "timeline = 1\npromoted_at_lsn = \"0/5000028\"\nnew_timeline = 2\nfenced_at_unix_ms = 1700000000123\n"
        );
        assert_eq!(Fence::decode(&text).unwrap(), done);
        assert_eq!(done.promoted_at_text(), "0/5000028");
        // While promote runs the LSN is unknown: left out of the file, shown as in progress.
        let running = fence(None);
        let text = running.encode();
        assert_eq!(text, "timeline = 1\nfenced_at_unix_ms = 1700000000123\n");
        assert_eq!(Fence::decode(&text).unwrap(), running);
        assert_eq!(running.promoted_at_text(), PROMOTION_IN_PROGRESS);
    }

    #[test]
    fn fences_of_earlier_versions_still_read() {
        // The placeholder text earlier versions wrote while promote ran, and a lower-case LSN.
        let old = "timeline = 1\npromoted_at_lsn = \"promotion in progress\"\nfenced_at_unix_ms = 1700000000123\n";
        assert_eq!(Fence::decode(old).unwrap(), fence(None));
        let old = "timeline = 1\npromoted_at_lsn = \"0/5a00028\"\nnew_timeline = 2\nfenced_at_unix_ms = 1700000000123\n";
        assert_eq!(
            Fence::decode(old).unwrap().promoted_at_lsn,
            Some(Lsn(0x5A00028))
        );
        // Anything else is an error naming the value, not a silent "in progress".
        let bad = "timeline = 1\npromoted_at_lsn = \"soon\"\nfenced_at_unix_ms = 1\n";
        let err = Fence::decode(bad).unwrap_err();
        assert!(err.to_string().contains("\"soon\" is not an LSN"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        assert!(Fence::decode("timeline = \"one\"\nfenced_at_unix_ms = 1\n").is_err());
        assert!(Fence::decode("").is_err());
    }

    #[test]
    fn pin_round_trips_and_reads_by_hand() {
        // Past i64::MAX, which TOML integers cannot hold: system identifiers after 2038.
        for id in [7_372_041_215_042_384_562, u64::MAX] {
            let pin = Pin(SystemId(id));
            assert_eq!(Pin::decode(&pin.encode()), Ok(pin));
        }
        assert_eq!(
            Pin::decode("# comment\n  system_identifier =  42  \nother = 1\n"),
            Ok(Pin(SystemId(42)))
        );
        for bad in [
            "",
            "system_identifier\n",
            "system_identifier = -1",
            "id = 4",
        ] {
            assert!(Pin::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn restore_log_round_trips() {
        let mut log = RestoreLog {
            data_directory: None,
            last_served: Some(RestoreEvent {
                name: name(1, 3),
                at: ms(5),
            }),
            last_missed: None,
        };
        assert_eq!(RestoreLog::decode(&log.encode()).unwrap(), log);
        assert_eq!(RestoreLog::decode("").unwrap(), RestoreLog::default());
        log.data_directory = Some("/var/lib/postgresql/15/main \"quoted\"".into());
        log.last_missed = log.last_served.clone();
        assert_eq!(RestoreLog::decode(&log.encode()).unwrap(), log);
        let padded = log.encode_padded();
        assert_eq!(padded.len(), RESTORE_RECORD_BYTES);
        let text = std::str::from_utf8(&padded).unwrap();
        assert_eq!(RestoreLog::decode(text).unwrap(), log);
        // Too long to pad: written as it is.
        log.data_directory = Some("/d".repeat(300));
        assert_eq!(log.encode_padded(), log.encode().into_bytes());
        log.note("/srv/s".into(), name(1, 4), false, ms(9));
        assert_eq!(log.last_missed.as_ref().map(|e| e.at), Some(ms(9)));
        assert_eq!(log.data_directory.as_deref(), Some("/srv/s"));
    }

    #[test]
    fn restore_records_of_earlier_versions_still_read() {
        let old = "[last_served]\nname = \"000000010000000000000003\"\nat_unix_ms = 5\n\n\
                   [last_missed]\nname = \"000000010000000000000004\"\nat_unix_ms = 6\n";
        let log = RestoreLog::decode(old).unwrap();
        assert_eq!(log.last_served.unwrap().name, name(1, 3));
        assert_eq!(log.last_missed.unwrap().at, ms(6));
        // A name that is not a WAL name does not load (the record then reads as empty).
        let bad = "[last_missed]\nname = \"../etc/passwd\"\nat_unix_ms = 6\n";
        assert!(RestoreLog::decode(bad).is_err());
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
        let next = name(1, 8);
        assert_eq!(
            replay_state(Some(newest), SEG, at(1, 7 * SEG + 40), Some(&next)),
            ReplayState::Caught { newest }
        );
        // Asking for the next one on a newer timeline (history switch) counts too.
        let next2 = name(2, 8);
        assert_eq!(
            replay_state(Some(newest), SEG, None, Some(&next2)),
            ReplayState::Caught { newest }
        );
    }

    #[test]
    fn behind_counts_segments_and_spots_a_gap() {
        let newest = seg(1, 7);
        let s = replay_state(Some(newest), SEG, at(1, 4 * SEG + 10), Some(&name(1, 4)));
        assert_eq!(
            s,
            ReplayState::Behind {
                newest,
                left: 3,
                gap: Some(seg(1, 4))
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
        for missed in [None, Some(name(1, 5))] {
            assert_eq!(
                replay_state(Some(newest), SEG, at(1, 8 * SEG), missed.as_ref()),
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
            replay_state(Some(newest), SEG, at(1, 8 * SEG), Some(&name(2, 8))),
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
    }
}
