//! Only WAL file names are accepted: anything else is refused by push (exit 1, nothing written)
//! and by restore (exit 2). A valid name that is not archived is exit 1 with silent stderr, which
//! is how restore_command tells PostgreSQL "not there (yet)".

use std::fs;

use walship_tests::donors;
use walship_tests::walship::{archive_names, assert_pushed, assert_refused, push, restore};

use crate::Served;

const BAD_NAMES: [&str; 9] = [
    "../x",
    "foo",
    "000000010000000000000001/",
    "00000001000000000000000a",
    "0000000100000000000000011",
    "..",
    "",
    "../000000010000000000000001",
    ".walship-tmp.000000010000000000000001.x",
];

#[test]
fn bad_names() {
    let d = donors();
    let s = Served::start("bad_names");
    let sc = s.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    let before = archive_names(sc.dir());

    for name in BAD_NAMES {
        let out = push(&sc, &s.sender, &path, name);
        assert_refused(&out, &["name"]);
        assert_eq!(
            archive_names(&s.setup.archive_dir),
            vec!["walship.lock".to_string()],
            "after push as {name:?}"
        );
    }
    // "../x" must not have escaped the archive directory either.
    assert_eq!(
        archive_names(sc.dir()),
        before,
        "files appeared in the scenario directory"
    );

    for name in BAD_NAMES {
        let dest = sc.path("restored");
        let out = restore(&sc, &s.setup.config, name, &dest);
        out.assert_code(2);
        assert!(
            !dest.exists(),
            "restore {name:?} created its destination\n{out}"
        );
    }

    for missing in ["000000010000000000000005", "00000002.history"] {
        let dest = sc.path("restored");
        let out = restore(&sc, &s.setup.config, missing, &dest);
        out.assert_code(1);
        assert_eq!(
            out.stderr, "",
            "restore of missing {missing} must print nothing\n{out}"
        );
        assert!(
            !dest.exists(),
            "restore of missing {missing} created its destination"
        );
    }

    // And a good name works, so the refusals above were about the names.
    assert_pushed(&sc, &s.sender, &path, &seg.name);
    let dest = sc.path("restored");
    restore(&sc, &s.setup.config, &seg.name, &dest).assert_code(0);
    assert!(
        fs::read(&dest).expect("read restored") == seg.bytes,
        "restored copy differs"
    );

    // The sender may refuse the names itself; if the receiver saw them, it refused them by name.
    s.rx.stop_and_check(&["file name"]);
}
