//! Issue 13 item 5: a finished segment made from the `NAME.partial` the receiver holds whole
//! (a [`Seal`]: no content on the wire), driven through the raw client. A seal is taken only
//! when the partial is exactly the whole segment and hashes to the sealer's digest with every
//! page checked; otherwise the answer is "not sealed" (`Partial` with what is held) or the
//! refusal an upload would get, and nothing stored changes: the partial stays byte for byte,
//! no finished segment appears. An honest seal gives the finished segment, byte for byte the
//! segment, and no partial; a seal of a stored segment is not taken (the upload decides).

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use walship_common::proto::digest::digest;
use walship_common::proto::{Refusal, Reply, Seal, WireRequest};
use walship_common::state::{Fence, FENCE_FILE};
use walship_common::{Lsn, TimelineId};
use walship_tests::raw::{honest_request, RawClient, StreamEnd};
use walship_tests::segments::segno;
use walship_tests::walship::assert_pushed;
use walship_tests::{donors, Segment};

use crate::hostile::Rig;
use crate::issue11_metrics::Scrape;

const SEG: usize = 16 << 20;
/// Most bytes one append carries: the partial is built in pieces of this size.
const PIECE: usize = walship_common::wal::partial::MAX_APPEND_BYTES as usize;

fn seal(raw: &RawClient, name: &str, size: u64, digest: [u8; 32]) -> StreamEnd {
    raw.exchange(
        &WireRequest::Seal(Seal {
            name: name.to_string(),
            size,
            digest,
        })
        .encode(),
    )
}

/// Append `seg`'s bytes `from..to` to its partial, in pieces: all taken.
fn append(raw: &RawClient, seg: &Segment, from: usize, to: usize) {
    let pname = format!("{}.partial", seg.name);
    let mut at = from;
    while at < to {
        let end = (at + PIECE).min(to);
        let bytes = &seg.bytes[at..end];
        let mut r = honest_request(&pname, bytes);
        r.append_at = Some(at as u64);
        assert_eq!(
            raw.upload(&r, bytes),
            StreamEnd::Reply(Reply::Partial { bytes: end as u64 }),
            "append {at}..{end} of {pname}"
        );
        at = end;
    }
}

fn held(archive: &Path, name: &str) -> Option<Vec<u8>> {
    fs::read(archive.join(name)).ok()
}

#[test]
fn a_seal_is_taken_only_for_the_whole_partial_with_the_right_digest() {
    let d = donors();
    let (rig, port) = Rig::start_with_metrics("issue13_seal");
    let archive = rig.setup.archive_dir.clone();
    let raw = RawClient::connect(&rig.setup.addr, &rig.certs);
    let seg = &d.home[1];
    let size = seg.bytes.len() as u64;
    assert_eq!(size, SEG as u64);
    let pname = format!("{}.partial", seg.name);
    let right = digest(&seg.bytes);
    let not_sealed = |bytes: usize| {
        StreamEnd::Reply(Reply::Partial {
            bytes: bytes as u64,
        })
    };

    // No partial at all: not sealed, nothing created.
    assert_eq!(
        seal(&raw, &seg.name, size, right),
        not_sealed(0),
        "no partial"
    );
    assert!(held(&archive, &seg.name).is_none());

    // A partial short of the segment: not sealed, untouched.
    append(&raw, seg, 0, SEG - 8192);
    assert_eq!(
        seal(&raw, &seg.name, size, right),
        not_sealed(SEG - 8192),
        "a partial short by a page"
    );
    assert!(held(&archive, &seg.name).is_none());
    append(&raw, seg, SEG - 8192, SEG);

    // The whole partial, but another digest: not sealed, the partial kept byte for byte.
    let mut wrong = right;
    wrong[0] ^= 1;
    assert_eq!(
        seal(&raw, &seg.name, size, wrong),
        not_sealed(SEG),
        "a wrong digest"
    );
    assert_eq!(held(&archive, &pname).as_deref(), Some(&seg.bytes[..]));
    assert!(
        held(&archive, &seg.name).is_none(),
        "sealed with a wrong digest"
    );

    // Another size announced than the partial holds (8 MiB is a valid segment size):
    // not sealed.
    assert_eq!(
        seal(&raw, &seg.name, size / 2, right),
        not_sealed(SEG),
        "half the size"
    );
    assert!(
        held(&archive, &seg.name).is_none(),
        "sealed at another size"
    );

    // Names that are not segments: refused.
    for bad in [pname.as_str(), "../x", "00000002.history"] {
        match seal(&raw, bad, size, right) {
            StreamEnd::Reply(Reply::Refused(_)) => {}
            other => panic!("a seal of {bad:?}: {other:?}"),
        }
    }

    // The honest seal: the finished segment, exactly the segment; no partial left.
    assert_eq!(
        seal(&raw, &seg.name, size, right),
        StreamEnd::Reply(Reply::Stored),
        "the honest seal"
    );
    assert_eq!(held(&archive, &seg.name).as_deref(), Some(&seg.bytes[..]));
    assert!(
        held(&archive, &pname).is_none(),
        "the partial is still there"
    );
    // Sealed again: the segment is stored, not sealed again (an upload says "already had").
    assert_eq!(seal(&raw, &seg.name, size, right), not_sealed(0), "twice");
    let path = seg.write_to(&rig.sc, &seg.name);
    assert_pushed(&rig.sc, &rig.sender, &path, &seg.name);

    // A partial of the fenced timeline: an upload would be refused, so is the seal.
    let next = &d.home[2];
    append(&raw, next, 0, SEG);
    let fence = Fence {
        timeline: TimelineId(1),
        promoted_at_lsn: Some(Lsn(segno(&next.name) * SEG as u64)),
        new_timeline: Some(TimelineId(2)),
        fenced_at: SystemTime::now(),
    };
    rig.sc
        .write_at(&archive.join(FENCE_FILE), fence.encode(), 0o640);
    match seal(&raw, &next.name, size, digest(&next.bytes)) {
        StreamEnd::Reply(Reply::Refused(Refusal::Fenced { .. })) => {}
        other => panic!("a seal on the fenced timeline: {other:?}"),
    }
    assert!(
        held(&archive, &next.name).is_none(),
        "sealed past the fence"
    );
    assert_eq!(
        held(&archive, &format!("{}.partial", next.name)).as_deref(),
        Some(&next.bytes[..])
    );

    let m = Scrape::take(port);
    assert_eq!(m.value("walship_partial_sealed_total"), 1.0);
}
