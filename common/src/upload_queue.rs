//! The object-store tier's upload queue, decided on listings (receiver.toml `[object_store]`).
//!
//! The queue is not a list kept beside the archive: it is derived, each time, from what
//! archive_dir holds and from the durable record `walship.uploaded` ([`UploadRecord`]), which
//! says, per timeline, the newest segment uploaded with every earlier one of that timeline
//! (since the first uploaded) uploaded too, and which other files (history, backup history,
//! `.partial`) are in the bucket. A restart finds the same queue: nothing to replay, nothing
//! lost; a file stored while the receiver was down is simply in the next listing.
//!
//! Order, so that the bucket never has a hole before a present file: on each timeline the next
//! segment uploaded is the successor of the recorded one, and only when archive_dir holds it.
//! The sender's look-ahead may store segment N+1 before N; then N+1 waits for N. A timeline
//! with nothing uploaded yet starts at its lowest stored segment once that one has been stored
//! for [`FIRST_SETTLE`] (a look-ahead push of its predecessor would have finished by then), or
//! at once when its predecessor position is recorded on another (parent) timeline. History,
//! backup history and `.partial` files are small and depend on no other: they go first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::wal::name::{is_valid_seg_size, SegNo, SegmentName, TimelineId, WalFileName};

/// The record's file name in archive_dir (a state file: not a WAL name, never cleaned up).
pub const UPLOAD_RECORD_FILE: &str = "walship.uploaded";
/// How long the first segment of a timeline with nothing uploaded waits in archive_dir before
/// it is uploaded without its predecessor (see the module comment).
pub const FIRST_SETTLE: Duration = Duration::from_secs(10);
/// The record's first line.
const HEADER: &str = "walship uploaded v1";

/// What is in the bucket (see the module comment). Text: the header line, then one WAL file
/// name per line: for each timeline its newest contiguous uploaded segment, and every other
/// uploaded file still in archive_dir.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadRecord {
    /// Per timeline, the newest segment uploaded with all its predecessors (since the first).
    pub segments: BTreeMap<TimelineId, SegmentName>,
    /// Uploaded history, backup history and `.partial` files.
    pub others: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an upload record: {0}")]
pub struct RecordError(String);

impl UploadRecord {
    pub fn encode(&self) -> String {
        let mut out = format!("{HEADER}\n");
        for s in self.segments.values() {
            out.push_str(&s.to_string());
            out.push('\n');
        }
        for o in &self.others {
            out.push_str(o);
            out.push('\n');
        }
        out
    }

    pub fn decode(text: &str) -> Result<Self, RecordError> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(RecordError(format!("the first line is not {HEADER:?}")));
        }
        let mut rec = UploadRecord::default();
        for line in lines.filter(|l| !l.is_empty()) {
            match line.parse::<WalFileName>() {
                Ok(WalFileName::Segment(s)) => {
                    let e = rec.segments.entry(s.timeline).or_insert(s);
                    *e = (*e).max(s);
                }
                Ok(_) => {
                    rec.others.insert(line.to_string());
                }
                Err(e) => return Err(RecordError(format!("line {line:?}: {e}"))),
            }
        }
        Ok(rec)
    }

    /// Whether `name` is in the bucket by this record.
    pub fn has(&self, name: &WalFileName) -> bool {
        match name {
            WalFileName::Segment(s) => self
                .segments
                .get(&s.timeline)
                .is_some_and(|up| (up.log, up.seg) >= (s.log, s.seg)),
            other => self.others.contains(&other.to_string()),
        }
    }

    /// Note `name` uploaded (the caller uploads only what [`next`] offers).
    pub fn note(&mut self, name: &WalFileName) {
        match name {
            WalFileName::Segment(s) => {
                let e = self.segments.entry(s.timeline).or_insert(*s);
                *e = (*e).max(*s);
            }
            other => {
                self.others.insert(other.to_string());
            }
        }
    }

    /// Forget the other files no longer in archive_dir (cleanup removed them), so that the
    /// record stays small. Segments stay: they carry the order.
    pub fn prune(&mut self, present: &[LocalFile]) {
        let names: BTreeSet<String> = present.iter().map(|f| f.name.to_string()).collect();
        self.others.retain(|o| names.contains(o));
    }
}

/// One file of archive_dir as the uploader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub name: WalFileName,
    pub bytes: u64,
    pub stored_at: SystemTime,
}

/// Not yet in the bucket: files and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    pub files: u64,
    pub bytes: u64,
}

/// Every present file not in the bucket by `record`.
pub fn backlog(present: &[LocalFile], record: &UploadRecord) -> Backlog {
    let mut b = Backlog::default();
    for f in present.iter().filter(|f| !record.has(&f.name)) {
        b.files += 1;
        b.bytes += f.bytes;
    }
    b
}

/// Whether `name` may be removed from archive_dir without losing it for the bucket.
pub fn uploaded(record: &UploadRecord, name: &WalFileName) -> bool {
    record.has(name)
}

