//! The receiver's pure checks of one incoming file's plain bytes: given the request header and
//! the facts about the archive, decide as early as possible whether the bytes may be stored,
//! track length and digest as chunks arrive, and give a verdict at the end against the digest
//! trailer. [`crate::proto::incoming::Incoming`] feeds it the decoded bytes; the driver writes
//! them to a temp file and publishes it only with a [`Verified`] in hand.
//!
//! Segments and partials are judged by their page header as it arrives. History and backup
//! history files are small text files: they are buffered whole (at most
//! [`MAX_HISTORY_BYTES`] / [`MAX_BACKUP_BYTES`]) and judged at [`Upload::finish`], against the
//! histories already stored, the fence and the archive's segments.

use std::collections::BTreeMap;

use crate::lsn::Lsn;
use crate::pg_control::SystemId;
use crate::proto::digest::{Digest, Hasher};
use crate::proto::frame::{Refusal, Request, MAX_FILE_BYTES};
use crate::state::Fence;
use crate::wal::backup::{BackupFile, MAX_BACKUP_BYTES};
use crate::wal::header::{LongPageHeader, LONG_PAGE_HEADER_LEN};
use crate::wal::history::{History, MAX_HISTORY_BYTES};
use crate::wal::name::{TimelineId, WalFileName};
use crate::wal::partial::MAX_APPEND_BYTES;

/// What the receiver knows about its archive when an upload starts.
#[derive(Debug, Clone, Default)]
pub struct ArchiveFacts {
    /// The cluster this archive belongs to, when known (standby's pg_control or the pin file).
    pub cluster: Option<SystemId>,
    /// Set once the standby was promoted: old-timeline segments are refused.
    pub fence: Option<Fence>,
    /// For a history upload: the history files already stored (those that parse), by timeline.
    pub histories: BTreeMap<TimelineId, History>,
    /// For a backup history upload: the size of the stored segment its name starts in (the
    /// segment part of `<segment>.<offset>.backup`), when that segment is in the archive.
    pub backup_segment_bytes: Option<u64>,
}

/// A file that arrived whole, with the announced size and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub name: WalFileName,
    pub size: u64,
    pub digest: Digest,
    /// System identifier from the page header, for files that carry one (segments, partials).
    pub system_id: Option<SystemId>,
    /// The parsed history, for a history file (checked again against a fence at commit).
    pub history: Option<History>,
    /// An append to the open segment's partial, not a whole file.
    pub append: bool,
}

