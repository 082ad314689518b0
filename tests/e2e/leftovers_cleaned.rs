//! Temp files left by a crash (`.walship-tmp.*`) are removed when serve starts, are never served
//! by restore, and stored segments survive the restart.

use std::fs;

use walship_tests::donors;
use walship_tests::walship::{archive_names, assert_pushed, restore};

use crate::Served;

#[test]
fn leftovers_cleaned() {
    let d = donors();
    let mut s = Served::start("leftovers_cleaned");
    let sc = s.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    assert_pushed(&sc, &s.sender, &path, &seg.name);
    s.rx.stop();

    // What a crash between "create temp" and "rename" leaves behind.
    let missing = "000000010000000000000009";
    let leftover = s
        .setup
        .archive_dir
        .join(format!(".walship-tmp.{missing}.x"));
    sc.write_at(&leftover, &d.home[1].bytes[..1024 * 1024], 0o600);

    // restore never serves a temp file, even before the cleanup.
    let dest = sc.path("restored");
    let out = restore(&sc, &s.setup.config, missing, &dest);
    out.assert_code(1);
    assert_eq!(
        out.stderr, "",
        "restore of a missing file must print nothing\n{out}"
    );
    assert!(!dest.exists());

    s.rx.start();
    assert!(
        !leftover.exists(),
        "serve did not remove {}",
        leftover.display()
    );
    let temps: Vec<String> = archive_names(&s.setup.archive_dir)
        .into_iter()
        .filter(|n| n.starts_with(".walship-tmp."))
        .collect();
    assert!(temps.is_empty(), "temp files left: {temps:?}");

    let out = restore(&sc, &s.setup.config, missing, &dest);
    out.assert_code(1);
    assert_eq!(
        out.stderr, "",
        "restore of a missing file must print nothing\n{out}"
    );
    assert!(!dest.exists());

    // The stored segment is untouched by the cleanup.
    restore(&sc, &s.setup.config, &seg.name, &dest).assert_code(0);
    assert!(
        fs::read(&dest).expect("read restored") == seg.bytes,
        "restored copy differs"
    );

    // Removing a leftover is worth a WARN (odd, but the work went on), naming the file.
    s.rx.assert_logged(".walship-tmp.000000010000000000000009.x");
    s.rx.stop_and_check(&[".walship-tmp.000000010000000000000009.x"]);
}