/// The files to upload now, in order: other files first (history files first of all), then on
/// each timeline the contiguous run of present segments after the recorded one. Stops a
/// timeline at its first gap. `now` is for [`FIRST_SETTLE`].
pub fn next(present: &[LocalFile], record: &UploadRecord, now: SystemTime) -> Vec<LocalFile> {
    let mut out: Vec<LocalFile> = present
        .iter()
        .filter(|f| !matches!(f.name, WalFileName::Segment(_)) && !record.has(&f.name))
        .cloned()
        .collect();
    out.sort_by_key(|f| {
        (
            !matches!(f.name, WalFileName::History(_)),
            f.name.to_string(),
        )
    });

    let mut by_tli: BTreeMap<TimelineId, BTreeMap<SegNo, &LocalFile>> = BTreeMap::new();
    for f in present {
        if let WalFileName::Segment(s) = &f.name {
            if !is_valid_seg_size(f.bytes) {
                continue;
            }
            if let Ok(no) = s.segno(f.bytes) {
                by_tli.entry(s.timeline).or_default().insert(no, f);
            }
        }
    }
    for (tli, segs) in &by_tli {
        let Some((first_no, first)) = segs.iter().next() else {
            continue;
        };
        let seg_size = first.bytes;
        let mut want = match record.segments.get(tli) {
            Some(up) => match up.segno(seg_size) {
                Ok(no) => SegNo(no.0 + 1),
                Err(_) => continue,
            },
            None => {
                // Its predecessor position uploaded on another timeline (a parent), or settled.
                let pred_elsewhere = first_no.0 > 0
                    && record.segments.iter().any(|(t, up)| {
                        t != tli && up.segno(seg_size).is_ok_and(|n| n.0 + 1 >= first_no.0)
                    });
                let settled = now
                    .duration_since(first.stored_at)
                    .is_ok_and(|age| age >= FIRST_SETTLE);
                if !(pred_elsewhere || settled) {
                    continue;
                }
                *first_no
            }
        };
        while let Some(f) = segs.get(&want) {
            if f.bytes == seg_size {
                out.push((*f).clone());
            } else {
                break;
            }
            want = SegNo(want.0 + 1);
        }
    }
    out
}

/// (access key id, secret access key, session token) from a credentials file: `key = value`
/// lines with the keys of an AWS credentials file (`aws_access_key_id`,
/// `aws_secret_access_key`, optional `aws_session_token`; values may be quoted); `[section]`
/// headers and `#` comments are ignored, the first value of a key counts.
pub type Credentials = (String, String, Option<String>);

pub fn parse_credentials(text: &str) -> Result<Credentials, String> {
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';', '[']) {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err("a line is not key = value".into());
        };
        let v = v.trim().trim_matches('"').to_string();
        let slot = match k.trim() {
            "aws_access_key_id" | "access_key_id" => &mut id,
            "aws_secret_access_key" | "secret_access_key" => &mut secret,
            "aws_session_token" | "session_token" => &mut token,
            _ => continue,
        };
        if slot.is_none() && !v.is_empty() {
            *slot = Some(v);
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok((id, secret, token)),
        _ => Err("it needs aws_access_key_id = ... and aws_secret_access_key = ... lines".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn seg(tli: u32, no: u64, age: u64, now: SystemTime) -> LocalFile {
        LocalFile {
            name: WalFileName::Segment(SegmentName::from_segno(TimelineId(tli), SegNo(no), SEG)),
            bytes: SEG,
            stored_at: now - Duration::from_secs(age),
        }
    }

    fn names(v: &[LocalFile]) -> Vec<String> {
        v.iter().map(|f| f.name.to_string()).collect()
    }

    #[test]
    fn segments_go_in_order_and_wait_for_a_gap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut rec = UploadRecord::default();
        // The first segment of a timeline waits to settle.
        let files = vec![seg(1, 5, 1, now), seg(1, 6, 1, now)];
        assert!(next(&files, &rec, now).is_empty());
        let files = vec![seg(1, 5, 60, now), seg(1, 6, 1, now), seg(1, 8, 1, now)];
        let n = next(&files, &rec, now);
        assert_eq!(names(&n), names(&files[..2]));
        for f in &n {
            rec.note(&f.name);
        }
        // 7 is missing: 8 waits.
        assert!(next(&files, &rec, now).is_empty());
        assert_eq!(
            backlog(&files, &rec),
            Backlog {
                files: 1,
                bytes: SEG
            }
        );
        let mut files = files;
        files.push(seg(1, 7, 0, now));
        assert_eq!(
            names(&next(&files, &rec, now)),
            vec![files[3].name.to_string(), files[2].name.to_string()]
        );
        // A new timeline branching at 8 follows at once; its history goes first.
        files.push(seg(2, 8, 0, now));
        files.push(LocalFile {
            name: WalFileName::History(TimelineId(2)),
            bytes: 42,
            stored_at: now,
        });
        rec.note(&files[3].name);
        rec.note(&files[2].name);
        let n = names(&next(&files, &rec, now));
        assert_eq!(
            n,
            vec!["00000002.history".to_string(), files[4].name.to_string()]
        );
    }

    #[test]
    fn credentials_parse() {
        let c = parse_credentials(
            "[default]\n# c\naws_access_key_id = AK\naws_secret_access_key=\"SK\"\n",
        )
        .unwrap();
        assert_eq!(c, ("AK".into(), "SK".into(), None));
        assert!(parse_credentials("aws_access_key_id = AK\n").is_err());
        assert!(parse_credentials("junk\n").is_err());
    }

    #[test]
    fn record_round_trips() {
        let now = SystemTime::UNIX_EPOCH;
        let mut rec = UploadRecord::default();
        rec.note(&seg(1, 3, 0, now).name);
        rec.note(&seg(1, 2, 0, now).name);
        rec.note(&WalFileName::History(TimelineId(2)));
        let text = rec.encode();
        assert_eq!(UploadRecord::decode(&text).unwrap(), rec);
        assert!(rec.has(&seg(1, 1, 0, now).name));
        assert!(!rec.has(&seg(1, 4, 0, now).name));
        assert!(UploadRecord::decode("junk\n").is_err());
        assert!(UploadRecord::decode(&format!("{HEADER}\n../x\n")).is_err());
    }
}