impl Verified {
    /// Whether the fence (possibly written while the bytes were arriving) still admits this
    /// file: segments of a fenced timeline never, partials of it only up to the promotion
    /// point, histories only when they leave it at the promotion point.
    pub fn admitted_by(&self, fence: &Fence) -> Result<(), Refusal> {
        check_fence(fence, &self.name)?;
        if self.append {
            if let WalFileName::Partial(s) = &self.name {
                if s.timeline <= fence.timeline {
                    return Err(fenced(fence, &self.name));
                }
            }
            return Ok(());
        }
        check_partial_fence(fence, &self.name, self.size)?;
        if let Some(history) = &self.history {
            check_history_fence(fence, history, &self.name)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Upload {
    name: WalFileName,
    announced: u64,
    received: u64,
    hasher: Hasher,
    /// First bytes, kept until the long page header can be decoded.
    head: Vec<u8>,
    cluster: Option<SystemId>,
    system_id: Option<SystemId>,
    /// The whole content of a history or backup history file (small, capped at begin).
    text: Option<Vec<u8>>,
    fence: Option<Fence>,
    histories: BTreeMap<TimelineId, History>,
    backup_segment_bytes: Option<u64>,
    /// An append to the open segment's partial (`Request::append_at`): its pages are checked
    /// by the receiver against what it holds ([`crate::wal::partial::check_append`]).
    append: bool,
}

impl Upload {
    /// Check the request before any content arrives.
    pub fn begin(request: &Request, facts: &ArchiveFacts) -> Result<Self, Refusal> {
        let name: WalFileName =
            request
                .name
                .parse()
                .map_err(|e: crate::wal::name::NameError| Refusal::BadName {
                    name: request.name.clone(),
                    reason: e.to_string(),
                })?;
        if request.append_at.is_some() {
            check_append_request(request, &name, facts.fence.as_ref())?;
        }
        if let Some(fence) = &facts.fence {
            check_fence(fence, &name)?;
            check_partial_fence(fence, &name, request.size)?;
            if let WalFileName::History(tli) = name {
                // Nothing to check a later timeline's history against yet: wait for promote.
                if tli > fence.timeline && fence_point(fence, &name).is_err() {
                    return Err(Refusal::PromotionInProgress {
                        name: name.to_string(),
                    });
                }
            }
        }
        if request.size > MAX_FILE_BYTES {
            return Err(Refusal::TooLarge {
                name: request.name.clone(),
                size: request.size,
                max: MAX_FILE_BYTES,
            });
        }
        let text = match name {
            WalFileName::History(_) if request.size > MAX_HISTORY_BYTES => {
                return Err(Refusal::BadHistory {
                    name: name.to_string(),
                    reason: format!(
                        "{} bytes, more than the {MAX_HISTORY_BYTES} a history file may have",
                        request.size
                    ),
                })
            }
            WalFileName::Backup { .. } if request.size > MAX_BACKUP_BYTES => {
                return Err(Refusal::BadBackup {
                    name: name.to_string(),
                    reason: format!(
                        "{} bytes, more than the {MAX_BACKUP_BYTES} a backup history file may have",
                        request.size
                    ),
                })
            }
            // Bounded by the caps just checked.
            WalFileName::History(_) | WalFileName::Backup { .. } => {
                Some(Vec::with_capacity(request.size as usize))
            }
            WalFileName::Segment(_) | WalFileName::Partial(_) => None,
        };
        Ok(Upload {
            name,
            announced: request.size,
            received: 0,
            hasher: Hasher::new(),
            head: Vec::with_capacity(LONG_PAGE_HEADER_LEN),
            cluster: facts.cluster,
            system_id: None,
            text,
            fence: facts.fence.clone(),
            histories: facts.histories.clone(),
            backup_segment_bytes: facts.backup_segment_bytes,
            append: request.append_at.is_some(),
        })
    }

    /// Whether this is an append to the open segment's partial.
    pub fn is_append(&self) -> bool {
        self.append
    }

    pub fn name(&self) -> &WalFileName {
        &self.name
    }

    /// Account for the next chunk. Refuses as soon as the content is known to be unacceptable
    /// (too many bytes, a page header that contradicts the name or belongs to another cluster).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        let received = self.received + chunk.len() as u64;
        if received > self.announced {
            return Err(Refusal::SizeMismatch {
                name: self.name.to_string(),
                announced: self.announced,
                received,
            });
        }
        self.received = received;
        self.hasher.update(chunk);
        if let Some(text) = &mut self.text {
            // At most the announced size, which begin capped.
            text.extend_from_slice(chunk);
        }
        if !self.append
            && self.name.segment_bytes().is_some()
            && self.head.len() < LONG_PAGE_HEADER_LEN
        {
            let take = (LONG_PAGE_HEADER_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            if self.head.len() == LONG_PAGE_HEADER_LEN {
                self.check_header()?;
            }
        }
        Ok(())
    }

    /// The verdict once the sender has finished its side. `trailer`: the digest that ended the
    /// stream, `None` when the stream was shorter than a trailer.
    pub fn finish(self, trailer: Option<Digest>) -> Result<Verified, Refusal> {
        let name = self.name.to_string();
        let Some(expected) = trailer else {
            return Err(Refusal::SizeMismatch {
                name,
                announced: self.announced + crate::proto::frame::TRAILER_LEN as u64,
                received: self.received,
            });
        };
        if self.received != self.announced {
            return Err(Refusal::SizeMismatch {
                name,
                announced: self.announced,
                received: self.received,
            });
        }
        if !self.append && self.name.segment_bytes().is_some() && self.system_id.is_none() {
            return Err(Refusal::BadSegment {
                name,
                reason: format!(
                    "{} bytes, too short to hold a WAL page header",
                    self.received
                ),
            });
        }
        let actual = self.hasher.finalize();
        if actual != expected {
            return Err(Refusal::ChecksumMismatch {
                name,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
        // The content arrived intact: now judge what it says.
        let history = match (&self.name, &self.text) {
            (WalFileName::History(tli), Some(text)) => Some(self.check_history(*tli, text)?),
            (WalFileName::Backup { segment, offset }, Some(text)) => {
                let bad = |reason: String| Refusal::BadBackup {
                    name: name.clone(),
                    reason,
                };
                let backup = BackupFile::parse(text).map_err(bad)?;
                // A backup history file carries no system identifier: it refers to this
                // archive's cluster through its start segment, which PostgreSQL archives
                // before it and which passed the pin when it was stored.
                let seg_size = self.backup_segment_bytes.ok_or_else(|| {
                    bad(format!(
                        "the segment it starts in, {segment}, is not in this archive; a backup history file is stored only after its start segment, which ties it to this archive's cluster"
                    ))
                })?;
                backup.check(segment, *offset, seg_size).map_err(bad)?;
                None
            }
            _ => None,
        };
        Ok(Verified {
            name: self.name,
            size: self.received,
            digest: actual,
            system_id: self.system_id,
            history,
            append: self.append,
        })
    }

    /// Parse a history file and check it against the stored histories and the fence.
    fn check_history(&self, tli: TimelineId, text: &[u8]) -> Result<History, Refusal> {
        let name = self.name.to_string();
        let history = History::parse(tli, text).map_err(|e| Refusal::BadHistory {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        for stored in self.histories.values() {
            history
                .agrees_with(stored)
                .map_err(|reason| Refusal::HistoryConflict {
                    name: name.clone(),
                    reason,
                })?;
        }
        if let Some(fence) = &self.fence {
            check_history_fence(fence, &history, &self.name)?;
        }
        Ok(history)
    }

    fn check_header(&mut self) -> Result<(), Refusal> {
        let segment = *self
            .name
            .segment_bytes()
            .expect("only called for segment files");
        let bad = |reason: String| Refusal::BadSegment {
            name: self.name.to_string(),
            reason,
        };
        let header = LongPageHeader::decode(&self.head).map_err(|e| bad(e.to_string()))?;
        header
            .check_against(&segment, self.announced)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(cluster) = self.cluster {
            if header.system_id != cluster {
                return Err(Refusal::ForeignCluster {
                    name: self.name.to_string(),
                    segment: header.system_id.0,
                });
            }
        }
        self.system_id = Some(header.system_id);
        Ok(())
    }
}

/// An append to the open segment: only to a partial, at most [`MAX_APPEND_BYTES`] at once,
/// never to a fenced timeline (after a promotion nothing of the old timeline grows: the
/// partial the new primary archives comes whole, as a plain upload).
fn check_append_request(
    request: &Request,
    name: &WalFileName,
    fence: Option<&Fence>,
) -> Result<(), Refusal> {
    let WalFileName::Partial(segment) = name else {
        return Err(Refusal::BadName {
            name: request.name.clone(),
            reason: "only a NAME.partial can be appended to".into(),
        });
    };
    // Not TooLarge: its text names the largest WAL file, which would send the operator after
    // the wrong limit. walship-sender never sends more, so the request is malformed.
    if request.size > MAX_APPEND_BYTES {
        return Err(Refusal::Malformed {
            reason: format!(
                "{}: an append of {} bytes, more than the {MAX_APPEND_BYTES} one append may carry",
                request.name, request.size
            ),
        });
    }
    if let Some(fence) = fence {
        if segment.timeline <= fence.timeline {
            return Err(fenced(fence, name));
        }
    }
    Ok(())
}

/// Refuse `name` when the fence closes its timeline.
pub fn check_fence(fence: &Fence, name: &WalFileName) -> Result<(), Refusal> {
    if fence.admits(name) {
        return Ok(());
    }
    Err(fenced(fence, name))
}

/// The refusal of a file the fence closes.
fn fenced(fence: &Fence, name: &WalFileName) -> Refusal {
    Refusal::Fenced {
        name: name.to_string(),
        timeline: fence.timeline.0,
        promoted_at_lsn: fence.promoted_at_text(),
        new_timeline: fence.new_timeline.map(|t| t.0),
    }
}

/// The fence's promotion LSN; while `promote` runs it is not known yet, and files that must be
/// checked against it wait for a retry.
fn fence_point(fence: &Fence, name: &WalFileName) -> Result<Lsn, Refusal> {
    fence
        .promoted_at_lsn
        .ok_or_else(|| Refusal::PromotionInProgress {
            name: name.to_string(),
        })
}

/// Refuse a partial of the fenced timeline whose segment starts after the promotion point:
/// it holds WAL the new timeline never had. The partial holding the promotion point is the one
/// the new primary archives, and must pass. `size` is the partial's size, a whole segment.
pub fn check_partial_fence(fence: &Fence, name: &WalFileName, size: u64) -> Result<(), Refusal> {
    let WalFileName::Partial(segment) = name else {
        return Ok(());
    };
    if segment.timeline != fence.timeline {
        return Ok(());
    }
    let at = fence_point(fence, name)?;
    // An impossible size is refused by the page header check; nothing to decide here.
    let Ok(start) = segment.start_lsn(size) else {
        return Ok(());
    };
    if start > at {
        return Err(fenced(fence, name));
    }
    Ok(())
}

/// Refuse a history that leaves the fenced timeline anywhere but at the promotion point.
fn check_history_fence(
    fence: &Fence,
    history: &History,
    name: &WalFileName,
) -> Result<(), Refusal> {
    if history.timeline <= fence.timeline {
        return Ok(());
    }
    let at = fence_point(fence, name)?;
    history
        .agrees_with_fence(fence.timeline, at, fence.new_timeline)
        .map_err(|reason| Refusal::HistoryConflict {
            name: name.to_string(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::digest::digest;
    use crate::wal::name::{SegNo, SegmentName, TimelineId};

    const SEG: u64 = 1 << 20; // 1 MiB segments keep tests small

    /// A minimal segment: long page header for `segno` on timeline 1, zeros after it.
    fn segment(segno: u64, sysid: u64) -> (String, Vec<u8>) {
        let name = SegmentName::from_segno(TimelineId(1), SegNo(segno), SEG);
        let mut body = vec![0u8; SEG as usize];
        body[0..2].copy_from_slice(&0xD110u16.to_le_bytes()); // PostgreSQL 15 magic
        body[2..4].copy_from_slice(&0x0002u16.to_le_bytes()); // XLP_LONG_HEADER
        body[4..8].copy_from_slice(&1u32.to_le_bytes());
        body[8..16].copy_from_slice(&(segno * SEG).to_le_bytes());
        body[24..32].copy_from_slice(&sysid.to_le_bytes());
        body[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        body[36..40].copy_from_slice(&8192u32.to_le_bytes());
        (name.to_string(), body)
    }

    fn request(name: &str, body: &[u8]) -> Request {
        Request {
            name: name.into(),
            size: body.len() as u64,
            encoding: crate::proto::Encoding::Plain,
            dropped: Vec::new(),
            append_at: None,
        }
    }

    /// Feed `chunks` and finish with their honest digest as the trailer.
    fn run(req: &Request, facts: &ArchiveFacts, chunks: &[&[u8]]) -> Result<Verified, Refusal> {
        let mut up = Upload::begin(req, facts)?;
        for c in chunks {
            up.feed(c)?;
        }
        up.finish(Some(digest(&chunks.concat())))
    }

    #[test]
    fn accepts_a_segment_fed_in_odd_chunks() {
        let (name, body) = segment(3, 42);
        let facts = ArchiveFacts {
            cluster: Some(SystemId(42)),
            ..Default::default()
        };
        let chunks: Vec<&[u8]> = body.chunks(7).take(10).collect();
        let mut up = Upload::begin(&request(&name, &body), &facts).unwrap();
        for c in chunks {
            up.feed(c).unwrap();
        }
        up.feed(&body[70..]).unwrap();
        let v = up.finish(Some(digest(&body))).unwrap();
        assert_eq!(v.system_id, Some(SystemId(42)));
        assert_eq!(v.size, SEG);
    }

    #[test]
    fn refuses_foreign_cluster_at_the_header() {
        let (name, body) = segment(3, 42);
        let facts = ArchiveFacts {
            cluster: Some(SystemId(7)),
            ..Default::default()
        };
        let mut up = Upload::begin(&request(&name, &body), &facts).unwrap();
        let err = up.feed(&body[..64]).unwrap_err();
        assert!(
            matches!(err, Refusal::ForeignCluster { segment: 42, .. }),
            "{err}"
        );
        // The sender learns its own segment's cluster, never the archive's.
        assert!(err.to_string().contains("42"), "{err}");
        assert!(!err.to_string().contains('7'), "{err}");
    }

    #[test]
    fn refuses_short_long_and_tampered_content() {
        let (name, body) = segment(3, 42);
        let facts = ArchiveFacts::default();
        let req = request(&name, &body);
        assert!(matches!(
            run(&req, &facts, &[&body[..1000]]),
            Err(Refusal::SizeMismatch { .. })
        ));
        let mut longer = body.clone();
        longer.push(0);
        assert!(matches!(
            run(&req, &facts, &[&longer]),
            Err(Refusal::SizeMismatch { .. })
        ));
        let mut tampered = body.clone();
        tampered[5000] ^= 0xff;
        let mut up = Upload::begin(&req, &facts).unwrap();
        up.feed(&tampered).unwrap();
        assert!(matches!(
            up.finish(Some(digest(&body))),
            Err(Refusal::ChecksumMismatch { .. })
        ));
        assert!(run(&req, &facts, &[&body]).is_ok());
    }

    #[test]
    fn refuses_segment_whose_header_contradicts_its_name() {
        let (_, body) = segment(3, 42);
        let other = SegmentName::from_segno(TimelineId(1), SegNo(4), SEG).to_string();
        let err = run(&request(&other, &body), &ArchiveFacts::default(), &[&body]).unwrap_err();
        assert!(matches!(err, Refusal::BadSegment { .. }), "{err}");
        let err = run(
            &request(&other, &body[..20]),
            &ArchiveFacts::default(),
            &[&body[..20]],
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::BadSegment { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_names_and_oversize_before_content() {
        for bad in [
            "../000000010000000000000001",
            "foo",
            "000000010000000000000001/",
            "00000001000000000000000a",
        ] {
            let req = Request {
                name: bad.into(),
                size: 1,
                encoding: crate::proto::Encoding::Plain,
                dropped: Vec::new(),
                append_at: None,
            };
            assert!(
                matches!(
                    Upload::begin(&req, &ArchiveFacts::default()),
                    Err(Refusal::BadName { .. })
                ),
                "{bad}"
            );
        }
        let req = Request {
            name: "00000002.history".into(),
            size: MAX_FILE_BYTES + 1,
            encoding: crate::proto::Encoding::Plain,
            dropped: Vec::new(),
            append_at: None,
        };
        assert!(matches!(
            Upload::begin(&req, &ArchiveFacts::default()),
            Err(Refusal::TooLarge { .. })
        ));
    }

    #[test]
    fn appends_are_refused_when_too_large_or_not_to_a_partial() {
        let req = |name: &str, size: u64| Request {
            name: name.into(),
            size,
            encoding: crate::proto::Encoding::Plain,
            dropped: Vec::new(),
            append_at: Some(8192),
        };
        let facts = ArchiveFacts::default();
        let name = "000000010000000000000003.partial";
        assert!(Upload::begin(&req(name, MAX_APPEND_BYTES), &facts).is_ok());
        let err = Upload::begin(&req(name, MAX_APPEND_BYTES + 1), &facts).unwrap_err();
        assert!(
            matches!(&err, Refusal::Malformed { reason } if reason.contains("one append may carry")),
            "{err}"
        );
        let err = Upload::begin(&req("000000010000000000000003", 8192), &facts).unwrap_err();
        assert!(matches!(err, Refusal::BadName { .. }), "{err}");
    }

    #[test]
    fn fence_refuses_old_timeline_segments_but_not_history() {
        let fence = Fence {
            timeline: TimelineId(1),
            promoted_at_lsn: Some(Lsn(0x3000028)),
            new_timeline: Some(TimelineId(2)),
            fenced_at: std::time::UNIX_EPOCH,
        };
        let facts = ArchiveFacts {
            fence: Some(fence),
            ..Default::default()
        };
        let (name, body) = segment(3, 42);
        let err = Upload::begin(&request(&name, &body), &facts).unwrap_err();
        assert!(matches!(err, Refusal::Fenced { timeline: 1, .. }), "{err}");
        assert!(err.to_string().contains("0/3000028"), "{err}");
        let hist = b"1\t0/3000028\tno recovery target specified\n";
        assert!(Upload::begin(&request("00000002.history", hist), &facts).is_ok());
    }

    #[test]
    fn history_files_carry_no_header() {
        let body = b"1\t0/3000000\tno recovery target specified\n";
        let v = run(
            &request("00000002.history", body),
            &ArchiveFacts {
                cluster: Some(SystemId(1)),
                ..Default::default()
            },
            &[body],
        )
        .unwrap();
        assert_eq!(v.system_id, None);
    }

    fn fence(promoted_at_lsn: &str) -> Fence {
        Fence {
            timeline: TimelineId(1),
            // The text earlier versions wrote while promote ran reads as "not known yet".
            promoted_at_lsn: promoted_at_lsn.parse().ok(),
            new_timeline: Some(TimelineId(2)),
            fenced_at: std::time::UNIX_EPOCH,
        }
    }

    fn history(tli: u32, text: &str) -> History {
        History::parse(TimelineId(tli), text.as_bytes()).unwrap()
    }

    const BACKUP: &str = "START WAL LOCATION: 0/300028 (file 000000010000000000000003)\n\
STOP WAL LOCATION: 0/300100 (file 000000010000000000000003)\n\
START TIMELINE: 1\nSTOP TIMELINE: 1\n";
    const BACKUP_NAME: &str = "000000010000000000000003.00000028.backup";

    #[test]
    fn refuses_random_bytes_as_history_or_backup() {
        let random: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
        let facts = ArchiveFacts {
            backup_segment_bytes: Some(SEG),
            ..Default::default()
        };
        let err = run(&request("00000002.history", &random), &facts, &[&random]).unwrap_err();
        assert!(matches!(err, Refusal::BadHistory { .. }), "{err}");
        let err = run(&request(BACKUP_NAME, &random), &facts, &[&random]).unwrap_err();
        assert!(matches!(err, Refusal::BadBackup { .. }), "{err}");
        // Too large to be either: refused before any content.
        let mut req = request("00000002.history", b"");
        req.size = MAX_HISTORY_BYTES + 1;
        assert!(matches!(
            Upload::begin(&req, &facts),
            Err(Refusal::BadHistory { .. })
        ));
        req.name = BACKUP_NAME.into();
        assert!(matches!(
            Upload::begin(&req, &facts),
            Err(Refusal::BadBackup { .. })
        ));
    }

    #[test]
    fn history_must_agree_with_stored_histories() {
        let two = "1\t0/3000148\tno recovery target specified\n";
        let mut facts = ArchiveFacts::default();
        facts.histories.insert(TimelineId(2), history(2, two));
        let forged = "1\t0/4000000\tx\n\n2\t0/5000000\ty\n";
        let err = run(
            &request("00000003.history", forged.as_bytes()),
            &facts,
            &[forged.as_bytes()],
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::HistoryConflict { .. }), "{err}");
        assert!(err.to_string().contains("00000002.history"), "{err}");
        let good = format!("{two}\n2\t0/5000000\ty\n");
        let v = run(
            &request("00000003.history", good.as_bytes()),
            &facts,
            &[&good.as_bytes()[..10], &good.as_bytes()[10..]],
        )
        .unwrap();
        assert_eq!(v.history, Some(history(3, &good)));
    }

    #[test]
    fn history_must_leave_the_fenced_timeline_at_the_promotion_point() {
        let facts = ArchiveFacts {
            fence: Some(fence("0/3000148")),
            ..Default::default()
        };
        let forged = b"1\t0/3001000\tno recovery target specified\n";
        let err = run(&request("00000002.history", forged), &facts, &[forged]).unwrap_err();
        assert!(matches!(err, Refusal::HistoryConflict { .. }), "{err}");
        assert!(err.to_string().contains("walship.fence"), "{err}");
        let real = b"1\t0/3000148\tno recovery target specified\n";
        let v = run(&request("00000002.history", real), &facts, &[real]).unwrap();
        assert_eq!(v.admitted_by(&fence("0/3000148")), Ok(()));
        // A fence written while the bytes arrived is applied at commit.
        assert!(matches!(
            v.admitted_by(&fence("0/3000000")),
            Err(Refusal::HistoryConflict { .. })
        ));
        // While promote runs, the history waits for a retry.
        let facts = ArchiveFacts {
            fence: Some(fence("promotion in progress")),
            ..Default::default()
        };
        let err = Upload::begin(&request("00000002.history", real), &facts).unwrap_err();
        assert!(matches!(err, Refusal::PromotionInProgress { .. }), "{err}");
        assert!(err.to_string().contains("retry"), "{err}");
    }

    #[test]
    fn partials_of_the_fenced_timeline_stop_at_the_promotion_point() {
        // 1 MiB segments: segment 3 spans 0/300000..0/400000.
        let facts = ArchiveFacts {
            fence: Some(fence("0/300028")),
            ..Default::default()
        };
        let partial = |segno: u64| {
            let (name, body) = segment(segno, 42);
            (format!("{name}.partial"), body)
        };
        for segno in [2, 3] {
            let (name, body) = partial(segno);
            let v = run(&request(&name, &body), &facts, &[&body]).unwrap();
            assert_eq!(v.admitted_by(&fence("0/300028")), Ok(()), "{name}");
        }
        let (name, body) = partial(4);
        let err = Upload::begin(&request(&name, &body), &facts).unwrap_err();
        assert!(matches!(err, Refusal::Fenced { timeline: 1, .. }), "{err}");
        // Other timelines' partials are not the fence's business.
        let (_, body) = segment(9, 42);
        let other = format!(
            "{}.partial",
            SegmentName::from_segno(TimelineId(2), SegNo(9), SEG)
        );
        assert!(Upload::begin(&request(&other, &body), &facts).is_ok());
        // A fence written while the bytes arrived is applied at commit.
        let (name, body) = partial(3);
        let v = run(&request(&name, &body), &ArchiveFacts::default(), &[&body]).unwrap();
        assert!(matches!(
            v.admitted_by(&fence("0/200000")),
            Err(Refusal::Fenced { .. })
        ));
        // While promote runs, the fenced timeline's partials wait for a retry.
        let facts = ArchiveFacts {
            fence: Some(fence("promotion in progress")),
            ..Default::default()
        };
        let (name, body) = partial(2);
        assert!(matches!(
            Upload::begin(&request(&name, &body), &facts),
            Err(Refusal::PromotionInProgress { .. })
        ));
    }

    #[test]
    fn backup_file_needs_its_start_segment_in_the_archive() {
        let body = BACKUP.as_bytes();
        let stored = ArchiveFacts {
            backup_segment_bytes: Some(SEG),
            ..Default::default()
        };
        let v = run(&request(BACKUP_NAME, body), &stored, &[body]).unwrap();
        assert_eq!(v.system_id, None);
        let err = run(
            &request(BACKUP_NAME, body),
            &ArchiveFacts::default(),
            &[body],
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::BadBackup { .. }), "{err}");
        assert!(err.to_string().contains("not in this archive"), "{err}");
        // Its name must be its START location.
        let other = "000000010000000000000003.00000030.backup";
        let err = run(&request(other, body), &stored, &[body]).unwrap_err();
        assert!(matches!(err, Refusal::BadBackup { .. }), "{err}");
    }

    #[test]
    fn trailer_digest_is_checked_and_required() {
        let (name, body) = segment(1, 42);
        let req = request(&name, &body);
        let facts = ArchiveFacts::default();
        let mut up = Upload::begin(&req, &facts).unwrap();
        up.feed(&body).unwrap();
        assert_eq!(
            up.finish(Some(digest(&body))).unwrap().digest,
            digest(&body)
        );

        let mut up = Upload::begin(&req, &facts).unwrap();
        up.feed(&body).unwrap();
        assert!(matches!(
            up.finish(Some([9; 32])),
            Err(Refusal::ChecksumMismatch { .. })
        ));

        // The stream ended before a trailer: never stored.
        let mut up = Upload::begin(&req, &facts).unwrap();
        up.feed(&body).unwrap();
        assert!(matches!(up.finish(None), Err(Refusal::SizeMismatch { .. })));
    }
}
