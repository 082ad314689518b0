//! Issue 13: hostile appends to the open segment's `NAME.partial`, sent byte by byte through the
//! raw client. Each must be refused (or, for an offset that is not the partial's end, answered
//! with where to append from), the stored partial must stay byte for byte what it was, and the
//! receiver must keep serving; `/metrics` counts every append taken and every one not taken by
//! reason, and shows the partial's LSN.
//!
//! The cases: an append leaving a gap, an overlapping one (same and other bytes); a first page
//! of another cluster; pages naming a later timeline; a page with a wrong page address; an
//! append to a finished segment (by its own name, and by its `.partial` once it is stored);
//! `.partial` names that are not WAL segment names (path tricks); an append announcing more
//! than one append may carry, and one running past the segment's end; a peer that trickles an
//! append a byte at a time for ever; appends to the fenced timeline after promote.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use walship_common::proto::{Refusal, Reply, Request};
use walship_common::state::{Fence, FENCE_FILE, PIN_FILE};
use walship_common::wal::partial::MAX_APPEND_BYTES;
use walship_common::{Lsn, TimelineId};
use walship_tests::raw::{honest_request, read_reply, RawClient, StreamEnd};
use walship_tests::segments::{segment_name, segno};
use walship_tests::walship::{archive_names, assert_pushed};
use walship_tests::{donors, Segment};

use crate::hostile::{temps, Rig};
use crate::issue11_metrics::Scrape;

/// PostgreSQL's WAL page (XLOG_BLCKSZ) of the donor clusters.
const PAGE: usize = 8192;
/// Their segment size.
const SEG: usize = 16 << 20;

/// The request of an append of `bytes` at `offset` to `name`.
fn append_request(name: &str, offset: u64, bytes: &[u8]) -> Request {
    let mut r = honest_request(name, bytes);
    r.append_at = Some(offset);
    r
}

/// What is stored under `name` in the archive (None: nothing).
fn held(archive: &Path, name: &str) -> Option<Vec<u8>> {
    fs::read(archive.join(name)).ok()
}

/// What the hostile appends did, to compare with `/metrics`.
#[derive(Default)]
struct Tally {
    taken: u64,
    bytes: u64,
}

/// The raw client, the partial under attack and the counts of what was taken.
struct Attack<'a> {
    raw: RawClient,
    archive: &'a Path,
    /// The segment whose partial is attacked: a real, completed one of the pinned cluster.
    seg: &'a Segment,
    pname: String,
    tally: Tally,
}

impl Attack<'_> {
    fn send(&self, name: &str, offset: u64, bytes: &[u8]) -> StreamEnd {
        self.raw.upload(&append_request(name, offset, bytes), bytes)
    }

    /// An honest append of the segment's bytes `from..to`: taken.
    fn honest(&mut self, from: usize, to: usize) {
        let end = self.send(&self.pname, from as u64, &self.seg.bytes[from..to]);
        assert_eq!(
            end,
            StreamEnd::Reply(Reply::Partial { bytes: to as u64 }),
            "an honest append {from}..{to} of {}",
            self.pname
        );
        self.tally.taken += 1;
        self.tally.bytes += (to - from) as u64;
        self.assert_holds(to, "after an honest append");
    }

    /// The stored partial is exactly the segment's first `len` bytes.
    fn assert_holds(&self, len: usize, what: &str) {
        let got = held(self.archive, &self.pname)
            .unwrap_or_else(|| panic!("{what}: {} is not stored", self.pname));
        assert!(
            got.len() == len && got[..] == self.seg.bytes[..len],
            "{what}: {} holds {} bytes, not the segment's first {len}",
            self.pname,
            got.len()
        );
    }

    /// A hostile append to the attacked partial, which holds `have` bytes: answered `want`,
    /// the partial unchanged.
    fn hostile(&self, what: &str, offset: u64, bytes: &[u8], have: usize, want: &Reply) {
        let end = self.send(&self.pname, offset, bytes);
        assert_eq!(end, StreamEnd::Reply(want.clone()), "{what}");
        self.assert_holds(have, what);
    }
}

