//! A receiver pinned to one cluster refuses a segment from another cluster, by system
//! identifier, and stores nothing under its name; the pin survives a restart.

use walship_tests::donors;
use walship_tests::walship::{archived_files, assert_pushed, assert_refused, push, restore};

use crate::Served;

#[test]
fn foreign_cluster() {
    let d = donors();
    let mut s = Served::start("foreign_cluster");
    let sc = s.sc.clone();
    let home = &d.home[0];
    // Any foreign segment whose name is not already stored (else it would be a name conflict).
    let foreign = d
        .foreign
        .iter()
        .find(|f| f.name != home.name)
        .expect("a foreign segment");
    let home_path = home.write_to(&sc, "home-segment");
    let foreign_path = foreign.write_to(&sc, "foreign-segment");

    // The first segment pins the archive to the home cluster.
    assert_pushed(&sc, &s.sender, &home_path, &home.name);
    let out = push(&sc, &s.sender, &foreign_path, &foreign.name);
    assert_refused(&out, &["system identifier"]);
    assert_eq!(
        archived_files(&s.setup.archive_dir),
        vec![home.name.clone()]
    );

    // The pin is durable: a restarted receiver still refuses.
    s.rx.stop();
    s.rx.start();
    let out = push(&sc, &s.sender, &foreign_path, &foreign.name);
    assert_refused(&out, &["system identifier"]);
    assert_eq!(
        archived_files(&s.setup.archive_dir),
        vec![home.name.clone()]
    );

    let dest = sc.path("restored");
    let out = restore(&sc, &s.setup.config, &foreign.name, &dest);
    out.assert_code(1);
    assert_eq!(
        out.stderr, "",
        "restore of a missing file must print nothing\n{out}"
    );
    assert!(
        !dest.exists(),
        "restore of a missing file created {}",
        dest.display()
    );

    s.rx.assert_logged("system identifier");
    s.rx.stop_and_check(&["system identifier"]);
}
