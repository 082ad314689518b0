//! Issue 10, item 3: a refusal tells the sender which cluster *its* segment came from, never
//! which cluster the archive holds (that identifier is what one needs to forge segments that
//! pass the pin). The receiver's log names the pinned one, for the operator.

use std::fs;

use walship_tests::donors;
use walship_tests::raw::{honest_request, RawClient};
use walship_tests::walship::{assert_pushed, assert_refused, push};

use crate::Served;

/// The system identifier in a segment's long page header (bytes 24..32, little-endian).
fn header_system_id(segment: &[u8]) -> u64 {
    u64::from_le_bytes(segment[24..32].try_into().expect("8 bytes"))
}

#[test]
fn item3_foreign_refusal_does_not_leak_the_pinned_system_identifier() {
    let d = donors();
    let s = Served::start("i10-refusal-leak");
    let sc = s.sc.clone();
    let home = &d.home[0];
    let foreign = d
        .foreign
        .iter()
        .find(|f| f.name != home.name)
        .expect("a foreign segment");
    let pinned = header_system_id(&home.bytes).to_string();
    let theirs = header_system_id(&foreign.bytes).to_string();
    assert_ne!(
        pinned, theirs,
        "the donor clusters share a system identifier"
    );

    assert_pushed(&sc, &s.sender, &home.write_to(&sc, "home"), &home.name);
    let pin = fs::read_to_string(s.setup.archive_dir.join("walship.cluster")).expect("pin file");
    assert!(pin.contains(&pinned), "pinned to another cluster: {pin}");

    // What a sender sees: its own segment's cluster, not the archive's.
    let out = push(
        &sc,
        &s.sender,
        &foreign.write_to(&sc, "foreign"),
        &foreign.name,
    );
    assert_refused(&out, &["system identifier"]);
    assert!(
        out.stderr.contains(&theirs),
        "the refusal should name the segment's cluster {theirs}\n{out}"
    );
    assert!(
        !out.stderr.contains(&pinned),
        "the refusal leaks the archive's system identifier {pinned}\n{out}"
    );

    // What a raw client gets on the wire: the same, in every field of the reply.
    let raw = RawClient::connect(&s.setup.addr, &s.certs);
    let reply = raw
        .upload(
            &honest_request(&foreign.name, &foreign.bytes),
            &foreign.bytes,
        )
        .reply();
    let shown = format!("{reply:?}");
    assert!(shown.contains(&theirs), "{shown}");
    assert!(
        !shown.contains(&pinned),
        "the reply frame carries the archive's system identifier {pinned}: {shown}"
    );
    raw.close();

    // The operator reads the pinned one in the receiver's log.
    s.rx.assert_logged(&format!("archive holds cluster {pinned}"));
    let Served { rx, .. } = s;
    rx.stop_and_check(&["system identifier"]);
}