/// The refusal in `end`, or a panic naming what came instead.
fn refusal(end: StreamEnd, what: &str) -> Refusal {
    match end {
        StreamEnd::Reply(Reply::Refused(r)) => r,
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// `bytes` with the 4-byte little-endian field at `at` set to `v` (a page header's timeline).
fn with_u32(bytes: &[u8], at: usize, v: u32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn hostile_appends_are_refused_and_change_nothing() {
    let d = donors();
    let (rig, port) = Rig::start_with_metrics("issue13_hostile_appends");
    let archive = rig.setup.archive_dir.clone();
    let seg = &d.home[1];
    let mut a = Attack {
        raw: RawClient::connect(&rig.setup.addr, &rig.certs),
        archive: &archive,
        seg,
        pname: format!("{}.partial", seg.name),
        tally: Tally::default(),
    };
    let mut wrong_offset = 0u64;
    let mut bad_segment = 0u64;
    // The first append to an archive of no cluster yet pins it, as a first segment does:
    // otherwise a partial of any cluster could be held, and padded by promote.
    assert!(!archive.join(PIN_FILE).exists(), "pinned before anything");
    a.honest(0, 3 * PAGE);
    assert!(
        archive.join(PIN_FILE).exists(),
        "the first append did not pin the archive to its cluster"
    );
    // The home cluster's first segment, pushed whole, is of the same cluster.
    let first = &d.home[0];
    let path = first.write_to(&rig.sc, &first.name);
    assert_pushed(&rig.sc, &rig.sender, &path, &first.name);
    let have = 3 * PAGE;
    let resume = Reply::Partial { bytes: have as u64 };

    // Gap and overlaps: not taken; the reply says where to append from.
    a.hostile(
        "a gap",
        (4 * PAGE) as u64,
        &seg.bytes[4 * PAGE..5 * PAGE],
        have,
        &resume,
    );
    a.hostile(
        "an overlap with the same bytes",
        PAGE as u64,
        &seg.bytes[PAGE..5 * PAGE],
        have,
        &resume,
    );
    let other = vec![0x5Au8; 4 * PAGE];
    a.hostile(
        "an overlap with other bytes",
        PAGE as u64,
        &other,
        have,
        &resume,
    );
    wrong_offset += 3;

    // Another cluster: a first page naming another system identifier, for a segment not
    // stored yet; and another cluster's real first page for a segment stored finished (the
    // donors' numbering is the same: it is the name of the home cluster's first segment).
    let third = &d.home[2];
    let tname = format!("{}.partial", third.name);
    let mut forged = third.bytes[..2 * PAGE].to_vec();
    forged[24] ^= 0x01;
    let r = refusal(
        a.send(&tname, 0, &forged),
        "a first page of another cluster",
    );
    assert!(matches!(r, Refusal::ForeignCluster { .. }), "{r:?}");
    assert!(held(&archive, &tname).is_none(), "{tname} was stored");
    let foreign = &d.foreign[0];
    assert_eq!(foreign.name, first.name, "the donors' first segments");
    let fname = format!("{}.partial", foreign.name);
    let r = refusal(
        a.send(&fname, 0, &foreign.bytes[..2 * PAGE]),
        "another cluster's first page, to a stored segment's partial",
    );
    assert!(matches!(r, Refusal::ForeignCluster { .. }), "{r:?}");
    assert!(held(&archive, &fname).is_none(), "{fname} was stored");

    // A later page naming timeline 2 in a timeline-1 segment; the first page of the next
    // segment naming timeline 2; a page with the wrong page address.
    let next = &seg.bytes[have..have + 2 * PAGE];
    let r = refusal(
        a.send(&a.pname, have as u64, &with_u32(next, PAGE + 4, 2)),
        "a page on timeline 2",
    );
    assert!(
        matches!(&r, Refusal::BadSegment { reason, .. } if reason.contains("timeline 2")),
        "{r:?}"
    );
    a.assert_holds(have, "after a page on timeline 2");
    let r = refusal(
        a.send(&tname, 0, &with_u32(&third.bytes[..PAGE], 4, 2)),
        "a first page on timeline 2",
    );
    assert!(matches!(r, Refusal::BadSegment { .. }), "{r:?}");
    assert!(held(&archive, &tname).is_none(), "{tname} was stored");
    let mut moved = next.to_vec();
    moved[PAGE + 8] ^= 0x20;
    let r = refusal(
        a.send(&a.pname, have as u64, &moved),
        "a page with a wrong page address",
    );
    assert!(
        matches!(&r, Refusal::BadSegment { reason, .. } if reason.contains("page address")),
        "{r:?}"
    );
    a.assert_holds(have, "after a wrong page address");
    bad_segment += 3;

    // The finished segment: by its own name (only a .partial is appended to), and by its
    // .partial once it is stored (nothing to append to).
    let r = refusal(
        a.send(&first.name, 0, &first.bytes[..PAGE]),
        "an append to a finished segment's name",
    );
    assert!(
        matches!(&r, Refusal::BadName { reason, .. } if reason.contains("NAME.partial")),
        "{r:?}"
    );
    let done = format!("{}.partial", first.name);
    assert_eq!(
        a.send(&done, 0, &first.bytes[..PAGE]),
        StreamEnd::Reply(Reply::AlreadyHad),
        "an append of its own bytes to the .partial of a stored segment"
    );
    let mut changed = first.bytes[PAGE..3 * PAGE].to_vec();
    changed[PAGE + 100] ^= 0xFF;
    let r = refusal(
        a.send(&done, PAGE as u64, &changed),
        "an append of other bytes to the .partial of a stored segment",
    );
    assert!(matches!(r, Refusal::ConflictingContent { .. }), "{r:?}");
    assert!(held(&archive, &done).is_none(), "{done} was created");

    // Names that are not a WAL segment's partial.
    let base = seg.name.clone();
    let bad_names = [
        format!("../{}", a.pname),
        format!("{}/x", a.pname),
        format!("x/{}", a.pname),
        format!("/tmp/{}", a.pname),
        format!("{}.partial.partial", base),
        format!("{}.PARTIAL", base),
        format!("{}g.partial", &base[..23]),
        "00000001000000000000000a.partial".to_string(),
        format!("{}.partial", &base[..23]),
        format!("{}0.partial", base),
        format!("{}.partial\0", base),
        format!("{}\0.partial", base),
        "00000002.history.partial".to_string(),
        ".partial".to_string(),
        "..partial".to_string(),
    ];
    let before = archive_names(&archive);
    for name in &bad_names {
        let r = refusal(
            a.send(name, have as u64, &seg.bytes[have..have + PAGE]),
            name,
        );
        assert!(matches!(r, Refusal::BadName { .. }), "{name:?}: {r:?}");
    }
    assert_eq!(archive_names(&archive), before, "a bad name created a file");
    a.assert_holds(have, "after bad names");
    let bad_name = bad_names.len() as u64 + 1;

    // More than one append may carry; past the end of the segment.
    let big = vec![0u8; MAX_APPEND_BYTES as usize + 1];
    let r = refusal(a.send(&a.pname, have as u64, &big), "an oversized append");
    assert!(matches!(r, Refusal::Malformed { .. }), "{r:?}");
    a.assert_holds(have, "after an oversized append");

    // A peer that trickles an append a byte every 100 ms (it would take 14 minutes): cut off
    // by min_upload_rate after the grace of idle_timeout (2 s here).
    let body = seg.bytes[have..have + 8 * PAGE].to_vec();
    let request = append_request(&a.pname, have as u64, &body);
    let conn = a.raw.connection().clone();
    let end = a.raw.runtime().block_on(async move {
        let (mut send, mut recv) = conn.open_bi().await.expect("open a stream");
        send.write_all(&request.encode())
            .await
            .expect("request frame");
        let trickle = async {
            for b in &body {
                if send.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            std::future::pending::<()>().await
        };
        let wait = Duration::from_secs(60);
        tokio::select! {
            end = read_reply(&mut recv) => end,
            () = trickle => unreachable!("pending"),
            () = tokio::time::sleep(wait) => StreamEnd::NoAnswer(wait),
        }
    });
    let r = refusal(end, "a trickled append");
    assert!(matches!(r, Refusal::TooSlow { .. }), "{r:?}");
    a.assert_holds(have, "after a trickled append");

    // The receiver still takes honest appends, up to one page short of the segment's end.
    let mut at = have;
    while at < SEG - PAGE {
        let to = (at + MAX_APPEND_BYTES as usize).min(SEG - PAGE);
        a.honest(at, to);
        at = to;
    }
    let mut past = seg.bytes[at..].to_vec();
    past.extend_from_slice(&[0u8; PAGE]);
    let r = refusal(a.send(&a.pname, at as u64, &past), "an append past the end");
    assert!(
        matches!(&r, Refusal::BadSegment { reason, .. } if reason.contains("past the segment size")),
        "{r:?}"
    );
    a.assert_holds(at, "after an append past the end");
    bad_segment += 1;
    let have = at;

    // And whole segments.
    let path = third.write_to(&rig.sc, &third.name);
    assert_pushed(&rig.sc, &rig.sender, &path, &third.name);

    // The metrics: every append taken, every one not taken by reason, the partial's LSN.
    let m = Scrape::take(port);
    assert_eq!(
        m.value("walship_partial_appends_total"),
        a.tally.taken as f64
    );
    assert_eq!(m.value("walship_partial_bytes_total"), a.tally.bytes as f64);
    let refused = |reason: &str| {
        m.value(&format!(
            "walship_partial_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(refused("wrong_offset"), wrong_offset as f64);
    assert_eq!(refused("finished"), 1.0);
    assert_eq!(refused("foreign_cluster"), 2.0);
    assert_eq!(refused("conflicting_content"), 1.0);
    assert_eq!(refused("bad_segment"), bad_segment as f64);
    assert_eq!(refused("bad_name"), bad_name as f64);
    assert_eq!(refused("malformed"), 1.0);
    assert_eq!(refused("too_slow"), 1.0);
    let seg_start = segno(&seg.name) * SEG as u64;
    assert_eq!(
        m.value(&format!("walship_partial_lsn{{segment=\"{}\"}}", seg.name)),
        (seg_start + have as u64) as f64,
        "{}",
        m.0
    );
    assert!(m
        .find(&format!(
            "walship_partial_last_append_timestamp_seconds{{segment=\"{}\"}}",
            seg.name
        ))
        .is_some_and(|t| t > 1.6e9));

    // After promote: the timeline is fenced (walship.fence as promote writes it, at the
    // partial's end); appends to its partial, or to a new one of timeline 1, are refused.
    let fence = Fence {
        timeline: TimelineId(1),
        promoted_at_lsn: Some(Lsn(seg_start + have as u64)),
        new_timeline: Some(TimelineId(2)),
        fenced_at: SystemTime::now(),
    };
    rig.sc
        .write_at(&archive.join(FENCE_FILE), fence.encode(), 0o640);
    let r = refusal(
        a.send(&a.pname, have as u64, &seg.bytes[have..have + PAGE]),
        "an append to the fenced timeline",
    );
    assert!(matches!(r, Refusal::Fenced { .. }), "{r:?}");
    a.assert_holds(have, "after an append to the fenced timeline");
    let later = format!("{}.partial", segment_name(segno(&third.name) + 1));
    let r = refusal(
        a.send(&later, 0, &third.bytes[..PAGE]),
        "a new partial of the fenced timeline",
    );
    assert!(matches!(r, Refusal::Fenced { .. }), "{r:?}");
    assert!(held(&archive, &later).is_none(), "{later} was created");
    let m = Scrape::take(port);
    assert_eq!(
        m.value("walship_partial_refused_total{reason=\"fenced\"}"),
        2.0
    );

    // Still serving: a new connection is answered (a question where to resume: fenced too);
    // no temp file is left anywhere.
    let fresh = RawClient::connect(&rig.setup.addr, &rig.certs);
    let r = refusal(
        fresh.upload(&append_request(&a.pname, u64::MAX, &[]), &[]),
        "a new connection",
    );
    assert!(matches!(r, Refusal::Fenced { .. }), "{r:?}");
    a.assert_holds(have, "at the end");
    assert_eq!(temps(&archive), Vec::<String>::new());
    rig.rx().check_log(&[
        "is not a wal file name",
        "is not a valid wal segment",
        "comes from the cluster",
        "already archived with different content",
        "malformed request",
        "upload too slow",
        "is on timeline 1, which is closed",
    ]);
}
