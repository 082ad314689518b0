//! The archive never replaces a stored file: different bytes under a stored name are refused
//! ("different content") and the stored copy stays; the same bytes again succeed.

use std::fs;

use walship_tests::donors;
use walship_tests::walship::{archived_files, assert_pushed, assert_refused, push, restore};

use crate::Served;

#[test]
fn conflicting_content() {
    let d = donors();
    let s = Served::start("conflicting_content");
    let sc = s.sc.clone();
    let first = &d.home[0];
    let stored = s.setup.archive_dir.join(&first.name);
    let first_path = first.write_to(&sc, "first");
    assert_pushed(&sc, &s.sender, &first_path, &first.name);
    assert!(
        fs::read(&stored).expect("read stored segment") == first.bytes,
        "stored copy differs"
    );

    // Same name, same header (cluster, address), one byte of record data changed.
    let mut tampered = first.bytes.clone();
    tampered[1024 * 1024 + 1000] ^= 0xFF;
    let tampered_path = sc.write("tampered", &tampered);
    let out = push(&sc, &s.sender, &tampered_path, &first.name);
    assert_refused(&out, &["different content"]);
    assert!(
        fs::read(&stored).expect("read stored segment") == first.bytes,
        "stored copy changed"
    );

    // Another real segment of the same cluster under the first one's name: refused too (its
    // header names another segment, or its content differs; either way nothing is replaced).
    let other_path = d.home[1].write_to(&sc, "other");
    let out = push(&sc, &s.sender, &other_path, &first.name);
    assert_refused(&out, &[]);
    assert!(
        fs::read(&stored).expect("read stored segment") == first.bytes,
        "stored copy changed"
    );

    // The identical file again: PostgreSQL retries after a lost reply, that must succeed.
    assert_pushed(&sc, &s.sender, &first_path, &first.name);
    assert!(
        fs::read(&stored).expect("read stored segment") == first.bytes,
        "stored copy changed"
    );
    assert_eq!(
        archived_files(&s.setup.archive_dir),
        vec![first.name.clone()]
    );

    // The config path may come from WALSHIP_CONFIG instead of --config.
    let second = &d.home[1];
    let cmd = sc
        .cmd(sc.bin("walship-sender"))
        .env("WALSHIP_CONFIG", &s.sender)
        .arg("push")
        .arg(&other_path)
        .arg(&second.name);
    sc.run(&cmd).assert_code(0);
    let dest = sc.path("restored");
    restore(&sc, &s.setup.config, &second.name, &dest).assert_code(0);
    assert!(
        fs::read(&dest).expect("read restored") == second.bytes,
        "restored copy differs"
    );

    s.rx.assert_logged("different content");
    s.rx.stop_and_check(&["different content"]);
}
